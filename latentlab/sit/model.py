"""SiT: a DiT-style transformer that predicts flow-matching velocities on latents.

In reading order: sin-cos position tables, timestep/label embedders, input embedders
(1D tokens or 2D grids), the adaLN-Zero block, the final layer, the model, and `sit_config`,
which builds a size preset of the registry `SIT_MODELS` for given latents (after
facebookresearch/DiT and willisma/SiT). The registry and `SiTConfig` are torch-free, in `sit/config.py`.

Attention (SDPA), the MLP and patchify come from `latentlab.tokenizers.blocks`; the adaLN-Zero
block that conditions them on (t, y) lives here. Inputs follow the LatentStore layouts:
  - "tokens": one sample is `(T, C)`; a linear embedding C -> D plus 1D sin-cos positions;
  - "grid":   one sample is `(C, H, W)`; p x p patches -> D plus 2D sin-cos positions.
The model is class-conditional: labels `0..num_classes-1`, and the extra index
`num_classes` is the null class used for label dropout and classifier-free guidance.
The timestep t lies in [0, 1] (t = 0 noise, t = 1 data; see `latentlab.sit.transport`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn

from latentlab.config import from_dict
from latentlab.errors import LatentlabError
from latentlab.sit.config import LAYOUTS, SIT_MODELS, SiTConfig
from latentlab.tokenizers.blocks import Attention, Mlp, PatchEmbed, sincos_1d, sincos_2d, unpatchify


# ---------------------------------------------------------------- conditioning embedders

class TimestepEmbedder(nn.Module):
    """Scalar t -> sinusoidal features -> 2-layer MLP of width D."""

    def __init__(self, hidden_size: int, freq_size: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_size, self.scale = freq_size, scale
        self.mlp = nn.Sequential(nn.Linear(freq_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * self.scale)[:, None] * freqs[None]          # (N, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)      # (N, freq_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))                # (N, D)


class LabelEmbedder(nn.Module):
    """Class index -> D; index `num_classes` is the null class (dropout is the caller's job)."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)  # (N, D)


# ---------------------------------------------------------------- input embedders

class TokenEmbed(nn.Module):
    """(N, T, C) tokens -> (N, T/p, D): groups of p consecutive tokens, linear map, 1D sin-cos positions.

    p = 1 (the default) embeds every token on its own; p > 1 shortens long sequences such as
    raw-pixel tokens (1024 for 32x32), as patches do for grids.
    """

    def __init__(self, tokens: int, channels: int, hidden_size: int, patch: int = 1):
        super().__init__()
        self.t, self.c, self.p = tokens, channels, patch
        self.proj = nn.Linear(patch * channels, hidden_size)
        pos = sincos_1d(hidden_size, np.arange(tokens // patch))[None]  # (1, T/p, D)
        self.register_buffer("pos", pos, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.t // self.p, self.p * self.c)  # (N, T/p, p*C)
        return self.proj(x) + self.pos                                # (N, T/p, D)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Final-layer output (N, T/p, p*C) back to the sample shape (N, T, C)."""
        return x.reshape(x.shape[0], self.t, self.c)


class GridEmbed(nn.Module):
    """(N, C, H, W) grid -> (N, H*W/p^2, D) patch tokens with fixed 2D sin-cos positions."""

    def __init__(self, channels: int, height: int, width: int, patch: int, hidden_size: int):
        super().__init__()
        self.c, self.p, self.h, self.w = channels, patch, height, width
        self.patch = PatchEmbed(channels, hidden_size, patch)
        pos = sincos_2d(hidden_size, height // patch, width // patch)[None]  # (1, L, D)
        self.register_buffer("pos", pos, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch(x) + self.pos  # (N, L, D)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Final-layer output (N, L, p*p*C) back to the grid (N, C, H, W)."""
        return unpatchify(x, self.p, self.c, self.h, self.w)  # (N, L, p*p*C) -> (N, C, H, W)


# ---------------------------------------------------------------- transformer

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with (N, D) shift/scale broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class SiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero: shift/scale/gate from the conditioning."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise LatentlabError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN(c).chunk(6, dim=1)       # 6 x (N, D)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1))  # (N, L, D)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map to the per-token output size."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c).chunk(2, dim=1)          # 2 x (N, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, L, out)


class SiT(nn.Module):
    """Velocity network v(x_t, t, y) on latents of one fixed sample shape and layout."""

    def __init__(self, cfg: SiTConfig):
        super().__init__()
        self.cfg = cfg = replace(cfg, sample_shape=tuple(int(s) for s in cfg.sample_shape))
        d = cfg.hidden_size
        if cfg.layout == "tokens":
            if len(cfg.sample_shape) != 2:
                raise LatentlabError(f"a 'tokens' SiT needs sample_shape (T, C); got {cfg.sample_shape}")
            t_, c = cfg.sample_shape
            if cfg.token_patch < 1 or t_ % cfg.token_patch:
                raise LatentlabError(f"{t_} tokens cannot be grouped by token_patch {cfg.token_patch}; "
                                     "choose a divisor of the number of tokens")
            self.embed: nn.Module = TokenEmbed(t_, c, d, cfg.token_patch)
            out = cfg.token_patch * c
        elif cfg.layout == "grid":
            if len(cfg.sample_shape) != 3:
                raise LatentlabError(f"a 'grid' SiT needs sample_shape (C, H, W); got {cfg.sample_shape}")
            c, h, w = cfg.sample_shape
            if h % cfg.patch_size or w % cfg.patch_size:
                raise LatentlabError(f"latent grid {h}x{w} is not divisible by patch_size {cfg.patch_size}; "
                                     f"choose a patch size that divides both")
            self.embed = GridEmbed(c, h, w, cfg.patch_size, d)
            out = cfg.patch_size ** 2 * c
        else:
            raise LatentlabError(f"unknown latent layout {cfg.layout!r}; use one of {LAYOUTS}")
        self.t_embed = TimestepEmbedder(d, scale=cfg.time_scale)
        self.y_embed = LabelEmbedder(cfg.num_classes, d)
        self.blocks = nn.ModuleList([SiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final = FinalLayer(d, out)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        """The label index that means "no class" (label dropout, unconditional branch of CFG)."""
        return self.cfg.num_classes

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) embeddings, and zero adaLN and output layers (adaLN-Zero)."""
        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(_basic)
        nn.init.normal_(self.y_embed.table.weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN[-1].weight)
            nn.init.zeros_(blk.adaLN[-1].bias)
        for lin in (self.final.adaLN[-1], self.final.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def check_shape(self, sample_shape: tuple[int, ...], layout: str, where: str = "these latents") -> None:
        """One-line LatentlabError unless `sample_shape`/`layout` are what this model was built for."""
        if tuple(sample_shape) != self.cfg.sample_shape or layout != self.cfg.layout:
            raise LatentlabError(
                f"{where} have shape {tuple(sample_shape)} ({layout}) but the SiT was built for "
                f"{self.cfg.sample_shape} ({self.cfg.layout}); train a new SiT on them (another --out)")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, *sample_shape), t: (N,) in [0, 1], y: (N,) int -> velocity (N, *sample_shape)."""
        h = self.embed(x)                                  # (N, L, D)
        c = self.t_embed(t) + self.y_embed(y)              # (N, D)
        for blk in self.blocks:
            h = blk(h, c)                                  # (N, L, D)
        return self.embed.unembed(self.final(h, c))        # (N, *sample_shape)


# ---------------------------------------------------------------- presets (the registry SIT_MODELS is in sit/config.py)

def sit_config(name: str, sample_shape: tuple[int, ...], layout: str, num_classes: int,
               overrides: dict | None = None) -> SiTConfig:
    """The SiTConfig of preset `name` for latents of `sample_shape`/`layout`, with overrides."""
    if name not in SIT_MODELS:
        raise LatentlabError(f"unknown SiT model {name!r}; choose one of {', '.join(SIT_MODELS)}")

    cfg = from_dict(SiTConfig, {**SIT_MODELS[name], "sample_shape": tuple(sample_shape), "layout": layout,
                                "num_classes": int(num_classes), **(overrides or {})}, "SiT model_overrides")
    cfg.sample_shape = tuple(int(s) for s in cfg.sample_shape)
    return cfg


def token_patch_for(tokens: int, max_tokens: int) -> int:
    """The smallest p dividing `tokens` with tokens / p <= max_tokens (1 when already short enough)."""
    return next(p for p in range(1, tokens + 1) if tokens % p == 0 and tokens // p <= max_tokens)
