"""Tokenizer loss pieces: posteriors, reconstruction, KL, VA-VAE alignment, adaptive weights, hinge GAN."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from latentlab.errors import LatentlabError


class DeterministicPosterior:
    """A point mass: mode() and sample() both return the latents (B, T, C)."""

    def __init__(self, z: torch.Tensor):
        self.z = z

    def mode(self) -> torch.Tensor:
        return self.z

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.z

    def kl(self) -> torch.Tensor:
        return self.z.new_zeros(())


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent entry; `kl()` is KL to N(0, I), summed per sample, batch-averaged."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps  # (B, T, C)

    def kl(self) -> torch.Tensor:
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)  # (B, T, C)
        return kl.flatten(1).sum(1).mean()


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean L1 or L2 (squared error) between reconstructions and images."""
    if kind == "l1":
        return (x_hat - x).abs().mean()
    if kind == "l2":
        return (x_hat - x).pow(2).mean()
    raise LatentlabError(f"unknown reconstruction loss {kind!r}; use l1 or l2")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over positions where mask (B, N) is True only; pred/target (B, N, D)."""
    per_pos = (pred - target).pow(2).mean(-1)  # (B, N)
    m = mask.to(per_pos.dtype)
    return (per_pos * m).sum() / m.sum().clamp_min(1.0)


def vf_loss(z: torch.Tensor, f: torch.Tensor, m1: float, m2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """VA-VAE vision-foundation alignment of projected latents z and teacher features f, both (B, N, D).

    Marginal cosine similarity: mean ReLU(1 - m1 - cos(z_i, f_i)).
    Marginal distance-matrix similarity: mean over pairs (i, j) of ReLU(|cos(z_i, z_j) - cos(f_i, f_j)| - m2).
    """
    zn, fn = F.normalize(z.float(), dim=-1), F.normalize(f.float(), dim=-1)
    mcos = F.relu(1.0 - m1 - (zn * fn).sum(-1)).mean()
    dz = zn @ zn.transpose(1, 2)  # (B, N, N)
    df = fn @ fn.transpose(1, 2)  # (B, N, N)
    mdms = F.relu((dz - df).abs() - m2).mean()
    return mcos, mdms


def adaptive_weight(num: torch.Tensor, den: torch.Tensor, layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """||d num / d layer|| / ||d den / d layer||, detached and clamped (taming / VA-VAE style)."""
    if not (num.requires_grad and den.requires_grad and layer.requires_grad):
        return num.new_ones(())
    g_num = torch.autograd.grad(num, layer, retain_graph=True)[0]
    g_den = torch.autograd.grad(den, layer, retain_graph=True)[0]
    return (g_num.norm() / (g_den.norm() + 1e-6)).clamp(0.0, max_weight).detach()


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: strided convs with LeakyReLU, one logit per receptive-field patch."""

    def __init__(self, channels: int, width: int = 64, layers: int = 3):
        super().__init__()
        mods, c = [], channels
        for i in range(layers):
            w = width * 2**i
            mods += [nn.Conv2d(c, w, 4, stride=2 if i < layers - 1 else 1, padding=1), nn.GroupNorm(min(8, w), w),
                     nn.LeakyReLU(0.2)]
            c = w
        mods.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1, h, w)


def hinge_d_loss(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss; gradients reach the discriminator only (fake is detached)."""
    return 0.5 * (F.relu(1.0 - d(real)).mean() + F.relu(1.0 + d(fake.detach())).mean())


def hinge_g_loss(d: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss -D(fake) through a detached copy of D's weights, so D gets no gradient from it."""
    params = {k: v.detach() for k, v in d.named_parameters()}
    buffers = dict(d.named_buffers())
    return -functional_call(d, {**params, **buffers}, (fake,)).mean()


def load_perceptual(path: str) -> nn.Module:
    """A user-provided TorchScript perceptual net `net(x_hat, x) -> distance` (LPIPS-like), frozen."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise LatentlabError(f"perceptual network not found: {p}; export an LPIPS-like net with torch.jit.save "
                             "and pass its path, or set perceptual to null")
    try:
        net = torch.jit.load(str(p), map_location="cpu")
    except Exception as e:
        raise LatentlabError(f"{p} is not a TorchScript module ({type(e).__name__}); export it with torch.jit.save") from None
    for q in net.parameters():  # ScriptModules have no requires_grad_()
        q.requires_grad_(False)
    return net.eval()
