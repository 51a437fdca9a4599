"""Metric figures: originals against reconstructions, and a grid of generated samples."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from latentlab.plots import new_figure, save_figure
from latentlab.plots.sit import image_grid


def _show(ax, images: np.ndarray, ncol: int, title: str) -> None:
    grid = image_grid(images, ncol=ncol)                                   # (H', W', C) uint8
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None,
              vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def plot_recon_grid(originals: np.ndarray, recons: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """Originals (top) above their reconstructions (bottom), both uint8 (K, H, W, C)."""
    k = len(originals)
    fig, axes = new_figure(1, 2, size=(max(4.0, 0.6 * k), 1.1))
    _show(axes[0][0], originals, k, f"originals{': ' + title if title else ''}")
    _show(axes[1][0], recons, k, "reconstructions")
    return save_figure(fig, path)


def plot_samples(images: np.ndarray, path: str | os.PathLike, title: str = "", ncol: int = 8) -> Path:
    """A grid of uint8 images (N, H, W, C), e.g. generated samples."""
    ncol = min(ncol, len(images))
    nrow = -(-len(images) // ncol)
    fig, axes = new_figure(1, 1, size=(0.6 * ncol + 0.4, 0.6 * nrow + 0.5))
    _show(axes[0][0], images, ncol, title)
    return save_figure(fig, path)
