"""Settings of `fid`, `eval-tokenizer` and `eval-sit`, torch-free so that the CLI reads defaults without torch."""

from __future__ import annotations

from dataclasses import dataclass

EMBEDDED_DATASETS = ("mnist5k", "digits", "shapes")


@dataclass
class MetricsConfig:
    """Settings of `fid`, `eval-tokenizer` and `eval-sit`; defaults live here only."""

    extractor: str = "lenet"
    batch_size: int = 250
    device: str = "auto"
    is_splits: int = 10
    real_limit: int | None = None       # a fixed random subset of N real images (None: the whole split)
    lenet_dataset: str | None = None    # data the lenet is trained on when --real is not a dataset
    n: int | None = None                # gFID samples: None = 10,000 (embedded data) or 50,000
    cfg: float = 1.0                    # gFID sampling: guidance scale, steps, sampler, seed, weights
    steps: int = 50
    sampler: str = "heun"
    seed: int = 0
    weights: str = "ema"
    chunk: int = 5000                   # gFID samples decoded at a time
    grid: int = 16                      # eval-tokenizer: originals shown in the grid
    kid_subsets: int = 100              # KID: random subset pairs (torch-fidelity's default) ...
    kid_subset_size: int = 1000         # ... of this many rows each (lowered to the smaller set)
