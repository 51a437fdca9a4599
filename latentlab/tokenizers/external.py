"""Pretrained diffusers autoencoders behind the latentlab tokenizer interface (`pip install 'latentlab[external]'`).

A spec is `diffusers:SOURCE[:ARG=VALUE,...]`, where SOURCE is

  - a folder written by `save_pretrained` (config.json + diffusion_pytorch_model.safetensors); the
    class comes from its config: `AutoencoderKL` (SD-VAE, SDXL-VAE, ...) or `AutoencoderDC` (DC-AE);
  - one checkpoint file (`.safetensors`, or `.ckpt`/`.pt`/`.pth`/`.bin` read with weights_only=True)
    in the original LDM layout, as most released VAEs are, loaded with `from_single_file`. Its config
    comes from `config=DIR` (a folder or cached hub repo with config.json), `original_config=FILE`
    (the LDM YAML) or, failing those, the Hugging Face cache; `class=AutoencoderDC` for a DC-AE file;
  - a `PRETRAINED` name or a hub repo id already in the local Hugging Face cache (`subfolder=vae`
    for a pipeline repo).

Nothing is downloaded at run time. encode(x) -> posterior with .mode() / .sample(generator) of shape
(B, C, h, w) (stored as the LatentStore "grid" layout); AutoencoderDC is deterministic, so its mode is
its latent. decode(z) -> images (B, C, H, W) in [-1, 1]. Latents are raw (no scaling factor); the
factor is recorded in the description, and SiT normalises with the store's statistics.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from latentlab.errors import LatentlabError
from latentlab.io import file_hash, load_json, obj_hash
from latentlab.tokenizers.losses import DeterministicPosterior
from latentlab.tokenizers.plugins import parse_args, split_spec_args

PREFIX = "diffusers:"
PRETRAINED = {"sd-vae": "stabilityai/sd-vae-ft-ema", "sd-vae-mse": "stabilityai/sd-vae-ft-mse",
              "sdxl-vae": "stabilityai/sdxl-vae"}
CLASSES = ("AutoencoderKL", "AutoencoderDC")
SINGLE_FILE = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
ARGS = ("config", "original_config", "class", "subfolder")


class GridPosterior:
    """A diffusers DiagonalGaussianDistribution exposed as .mode() / .sample(generator), each (B, C, h, w)."""

    def __init__(self, dist):
        self.dist = dist

    def mode(self) -> torch.Tensor:
        return self.dist.mode()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.dist.sample(generator=generator)


class DiffusersAutoencoder(nn.Module):
    """The tokenizer interface around a diffusers autoencoder (encode(x).latent_dist or .latent, decode(z).sample)."""

    layout = "grid"

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def encode(self, x: torch.Tensor):
        """Images (B, C, H, W) in [-1, 1] -> posterior over (B, C', h, w)."""
        out = self.vae.encode(x)
        if hasattr(out, "latent_dist"):
            return GridPosterior(out.latent_dist)
        return DeterministicPosterior(out.latent)  # AutoencoderDC: (B, C', h, w)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, C', h, w) -> unclamped images (B, C, H, W)."""
        return self.vae.decode(z).sample

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, C', h, w) -> images (B, C, H, W) in [-1, 1]."""
        return self.decode_raw(z).clamp(-1.0, 1.0)


def describe(vae: nn.Module, name: str, checkpoint_hash: str, spec: str | None = None) -> dict:
    """The description `latentlab.extract` records for a diffusers autoencoder."""
    cfg = dict(getattr(vae, "config", {}) or {})
    size = cfg.get("sample_size")
    return {"name": name, "checkpoint_hash": checkpoint_hash, "layout": "grid",
            "image_size": int(size) if size else None, "channels": int(cfg.get("in_channels", 3)),
            "dataset": None, "decodes": True,
            "tokenizer": {"external": f"diffusers.{type(vae).__name__}", "source": name, "spec": spec,
                          "scaling_factor": cfg.get("scaling_factor"),
                          "latent_channels": cfg.get("latent_channels")}}


def parse_diffusers(spec: str) -> tuple[str, dict]:
    """'diffusers:SOURCE:config=DIR' -> ('SOURCE', {'config': 'DIR'}); unknown arguments are errors."""
    source, args = split_spec_args(str(spec).removeprefix(PREFIX))
    kw = parse_args(args, spec)
    bad = sorted(set(kw) - set(ARGS))
    if bad:
        raise LatentlabError(f"unknown argument {bad[0]!r} in {spec!r}; diffusers specs take {', '.join(ARGS)}")
    if kw.get("class", "AutoencoderKL") not in CLASSES:
        raise LatentlabError(f"class={kw['class']} in {spec!r} is not supported; use one of {', '.join(CLASSES)}")
    if not source:
        raise LatentlabError(f"{spec!r} names no model; write diffusers:PATH_OR_REPO")
    return source, kw


def _quiet_diffusers():
    try:
        import diffusers
    except ImportError:
        raise LatentlabError("diffusers tokenizers need the diffusers package: pip install 'latentlab[external]'") from None
    diffusers.utils.logging.set_verbosity_error()
    return diffusers


def _load(diffusers, source: str, kw: dict) -> tuple[nn.Module, Path | None]:
    """(the diffusers model, the weights file to hash or None)."""
    repo = PRETRAINED.get(source, source)
    local = Path(os.path.expanduser(repo))
    sub = kw.get("subfolder")
    if local.is_file():
        if local.suffix not in SINGLE_FILE:
            raise LatentlabError(f"{local} is not a checkpoint file ({', '.join(SINGLE_FILE)})")
        cls = getattr(diffusers, kw.get("class", "AutoencoderKL"))
        extra = {k: str(Path(os.path.expanduser(kw[k]))) if Path(os.path.expanduser(kw[k])).exists() else kw[k]
                 for k in ("config", "original_config") if k in kw}
        return cls.from_single_file(str(local), local_files_only=True, **extra), local
    if local.is_dir():
        folder = local / sub if sub else local
        name = load_json(folder / "config.json", "diffusers model config").get("_class_name")
        if name not in CLASSES:
            raise LatentlabError(f"{folder} holds a {name}, not an autoencoder latentlab reads ({', '.join(CLASSES)})")
        weights = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
        return getattr(diffusers, name).from_pretrained(str(folder)), weights[0] if weights else None
    model = diffusers.AutoModel.from_pretrained(repo, subfolder=sub, local_files_only=True)
    if type(model).__name__ not in CLASSES:
        raise LatentlabError(f"{repo} holds a {type(model).__name__}, not one of {', '.join(CLASSES)}")
    return model, None


def load_diffusers(spec: str) -> tuple[DiffusersAutoencoder, dict]:
    """Load the autoencoder of a `diffusers:` spec (folder, single LDM-layout file, PRETRAINED name or cached repo)."""
    spec = spec if spec.startswith(PREFIX) else PREFIX + spec
    source, kw = parse_diffusers(spec)
    diffusers = _quiet_diffusers()
    try:
        vae, weights = _load(diffusers, source, kw)
    except LatentlabError:
        raise
    except Exception as e:
        hint = ("give its config: diffusers:FILE:config=DIR (a folder with config.json) or original_config=LDM.yaml"
                if Path(os.path.expanduser(source)).is_file() else
                "give a local folder written by save_pretrained (config.json + diffusion_pytorch_model.safetensors), "
                f"a single checkpoint file, or pre-fill the Hugging Face cache with {PRETRAINED.get(source, source)!r}")
        raise LatentlabError(f"could not load {source!r} with diffusers ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]}); {hint}") from None
    digest = file_hash(weights) if weights else obj_hash({"source": source, "args": kw, "config": dict(vae.config)})
    name = Path(source).stem if Path(os.path.expanduser(source)).is_file() else (Path(source).name or source)
    return DiffusersAutoencoder(vae.eval()), describe(vae, name, digest, spec)

