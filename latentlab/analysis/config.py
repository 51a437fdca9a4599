"""Settings of the analysis commands, torch-free so that the CLI reads defaults and choices without torch.

`FitGMMConfig` (+ `check_config`; fit-gmm), `ProbeConfig` and `DiscriminabilityConfig` (probe),
`UmapConfig` (umap), `DiffusabilityConfig` (diffusability), and the pools of `stream`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from latentlab.errors import LatentlabError

POOLS = ("flatten", "mean")
DEFAULT_MAX_BYTES = 4 << 30  # in-memory limit for one feature set (float32)
PROTOCOL_NAMES = ("em", "official")  # gmm.curves.PROTOCOLS maps each to its functions
COVARIANCES = ("full", "diag")
DEFAULT_COVARIANCE = {"em": "full", "official": "diag"}  # when FitGMMConfig.covariance is None
REDUCERS = ("pca", "umap")


@dataclass
class FitGMMConfig:
    """Every default of `fit-gmm` (the CLI options override these)."""

    components: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200)  # K = 1 is always fitted (the gains need it)
    # Common dimension: the smallest giving each tokenizer >= pca_variance explained variance (the paper's rule;
    # it makes every tokenizer's NLL depend on which tokenizers are in the set), or a fixed pca_dim (studies use
    # one per dataset, e.g. 32 for mnist5k; tokenizers below pca_variance there are flagged).
    pca_variance: float = 0.90
    pca_dim: int | None = None  # fixed PCA dimension instead (official protocol: default official_dim)
    pca_dims: tuple[int, ...] | None = None  # also fit these dimensions (a sweep); the summary uses pca_dim
    covariance: str | None = None  # "full" | "diag"; None: DEFAULT_COVARIANCE of the protocol
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
    official_epochs: int = 30  # the release's README runs 500 (2000 is its argparse default); sized for a CPU
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
    cov = cfg.covariance or DEFAULT_COVARIANCE[cfg.protocol]
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
    dims = None if cfg.pca_dims is None else tuple(sorted({int(d) for d in cfg.pca_dims}))
    if dims is not None and (not dims or min(dims) < 1):
        raise LatentlabError(f"pca_dims must be integers >= 1; got {list(cfg.pca_dims)}")
    for name in ("max_iter", "n_init", "official_epochs", "official_batch_size"):
        if int(getattr(cfg, name)) < 1:
            raise LatentlabError(f"{name} must be >= 1; got {getattr(cfg, name)}")
    if cfg.batch_size is not None and int(cfg.batch_size) < 1:
        raise LatentlabError(f"--batch-size must be >= 1; got {cfg.batch_size}")
    return dataclasses.replace(cfg, covariance=cov, components=tuple(sorted(set(comps) | {1})), pca_dims=dims)


OPTIMIZERS = ("adamw", "sgd")
SGD_LR_PER_256 = 0.1  # the probe's SGD learning rate per 256 rows of batch (MAE's linear-probe rule)
ADAMW_LR = 1e-2  # the probe's AdamW learning rate


@dataclass
class ProbeConfig:
    """Linear-probe training settings (the defaults reach sklearn's LogisticRegression accuracy, see benchmarks/).

    4 epochs: on the benchmark (N=50k, D=1024) and on mnist5k pixels the top-1 after 4 passes is within
    0.1-0.3 points of 10 passes (which lower the training loss, not the test error), at 40% of the time.
    """

    epochs: int = 4
    optimizer: str = "sgd"  # SGD with momentum 0.9; or "adamw"
    lr: float | None = None  # None: SGD_LR_PER_256 * batch_size / 256 for SGD, ADAMW_LR for AdamW
    weight_decay: float = 1e-4
    batch_size: int = 1024  # capped so that an epoch has at least min_steps_per_epoch steps
    min_steps_per_epoch: int = 16
    warmup_epochs: float = 0.0
    device: str = "auto"
    seed: int = 0


@dataclass
class DiscriminabilityConfig:
    """Settings of `latentlab probe` (the probe's own seed and device serve every metric)."""

    pool: str = "flatten"
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    holdout_fraction: float = 0.2  # used only when a tokenizer has no test store
    knn_k: int = 20
    knn_temperature: float = 0.07
    cluster_samples: int = 5000
    rankme_samples: int = 25600
    gmm_csv: str | None = None
    gmm_k: int | None = None
    max_memory_gb: float = DEFAULT_MAX_BYTES / 2**30  # per feature set; larger sets are streamed


UMAP_MIN_POINTS = 4  # umap-learn's spectral initialisation fails below this


@dataclass
class UmapConfig:
    """Settings of `latentlab umap`."""

    n: int = 10000
    seed: int = 0
    pca_dim: int = 50  # 0 skips the PCA
    pool: str = "flatten"
    n_neighbors: int = 15
    min_dist: float = 0.1


@dataclass
class DiffusabilityConfig:
    """Settings of `latentlab diffusability` and the study's diffusability stage; defaults live here only."""

    n_images: int = 256                          # test images for the decoder-side measures
    taus: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)          # decode((1 - tau) z + tau eps), normalised units
    mask_ratios: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)   # share of tokens / positions zeroed
    response_scale: float = 0.05                 # std of the decoder-response perturbation, normalised units
    id_samples: int = 1000                       # train latents for TwoNN and RankMe
    id_boot: int = 20                            # bootstrap resamples of RankMe (an SVD each); TwoNN uses n_boot
    n_boot: int = 1000                           # bootstrap resamples of per-image means and ratios
    fd_boot: int = 50                            # bootstrap resamples of each FD
    level: float = 0.95                          # interval coverage
    fd: bool = True                              # FD of the corrupted decodes (in the extractor's features)
    extractor: str = "lenet"                     # FD features: lenet (the stand-in, fd_lenet), inception, ...
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    weights: str = "ema"

    def __post_init__(self):
        self.taus = tuple(float(t) for t in self.taus)
        self.mask_ratios = tuple(float(r) for r in self.mask_ratios)
        if not self.taus or any(not 0.0 < t <= 1.0 for t in self.taus) or list(self.taus) != sorted(set(self.taus)):
            raise ValueError(f"taus must be increasing values in (0, 1], got {self.taus}")
        if (not self.mask_ratios or any(not 0.0 < r < 1.0 for r in self.mask_ratios)
                or list(self.mask_ratios) != sorted(set(self.mask_ratios))):
            raise ValueError(f"mask_ratios must be increasing values in (0, 1), got {self.mask_ratios}")
        for name in ("n_images", "id_samples", "batch_size"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        for name in ("id_boot", "n_boot", "fd_boot"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2 resamples, got {getattr(self, name)}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level}")
        if not 0.0 < self.response_scale <= 1.0:
            raise ValueError(f"response_scale must be in (0, 1], got {self.response_scale}")
