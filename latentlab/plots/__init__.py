"""Figures. Each analysis has its own module here (gmm, probe, sit, study, ...);
this module holds the shared style and the atomic PNG (+ PDF) writer."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latentlab.io import atomic_path  # noqa: E402

PALETTE = "tab10"


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6), **kw):
    """A figure with a grid of axes sized `size` per panel."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kw)
    return fig, axes


def save_figure(fig, path: str | os.PathLike, pdf: bool = True, dpi: int = 130, tight: bool = True) -> Path:
    """Write `fig` to PATH.png (and PATH.pdf) atomically, then close it.

    `tight=False` keeps the figure's own spacing: tight_layout measures every tick label and costs as much
    as a draw, which large grids of panels (a study's metrics-against-target figures) feel."""
    path = Path(path).with_suffix(".png")
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    if pdf:
        with atomic_path(path.with_suffix(".pdf")) as tmp:
            fig.savefig(tmp, format="pdf")
    plt.close(fig)
    return path
