"""Settings of `fid`, `eval-tokenizer` and `eval-sit`, torch-free so that the CLI reads defaults without torch."""

from __future__ import annotations

from dataclasses import dataclass

from latentlab.sit.config import Sampler, parse_enum

EMBEDDED_DATASETS = ("mnist5k", "digits", "shapes")
GFID_SAMPLES_EMBEDDED = 10_000  # gFID samples on the embedded datasets
GFID_SAMPLES = 50_000           # everywhere else (the ImageNet convention)
EVAL_SPLIT = "test"             # the split eval-tokenizer reconstructs


@dataclass
class MetricsConfig:
    """Settings of `fid`, `eval-tokenizer` and `eval-sit`; defaults live here only."""

    extractor: str = "lenet"
    batch_size: int = 250
    device: str = "auto"
    is_splits: int = 10
    real_limit: int | None = None       # a fixed random subset of N real images (None: the whole split)
    lenet_dataset: str | None = None    # data the lenet is trained on when --real is not a dataset
    n: int | None = None                # gFID samples; None: default_n_samples(dataset)
    cfg: float = 1.0                    # gFID sampling: guidance scale, steps, sampler, seed, weights
    steps: int = 50
    sampler: str = "heun"
    seed: int = 0
    weights: str = "ema"
    chunk: int = 5000                   # gFID samples decoded at a time
    grid: int = 16                      # eval-tokenizer: originals shown in the grid
    kid_subsets: int = 100              # KID: random subset pairs (torch-fidelity's default) ...
    kid_subset_size: int = 1000         # ... of this many rows each (lowered to the smaller set)
    bootstrap: int = 200                # FD of generated sets: bootstrap replicates over their features (0: none)

    def __post_init__(self):
        for name in ("batch_size", "is_splits", "steps", "chunk", "grid"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n", "real_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or null for the default), got {getattr(self, name)}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0 (0: no FD interval), got {self.bootstrap}")
        if self.cfg < 0 or self.seed < 0:
            raise ValueError(f"cfg and seed must be >= 0, got {self.cfg} and {self.seed}")
        parse_enum(Sampler, self.sampler, "sampler")


def default_n_samples(dataset: str) -> int:
    """The number of gFID samples when MetricsConfig.n is None: fewer on the small embedded datasets."""
    return GFID_SAMPLES_EMBEDDED if dataset.partition(":")[0] in EMBEDDED_DATASETS else GFID_SAMPLES
