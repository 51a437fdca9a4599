"""Diffusability measures against closed forms and planted cases; the command end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.fft
import torch

from conftest import run_cli
from latentlab.analysis.config import DiffusabilityConfig
from latentlab.analysis.diffusability import (curve_area, dct_power, high_frequency_bins,
                                             log_log_slope, radial_index, radial_profile, spectrum,
                                             twonn, twonn_interval)
from latentlab.extract import import_pixels
from latentlab.latents import LatentStore
from latentlab.metrics.diffusability import Subject, measure, response_columns, robustness_curves, scale_columns
from latentlab.sit.sample import PixelTokens

CFG = DiffusabilityConfig(n_boot=200, fd=False, id_boot=10)


def test_dct_is_orthonormal_and_the_radial_profile_averages_rings(rng):
    x = rng.normal(size=(3, 2, 6, 9))
    p = dct_power(x)
    assert np.allclose(p.sum((-2, -1)), (x ** 2).sum((-2, -1)))  # Parseval: an orthonormal transform
    assert np.allclose(p, scipy.fft.dctn(x, axes=(-2, -1), norm="ortho") ** 2)
    prof = radial_profile(p)
    ring = np.rint(radial_index(6, 9))
    for k in range(prof.shape[-1]):
        assert np.allclose(prof[..., k], p[..., ring == k].mean(-1))


def test_white_noise_hf_energy_is_the_share_of_bins_above_the_radius(rng):
    for h, w in ((8, 8), (6, 10)):
        x = rng.normal(size=(3000, 2, h, w))
        s = spectrum(x, n_boot=300)
        hf, nondc = high_frequency_bins(h, w)
        share = hf.sum() / nondc.sum()  # E|DCT|^2 = 1 in every bin of orthonormal white noise
        assert s["hf_energy_lo"] <= share <= s["hf_energy_hi"]
        assert abs(s["hf_energy"] - share) < 0.01
        assert s["spectral_slope_lo"] <= 0.0 <= s["spectral_slope_hi"] and abs(s["spectral_slope"]) < 0.03


def test_smooth_fields_have_hf_energy_near_zero(rng):
    u = np.linspace(0, 1, 16)
    yy, xx = np.meshgrid(u, u, indexing="ij")
    a, b, c = rng.uniform(0, 1, size=(3, 400))  # at most one cycle across the field
    x = np.sin(2 * np.pi * (a[:, None, None] * xx + b[:, None, None] * yy) + 6 * c[:, None, None])[:, None]
    s = spectrum(x, n_boot=100)
    assert s["hf_energy"] < 0.01 and s["hf_energy_hi"] < 0.02
    assert s["spectral_slope"] < -3


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_a_planted_power_law_gives_its_slope(rng, alpha):
    """Fields synthesised in the DCT domain with power r^-alpha have spectral slope -alpha."""
    h = w = 32
    r = radial_index(h, w)
    amp = np.where(r > 0, np.maximum(r, 0.5) ** (-alpha / 2), 0.0)
    x = scipy.fft.idctn(amp * rng.normal(size=(400, 1, h, w)), axes=(-2, -1), norm="ortho")
    s = spectrum(x, n_boot=100)
    assert s["spectral_slope"] == pytest.approx(-alpha, abs=0.1)
    assert s["spectral_slope_lo"] < s["spectral_slope"] < s["spectral_slope_hi"]


def test_log_log_slope_of_an_exact_power_law():
    k = np.arange(0, 20, dtype=float)
    prof = np.r_[5.0, 3.0 * k[1:] ** -1.7]
    assert log_log_slope(prof) == pytest.approx(-1.7)
    assert math.isnan(float(log_log_slope(np.array([1.0, 2.0]))))


def test_twonn_recovers_the_dimension_of_planted_manifolds(rng):
    flat = rng.uniform(size=(1500, 4)) @ rng.normal(size=(4, 24))  # a 4-d linear patch in 24-d
    est, lo, hi = twonn_interval(flat, 200, 0.95, 0)
    assert est == pytest.approx(twonn(flat), rel=1e-9)  # the bootstrap refits skdim on the same ratios
    assert est == pytest.approx(4.0, abs=0.4) and lo < est < hi and lo < 4.0 < hi
    v = rng.normal(size=(2000, 3))
    sphere = v / np.linalg.norm(v, axis=1, keepdims=True)  # S^2: a curved 2-d manifold in 3-d
    assert twonn(sphere) == pytest.approx(2.0, abs=0.25)


def test_curve_area_is_the_mean_height():
    levels = np.array([0.1, 0.25, 0.5, 0.75])
    assert curve_area(levels, 3 - 2 * levels) == pytest.approx(3 - 2 * 0.425)  # a line: its mid-range value
    assert curve_area(levels[:1], np.array([7.0])) == 7.0


def _identity_subject(rng, n=64, side=64, sigma=0.1, mean=0.05):
    """Planted 'pixels': tokens (H*W, 1) that are the images, decoded by the identity; images well inside [-1, 1]."""
    x = mean + sigma * rng.standard_normal((n, 1, side, side)).clip(-3, 3)
    images = torch.tensor(x, dtype=torch.float32)
    z = images.flatten(2).transpose(1, 2).contiguous()  # (n, H*W, 1)
    norm = {"mode": "channel", "mean": [mean], "std": [sigma], "layout": "tokens"}
    return Subject(name="identity", z=z, images=images, norm=norm, layout="tokens", decoder=PixelTokens(side, 1),
                   pixels=True, dataset="planted", id_latents=z.numpy()), sigma


def test_identity_decoder_has_the_closed_form_robustness_curve(rng):
    s, sigma = _identity_subject(rng)
    cfg = DiffusabilityConfig(taus=(0.1, 0.25, 0.5), mask_ratios=(0.1, 0.5), n_boot=200, fd=False)
    row, curves, clean = robustness_curves(s, cfg, None, None, "fd")
    assert row["psnr_clean"] == math.inf and torch.equal(clean, s.images)
    zn = ((s.z - 0.05) / sigma).double()
    m = zn.pow(2).flatten(1).mean(1).numpy()  # per image mean z_n^2
    # noise: x' - x = sigma tau (eps - z_n): E MSE = sigma^2 tau^2 (1 + m_i); PSNR on [0, 1] images (MSE / 4)
    noise_cf = np.stack([10 * np.log10(4 / (sigma ** 2 * t ** 2 * (1 + m))) for t in cfg.taus], 1)  # (n, L)
    # masking: k = round(r D) of the D positions set to the mean: E MSE = (k / D) sigma^2 m_i
    d = s.z.shape[1]
    mask_cf = np.stack([10 * np.log10(4 / (round(r * d) / d * sigma ** 2 * m)) for r in cfg.mask_ratios], 1)
    got = pd.DataFrame(curves)
    for kind, cf in (("noise", noise_cf), ("mask", mask_cf)):
        c = got[got.corruption == kind].sort_values("level")
        assert np.allclose(c.psnr, cf.mean(0), atol=0.15)
        assert ((c.psnr_lo < c.psnr) & (c.psnr < c.psnr_hi)).all()
    assert row["noise_robustness"] == pytest.approx(curve_area(cfg.taus, noise_cf).mean(), abs=0.15)
    assert row["mask_robustness"] == pytest.approx(curve_area(cfg.mask_ratios, mask_cf).mean(), abs=0.15)
    assert row["noise_robustness_lo"] < row["noise_robustness"] < row["noise_robustness_hi"]


def test_identity_decoder_response_is_white_and_commutes_with_downsampling(rng):
    s, _ = _identity_subject(rng, n=64, side=16)
    row, prof = response_columns(s, CFG)
    hf, nondc = high_frequency_bins(16, 16)
    assert row["response_hf"] == pytest.approx(hf.sum() / nondc.sum(), abs=0.02)  # the perturbation itself: white
    assert abs(row["response_slope"]) < 0.1 and row["image_hf_full"] < row["response_hf"]
    scale = scale_columns(s, CFG, s.images)
    assert scale["scale_psnr"] == math.inf and "identity" in scale["scale_note"]


def test_measure_on_planted_grid_decoders(rng):
    """Grid 'tokenizers': spectrum columns filled; a pointwise linear decoder commutes with 2x2 pooling, an
    upsampling one does not."""

    class Pointwise:  # images = a fixed channel mix of the latents, at the latent resolution
        def decode(self, z):
            return 0.2 * z.sum(1, keepdim=True)

    class Upsample:  # each latent repeated over a 2x2 block
        def decode(self, z):
            return torch.nn.functional.interpolate(0.2 * z.sum(1, keepdim=True), scale_factor=2, mode="nearest")

    z = torch.tensor(rng.normal(size=(40, 3, 8, 8)), dtype=torch.float32) * 0.3
    norm = {"mode": "channel", "mean": [0.0] * 3, "std": [0.3] * 3, "layout": "grid"}
    cfg = DiffusabilityConfig(n_boot=100, fd=False, id_boot=6)
    rows = {}
    for dec in (Pointwise(), Upsample()):
        s = Subject(name=type(dec).__name__, z=z, images=dec.decode(z), norm=norm, layout="grid", decoder=dec,
                    dataset="planted", id_latents=z.numpy())
        rows[s.name], curves, profiles = measure(s, cfg)
        assert {"latent", "response"} <= set(profiles) and len(curves) == 8
    row = rows["Pointwise"]
    assert row["spectrum_note"] == "" and row["hf_energy_lo"] <= row["hf_energy"] <= row["hf_energy_hi"]
    assert row["hf_energy"] == pytest.approx(high_frequency_bins(8, 8)[0].sum() / 63, abs=0.04)  # white latents
    assert row["scale_psnr"] == math.inf and row["scale_note"].startswith("grid")  # exactly equivariant
    up = rows["Upsample"]
    assert up["scale_psnr_ref"] == math.inf and up["scale_psnr_hi"] < 40  # down2(decode z) = x, decode(down2 z) is not
    assert row["id_rankme_lo"] <= row["id_rankme"] <= row["id_rankme_hi"] and row["twonn"] > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer

    root = tmp_path_factory.mktemp("diff")
    cfg = TokenizerRunConfig(arch="ae", dataset="digits", eval_images=16,
                             model={"width": 32, "depth": 1, "dec_width": 32, "dec_depth": 1, "heads": 2,
                                    "num_tokens": 4, "token_dim": 4, "scale_equivariance": 0.5},
                             train=dict(steps=6, batch_size=16, warmup_steps=1, device="cpu", eval_every=1000,
                                        ckpt_every=1000))
    train_tokenizer(cfg, root / "run")
    import_pixels("digits", root / "pixels")
    return root


def test_command_on_pixels_and_a_token_run(tiny_run, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli("diffusability", "--tokenizer", f"pixels={tiny_run / 'pixels'}",
                                "--tokenizer", f"ae={tiny_run / 'run'}", "--out", str(out), "--n-images", "40",
                                "--id-samples", "200", "--taus", "0.2,0.6", "--mask-ratios", "0.3", "--no-fd", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    df = pd.read_csv(out / "diffusability.csv")
    assert list(df.tokenizer) == ["pixels", "ae"] and (df.n_images == 40).all()
    pix, ae = df.iloc[0], df.iloc[1]
    assert pix.spectrum_note.startswith("raw pixels") and pix.hf_energy == pytest.approx(pix.image_hf_energy)
    assert math.isnan(ae.hf_energy) and "token layout" in ae.spectrum_note  # tokens: no spatial axes, and why
    assert ae.scale_note.startswith("tokens") and math.isfinite(ae.scale_psnr)
    for col in ("noise_robustness", "mask_robustness", "response_hf", "twonn", "id_rankme"):
        assert df[col].notna().all() and (df[f"{col}_lo"] <= df[f"{col}_hi"]).all()
    curves = pd.read_csv(out / "robustness.csv")
    assert len(curves) == 2 * 3 and set(curves.corruption) == {"noise", "mask"}
    assert (out / "diffusability.png").is_file() and (out / "diffusability.pdf").is_file()
    assert (out / "spectra.csv").is_file() and summary["rows"][1]["tokenizer"] == "ae"
    per = pd.read_csv(out / "diffusability_images.csv")  # the per-image values behind the means, same images
    for name, r in (("pixels", pix), ("ae", ae)):
        im = per[per.tokenizer == name]
        assert len(im) == 40 and im.noise_robustness.mean() == pytest.approx(r.noise_robustness)
    assert list(per[per.tokenizer == "pixels"]["index"]) == list(per[per.tokenizer == "ae"]["index"])


def test_bad_input_is_one_line(tiny_run, tmp_path):
    LatentStore.create(tmp_path / "nan", np.zeros((10, 4, 4), np.float32), None, {"name": "nan"})
    shard = sorted((tmp_path / "nan").glob("latents-*.npy"))[0]  # corrupted after writing (the writer refuses NaN)
    arr = np.load(shard)
    arr[3, 0, 0] = np.nan
    np.save(shard, arr)
    for args, msg in ((["--tokenizer", str(tmp_path / "nan")], "NaN"),
                      (["--tokenizer", str(tiny_run / "pixels"), "--taus", "0,0.5"], "taus"),
                      (["--tokenizer", str(tiny_run / "pixels"), "--mask-ratios", "x"], "comma-separated"),
                      (["--tokenizer", str(tmp_path / "missing")], "no latent store")):
        code, _, err = run_cli("diffusability", *args, "--out", str(tmp_path / "o"), "--no-fd")
        assert code == 2 and err.startswith("error:") and msg in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def lenet_root(tmp_path_factory):
    """The session's lenet cache (the path the metric test modules share, so it is trained once)."""
    from latentlab.metrics.lenet import load_or_train_lenet

    root = tmp_path_factory.getbasetemp() / "lenet-cache"
    load_or_train_lenet("mnist5k", root)
    return root


