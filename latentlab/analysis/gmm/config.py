"""The types both fit-gmm protocols share (`curves` and `official` import this); the settings,
`FitGMMConfig`, are torch-free in `latentlab.analysis.config`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from latentlab.analysis.config import FitGMMConfig, check_config  # noqa: F401  (the fit-gmm settings; re-exported)
from latentlab.errors import LatentlabError

COLUMNS = ["tokenizer", "n_components", "pca_dim", "explained_variance", "below_pca_variance", "train_nll",
           "heldout_nll", "nll_per_dim", "bic", "aic", "n_iter", "converged", "n_init", "heldout_nll_spread",
           "seconds", "protocol"]


@dataclass
class GMMFeatures:
    """One tokenizer's reduced, z-scored features: training and held-out rows (float32)."""

    name: str
    train: np.ndarray  # (n_train, k)
    heldout: np.ndarray  # (n_heldout, k)
    explained_variance: float  # of the kept dimensions (NaN for UMAP)
    info: dict = field(default_factory=dict)


def split_rows(n: int, heldout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (train, held-out) row indices, each sorted (so stores stream in order)."""
    n_held = int(round(heldout * n))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def check_sizes(name: str, n_train: int, cfg: FitGMMConfig) -> None:
    k = max(cfg.components)
    if k > n_train:
        raise LatentlabError(f"n_components={k} exceeds the {n_train} training rows of {name!r} "
                             f"(after holding out {cfg.heldout:g}); lower --components or --heldout")
