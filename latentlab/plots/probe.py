"""Figure of `latentlab probe`: one bar chart per metric, one bar per tokenizer."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt

from latentlab.plots import PALETTE, new_figure, save_figure

# metric column -> (panel title, "higher is better" marker)
METRICS = {
    "top1": "linear probe top-1 (higher is better)",
    "top5": "linear probe top-5 (higher is better)",
    "knn_top1": "weighted kNN top-1, k=20 (higher is better)",
    "silhouette": "silhouette (higher is better)",
    "calinski_harabasz": "Calinski-Harabasz (higher is better)",
    "davies_bouldin": "Davies-Bouldin (lower is better)",
    "fisher_ratio": "Fisher ratio tr(S_B)/tr(S_W) (higher is better)",
    "rankme": "effective rank RankMe",
    "gmm_heldout_nll": "GMM held-out NLL (lower is better)",
}


def plot_probe(table, path: str | os.PathLike, ncols: int = 3) -> Path:
    """Bar charts of every metric column of `table` that has a finite value (probe.csv rows)."""
    metrics = [m for m in METRICS if m in table.columns
               and any(isinstance(v, (int, float)) and math.isfinite(v) for v in table[m])]
    ncols = max(1, min(ncols, len(metrics)))
    nrows = max(1, math.ceil(len(metrics) / ncols))
    fig, axes = new_figure(ncols, nrows, size=(3.6, 2.8))
    colours = plt.get_cmap(PALETTE).colors
    names = [str(t) for t in table["tokenizer"]]
    for ax, m in zip(axes.flat, metrics):
        vals = table[m].astype(float).tolist()
        ax.bar(range(len(names)), vals, color=[colours[i % len(colours)] for i in range(len(names))])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(METRICS[m], fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    return save_figure(fig, path)
