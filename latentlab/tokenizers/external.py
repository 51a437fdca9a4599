"""Pretrained tokenizers behind the latentlab tokenizer interface (optional extra: `pip install 'latentlab[external]'`).

`DiffusersAutoencoder` wraps a diffusers `AutoencoderKL` (e.g. SD-VAE):
  encode(x) -> posterior with .mode() / .sample(generator) of shape (B, C, h, w) (a 2D latent grid,
  stored as the LatentStore "grid" layout (C, H, W), unlike the (T, C) "tokens" of trained runs);
  decode(z) -> images (B, C, H, W) in [-1, 1]. Latents are the raw posterior (no scaling factor);
  the factor is recorded in the description, and SiT normalises with the store's statistics.

Weights come from a local folder (`save_pretrained` layout) or the Hugging Face cache; nothing is
downloaded at run time. `PRETRAINED` names common checkpoints for `diffusers:NAME` specs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from latentlab.errors import LatentlabError
from latentlab.io import file_hash, obj_hash

PRETRAINED = {"sd-vae": "stabilityai/sd-vae-ft-ema", "sd-vae-mse": "stabilityai/sd-vae-ft-mse",
              "sdxl-vae": "stabilityai/sdxl-vae"}


class GridPosterior:
    """A diffusers DiagonalGaussianDistribution exposed as .mode() / .sample(generator), each (B, C, h, w)."""

    def __init__(self, dist):
        self.dist = dist

    def mode(self) -> torch.Tensor:
        return self.dist.mode()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.dist.sample(generator=generator)


class DiffusersAutoencoder(nn.Module):
    """The tokenizer interface around an AutoencoderKL-like module (encode(x).latent_dist, decode(z).sample)."""

    layout = "grid"

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def encode(self, x: torch.Tensor) -> GridPosterior:
        """Images (B, C, H, W) in [-1, 1] -> posterior over (B, C', h, w)."""
        return GridPosterior(self.vae.encode(x).latent_dist)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, C', h, w) -> images (B, C, H, W) in [-1, 1]."""
        return self.vae.decode(z).sample.clamp(-1.0, 1.0)


def describe(vae: nn.Module, name: str, checkpoint_hash: str) -> dict:
    """The description `latentlab.extract` records for an AutoencoderKL-like module."""
    cfg = dict(getattr(vae, "config", {}) or {})
    return {"name": name, "checkpoint_hash": checkpoint_hash, "layout": "grid",
            "image_size": int(cfg.get("sample_size", 256) or 256), "channels": int(cfg.get("in_channels", 3)),
            "dataset": None, "tokenizer": {"external": "diffusers.AutoencoderKL", "source": name,
                                           "scaling_factor": cfg.get("scaling_factor"),
                                           "latent_channels": cfg.get("latent_channels")}}


def load_autoencoder_kl(source: str, subfolder: str | None = None) -> tuple[DiffusersAutoencoder, dict]:
    """Load an AutoencoderKL from a local folder, a PRETRAINED name or a hub repo id in the local cache."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise LatentlabError("diffusers tokenizers need the diffusers package: pip install 'latentlab[external]'") from None
    repo = PRETRAINED.get(source, source)
    local = Path(os.path.expanduser(repo))
    try:
        if local.is_dir():
            vae = AutoencoderKL.from_pretrained(str(local), subfolder=subfolder)
        else:
            vae = AutoencoderKL.from_pretrained(repo, subfolder=subfolder, local_files_only=True)
    except Exception as e:
        raise LatentlabError(f"could not load AutoencoderKL {source!r} ({type(e).__name__}); give a local folder "
                             "written by save_pretrained (config.json + diffusion_pytorch_model.safetensors) or "
                             f"pre-fill the Hugging Face cache with {repo!r}") from None
    weights = sorted(local.glob("**/diffusion_pytorch_model*.safetensors")) if local.is_dir() else []
    digest = file_hash(weights[0]) if weights else obj_hash({"source": repo, "config": dict(vae.config)})
    return DiffusersAutoencoder(vae.eval()), describe(vae, Path(repo).name or repo, digest)
