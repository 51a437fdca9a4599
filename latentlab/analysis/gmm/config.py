"""The fit-gmm configuration and the types both protocols share (`curves` and `official` import this)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import numpy as np

from latentlab.errors import LatentlabError

COLUMNS = ["tokenizer", "n_components", "pca_dim", "explained_variance", "train_nll", "heldout_nll", "nll_per_dim",
           "bic", "aic", "n_iter", "converged", "seconds", "protocol"]
COVARIANCES = ("full", "diag")
PROTOCOL_NAMES = ("em", "official")  # curves.PROTOCOLS maps each to its functions
REDUCERS = ("pca", "umap")


@dataclass
class FitGMMConfig:
    """Every default of `fit-gmm` (the CLI options override these)."""

    components: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200)
    pca_variance: float = 0.90  # common dimension: each tokenizer keeps >= this explained variance
    pca_dim: int | None = None  # fixed PCA dimension instead (official protocol: default official_dim)
    covariance: str | None = None  # "full" | "diag"; None: full for em, diag for official
    heldout: float = 0.2  # held-out fraction of the train store
    protocol: str = "em"  # "em": latentlab's EM GaussianMixture; "official": the MAETok release (Adam)
    reducer: str = "pca"  # "pca" | "umap" (umap only with the official protocol)
    max_iter: int = 100  # EM iterations
    n_init: int = 1  # EM restarts
    tol: float = 1e-3  # EM: change of mean log-likelihood; official: change of the epoch's mean loss
    reg_covar: float = 1e-6
    init_params: str = "kmeans"
    seed: int = 0
    device: str = "auto"
    batch_size: int | None = None  # rows per streamed chunk (None: automatic)
    official_dim: int = 100  # the released script reduces to 100 dimensions
    official_epochs: int = 30  # the released script runs 2000 epochs; this default is sized for a CPU
    official_lr: float = 1e-3
    official_batch_size: int = 64
    official_split_seed: int = 42


def check_config(cfg: FitGMMConfig) -> FitGMMConfig:
    """Validate `cfg` (one-line LatentlabErrors) and resolve protocol-dependent defaults."""
    if cfg.protocol not in PROTOCOL_NAMES:
        raise LatentlabError(f"unknown protocol {cfg.protocol!r}; use one of {', '.join(PROTOCOL_NAMES)}")
    if cfg.reducer not in REDUCERS:
        raise LatentlabError(f"unknown reducer {cfg.reducer!r}; use one of {', '.join(REDUCERS)}")
    if cfg.reducer == "umap" and cfg.protocol != "official":
        raise LatentlabError("--reducer umap belongs to --protocol official; the em protocol reduces with PCA")
    cov = cfg.covariance or ("diag" if cfg.protocol == "official" else "full")
    if cov not in COVARIANCES:
        raise LatentlabError(f"unknown covariance type {cov!r}; use one of {', '.join(COVARIANCES)}")
    if cfg.protocol == "official" and cov != "diag":
        raise LatentlabError("the official protocol fits diagonal GMMs; drop --covariance or use --covariance diag")
    if not 0.0 < float(cfg.pca_variance) <= 1.0:
        raise LatentlabError(f"--pca-variance must be in (0, 1]; got {cfg.pca_variance}")
    if cfg.pca_dim is not None and int(cfg.pca_dim) < 1:
        raise LatentlabError(f"--pca-dim must be >= 1; got {cfg.pca_dim}")
    if not 0.0 <= float(cfg.heldout) < 1.0:
        raise LatentlabError(f"--heldout must be in [0, 1); got {cfg.heldout}")
    comps = tuple(int(k) for k in cfg.components)
    if not comps or min(comps) < 1:
        raise LatentlabError(f"--components must be integers >= 1; got {list(cfg.components)}")
    for name in ("max_iter", "n_init", "official_epochs", "official_batch_size"):
        if int(getattr(cfg, name)) < 1:
            raise LatentlabError(f"{name} must be >= 1; got {getattr(cfg, name)}")
    if cfg.batch_size is not None and int(cfg.batch_size) < 1:
        raise LatentlabError(f"--batch-size must be >= 1; got {cfg.batch_size}")
    return dataclasses.replace(cfg, covariance=cov, components=tuple(sorted(set(comps))))


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
