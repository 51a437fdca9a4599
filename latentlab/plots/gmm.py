"""Figures of the GMM analysis: NLL against the number of mixture components (MAETok Fig. 2a)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt

from latentlab.plots import PALETTE, new_figure, save_figure


def plot_nll_vs_components(table, path: str | os.PathLike) -> Path:
    """One colour per tokenizer: held-out NLL solid, train NLL dashed, against K on a log axis."""
    fig, axes = new_figure(size=(6.0, 4.2))
    ax = axes[0, 0]
    colours = plt.get_cmap(PALETTE).colors
    for i, (name, g) in enumerate(table.groupby("tokenizer", sort=False)):
        g = g.sort_values("n_components")
        c = colours[i % len(colours)]
        if g["heldout_nll"].notna().any():
            ax.plot(g["n_components"], g["heldout_nll"], "-o", color=c, ms=3.5, label=f"{name} held-out")
        ax.plot(g["n_components"], g["train_nll"], "--", color=c, alpha=0.8, label=f"{name} train")
    ax.set_xscale("log")
    ks = sorted(table["n_components"].unique()) if len(table) else []
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("number of GMM components K")
    ax.set_ylabel("NLL (nats per sample)")
    protocol = table["protocol"].iloc[0] if len(table) else ""
    ax.set_title(f"GMM NLL vs components (PCA dim {int(table['pca_dim'].iloc[0])}, {protocol})" if len(table) else
                 "GMM NLL vs components", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_gains(modes, path: str | os.PathLike) -> Path:
    """gain_k{K} = NLL(1) - NLL(K) against K, one colour per tokenizer, one line style per PCA dimension."""
    fig, axes = new_figure(size=(6.0, 4.2))
    ax = axes[0, 0]
    colours = plt.get_cmap(PALETTE).colors
    cols = [c for c in modes.columns if c.startswith("gain_k")]
    ks = [int(c[len("gain_k"):]) for c in cols]
    dims = sorted(modes["pca_dim"].unique()) if len(modes) else []
    styles = ["-o", "--s", ":^", "-.v"]
    for i, name in enumerate(dict.fromkeys(modes["tokenizer"])):
        for j, dim in enumerate(dims):
            r = modes[(modes.tokenizer == name) & (modes.pca_dim == dim)]
            if len(r):
                label = name if len(dims) == 1 else f"{name} (d={dim})"
                ax.plot(ks, r[cols].iloc[0].to_numpy(float), styles[j % len(styles)], color=colours[i % len(colours)],
                        ms=3.5, label=label)
    if ks:
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel("number of GMM components K")
    ax.set_ylabel("gain: NLL(1) - NLL(K) (nats per sample)")
    ax.set_title("Structure beyond one Gaussian" + (f" (PCA dim {dims[0]})" if len(dims) == 1 else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
