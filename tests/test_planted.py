"""Planted modes: the mixture's exact density, its whitening, the import command, and the GMM counting its modes."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from latentlab.analysis.gmm.config import FitGMMConfig
from latentlab.analysis.gmm.curves import fit_gmm_curves
from latentlab.errors import LatentlabError
from latentlab.latents import open_split
from latentlab.planted import PlantedMixture, parse_planted, write_planted
from latentlab.sit.reference import linear_loss
from latentlab.sit.training import SiTTrainConfig, build_sit_task


def test_log_density_matches_scipy_and_the_total_covariance_is_the_identity():
    mix = PlantedMixture(parse_planted("modes=5,dim=6,n=100,seed=3"))
    x = np.random.default_rng(0).normal(size=(50, 6)) * 2
    want = logsumexp([np.log(w) + multivariate_normal(m, mix.cov).logpdf(x) for w, m in zip(mix.weights, mix.means)],
                     axis=0)
    assert np.allclose(mix.log_density(x), want, rtol=1e-10)
    total = mix.cov + (mix.means * mix.weights[:, None]).T @ mix.means          # the population covariance
    assert np.allclose(total, np.eye(6), atol=1e-10) and np.allclose(mix.weights @ mix.means, 0, atol=1e-12)
    z, y = mix.sample(20_000, seed=1)
    assert np.allclose(np.cov(z.T), np.eye(6), atol=0.05) and np.bincount(y).tolist() == [4000] * 5
    assert np.mean(mix.mode_of(z) == y) > 0.9                                 # sep=4: modes barely overlap
    cov = mix.coverage(z)
    assert cov["mode_coverage"] == 1.0 and cov["mode_balance"] > 0.99
    assert cov["in_mode"] == pytest.approx(0.99, abs=0.01)                    # the 99% ellipsoids
    one = mix.coverage(z[y == 2])                                             # a collapsed generator
    assert one["mode_coverage"] == pytest.approx(0.2) and one["mode_balance"] < 0.1
    blur = mix.coverage(z * 3)                                                # samples off the modes hit none
    assert blur["in_mode"] < 0.05 and blur["mode_coverage"] < 0.5


@pytest.mark.parametrize("bad", ["modes=0,dim=4,n=10", "modes=2,dim=4", "modes=2,dim=4,n=10,colour=3",
                                 "modes=2,dim=x,n=10", "modes=4,dim=2,n=3"])
def test_bad_planted_specs_are_one_line_errors(bad, tmp_path):
    with pytest.raises(LatentlabError):
        parse_planted(bad)
    code, out, err = run_cli("import-latents", "--planted", bad, "--out", str(tmp_path / "s"))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_import_planted_and_the_planted_tokenizer_spec(tmp_path):
    code, out, err = run_cli("import-latents", "--planted", "modes=3,dim=4,n=90,seed=0,test=30",
                             "--out", str(tmp_path / "p"), "--json")
    assert code == 0, err
    s = json.loads(out)["stores"]
    assert s["train"]["count"] == 90 and s["test"]["count"] == 30 and s["train"]["sample_shape"] == [1, 4]
    tr = open_split(tmp_path / "p", "train")
    assert tr.manifest["num_classes"] == 3 and tr.dataset.startswith("planted:modes=3,dim=4,n=90,seed=0")
    # the same spec as a --tokenizer: written once into the workspace, identical rows
    res = fit_gmm_curves(["planted:modes=3,dim=4,n=90,seed=0,test=30"], FitGMMConfig(components=(1, 2), pca_dim=4))
    assert res.table["tokenizer"].iloc[0] == "planted-m3"
    from latentlab.extract import cached_planted
    again = cached_planted("planted:modes=3,dim=4,n=90,seed=0,test=30")
    assert np.array_equal(again["train"].load()[0], tr.load()[0])


@pytest.mark.parametrize("m", [1, 4])
def test_gmm_recovers_a_planted_well_separated_number_of_modes_by_bic(m, tmp_path):
    write_planted(parse_planted(f"modes={m},dim=6,n=1500,seed=1,sep=8"), tmp_path / "p", name="planted")
    res = fit_gmm_curves([str(tmp_path / "p")], FitGMMConfig(components=(1, 2, 3, 4, 5, 6, 8), pca_dim=6,
                                                             covariance="full", n_init=3), out=tmp_path / "gmm")
    modes = pd.read_csv(tmp_path / "gmm" / "modes.csv")
    assert modes["modes_bic"].iloc[0] == m and res.summary()["tokenizers"]["planted"]["modes_bic"] == m
    gains = modes[[c for c in modes if c.startswith("gain_k")]].iloc[0]
    if m == 1:
        assert gains.max() < 0.05                        # nothing beyond one Gaussian
    else:
        assert gains["gain_k4"] > 2.0 and gains["gain_k4"] >= gains["gain_k2"]
    t = res.table
    assert (t["n_init"] == 3).all() and (t["heldout_nll_spread"] >= 0).all()
    assert (tmp_path / "gmm" / "gain_vs_components.png").is_file()


def test_fixed_dim_flags_low_variance_sweeps_dims_and_k1_is_always_fitted(tmp_path):
    write_planted(parse_planted("modes=2,dim=8,n=400,seed=0"), tmp_path / "p", name="p")
    res = fit_gmm_curves([str(tmp_path / "p")], FitGMMConfig(components=(2, 3), pca_dim=2, pca_dims=(2, 5),
                                                             covariance="diag"), out=tmp_path / "g")
    t = res.table
    assert sorted(t["n_components"].unique()) == [1, 2, 3] and sorted(t["pca_dim"].unique()) == [2, 5]
    assert t["below_pca_variance"].all()                 # 2 or 5 of 8 whitened dimensions: < 90% of the variance
    assert res.summary()["pca_dim"] == 2 and len(res.modes) == 2
    h = t.set_index(["pca_dim", "n_components"])["heldout_nll"]
    assert res.modes.set_index("pca_dim").loc[5, "gain_k3"] == pytest.approx(h.loc[(5, 1)] - h.loc[(5, 3)])


def test_official_protocol_warns_when_adam_has_not_converged(tmp_path, capsys):
    write_planted(parse_planted("modes=2,dim=6,n=300,seed=0"), tmp_path / "p", name="p")
    res = fit_gmm_curves([str(tmp_path / "p")], FitGMMConfig(protocol="official", components=(1, 2), pca_dim=6,
                                                             official_epochs=2))
    err = capsys.readouterr().err
    assert "have not converged" in err and "closed form" in err and "500" in err
    x = res.table
    closed = res.curves["p"]["1"]["closed_form_train_nll"]
    assert x[x.n_components == 1]["train_nll"].iloc[0] > closed + 0.1
    # the closed form is the maximum-likelihood diagonal Gaussian's NLL (scipy)
    from latentlab.analysis.gmm.official import closed_form_nll
    z = np.random.default_rng(0).normal(2, 3, size=(200, 3))
    ref = -np.mean(np.sum([multivariate_normal(z[:, j].mean(), z[:, j].var()).logpdf(z[:, j]) for j in range(3)], 0))
    assert closed_form_nll(z) == pytest.approx(ref, rel=1e-10)


def test_sit_loss_linear_on_planted_data_equals_the_closed_form(tmp_path):
    spec = parse_planted("modes=8,dim=16,n=3000,seed=0")
    write_planted(spec, tmp_path / "p")
    task, _ = build_sit_task(str(tmp_path / "p"), SiTTrainConfig(model_overrides={"depth": 1, "hidden_size": 32,
                                                                                    "num_heads": 2}))
    grid = task.heldout.t_grid
    x = task.store.load()[0].reshape(len(task.store), -1).astype(np.float64)
    z = (x - x.mean(0)) / x.std(0)                                        # per-channel normalisation, by hand
    got = task.reference()["sit_loss_linear"]
    assert got == pytest.approx(linear_loss(np.linalg.eigvalsh(np.cov(z.T)), grid).mean(), rel=1e-6)
    # whitened to the identity: the same reference as i.i.d. N(0, 1) latents, up to sampling noise
    assert got == pytest.approx(linear_loss(np.ones(16), grid).mean(), abs=0.01)
