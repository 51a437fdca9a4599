"""Settings of the SiT generator, torch-free so that the CLI reads defaults and choices without torch.

`SiTConfig` and the size presets `SIT_MODELS` (the registry `model.sit_config` builds from),
`SIT_TRAIN_DEFAULTS` (the training defaults of every preset, in one place), `SiTTrainConfig`
(`train-sit`), `SampleConfig` (`sample`), and the enums of `transport` (strings only at the edges).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from latentlab.config import TrainConfig, train_config
from latentlab.errors import LatentlabError

LAYOUTS = ("tokens", "grid")
NORMALIZATIONS = ("channel", "global", "none")


class TimeSampling(enum.Enum):
    """How training draws t."""

    UNIFORM = "uniform"
    LOGIT_NORMAL = "logit-normal"


class Sampler(enum.Enum):
    """Integrators from t = 0 (noise) to t = 1 (data)."""

    EULER = "euler"
    HEUN = "heun"
    SDE = "sde"


def parse_enum(kind: type[enum.Enum], value: str | enum.Enum, what: str) -> enum.Enum:
    """A string from the CLI/config -> enum member; anything unknown is a one-line error."""
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value).lower())
    except ValueError:
        raise LatentlabError(f"unknown {what} {value!r}; use one of {', '.join(m.value for m in kind)}") from None


@dataclass
class SiTConfig:
    """Architecture of one SiT; stored as a plain dict in the run's config.json."""

    depth: int = 4
    hidden_size: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 2           # grid layout only: p x p patches
    token_patch: int = 1          # tokens layout only: groups of p consecutive tokens
    sample_shape: tuple[int, ...] = (16, 8)   # (T, C) for "tokens", (C, H, W) for "grid"
    layout: str = "tokens"
    num_classes: int = 10         # 0 = unconditional (only the null class exists)
    time_scale: float = 1000.0    # t in [0, 1] is scaled by this before the sinusoidal embedding


def _preset(depth: int, hidden_size: int, num_heads: int, patch_size: int = 2) -> dict:
    return {"depth": depth, "hidden_size": hidden_size, "num_heads": num_heads, "patch_size": patch_size}


SIT_MODELS: dict[str, dict] = {
    "SiT-tiny": _preset(4, 128, 4),        # CPU preset for the embedded data
    "SiT-S": _preset(12, 384, 6),
    "SiT-B": _preset(12, 768, 12),
    "SiT-L": _preset(24, 1024, 16),
    "SiT-XL": _preset(28, 1152, 16),
}
# SiT-S/2 style names (patch 2 on grids) resolve to the same presets.
SIT_MODELS.update({f"{k}/{p}": {**v, "patch_size": p} for k, v in list(SIT_MODELS.items())
                   if k != "SiT-tiny" for p in (1, 2, 4, 8)})


# The training defaults of every preset (TrainConfig; a run's `train:` overrides them). The paper
# presets follow the SiT paper: AdamW lr 1e-4, no weight decay, constant lr, EMA 0.9999. The tiny
# CPU preset trains a few thousand steps, where an EMA of 0.9999 would still sit near its
# initialisation, so it averages over ~1000 steps, with a higher lr and a short warm-up.
_SIT_PAPER_TRAIN = dict(lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                        grad_clip=0.0, ema_decay=0.9999, batch_size=64, eval_every=250, log_every=50)
_SIT_TINY_TRAIN = {**_SIT_PAPER_TRAIN, "ema_decay": 0.999, "lr": 3e-4, "warmup_steps": 50}
SIT_TRAIN_DEFAULTS: dict[str, TrainConfig] = {
    name: TrainConfig(**(_SIT_TINY_TRAIN if name == "SiT-tiny" else _SIT_PAPER_TRAIN)) for name in SIT_MODELS}


@dataclass
class SiTTrainConfig:
    """Everything `train-sit` needs besides the latents (its training defaults: `SIT_TRAIN_DEFAULTS`)."""

    model: str = "SiT-tiny"
    model_overrides: dict = field(default_factory=dict)   # e.g. {"depth": 2}
    max_tokens: int = 256                                 # longer token sequences are grouped (token_patch)
    normalization: str = "channel"                        # channel | global | none
    time_sampling: str = "uniform"                        # uniform | logit-normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    label_dropout: float = 0.1
    heldout_size: int = 256
    heldout_t: int = 8
    heldout_seed: int = 0
    eval_batch_size: int = 256
    train: dict = field(default_factory=dict)             # overrides of TrainConfig fields

    def __post_init__(self):
        if self.model not in SIT_MODELS:
            raise ValueError(f"unknown SiT model {self.model!r}; choose one of {', '.join(SIT_MODELS)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        parse_enum(TimeSampling, self.time_sampling, "time sampling")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError("label_dropout must lie in [0, 1)")
        if self.heldout_size < 1 or self.heldout_t < 1 or self.max_tokens < 1:
            raise ValueError("heldout_size, heldout_t and max_tokens must be >= 1")

    def train_config(self, where: str = "train-sit config 'train'") -> TrainConfig:
        """The shared loop's TrainConfig: the preset's `SIT_TRAIN_DEFAULTS`, then the `train` overrides."""
        return train_config(SIT_TRAIN_DEFAULTS[self.model], self.train, where)


@dataclass
class SampleConfig:
    """Settings of `latentlab sample`; defaults live here only."""

    n: int = 1000
    cfg: float = 1.0
    steps: int = 50
    sampler: str = "heun"
    class_label: int | None = None
    seed: int = 0
    batch_size: int = 250
    guidance_interval: tuple[float, float] | None = None   # in t (0 = noise, 1 = data)
    sde_scale: float = 1.0
    weights: str = "ema"
    device: str = "auto"
    decode: bool = True
    max_pngs: int = 10_000
    grid_size: int = 100

    def __post_init__(self):
        parse_enum(Sampler, self.sampler, "sampler")
        if self.n < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("n, steps and batch_size must be >= 1")
        if self.guidance_interval is not None:
            self.guidance_interval = tuple(float(v) for v in self.guidance_interval)
