import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli
from latentlab.analysis.gmm import GaussianMixture
from latentlab.analysis.gmm.official import fit_adam
from latentlab.analysis.gmm.config import COLUMNS, FitGMMConfig, GMMFeatures
from latentlab.analysis.gmm.curves import fit_gmm_curves
from latentlab.latents import LatentStore

N = 600


def _rotation(rng, d):
    return np.linalg.qr(rng.normal(size=(d, d)))[0]


def _clustered(rng, n=N, d=12):
    """Three well-separated clusters in a 2-D plane of a d-dim space, small isotropic noise."""
    centres = np.array([[-8.0, 0.0], [8.0, 0.0], [0.0, 10.0]])
    lab = rng.integers(0, 3, n)
    plane = np.zeros((n, d))
    plane[:, :2] = centres[lab]
    return (plane + rng.normal(scale=0.6, size=(n, d))) @ _rotation(rng, d).T + 1.0, lab


def _gaussian(rng, n=N, d=12):
    """One Gaussian with a decaying spectrum."""
    return (rng.normal(size=(n, d)) * np.sqrt(np.linspace(4, 0.2, d))) @ _rotation(rng, d).T - 2.0


@pytest.fixture
def stores(tmp_path):
    rng = np.random.default_rng(0)
    xc, lab = _clustered(rng)
    a = LatentStore.create(tmp_path / "clustered", xc.reshape(N, 4, 3).astype(np.float32), lab, shard_size=250)
    b = LatentStore.create(tmp_path / "gauss", _gaussian(rng).astype(np.float32), shard_size=250)
    return str(a.path), str(b.path)


def _one_error_line(code, out, err, out_dir):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not out_dir.exists()
    return lines[0]


