import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from latentlab.analysis.config import DEFAULT_MAX_BYTES
from latentlab.analysis.stream import Rows, check_labels, pool_features
from latentlab.analysis.probe import ProbeConfig, linear_probe, lr_schedule
from latentlab.errors import LatentlabError
from latentlab.latents import LatentStore
from latentlab.schedules import get_lr


def gaussian_classes(rng, n, d, k, sep):
    """Planted classes: isotropic unit Gaussians around random means of scale `sep`."""
    means = rng.normal(size=(k, d)) * sep
    y = rng.integers(0, k, n)
    return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y


def split(x, y, n_train):
    return Rows(x[:n_train], labels=y[:n_train]), Rows(x[n_train:], labels=y[n_train:])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_separable_classes_are_probed_accurately(rng, optimizer):
    x, y = gaussian_classes(rng, 1000, 32, 8, sep=1.0)
    res = linear_probe(*split(x, y, 700), 8, ProbeConfig(optimizer=optimizer, device="cpu"))
    assert res["top1"] > 0.95 and res["top5"] >= res["top1"]


def test_shuffled_labels_give_chance(rng):
    x, _ = gaussian_classes(rng, 2000, 16, 4, sep=1.0)
    y = rng.integers(0, 4, 2000)  # labels independent of the features
    res = linear_probe(*split(x, y, 1000), 4, ProbeConfig(device="cpu"))
    assert abs(res["top1"] - 0.25) < 0.06
    assert math.isnan(res["top5"])  # <= 5 classes: no top-5


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_sklearn_logistic_regression(seed):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x, y = gaussian_classes(rng, 6000, 24, 6, sep=0.45)
    x = x * rng.uniform(0.2, 5.0, size=24).astype(np.float32) + 3.0  # unequal scales, offset
    ref = LogisticRegression(max_iter=1000).fit(x[:3000], y[:3000]).score(x[3000:], y[3000:])
    assert 0.6 < ref < 0.97  # overlapping classes, so the comparison means something
    ours = linear_probe(*split(x, y, 3000), 6, ProbeConfig(device="cpu", seed=seed))["top1"]
    assert abs(ours - ref) <= 0.01, (ours, ref)


def test_streamed_store_features_match_in_memory(tmp_path, rng):
    x, y = gaussian_classes(rng, 900, 12, 5, sep=1.2)
    x = x.reshape(900, 3, 4)
    st = LatentStore.create(tmp_path / "s", x, y, shard_size=200)
    idx = np.sort(rng.choice(900, 500, replace=False))
    streamed = Rows(st, idx, max_bytes=0, chunk_rows=128, block_rows=16)
    assert not streamed.in_memory
    got = [(a.numpy(), b.numpy()) for a, b in streamed.batches(rng=np.random.default_rng(0), labels=True)]
    xs = np.concatenate([a for a, _ in got])
    ys = np.concatenate([b for _, b in got])
    order = np.lexsort(xs.T[::-1])
    ref = x[idx].reshape(500, -1)
    ref_order = np.lexsort(ref.T[::-1])
    np.testing.assert_array_equal(xs[order], ref[ref_order])  # every row exactly once
    np.testing.assert_array_equal(ys[order], y[idx][ref_order])
    mem = Rows(st, idx, max_bytes=DEFAULT_MAX_BYTES)
    assert mem.in_memory
    np.testing.assert_array_equal(mem.load()[0], ref)
    test_rows = np.setdiff1d(np.arange(900), idx)
    cfg = ProbeConfig(device="cpu", batch_size=64)
    a = linear_probe(streamed, Rows(st, test_rows, max_bytes=0, chunk_rows=100), 5, cfg)
    b = linear_probe(mem, Rows(st, test_rows, max_bytes=DEFAULT_MAX_BYTES), 5, cfg)
    assert a["top1"] > 0.9 and abs(a["top1"] - b["top1"]) < 0.03


