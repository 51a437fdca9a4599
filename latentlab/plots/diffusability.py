"""Figure of `latentlab diffusability`: spectra, decoder response, robustness curves, scale equivariance, ID."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from latentlab.plots import PALETTE, new_figure, save_figure


def _colours(names: list[str]) -> dict:
    c = plt.get_cmap(PALETTE).colors
    return {n: c[i % len(c)] for i, n in enumerate(names)}


def _spectra_panel(ax, spectra, names, colours, kinds: tuple[str, str], title: str) -> None:
    """Radial profiles of `kinds[0]` (solid) and `kinds[1]` (dashed) per tokenizer, each scaled to unit non-DC power."""
    drawn = False
    for name in names:
        for kind, style in zip(kinds, ("-", "--")):
            p = spectra[(spectra.tokenizer == name) & (spectra.kind == kind)].sort_values("radius")
            p = p[p.radius > 0]
            if len(p) < 2 or not np.isfinite(p.power).all() or p.power.sum() <= 0:
                continue
            ax.loglog(p.radius, p.power / p.power.sum(), style, color=colours[name],
                      label=name if style == "-" else None, alpha=0.9 if style == "-" else 0.6)
            drawn = True
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("radial DCT index", fontsize=8)
    ax.set_ylabel("share of non-DC power", fontsize=8)
    if drawn:
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "no grid latents", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    ax.grid(True, alpha=0.3, which="both")


def _curve_panel(ax, curves, names, colours, kind: str, column: str, xlabel: str, ylabel: str) -> None:
    for name in names:
        c = curves[(curves.tokenizer == name) & (curves.corruption == kind)].sort_values("level")
        if not len(c) or not np.isfinite(c[column].astype(float)).any():
            continue
        ax.plot(c.level, c[column], "o-", color=colours[name], label=name, ms=3)
        ax.fill_between(c.level, c[f"{column}_lo"], c[f"{column}_hi"], color=colours[name], alpha=0.2)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def _bars(ax, table, names, colours, columns: list[tuple[str, str]], title: str) -> None:
    """Bars with interval whiskers, one group per column."""
    width = 0.8 / max(1, len(names))
    for j, (col, _) in enumerate(columns):
        for i, name in enumerate(names):
            r = table[table.tokenizer == name]
            if col not in r or not len(r) or not math.isfinite(float(r[col].iloc[0])):
                continue
            v, lo, hi = (float(r[c].iloc[0]) for c in (col, f"{col}_lo", f"{col}_hi"))
            ax.bar(j + i * width, v, width, color=colours[name], label=name if j == 0 else None)
            if math.isfinite(lo) and math.isfinite(hi):
                ax.errorbar(j + i * width, v, yerr=[[max(v - lo, 0)], [max(hi - v, 0)]], color="k", lw=0.8, capsize=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(columns))])
    ax.set_xticklabels([label for _, label in columns], fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def plot_diffusability(table, curves, spectra, metric: str, path: str | os.PathLike) -> Path:
    """Six panels: latent / response spectra, PSNR under noise and masking, FD under both, scale equivariance + ID."""
    names = [str(n) for n in table.tokenizer]
    colours = _colours(names)
    fig, axes = new_figure(3, 2, size=(4.2, 3.2))
    _spectra_panel(axes[0, 0], spectra, names, colours, ("latent", "image"),
                   "latent spectrum (solid) vs images at the latent grid (dashed)")
    _spectra_panel(axes[0, 1], spectra, names, colours, ("response", "image_full"),
                   "decoder response decode(z+d)-decode(z) (solid) vs images (dashed)")
    _curve_panel(axes[0, 2], curves, names, colours, "noise", "psnr", "tau in (1 - tau) z + tau eps", "PSNR (dB)")
    axes[0, 2].set_title("decode under interpolated noise", fontsize=8)
    _curve_panel(axes[1, 0], curves, names, colours, "mask", "psnr", "share of tokens / positions zeroed", "PSNR (dB)")
    axes[1, 0].set_title("decode under masking", fontsize=8)
    if metric in curves and np.isfinite(curves[metric].astype(float)).any():
        _curve_panel(axes[1, 1], curves, names, colours, "noise", metric, "tau (solid: noise)", metric)
        axes[1, 1].set_title(f"{metric} under interpolated noise", fontsize=8)
    else:
        axes[1, 1].axis("off")
    _bars(axes[1, 2], table, names, colours, [("scale_psnr", "PSNR down2"), ("scale_psnr_ref", "ref"),
                                              ("twonn", "TwoNN"), ("noise_robustness", "noise AUC"),
                                              ("mask_robustness", "mask AUC")], "scale equivariance, ID, robustness")
    return save_figure(fig, path)
