"""Transformer building blocks: patch embedding, 2D RoPE, attention (SDPA), MLP, pre-norm blocks, sin-cos position tables."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from latentlab.errors import LatentlabError


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) with N = (H/p)*(W/p), patches in raster order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)  # (B, C, gh, p, gw, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); the inverse of `patchify`."""
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, p, p, c)  # (B, gh, gw, p, p, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> width-D tokens."""

    def __init__(self, channels: int, width: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(patch * patch * channels, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(x, self.patch))  # (B, N, D)


def grid_coords(n: int, step: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """Cell coordinates offset + step * (0, 1, ..., n-1): a coarse grid's cells sit at the centres of fine ones."""
    c = np.arange(n)
    return c if step == 1.0 and offset == 0.0 else c * step + offset


def rope_2d(gh: int, gw: int, head_dim: int, base: float = 100.0, n_extra: int = 0,
            device: torch.device | None = None, step: float = 1.0, offset: float = 0.0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (L, head_dim/2) for a gh x gw grid (+ `n_extra` unrotated tokens after it).

    Half of the rotation pairs encode the row, half the column; extra tokens get angle 0. Cell
    coordinates are `grid_coords(n, step, offset)`: a half-resolution grid uses step 2, offset 0.5.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    q = head_dim // 4
    freqs = base ** (-torch.arange(q, dtype=torch.float32, device=device) / q)  # (q,)
    ys, xs = torch.meshgrid(torch.as_tensor(grid_coords(gh, step, offset), dtype=torch.float32, device=device),
                            torch.as_tensor(grid_coords(gw, step, offset), dtype=torch.float32, device=device),
                            indexing="ij")
    ang = torch.cat([ys.reshape(-1, 1) * freqs, xs.reshape(-1, 1) * freqs], dim=1)  # (gh*gw, head_dim/2)
    ang = torch.cat([ang, ang.new_zeros(n_extra, ang.shape[1])], dim=0)  # (L, head_dim/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, H, L, hd) by the angles in cos/sin (L, hd/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, L, hd/2)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, H, L, hd/2, 2)
    return out.flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention`, with optional RoPE."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def qk(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Queries, keys and values (B, H, L, hd), RoPE applied to q and k."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, hd) x3
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qk(x, rope)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of `Block`s sharing one RoPE table, with a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, rope)
        return self.norm(x)


def sincos_1d(dim: int, positions) -> torch.Tensor:
    """(P,) positions -> (P, dim) float32 table of [sin, cos] at frequencies 1 / 10000^(i / (dim/2)) (MAE/DiT).

    Computed in float32 (DiT computes in float64; entries differ by a few float32 ulps at most).
    """
    if dim % 2:
        raise LatentlabError(f"sin-cos embedding needs an even width, got {dim}")
    half = dim // 2
    omega = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))  # (dim/2,)
    pos = positions if isinstance(positions, torch.Tensor) else torch.as_tensor(np.asarray(positions))
    out = pos.to(torch.float32).reshape(-1, 1) * omega  # (P, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (P, dim)


def sincos_2d(dim: int, h: int, w: int, step: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """Fixed 2D sin-cos position table (h*w, dim) float32: half the width encodes the row, half the column.
    Cells sit at `grid_coords(n, step, offset)` (step 2, offset 0.5: a half-resolution grid)."""
    if dim % 4:
        raise LatentlabError(f"2D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.as_tensor(grid_coords(h, step, offset), dtype=torch.float32),
                                torch.as_tensor(grid_coords(w, step, offset), dtype=torch.float32),
                                indexing="ij")  # (h, w) each
    return torch.cat([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], dim=1)  # (h*w, dim)
