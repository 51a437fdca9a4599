"""Training-only operators on latents: random masks, l-DeTok latent corruption, 2x downsampling.

Two switches of `TokenizerConfig` use them (both off by default):

- ``latent_noise: {max_tau, mask_ratio}`` corrupts the latents before the pixel decoder during
  training, as l-DeTok ("Latent Denoising Makes Good Tokenizers", Yang et al., ICLR 2026): in the
  batch's normalised units (per-channel mean and std over the batch, detached) each sample is
  interpolated with Gaussian noise, ``(1 - tau) z + tau eps`` with ``tau ~ U[0, max_tau]`` per
  sample, and a share ``r ~ U[0, mask_ratio]`` (drawn once per batch, as MAETok's patch masking)
  of each sample's tokens is set to zero. l-DeTok masks image patches at the encoder input; here
  both corruptions act on the latents, so the option means the same for every architecture.
- ``scale_equivariance: weight`` adds ``weight * rec(decode_half(down2(z)), down2(x))``, the
  regulariser of "Improving the Diffusability of Autoencoders" (Skorokhodov et al., ICML 2025,
  arXiv 2502.14831). Images are downsampled by 2x2 average pooling. For a grid latent (C, H, W)
  `down2` is the same pooling; latentlab's tokenizers have 1D token latents (T, C), which have no
  spatial axis, and there `down2` is the mean of each run of 4 consecutive tokens (T -> T/4: the
  1D counterpart of a 2x2 pool, which keeps a quarter of the samples), decoded on the
  half-resolution patch grid (see `tokenizers.models.Decoder`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latentlab.tokenizers.config import TOKEN_POOL

def random_mask(b: int, n: int, lo: float, hi: float, generator: torch.Generator | None = None,
                device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """A (B, N) bool mask with round(r * N) True per row, r ~ U[lo, hi] drawn once per batch; returns (mask, r)."""
    r = lo + (hi - lo) * float(torch.rand((), generator=generator, device=device))
    k = int(round(r * n))
    noise = torch.rand(b, n, generator=generator, device=device)  # (B, N)
    ranks = noise.argsort(1).argsort(1)  # rank of each position within its row
    return ranks < k, r


def corrupt_latents(z: torch.Tensor, max_tau: float, mask_ratio: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """l-DeTok corruption of token latents (B, T, C) in the batch's normalised units (see the module docstring)."""
    b, t, _ = z.shape
    dims = (0, 1)
    mean = z.detach().mean(dims, keepdim=True)                                         # (1, 1, C)
    std = z.detach().std(dims, keepdim=True).clamp_min(1e-6) if b * t > 1 else torch.ones_like(mean)
    zn = (z - mean) / std                                                              # (B, T, C)
    if max_tau > 0:
        tau = max_tau * torch.rand(b, 1, 1, generator=generator, device=z.device, dtype=z.dtype)  # (B, 1, 1)
        eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)            # (B, T, C)
        zn = (1 - tau) * zn + tau * eps
    if mask_ratio > 0:
        mask, _ = random_mask(b, t, 0.0, mask_ratio, generator, z.device)              # (B, T)
        zn = zn.masked_fill(mask[..., None], 0.0)
    return zn * std + mean


def downsample_images(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling of images or grid latents (B, C, H, W) -> (B, C, H/2, W/2)."""
    return F.avg_pool2d(x, 2)


def downsample_tokens(z: torch.Tensor) -> torch.Tensor:
    """Token latents (B, T, C) -> (B, T/4, C): the mean of each run of 4 consecutive tokens."""
    b, t, c = z.shape
    if t % TOKEN_POOL:
        raise ValueError(f"token downsampling needs a multiple of {TOKEN_POOL} tokens, got {t}")
    return z.reshape(b, t // TOKEN_POOL, TOKEN_POOL, c).mean(2)
