"""Settings of the tokenizers, torch-free so that the CLI reads defaults and choices without torch.

`TokenizerConfig` (architecture and losses of one model; `SIZES` presets, `ARCHS` the kinds that
`models.TOKENIZERS` builds) and `TokenizerRunConfig` (one `train-tokenizer` run, with the tokenizer
training defaults `TRAIN_DEFAULTS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from latentlab.config import TrainConfig, train_config
from latentlab.errors import LatentlabError

ARCHS = ("ae", "vae", "vavae", "maetok")  # the keys of models.TOKENIZERS, in its order
STAGES = ("full", "decoder-finetune")
LATENT_NOISE_KEYS = ("max_tau", "mask_ratio")
TOKEN_POOL = 4  # tokens averaged into one by `regularizers.downsample_tokens` (2x in each of the image's two axes)


def check_latent_noise(value: dict | None) -> dict | None:
    """The `latent_noise` option as {"max_tau": float, "mask_ratio": float}, or None when off; ValueError if invalid."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"latent_noise must be a mapping with keys {', '.join(LATENT_NOISE_KEYS)} (or null), "
                         f"got {value!r}")
    unknown = sorted(set(value) - set(LATENT_NOISE_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in latent_noise; valid keys: {', '.join(LATENT_NOISE_KEYS)}")
    out = {}
    for k in LATENT_NOISE_KEYS:
        v = value.get(k, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"latent_noise.{k} must be a number, got {v!r}")
        out[k] = float(v)
    if not 0.0 <= out["max_tau"] <= 1.0:
        raise ValueError(f"latent_noise.max_tau must be in [0, 1], got {out['max_tau']}")
    if not 0.0 <= out["mask_ratio"] < 1.0:
        raise ValueError(f"latent_noise.mask_ratio must be in [0, 1), got {out['mask_ratio']}")
    return out


@dataclass
class TokenizerConfig:
    """Architecture and loss settings of one tokenizer; stored as a plain dict in config.json."""

    arch: str = "ae"
    size: str = "tiny"
    image_size: int = 32
    channels: int = 1
    patch_size: int | None = None      # None: keep the preset's patch grid
    width: int | None = None           # None: from the size preset (likewise the fields below)
    depth: int | None = None
    heads: int | None = None
    dec_width: int | None = None
    dec_depth: int | None = None
    num_tokens: int | None = None
    token_dim: int | None = None
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    rec_loss: str = "l2"               # l1 | l2 (the paper's L1 stalls at the background median on sparse digits)
    kl_weight: float = 1e-6            # vae, vavae
    perceptual: str | None = None      # path of a TorchScript LPIPS-like net(x_hat, x); off by default
    perceptual_weight: float = 1.0
    gan_weight: float = 0.0            # hinge GAN with adaptive weight; 0 = off
    gan_start: int = 0
    teacher: str = "hog"               # vavae alignment target (hog | pixels | dinov2:PATH | clip:PATH | torchscript:PATH)
    align_weight: float = 0.1
    align_m1: float = 0.5
    align_m2: float = 0.25
    align_adaptive: bool = True
    mask: bool = True                  # maetok: random masking of patch embeddings
    mask_min: float = 0.4
    mask_max: float = 0.6
    mask_ratio: float | None = None    # maetok: one fixed ratio (sets mask_min = mask_max = mask_ratio)
    learnable_tokens: bool = True      # maetok ablation: False = latents pooled from the image (patch) tokens
    aux_targets: list[str] = field(default_factory=lambda: ["hog"])  # maetok auxiliary decoders
    aux_depth: int = 1
    aux_weight: float = 1.0
    stage: str = "full"                # full | decoder-finetune (encoder frozen, masking off)
    latent_noise: dict | None = None   # l-DeTok: {max_tau, mask_ratio} corruption of the latents before decoding (training only)
    scale_equivariance: float = 0.0    # weight of the Diffusability paper's term rec(decode_half(down2(z)), down2(x)); 0 = off

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {', '.join(SIZES)}")
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of {', '.join(STAGES)}")
        if self.mask_ratio is not None:
            self.mask_min = self.mask_max = float(self.mask_ratio)
        if not 0.0 <= self.mask_min <= self.mask_max < 1.0:
            raise ValueError("need 0 <= mask_min <= mask_max < 1")
        self.aux_targets = list(self.aux_targets)
        preset = SIZES[self.size]
        for k, v in preset.items():
            if k != "image_size" and getattr(self, k, None) is None and k != "patch_size":
                setattr(self, k, v)
        if self.patch_size is None:
            grid = preset["image_size"] // preset["patch_size"]
            self.patch_size = max(2, self.image_size // grid)
        if self.image_size % self.patch_size:
            raise ValueError(f"image size {self.image_size} is not divisible by patch size {self.patch_size}")
        if (self.width // self.heads) % 4 or (self.dec_width // self.heads) % 4:
            raise ValueError("width / heads must be divisible by 4 (2D RoPE)")
        self.latent_noise = check_latent_noise(self.latent_noise)
        if self.scale_equivariance < 0:
            raise ValueError(f"scale_equivariance is a loss weight >= 0, got {self.scale_equivariance}")
        if self.scale_equivariance > 0 and (self.grid % 2 or self.num_tokens % TOKEN_POOL):
            raise ValueError(f"scale_equivariance needs an even patch grid and a multiple of {TOKEN_POOL} tokens "
                             f"(got grid {self.grid}, {self.num_tokens} tokens); change patch_size or num_tokens")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def teacher_label(self) -> str:
        """What the run was aligned to / predicted, for tables: e.g. 'hog', 'hog+pixels', '-'."""
        if self.arch == "vavae":
            return self.teacher.split(":")[0] if not self.teacher.startswith("torchscript") else self.teacher
        if self.arch == "maetok":
            return "+".join(self.aux_targets) or "-"
        return "-"


SIZES: dict[str, dict] = {
    "tiny": dict(image_size=32, patch_size=4, width=96, depth=2, heads=4, dec_width=96, dec_depth=2,
                 num_tokens=16, token_dim=16),
    "small": dict(image_size=32, patch_size=2, width=256, depth=6, heads=4, dec_width=256, dec_depth=6,
                  num_tokens=32, token_dim=12),
    "S": dict(image_size=256, patch_size=16, width=384, depth=12, heads=6, dec_width=384, dec_depth=12,
              num_tokens=128, token_dim=32),
    "B": dict(image_size=256, patch_size=16, width=768, depth=12, heads=12, dec_width=768, dec_depth=12,
              num_tokens=128, token_dim=32),
}


# TokenizerConfig fields that only some kinds use; every other field applies to every kind.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "ae": (),
    "vae": ("kl_weight",),
    "vavae": ("kl_weight", "teacher", "align_weight", "align_m1", "align_m2", "align_adaptive"),
    "maetok": ("mask", "mask_min", "mask_max", "aux_targets", "aux_depth", "aux_weight"),
}


def unused_fields(cfg: TokenizerConfig | str) -> set[str]:
    """The TokenizerConfig fields a kind (an arch, or a whole config) does not use."""
    arch = cfg if isinstance(cfg, str) else cfg.arch
    unused = {f for fields in KIND_FIELDS.values() for f in fields} - set(KIND_FIELDS[arch])
    if not isinstance(cfg, str):
        unused |= ({"perceptual_weight"} if not cfg.perceptual else set()) | ({"gan_start"} if cfg.gan_weight <= 0 else set())
    return unused


def model_record(cfg: TokenizerConfig) -> dict:
    """The model config a run records: only the fields that apply to its kind (loading fills in the rest)."""
    unused = unused_fields(cfg)
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in unused}


def check_applicable(arch: str, keys, where: str = "model") -> None:
    """Refuse model overrides that `arch` does not use (e.g. a teacher for a plain ae)."""
    bad = sorted(set(keys) & unused_fields(arch))
    if bad:
        owners = [a for a, fields in KIND_FIELDS.items() if bad[0] in fields]
        raise LatentlabError(f"{where}: {bad[0]!r} does not apply to arch {arch!r} (only to {', '.join(owners)}); "
                             f"drop it or change the arch")


DEFAULT_DATASET = "mnist5k"
# Tokenizer training defaults (override any TrainConfig field under `train:` or on the command line).
TRAIN_DEFAULTS = TrainConfig(steps=1000, batch_size=32, lr=2e-3, weight_decay=0.0, warmup_steps=100, min_lr_ratio=0.05,
                             ema_decay=0.995, log_every=50, eval_every=250, ckpt_every=500)


@dataclass
class TokenizerRunConfig:
    """Everything one `train-tokenizer` run needs; defaults live here, not in the CLI."""

    arch: str = "ae"
    size: str = "tiny"
    dataset: str | None = None         # None: mnist5k; a decoder fine-tune: the --init run's dataset
    image_size: int | None = None      # None: the dataset's native size; a decoder fine-tune: the --init run's
    stage: str = "full"                # full | decoder-finetune (needs init)
    init: str | None = None            # run to start the decoder fine-tune from
    eval_images: int = 256             # held-out images for PSNR
    sample_images: int = 8             # reconstructions in each samples/ grid
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)

    def train_config(self, where: str = "train config") -> TrainConfig:
        """The TrainConfig: tokenizer defaults, then the `train` overrides."""
        return train_config(TRAIN_DEFAULTS, self.train, where)
