"""Study-level figures: each latent metric against generation, and image panels per tokenizer."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from latentlab.plots import new_figure, save_figure


def plot_metrics_vs_target(summary: pd.DataFrame, metrics: list[str], target: str, path: str | os.PathLike,
                           correlations: pd.DataFrame | None = None, ncols: int = 4) -> Path:
    """One scatter per latent metric against `target` (gFD or SiT loss), one labelled point per tokenizer."""
    metrics = metrics or ["(no metric)"]
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = new_figure(min(ncols, len(metrics)), nrows, size=(3.4, 2.9))
    flat = axes.ravel()
    for ax, m in zip(flat, metrics):
        if m not in summary:
            ax.axis("off")
            continue
        x = pd.to_numeric(summary[m], errors="coerce")
        y = pd.to_numeric(summary[target], errors="coerce")
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=28)
        for xi, yi, name in zip(x[ok], y[ok], summary["tokenizer"][ok]):
            ax.annotate(str(name), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        title = m
        if correlations is not None and not correlations.empty:
            c = correlations[(correlations.metric == m) & (correlations.target == target)]
            if len(c) and np.isfinite(c.spearman.iloc[0]):
                title += f"\nSpearman {c.spearman.iloc[0]:+.2f} (n={int(c.n.iloc[0])})"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(m, fontsize=7)
        ax.set_ylabel(target, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in flat[len(metrics):]:
        ax.axis("off")
    return save_figure(fig, path)


def plot_image_panels(images: dict[str, Path], path: str | os.PathLike, title: str = "") -> Path:
    """Stack existing PNG figures (one per tokenizer) into one figure, each panel titled by tokenizer."""
    import matplotlib.image as mpimg

    names = list(images) or ["(none)"]
    fig, axes = new_figure(1, len(names), size=(8.0, 2.4))
    for ax, name in zip(axes[:, 0], names):
        ax.axis("off")
        if name in images:
            img = mpimg.imread(images[name])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"{name}{' - ' + title if title else ''}", fontsize=9)
    return save_figure(fig, path)


def plot_pca_spectrum(pcas: dict, path: str | os.PathLike, threshold: float = 0.9, max_dim: int = 200) -> Path:
    """Cumulative explained variance against PCA dimension, one line per fitted PCA (all_explained_variance_ratio_)."""
    fig, axes = new_figure(1)
    ax = axes[0][0]
    for name, pca in pcas.items():
        cum = np.cumsum(pca.all_explained_variance_ratio_)[:max_dim]
        ax.plot(np.arange(1, len(cum) + 1), cum, label=f"{name} ({pca.dim_for_variance(threshold)} dims for {threshold:.0%})")
    ax.axhline(threshold, color="gray", ls=":", lw=1)
    ax.set(xlabel="PCA dimension", ylabel="cumulative explained variance", xscale="log", ylim=(0, 1.01),
           title="PCA spectrum")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_gmm_and_sit(gmm: pd.DataFrame, sit_curves: pd.DataFrame, path: str | os.PathLike,
                     tokenizers: list[str] | None = None) -> Path:
    """MAETok Fig. 2 side by side: (a) held-out GMM NLL against K, (b) SiT held-out loss against step."""
    names = tokenizers or list(dict.fromkeys(gmm.tokenizer))
    fig, axes = new_figure(2, size=(5.2, 3.8))
    a, b = axes[0]
    for i, name in enumerate(names):
        color = f"C{i}"
        g = gmm[gmm.tokenizer == name].sort_values("n_components")
        a.plot(g.n_components, g.heldout_nll, marker="o", ms=3, color=color, label=name)
        c = sit_curves[(sit_curves.tokenizer == name) & (sit_curves.t.astype(str) == "mean")].sort_values("step")
        b.plot(c.step, c.loss, marker="o", ms=3, color=color, label=name)
    dim = int(gmm.pca_dim.iloc[0]) if len(gmm) else 0
    a.set(xscale="log", xlabel="number of GMM components K", ylabel=f"held-out NLL (nats, {dim}-dim PCA)",
          title="(a) GMM NLL against components")
    b.set(xlabel="SiT training step", ylabel="held-out SiT loss (EMA)", title="(b) SiT loss")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