def test_fd_of_corrupted_decodes_in_lenet_features(lenet_root, tmp_path):
    import os

    ws = Path(os.environ["LATENTLAB_WORKSPACE"])
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "extractors").symlink_to(lenet_root, target_is_directory=True)
    import_pixels("mnist5k", tmp_path / "pixels")
    from latentlab.extract import resolve_tokenizer
    from latentlab.metrics.diffusability import run_diffusability

    cfg = DiffusabilityConfig(n_images=64, taus=(0.25, 0.75), mask_ratios=(0.5,), id_samples=100, n_boot=100,
                              fd_boot=20, id_boot=5, device="cpu")
    s = run_diffusability([resolve_tokenizer(f"pixels={tmp_path / 'pixels'}")], tmp_path / "out", cfg)
    assert s["metric"] == "fd_lenet" and s["extractor"]["name"] == "lenet"  # the stand-in, never called FID
    row = pd.read_csv(tmp_path / "out" / "diffusability.csv").iloc[0]
    assert row.fd_lenet_clean_lo <= row.fd_lenet_clean <= row.fd_lenet_clean_hi
    c = pd.read_csv(tmp_path / "out" / "robustness.csv").set_index(["corruption", "level"])
    assert c.loc[("noise", 0.75), "fd_lenet"] > c.loc[("noise", 0.25), "fd_lenet"] > row.fd_lenet_clean
    assert (c.fd_lenet_lo <= c.fd_lenet).all() and (c.fd_lenet <= c.fd_lenet_hi).all()


def test_a_diffusers_grid_tokenizer(tmp_path):
    diffusers = pytest.importorskip("diffusers")  # the `external` extra; installed with the `test` extra
    from latentlab.extract import resolve_tokenizer
    from latentlab.metrics.diffusability import run_diffusability

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  layers_per_block=1, latent_channels=2, norm_num_groups=4, sample_size=8)
    vae.save_pretrained(tmp_path / "vae")
    tok = resolve_tokenizer(f"sd=diffusers:{tmp_path / 'vae'}", dataset="digits")
    cfg = DiffusabilityConfig(n_images=32, taus=(0.5,), mask_ratios=(0.5,), id_samples=100, n_boot=100, fd=False,
                              id_boot=5, device="cpu")
    row = run_diffusability([tok], tmp_path / "out", cfg)["rows"][0]
    assert row["layout"] == "grid" and row["latent_shape"] == "2x4x4" and row["spectrum_note"] == ""
    assert 0 < row["hf_energy"] < 1 and 0 < row["image_hf_energy"] < 1 and math.isfinite(row["image_spectral_slope"])
    assert row["scale_note"].startswith("grid") and math.isfinite(row["scale_psnr"])  # decode of the 2x2 grid