def test_mean_pool_and_labels_checks(tmp_path, rng):
    x = rng.normal(size=(10, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(pool_features(x, "tokens", "mean"), x.mean(1))
    g = rng.normal(size=(10, 4, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(pool_features(g, "grid", "mean"), g.mean((2, 3)))
    assert pool_features(g, "grid", "flatten").shape == (10, 24)
    with pytest.raises(LatentlabError, match="no class labels"):
        check_labels(LatentStore.create(tmp_path / "u", x, None))
    with pytest.raises(LatentlabError, match="single class"):
        check_labels(LatentStore.create(tmp_path / "one", x, np.zeros(10, int)))


def test_cosine_schedule_closed_form():
    """The probe's schedule is the trainer's get_lr counted in rows seen (here 1000 rows = 1 or 10 epochs)."""
    one = lr_schedule(ProbeConfig(epochs=1), 1.0, 1000)
    assert get_lr(0, one) == 1.0 and get_lr(1000, one) == pytest.approx(0.0)
    assert get_lr(500, lr_schedule(ProbeConfig(epochs=1), 2.0, 1000)) == pytest.approx(1.0)
    warm = lr_schedule(ProbeConfig(epochs=10, warmup_epochs=1.0), 1.0, 100)  # 100 warm-up rows of 1000
    assert get_lr(49, warm) == pytest.approx(0.5)  # half-way through warm-up (the trainer counts step + 1)


# ---------------------------------------------------------------- CLI

def _stores(tmp_path, rng):
    """A store set with train/ and test/ (K=8 classes) and a single store (K=4)."""
    x, y = gaussian_classes(rng, 700, 24, 8, sep=1.0)
    x = x.reshape(700, 4, 6)
    LatentStore.create(tmp_path / "a" / "train", x[:500], y[:500], {"name": "a", "split": "train"})
    LatentStore.create(tmp_path / "a" / "test", x[500:], y[500:], {"name": "a", "split": "test"})
    x2, y2 = gaussian_classes(rng, 400, 8, 4, sep=0.6)
    LatentStore.create(tmp_path / "b", x2.reshape(400, 2, 4), y2, {"name": "b"})
    gmm = pd.DataFrame({"tokenizer": ["a", "a", "b", "b"], "n_components": [1, 4, 1, 4], "pca_dim": 8,
                        "explained_variance": 0.9, "train_nll": [5.0, 4.0, 6.0, 5.5],
                        "heldout_nll": [5.1, 4.2, 6.1, 5.7], "nll_per_dim": 0.5, "bic": 0.0, "aic": 0.0,
                        "n_iter": 10, "converged": True, "seconds": 0.1})
    gmm.to_csv(tmp_path / "gmm.csv", index=False)


def test_probe_cli_end_to_end(tmp_path, rng):
    _stores(tmp_path, rng)
    code, out, err = run_cli("probe", "--tokenizer", str(tmp_path / "a"), "--tokenizer", f"b={tmp_path / 'b'}",
                             "--out", str(tmp_path / "out"), "--epochs", "5", "--device", "cpu",
                             "--gmm", str(tmp_path / "gmm.csv"), "--gmm-k", "4", "--json")
    assert code == 0, err
    summary = json.loads(out)
    rows = {r["tokenizer"]: r for r in summary["rows"]}
    # b has no test store, so both are scored on the same seeded 20% holdout of their train rows
    assert rows["a"]["eval_split"] == "holdout-20%" and rows["a"]["n_train"] + rows["a"]["n_test"] == 500
    assert abs(rows["a"]["n_test"] - 100) <= 8 // 2  # stratified: 20% of each of 8 classes, rounded per class
    assert rows["b"]["eval_split"] == "holdout-20%" and rows["b"]["n_train"] == 320 and rows["b"]["n_test"] == 80
    assert summary["eval_split"] == "holdout-20%"
    assert "'b' has no test split" in err and "not on the same images" in err  # a and b hold different data
    assert rows["a"]["top1"] > 0.9 and rows["a"]["top5"] is not None and rows["b"]["top5"] is None
    assert rows["a"]["gmm_heldout_nll"] == 4.2 and rows["b"]["gmm_heldout_nll"] == 5.7
    assert rows["a"]["feature_dim"] == 24 and rows["a"]["pool"] == "flatten"
    df = pd.read_csv(tmp_path / "out" / "probe.csv")
    assert list(df.columns) == ["tokenizer", "top1", "top5", "knn_top1", "silhouette", "calinski_harabasz",
                                "davies_bouldin", "fisher_ratio", "rankme", "gmm_heldout_nll", "n_train", "n_test",
                                "feature_dim", "pool", "eval_split", "seconds"]
    assert (tmp_path / "out" / "probe.png").stat().st_size > 10_000
    # probe_images.csv: one 0/1 row per evaluated image, whose means are the table's accuracies
    im = pd.read_csv(tmp_path / "out" / "probe_images.csv")
    for tok, g in im.groupby("tokenizer"):
        assert len(g) == rows[tok]["n_test"] and g["lp_top1"].isin([0, 1]).all()
        assert g["lp_top1"].mean() == pytest.approx(rows[tok]["top1"]) and g["knn_top1"].mean() == pytest.approx(
            rows[tok]["knn_top1"])
    from latentlab.data import stratified_split
    from latentlab.latents import LatentStore as _Store
    held = stratified_split(_Store.open(tmp_path / "a" / "train").labels, 0.2, 0)[1]
    assert list(im[im.tokenizer == "a"]["index"]) == list(held)  # the holdout's train rows, in store order
    assert im[im.tokenizer == "b"]["lp_top5"].isna().all()  # <= 5 classes: no top-5
    code, out, err = run_cli("probe", "--tokenizer", f"b={tmp_path / 'b'}", "--out", str(tmp_path / "o2"),
                             "--pool", "mean", "--optimizer", "sgd", "--epochs", "2", "--device", "cpu")
    assert code == 0, err
    assert "holdout-20%" in out and pd.read_csv(tmp_path / "o2" / "probe.csv")["feature_dim"][0] == 4


def _one_line_error(code, out, err, match):
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


def test_probe_cli_bad_input(tmp_path, rng):
    _stores(tmp_path, rng)
    x = rng.normal(size=(50, 2, 3)).astype(np.float32)
    LatentStore.create(tmp_path / "nolabels", x, None)
    LatentStore.create(tmp_path / "oneclass", x, np.full(50, 3))
    bad = LatentStore.create(tmp_path / "mismatch", x, rng.integers(0, 3, 50)).path
    np.save(bad / "labels.npy", rng.integers(0, 3, 49))  # labels corrupted to the wrong length
    out = str(tmp_path / "out")
    for store, match in [("nolabels", "no class labels"), ("oneclass", "single class"), ("mismatch", "labels")]:
        _one_line_error(*run_cli("probe", "--tokenizer", str(tmp_path / store), "--out", out), match)
    _one_line_error(*run_cli("probe", "--tokenizer", str(tmp_path / "b"), "--out", out, "--gmm-k", "4"), "--gmm")
    _one_line_error(*run_cli("probe", "--tokenizer", str(tmp_path / "b"), "--out", out,
                             "--gmm", str(tmp_path / "gmm.csv"), "--gmm-k", "3"), "n_components=3")
    # a failure on the second tokenizer writes nothing
    _one_line_error(*run_cli("probe", "--tokenizer", str(tmp_path / "b"), "--tokenizer", str(tmp_path / "oneclass"),
                             "--out", out, "--epochs", "1"), "single class")
    assert not (tmp_path / "out").exists()
