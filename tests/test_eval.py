"""`latentlab fid`, `eval-tokenizer` and `eval-sit` end to end, and one-line errors for bad input."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from latentlab.data import get_dataset
from latentlab.metrics.lenet import load_or_train_lenet


@pytest.fixture(scope="module")
def lenet_root(tmp_path_factory):
    """The session's lenet cache (shared by the metric test modules, so it is trained once)."""
    root = tmp_path_factory.getbasetemp() / "lenet-cache"
    load_or_train_lenet("mnist5k", root)
    return root


@pytest.fixture
def ws(lenet_root):
    """This test's workspace, with the session's lenet cache linked in."""
    root = Path(os.environ["LATENTLAB_WORKSPACE"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "extractors").symlink_to(lenet_root, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def mnist_test():
    return get_dataset("mnist5k", "test").source.images                        # (1000, 32, 32, 1) uint8


def write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(folder / f"{i:04d}.png")
    return folder


def fid_json(*args):
    code, out, err = run_cli("fid", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_fid_on_npz_and_png_folder_agree_and_name_the_extractor(ws, tmp_path, mnist_test):
    sub = mnist_test[::4]                                                       # 250 images, all classes
    np.savez(tmp_path / "images.npz", images=sub)
    write_pngs(tmp_path / "pngs", sub)
    a = fid_json("--real", "mnist5k:train", "--fake", str(tmp_path / "images.npz"), "--out", str(tmp_path / "o"))
    b = fid_json("--real", "mnist5k:train", "--fake", str(tmp_path / "pngs"))
    assert a["metric"] == "fd_lenet" and not any("fid" in k for k in a)        # never called FID
    assert a["fd_lenet"] == pytest.approx(b["fd_lenet"], rel=1e-9)
    assert a["real"] == {"dataset": "mnist5k", "split": "train", "n": 4000, "stats_cached": False}
    assert b["real"]["stats_cached"] is True and a["n_fake"] == 250
    assert a["extractor"]["test_accuracy"] >= 0.95 and a["is_lenet"] > 7.0     # held-out digits: real-looking
    assert (tmp_path / "o" / "fid.csv").is_file() and (tmp_path / "o" / "samples.png").is_file()
    import pandas as pd
    row = pd.read_csv(tmp_path / "o" / "fid.csv").iloc[0]
    assert row["fd_lenet"] == pytest.approx(a["fd_lenet"]) and row["extractor_test_accuracy"] >= 0.95
    # blurred digits are further from the real ones, and the text output says what the number is
    blurred = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((8, 8)).resize((32, 32)))
                        for im in sub])[..., None]
    np.savez(tmp_path / "blur.npz", images=blurred)
    code, out, err = run_cli("fid", "--real", "mnist5k:train", "--fake", str(tmp_path / "blur.npz"))
    assert code == 0, err
    assert "fd_lenet = " in out and "not FID" in out and "test accuracy" in out and "is_lenet" in out
    assert float(out.split("fd_lenet = ")[1].split()[0]) > 5 * a["fd_lenet"]


@pytest.mark.parametrize("case", ["empty", "mixed", "one_png", "one_npz", "no_key", "float_npz", "missing"])
def test_bad_images_are_one_line_errors(tmp_path, case, mnist_test):
    fake, msg = tmp_path / "fake", {
        "empty": "holds no PNG or JPEG images", "mixed": "mixes image sizes", "one_png": "at least 2",
        "one_npz": "at least 2", "no_key": "has no array 'images'", "float_npz": "must be uint8",
        "missing": "no such folder"}[case]
    if case == "empty":
        fake.mkdir()
    elif case == "mixed":
        write_pngs(fake, mnist_test[:3])
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(fake / "odd.png")
    elif case == "one_png":
        write_pngs(fake, mnist_test[:1])
    elif case in ("one_npz", "no_key", "float_npz"):
        fake = tmp_path / "fake.npz"
        arr = {"one_npz": {"images": mnist_test[:1]}, "no_key": {"x": mnist_test[:5]},
               "float_npz": {"images": mnist_test[:5].astype(np.float32)}}[case]
        np.savez(fake, **arr)
    code, out, err = run_cli("fid", "--real", "mnist5k:train", "--fake", str(fake), "--out", str(tmp_path / "o"))
    assert code == 2 and msg in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "o").exists()


