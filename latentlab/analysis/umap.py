"""`latentlab umap`: 2-D UMAP pictures of latents coloured by class (MAETok, Figure 4).

Per tokenizer: a class-balanced subsample of the train latents, PCA to `pca_dim` dimensions
(latentlab.analysis.pca), then umap-learn (McInnes, Healy, Melville 2018). Writes umap.csv
(tokenizer, index, label, x, y; `index` is the row in the train store) and umap.png (one panel
per tokenizer). A fixed seed makes the embedding reproducible; umap-learn then runs single-threaded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from latentlab.analysis.pca import PCA
from latentlab.analysis.config import POOLS, UMAP_MIN_POINTS, UmapConfig
from latentlab.analysis.stream import Rows, check_labels
from latentlab.errors import LatentlabError
from latentlab.extract import TokenizerLatents, check_finite
from latentlab.io import save_csv
from latentlab.outputs import check_output, output_dir
from latentlab.plots.umap import plot_umap
from latentlab.utils import progress, warn

CSV_COLUMNS = ["tokenizer", "index", "label", "x", "y"]


def balanced_subsample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `n` rows taking classes in turn (random rows within a class), so
    every class gets n / classes rows, and a class with fewer rows leaves its share to the others."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes = np.unique(labels)
    turn = np.empty(len(labels), dtype=np.int64)  # position of each row within its shuffled class
    for c in classes:
        idx = np.flatnonzero(labels == c)
        turn[rng.permutation(idx)] = np.arange(len(idx))
    class_order = rng.permutation(len(classes))[np.searchsorted(classes, labels)]  # ties within a turn
    order = np.lexsort((class_order, turn))
    return np.sort(order[:n])


def _embed_one(tok: TokenizerLatents, cfg: UmapConfig):
    """The UMAP rows of one tokenizer (a DataFrame with CSV_COLUMNS)."""
    import pandas as pd
    import umap

    labels = check_labels(tok.train, f"tokenizer {tok.name!r} ({tok.train.path})")
    if len(labels) < cfg.n:
        warn(f"tokenizer {tok.name!r} has {len(labels)} samples, fewer than --n {cfg.n}; using all of them")
    idx = balanced_subsample(labels, cfg.n, cfg.seed)
    x, y = Rows(tok.train, idx, pool=cfg.pool).load()  # (n, D)
    if len(x) < 4:
        raise LatentlabError(f"tokenizer {tok.name!r}: UMAP needs at least 4 samples, got {len(x)}")
    k = min(cfg.pca_dim, x.shape[1], len(x) - 1)
    if cfg.pca_dim > 0 and k < x.shape[1]:
        x = PCA(n_components=k).fit_transform(x)  # (n, k)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(cfg.n_neighbors, len(x) - 1), min_dist=cfg.min_dist,
                        random_state=cfg.seed, transform_seed=cfg.seed, n_jobs=1)
    with warnings.catch_warnings():  # "n_jobs overridden by random_state": documented in `umap --help`
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        xy = reducer.fit_transform(np.asarray(x, dtype=np.float32))  # (n, 2)
    return pd.DataFrame({"tokenizer": tok.name, "index": idx, "label": y, "x": xy[:, 0], "y": xy[:, 1]},
                        columns=CSV_COLUMNS)


UMAP_KIND = "umap output"  # the `.latentlab` marker kind of its output folder


def run_umap(tokenizers: list[TokenizerLatents], out: str | os.PathLike, cfg: UmapConfig | None = None) -> dict:
    """Embed every tokenizer; write OUT/umap.csv and OUT/umap.png; return the summary."""
    import pandas as pd

    cfg = cfg or UmapConfig()
    if cfg.pool not in POOLS:
        raise LatentlabError(f"unknown pool {cfg.pool!r}; use one of {', '.join(POOLS)}")
    if cfg.n < UMAP_MIN_POINTS or cfg.pca_dim < 0:
        raise LatentlabError(f"need --n >= {UMAP_MIN_POINTS} and --pca-dim >= 0 (got {cfg.n}, {cfg.pca_dim})")
    for t in tokenizers:  # before any work: labels, then NaN / inf
        check_labels(t.train, f"tokenizer {t.name!r} ({t.train.path})")
    check_finite(tokenizers)
    check_output(out, UMAP_KIND)  # before any work
    bar = progress(tokenizers, desc="umap", total=len(tokenizers), leave=True,
                   status=lambda t: f"{t.name}: PCA + UMAP of up to {cfg.n} latents")
    frames = [_embed_one(t, cfg) for t in bar]
    table = pd.concat(frames, ignore_index=True)
    out = Path(out)
    with output_dir(out, UMAP_KIND) as tmp:
        save_csv(table, tmp / "umap.csv")
        plot_umap(table, tmp / "umap.png")
    csv, png = out / "umap.csv", out / "umap.png"
    return {"out": str(out), "csv": str(csv), "png": str(png), "seed": cfg.seed, "pca_dim": cfg.pca_dim,
            "tokenizers": {name: {"n": int(len(g)), "classes": int(g["label"].nunique())}
                           for name, g in table.groupby("tokenizer", sort=False)}}
