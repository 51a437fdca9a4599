import json

import numpy as np
import pandas as pd

from conftest import run_cli
from latentlab.analysis.umap import balanced_subsample
from latentlab.latents import LatentStore


def test_balanced_subsample(rng):
    labels = np.repeat([0, 1, 2], [100, 100, 20])
    idx = balanced_subsample(labels, 150, seed=3)
    counts = np.bincount(labels[idx])
    assert list(counts) == [65, 65, 20]  # the small class gives its share to the others
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, balanced_subsample(labels, 150, seed=3))
    assert not np.array_equal(idx, balanced_subsample(labels, 150, seed=4))
    assert len(balanced_subsample(labels, 500)) == 220


def test_umap_cli_figure_csv_and_same_seed(tmp_path, rng):
    means = rng.normal(size=(4, 3, 8)) * 2
    for name, n in [("a", 240), ("b", 400)]:
        y = rng.integers(0, 4, n)
        LatentStore.create(tmp_path / name, (means[y] + rng.normal(size=(n, 3, 8))).astype(np.float32), y)
    args = ["umap", "--tokenizer", str(tmp_path / "a"), "--tokenizer", f"B={tmp_path / 'b'}", "--n", "300",
            "--pca-dim", "10", "--seed", "5"]
    code, out, err = run_cli(*args, "--out", str(tmp_path / "u1"), "--json")
    assert code == 0, err
    assert "fewer than --n 300" in err  # a has 240 samples: a warning, not an error
    summary = json.loads(out)
    assert summary["tokenizers"] == {"a": {"n": 240, "classes": 4}, "B": {"n": 300, "classes": 4}}
    df = pd.read_csv(tmp_path / "u1" / "umap.csv")
    assert list(df.columns) == ["tokenizer", "index", "label", "x", "y"]
    assert np.isfinite(df[["x", "y"]].to_numpy()).all()
    b = df[df["tokenizer"] == "B"]
    assert np.bincount(b["label"]).min() >= 60  # class-balanced subsample of 300 from 400
    # planted clusters stay apart in 2-D: each point's nearest other point shares its class
    xy, lab = b[["x", "y"]].to_numpy(), b["label"].to_numpy()
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(len(xy)) * 1e9
    assert (lab[d.argmin(1)] == lab).mean() > 0.95
    assert (tmp_path / "u1" / "umap.png").stat().st_size > 10_000
    code, _, err = run_cli(*args, "--out", str(tmp_path / "u2"))
    assert code == 0, err
    assert (tmp_path / "u1" / "umap.csv").read_bytes() == (tmp_path / "u2" / "umap.csv").read_bytes()


def test_umap_cli_bad_input(tmp_path, rng):
    LatentStore.create(tmp_path / "nolabels", rng.normal(size=(30, 4)).astype(np.float32), None)
    code, out, err = run_cli("umap", "--tokenizer", str(tmp_path / "nolabels"), "--out", str(tmp_path / "u"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no class labels" in err
    assert not (tmp_path / "u").exists()
