"""Figure of `latentlab umap`: one 2-D embedding panel per tokenizer, points coloured by class."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from latentlab.plots import new_figure, save_figure


def plot_umap(table, path: str | os.PathLike, ncols: int = 3) -> Path:
    """Scatter x, y of each tokenizer's rows of `table` (umap.csv) coloured by label, with a class legend."""
    names = list(dict.fromkeys(table["tokenizer"]))
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(ncols, nrows, size=(4.2, 4.0))
    classes = sorted(table["label"].unique())
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo")
    colour = {c: cmap(i % cmap.N if cmap.N < 256 else i / max(1, len(classes) - 1)) for i, c in enumerate(classes)}
    size = 4 if len(table) / max(1, len(names)) > 2000 else 8
    for ax, name in zip(axes.flat, names):
        g = table[table["tokenizer"] == name]
        for c in classes:
            m = g["label"] == c
            if m.any():
                ax.scatter(g.loc[m, "x"], g.loc[m, "y"], s=size, color=colour[c], alpha=0.7, linewidths=0, label=str(c))
        ax.set_title(f"{name} (n={len(g)})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if len(classes) <= 30:
        handles = [Line2D([], [], ls="", marker="o", ms=5, color=colour[c], label=str(c)) for c in classes]
        axes.flat[len(names) - 1].legend(handles=handles, title="class", loc="center left",
                                         bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    return save_figure(fig, path)
