"""SiT figures: held-out loss curves (as MAETok Fig. 2b) and sample grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from latentlab.io import atomic_path
from latentlab.plots import new_figure, save_figure


def plot_heldout(tables: dict, path: str | os.PathLike) -> Path:
    """Left: mean held-out SiT loss against step, one line per tokenizer; right: the last one against t.

    `tables` maps a tokenizer name to a DataFrame with columns step, t, loss (see `heldout_table`).
    """
    fig, axes = new_figure(2)
    left, right = axes[0]
    for name, df in tables.items():
        mean = df[df.t == "mean"].sort_values("step")
        left.plot(mean.step, mean.loss, marker="o", ms=3, label=name)
        per_t = df[(df.t != "mean") & (df.step == df.step.max())]
        right.plot(per_t.t.astype(float), per_t.loss, marker="o", ms=3, label=name)
    left.set(xlabel="training step", ylabel="held-out SiT loss (EMA)", title="SiT held-out loss")
    right.set(xlabel="t (0 = noise, 1 = data)", ylabel="held-out loss at t", title="at the last evaluation")
    right.set_yscale("log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def image_grid(images: np.ndarray, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows*(H+pad), ncol*(W+pad), C) tiled image."""
    n, h, w, c = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
    return grid


def save_png(image: np.ndarray, path: str | os.PathLike, upscale: int = 1) -> Path:
    """Write a uint8 (H, W, C) image as PNG atomically (nearest-neighbour upscaling)."""
    from PIL import Image

    if upscale > 1:
        image = image.repeat(upscale, 0).repeat(upscale, 1)
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