def test_missing_extractors_are_one_line_errors(tmp_path, monkeypatch, mnist_test):
    np.savez(tmp_path / "f.npz", images=mnist_test[:10])
    base = ("fid", "--real", "mnist5k:train", "--fake", str(tmp_path / "f.npz"))
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)          # torch-fidelity absent
    for ext, msg in (("nope", "unknown extractor 'nope'"), (f"torchscript:{tmp_path / 'x.pt'}", "not found"),
                     ("inception", "pip install 'latentlab[fid]'"), ("dinov2", "pip install 'latentlab[fid]'")):
        code, out, err = run_cli(*base, "--extractor", ext)
        assert code == 2 and msg in err and err.count("\n") == 1, (ext, err)
    code, out, err = run_cli("fid", "--real", str(tmp_path / "f.npz"), "--fake", str(tmp_path / "f.npz"))
    assert code == 2 and "--lenet-dataset" in err


def test_eval_tokenizer_matches_skimage_and_writes_its_outputs(ws, tmp_path):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from latentlab.data import to_uint8
    from latentlab.metrics.evaluate import fid
    from latentlab.metrics.images import from_array
    from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer
    from latentlab.tokenizers.training import load_tokenizer, reconstruct

    run = tmp_path / "ae"
    train_tokenizer(TokenizerRunConfig(arch="ae", size="tiny", dataset="mnist5k", eval_images=16, sample_images=4,
                                       model={"width": 32, "depth": 1, "dec_width": 32, "dec_depth": 1, "heads": 2},
                                       train={"steps": 8, "batch_size": 16, "eval_every": 8, "ckpt_every": 8,
                                              "log_every": 4, "warmup_steps": 2, "lr": 3e-3}), run)
    code, out, err = run_cli("eval-tokenizer", "--tokenizer", str(run), "--extractor", "lenet", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["metric"] == "rfd_lenet" and s["n"] == 1000 and s["split"] == "test"
    for f in ("recon.csv", "recon_images.csv", "recon.json", "recon_grid.png"):
        assert (run / "eval" / f).is_file(), f
    # independent check: reconstruct, then scikit-image on [0, 1] images
    model, _ = load_tokenizer(run)
    x = torch.from_numpy(get_dataset("mnist5k", "test").source.images).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    r = reconstruct(model, x)
    a, b = ((x + 1) / 2).squeeze(1).double().numpy(), ((r + 1) / 2).clamp(0, 1).squeeze(1).double().numpy()
    sk_p = [peak_signal_noise_ratio(a[i], b[i], data_range=1.0) for i in range(len(a))]
    sk_s = [structural_similarity(a[i], b[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                  data_range=1.0) for i in range(0, len(a), 25)]
    assert s["psnr"] == pytest.approx(np.mean(sk_p), abs=1e-3)
    per = np.genfromtxt(run / "eval" / "recon_images.csv", delimiter=",", names=True)
    assert np.allclose(per["ssim"][::25], sk_s, atol=1e-3) and np.allclose(per["psnr"], sk_p, atol=1e-3)
    # rFD equals FD between the (uint8) reconstructions and the test split, up to 8-bit rounding
    ref = fid("mnist5k:test", from_array(to_uint8(r)))
    assert s["rfd_lenet"] == pytest.approx(ref["fd_lenet"], rel=0.02) and s["rfd_lenet"] > 0
    code, out, err = run_cli("eval-tokenizer", "--tokenizer", str(tmp_path / "nope"))
    assert code == 2 and "not found" in err and err.count("\n") == 1


def test_eval_sit_equals_fid_of_sample_output(ws, tmp_path):
    from latentlab.extract import import_pixels

    import_pixels("digits", tmp_path / "px")
    cfg = tmp_path / "sit.json"
    cfg.write_text(json.dumps({"model_overrides": {"depth": 1, "hidden_size": 32, "num_heads": 2},
                               "heldout_size": 8, "train": {"batch_size": 8, "eval_every": 3}}))
    run = tmp_path / "sit"
    code, out, err = run_cli("train-sit", "--tokenizer", str(tmp_path / "px"), "--steps", "3", "--out", str(run),
                             "--config", str(cfg))
    assert code == 0, err
    code, out, err = run_cli("eval-sit", "--sit", str(run), "--n", "60", "--steps", "3", "--seed", "5", "--json")
    assert code == 0, err
    g = json.loads(out)
    assert g["metric"] == "gfd_lenet" and g["n"] == g["n_fake"] == 60 and g["real"]["split"] == "train"
    assert g["extractor"]["dataset"] == "digits" and "is_lenet" in g
    assert all((run / "eval" / f).is_file() for f in ("gfid.csv", "gfid.json", "samples.png"))
    code, out, err = run_cli("sample", "--sit", str(run), "--n", "60", "--steps", "3", "--seed", "5",
                             "--out", str(tmp_path / "s"))
    assert code == 0, err
    f = fid_json("--real", "digits:train", "--fake", str(tmp_path / "s" / "images.npz"))
    assert f["real"]["stats_cached"] is True                                    # eval-sit cached them
    assert g["gfd_lenet"] == pytest.approx(f["fd_lenet"], rel=1e-6)


def test_fid_reports_kid_the_real_floor_and_conditional_accuracy(ws, tmp_path, mnist_test):
    labels = get_dataset("mnist5k", "test").labels
    sub, lab = mnist_test[::4], labels[::4]                                     # 250 real test digits
    np.savez(tmp_path / "real.npz", images=sub, labels=lab)
    a = fid_json("--real", "mnist5k:train", "--fake", str(tmp_path / "real.npz"))
    # real test digits are a perfect generator: FD sits at the floor, KID at 0, accuracy at the lenet's own
    assert a["fd_floor_lenet_n"] == 250 and a["fd_floor_lenet_split"] == "test"
    assert 0.5 < a["fd_lenet"] / a["fd_floor_lenet"] < 2.0
    assert abs(a["kid_lenet"]) < 3 * a["kid_lenet_std"] and a["kid_lenet_subset_size"] == 250
    assert abs(a["kid_floor_lenet"]) < 3 * a["kid_floor_lenet_std"]
    assert a["cond_acc_lenet_lo"] <= a["cond_acc_lenet"] <= a["cond_acc_lenet_hi"]
    assert a["cond_acc_lenet"] >= 0.9 and a["cond_acc_chance"] == 0.1
    np.savez(tmp_path / "wrong.npz", images=sub, labels=(lab + 1) % 10)         # asked for another class
    b = fid_json("--real", "mnist5k:train", "--fake", str(tmp_path / "wrong.npz"))
    assert b["cond_acc_lenet_hi"] < 0.1 and b["fd_lenet"] == pytest.approx(a["fd_lenet"])
    # blurred digits: FD and KID both rise far above the floor
    blurred = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((8, 8)).resize((32, 32))) for im in sub])[..., None]
    np.savez(tmp_path / "blur.npz", images=blurred)
    c = fid_json("--real", "mnist5k:train", "--fake", str(tmp_path / "blur.npz"))
    assert c["fd_lenet"] > 5 * c["fd_floor_lenet"] and c["kid_lenet"] > 5 * c["kid_lenet_std"]
    assert "cond_acc_lenet" not in c                                            # no labels, no accuracy