def test_cli_end_to_end_planted(stores, tmp_path):
    out = tmp_path / "gmm"
    code, stdout, err = run_cli("fit-gmm", "--tokenizer", stores[0], "--tokenizer", stores[1], "--components", "1,2,3",
                                "--covariance", "full", "--heldout", "0.2", "--out", str(out), "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    for f in ("gmm.csv", "gmm.json", "nll_vs_components.png", "nll_vs_components.pdf"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0
    df = pd.read_csv(out / "gmm.csv")
    assert list(df.columns) == COLUMNS and len(df) == 6
    assert set(df["protocol"]) == {"em"}
    meta = json.loads((out / "gmm.json").read_text())
    red = meta["reduction"]
    # one common dimension: the larger of the two tokenizers' own 90% dimensions
    assert df["pca_dim"].nunique() == 1 and red["pca_dim"] == max(red["own_dims"].values())
    assert min(red["explained_variance"].values()) >= 0.9 and summary["pca_dim"] == red["pca_dim"]
    for name in ("clustered", "gauss"):  # PCA and z-scores fitted on the 80% training part only
        assert red["tokenizers"][name]["n_samples"] == red["tokenizers"][name]["n_train"] == 480
    h = df.pivot(index="n_components", columns="tokenizer", values="heldout_nll")
    assert h.loc[1, "clustered"] - h.loc[3, "clustered"] > 1.0  # the clusters are found
    assert h.loc[3, "gauss"] > h.loc[1, "gauss"] - 0.1  # one Gaussian: more components do not help
    assert summary["tokenizers"]["clustered"]["best_k"] >= 3
    d = int(df["pca_dim"].iloc[0])
    k1 = df[(df.tokenizer == "gauss") & (df.n_components == 1)].iloc[0]
    # z-scored, decorrelated features: the ML Gaussian is N(0, I), NLL = d/2 (1 + log 2 pi) (closed form)
    np.testing.assert_allclose(k1["train_nll"], 0.5 * d * (1 + math.log(2 * math.pi)), rtol=1e-5)
    p = d * (d + 1) / 2 + d  # full covariance, K=1
    np.testing.assert_allclose(k1["bic"], 2 * 480 * k1["train_nll"] + p * math.log(480), rtol=1e-6)
    np.testing.assert_allclose(k1["aic"], 2 * 480 * k1["train_nll"] + 2 * p, rtol=1e-6)
    np.testing.assert_allclose(df["nll_per_dim"], df["heldout_nll"] / d, rtol=1e-12)
    assert df["converged"].dtype == bool and (df["n_iter"] >= 1).all() and (df["seconds"] > 0).all()
    assert meta["config"]["protocol"] == "em" and len(meta["rows"]) == 6


def test_matches_manual_pipeline(stores, tmp_path):
    """The pipeline equals PCA -> z-score -> EM done by hand with sklearn on the same split."""
    from sklearn.decomposition import PCA as SKPCA
    from sklearn.mixture import GaussianMixture as SKGMM

    from latentlab.analysis.gmm.config import split_rows

    cfg = FitGMMConfig(components=(1,), covariance="diag", pca_dim=3, heldout=0.25, seed=7)
    res = fit_gmm_curves([stores[1]], cfg)
    x = LatentStore.open(stores[1]).load(flatten=True)[0].astype(np.float64)
    tr, ho = split_rows(N, 0.25, 7)
    pca = SKPCA(3, svd_solver="full").fit(x[tr])
    z = pca.transform(x)
    z = z / z[tr].std(0)
    sk = SKGMM(1, covariance_type="diag").fit(z[tr])
    np.testing.assert_allclose(res.table["train_nll"].iloc[0], -sk.score(z[tr]), rtol=1e-5)
    np.testing.assert_allclose(res.table["heldout_nll"].iloc[0], -sk.score(z[ho]), rtol=1e-5)
    assert res.out is None


def test_bad_inputs_exit_2_and_write_nothing(stores, tmp_path):
    out = tmp_path / "never"
    base = ["fit-gmm", "--tokenizer", stores[0], "--out", str(out), "--components", "1,2"]
    msg = _one_error_line(*run_cli(*base[:2], str(tmp_path / "missing"), *base[3:]), out)
    assert "missing" in msg
    msg = _one_error_line(*run_cli(*base, "--pca-variance", "0"), out)
    assert "'--pca-variance'" in msg and "0<x<=1" in msg  # the flag and its valid range
    _one_error_line(*run_cli(*base, "--pca-variance", "1.5"), out)
    msg = _one_error_line(*run_cli(*base, "--covariance", "spherical"), out)
    assert "spherical" in msg and "full" in msg
    msg = _one_error_line(*run_cli(*base[:-1], "1,2,1000"), out)
    assert "n_components=1000" in msg and "480" in msg
    _one_error_line(*run_cli(*base, "--reducer", "umap"), out)
    _one_error_line(*run_cli(*base, "--protocol", "official", "--covariance", "full"), out)
    # NaN planted in a shard after the store was written (create() itself refuses NaN)
    shard = sorted((tmp_path / "gauss").glob("latents-*.npy"))[1]
    arr = np.load(shard)
    arr[[3, 10, 11], 0, 2] = np.nan
    arr[20, 0, 0] = np.inf
    np.save(shard, arr)
    msg = _one_error_line(*run_cli("fit-gmm", "--tokenizer", stores[1], "--out", str(out)), out)
    assert "4 of 600" in msg and "NaN" in msg
    # a corrupt store
    (tmp_path / "clustered" / "manifest.json").write_text("{broken")
    msg = _one_error_line(*run_cli(*base), out)
    assert "corrupt" in msg


def test_existing_out_is_refused_unless_latentlab_wrote_it(stores, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli("fit-gmm", "--tokenizer", stores[1], "--components", "1", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "did not write" in err and "keep.txt" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "x"
    fresh = tmp_path / "gmm"
    for _ in range(2):  # a fit-gmm output folder is replaced whole by the next fit-gmm
        code, _, err = run_cli("fit-gmm", "--tokenizer", stores[1], "--components", "1", "--out", str(fresh))
        assert code == 0, err
    assert (fresh / "gmm.csv").is_file() and not list(tmp_path.glob(".gmm.tmp-*"))


def _planted_features(seed=0):
    rng = np.random.default_rng(seed)
    x, _ = _clustered(rng, 900, 4)
    z = (x - x.mean(0)) / x.std(0)
    return GMMFeatures("p", z[:700].astype(np.float32), z[700:].astype(np.float32), 1.0)


def test_official_adam_protocol_planted():
    f = _planted_features()
    cfg = FitGMMConfig(protocol="official", official_epochs=25, official_lr=2e-2, seed=1, device="cpu")
    # K=1: Adam reaches the ML Gaussian (diag EM converges to it in one step)
    m1, _ = fit_adam(f.train, f.heldout, 1, cfg)
    em1 = -GaussianMixture(1, covariance_type="diag").fit(f.train).score(f.train)
    np.testing.assert_allclose(m1.nll(torch.from_numpy(f.train)), em1, atol=5e-3)
    model, hist = fit_adam(f.train, f.heldout, 3, cfg)
    w = model.weights.detach()
    assert torch.isclose(w.sum(), torch.tensor(1.0), atol=1e-6) and (w > 0).all()  # softmax weights
    assert hist["train_loss"][-1] < hist["train_loss"][0] - 1.0  # training lowers the NLL
    assert hist["heldout_nll"][-1] < hist["heldout_nll"][0] - 1.0
    off = model.nll(torch.from_numpy(f.train))
    em = -GaussianMixture(3, covariance_type="diag", random_state=0).fit(f.train).score(f.train)
    # EM maximises the same likelihood; Adam gets close (this seed avoids a local optimum) and cannot beat it
    assert em - 0.01 < off < em + 0.05, (off, em)


def test_official_cli(stores, tmp_path):
    out = tmp_path / "off"
    code, stdout, err = run_cli("fit-gmm", "--tokenizer", stores[0], "--components", "1,3", "--protocol", "official",
                                "--pca-dim", "4", "--epochs", "3", "--out", str(out), "--json")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["protocol"] == "official" and s["pca_dim"] == 4
    df = pd.read_csv(out / "gmm.csv")
    assert set(df["protocol"]) == {"official"} and (df["n_iter"] == 3).all()
    meta = json.loads((out / "gmm.json").read_text())
    assert meta["config"]["covariance"] == "diag" and "softmax" in meta["config"]["protocol_notes"]
    assert meta["reduction"]["tokenizers"]["clustered"]["n_heldout"] == 120  # 80/20 split
    for k in ("1", "3"):
        np.testing.assert_allclose(sum(meta["curves"]["clustered"][k]["weights"]), 1.0, atol=1e-6)
