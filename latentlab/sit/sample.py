"""Sampling a trained SiT run: latents (de-normalised), labels, and decoded images when possible.

`sample(run, out, cfg)` rebuilds the SiT from RUN/config.json, draws noise per sample from
(seed, sample index) so the result does not depend on the batch size (the SDE's Brownian
increments come from (seed, batch start) and do), integrates from t = 0 (noise) to t = 1
(data) with classifier-free guidance on all channels, inverts the latent normalisation, and
writes OUT/latents.npy ((N, T, C), or (N, C, H, W) for grid latents) and OUT/labels.npy.
When the latents came from a tokenizer run (recorded in the SiT config) the latents are
decoded through it into OUT/images/*.png, OUT/images.npz (uint8 N x H x W x C) and OUT/grid.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from latentlab.config import from_dict
from latentlab.data import to_uint8
from latentlab.errors import LatentlabError
from latentlab.extract import is_external, open_tokenizer
from latentlab.io import load_json, load_run_weights, save_json, save_npy
from latentlab.latents import count_nonfinite_rows
from latentlab.outputs import check_output, output_dir
from latentlab.plots.sit import image_grid, save_png
from latentlab.sit.config import SampleConfig, SiTConfig
from latentlab.sit.model import SiT
from latentlab.sit.training import denormalize
from latentlab.sit.transport import Sampler, guided_velocity, integrate, parse_enum
from latentlab.utils import derive_seed, get_device, info, progress


def load_sit(run: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> tuple[SiT, dict]:
    """(SiT with the run's EMA or raw weights, the run's config dict); one-line errors for non-SiT runs."""
    run = Path(run)
    rc = load_json(run / "config.json", "SiT run config")
    if rc.get("kind") != "sit":
        raise LatentlabError(f"{run} is not a SiT run (config kind {rc.get('kind')!r}); train one with `latentlab train-sit`")
    norm = rc.get("normalization") or {}
    stats = np.concatenate([np.ravel(np.asarray(norm.get(k, 0.0), dtype=np.float64)) for k in ("mean", "std")])
    if not np.isfinite(stats).all():
        raise LatentlabError(f"{run}/config.json records {int((~np.isfinite(stats)).sum())} NaN or inf normalisation "
                             f"statistics: the latents it was trained on were not finite; retrain on clean latents")
    model = SiT(from_dict(SiTConfig, rc["model"], f"{run}/config.json model"))
    load_run_weights(run, model, weights)
    return model.to(get_device(device)).eval(), rc


def balanced_labels(n: int, num_classes: int, class_label: int | None = None) -> np.ndarray:
    """(n,) labels 0,1,..,K-1,0,1,..; all `class_label` if given; all -1 for an unconditional model."""
    if class_label is not None:
        if num_classes == 0:
            raise LatentlabError("this SiT is unconditional (its latents had no labels); drop --class")
        if not 0 <= class_label < num_classes:
            raise LatentlabError(f"--class {class_label} is out of range; this SiT has classes 0..{num_classes - 1}")
        return np.full(n, class_label, dtype=np.int64)
    if num_classes == 0:
        return np.full(n, -1, dtype=np.int64)
    return np.arange(n, dtype=np.int64) % num_classes


def sample_noise(n: int, shape: tuple[int, ...], seed: int, start: int = 0) -> torch.Tensor:
    """(n, *shape) noise; row i comes from a generator seeded by (seed, start + i) alone."""
    out = torch.empty((n, *shape))
    for i in range(n):
        g = torch.Generator().manual_seed(derive_seed("sit-sample", seed, start + i))
        out[i] = torch.randn(shape, generator=g)
    return out


@torch.no_grad()
def sample_latents(model: SiT, labels: np.ndarray, cfg: SampleConfig, norm: dict | None = None) -> np.ndarray:
    """Integrate the SiT for every label; returns de-normalised latents (N, *sample_shape) float32."""
    dev = next(model.parameters()).device
    shape = model.cfg.sample_shape
    sampler = parse_enum(Sampler, cfg.sampler, "sampler")
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    parts = []
    for start in progress(range(0, len(labels), cfg.batch_size), desc="sample",
                          total=-(-len(labels) // cfg.batch_size)):
        lab = torch.from_numpy(labels[start:start + cfg.batch_size]).to(dev)            # (B,)
        y = torch.where(lab < 0, torch.full_like(lab, model.null_class), lab)
        x0 = sample_noise(len(lab), shape, cfg.seed, start).to(dev)                      # (B, *shape)
        fn = guided_velocity(model, y, cfg.cfg, model.null_class, cfg.guidance_interval)
        g = torch.Generator(device=dev).manual_seed(derive_seed("sit-sde", cfg.seed, start))

        def vel(x, t):
            with autocast:
                return fn(x, t).float()
        x1 = integrate(vel, x0, cfg.steps, sampler, generator=g, sde_scale=cfg.sde_scale)  # (B, *shape)
        if norm is not None:
            x1 = denormalize(x1, norm)
        parts.append(x1.float().cpu().numpy())
    out = np.concatenate(parts, 0)
    bad = count_nonfinite_rows(out)
    if bad:
        raise LatentlabError(f"{bad} of {len(out)} sampled latents hold NaN or inf (guidance scale {cfg.cfg}, "
                             f"{cfg.steps} {cfg.sampler} steps); lower --cfg or raise --steps")
    return out


class PixelTokens(torch.nn.Module):
    """The "pixels" baseline's decoder: (N, H*W, C) tokens in [-1, 1] -> (N, C, H, W) images."""

    def __init__(self, image_size: int, channels: int):
        super().__init__()
        self.size, self.channels = int(image_size), int(channels)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Tokens (N, H*W, C) -> images (N, C, H, W)."""
        return z.transpose(1, 2).reshape(z.shape[0], self.channels, self.size, self.size)  # (N, C, H, W)


def decoder_for(prov: dict, device: torch.device):
    """(decoder with .decode, its label) for a SiT run's `latents` provenance, or (None, why decoding is skipped)."""
    spec = prov.get("tokenizer_spec")
    if spec:
        if not is_external(spec) and not Path(spec).exists():
            raise LatentlabError(f"the tokenizer run {spec} recorded in the SiT config is gone; "
                                 "restore it or pass --no-decode")
        model, info = open_tokenizer(spec, prov.get("tokenizer_weights") or "ema", device)
        if not info.get("decodes", True):
            return None, f"the tokenizer {spec} has no decode()"
        want = prov.get("checkpoint_hash")
        if want and info.get("checkpoint_hash") != want:
            raise LatentlabError(f"the tokenizer {spec} changed since this SiT was trained (checkpoint hash "
                                 f"{info.get('checkpoint_hash')} != {want}); retrain the SiT or pass --no-decode")
        return model, spec
    if prov.get("tokenizer") == "pixels" and prov.get("image_size") and prov.get("channels"):
        return PixelTokens(prov["image_size"], prov["channels"]), "pixels"
    return None, "its latents were imported without a tokenizer run"




@torch.no_grad()
def decode_latents(tokenizer, latents: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """uint8 (N, H, W, C) images from raw latents through `tokenizer.decode` (output in [-1, 1])."""
    tokenizer = tokenizer.to(device).eval()
    out = []
    for i in progress(range(0, len(latents), batch_size), desc="decode", total=-(-len(latents) // batch_size)):
        z = torch.from_numpy(latents[i:i + batch_size]).to(device)  # (B, T, C)
        out.append(to_uint8(tokenizer.decode(z)))                     # (B, H, W, C)
    return np.concatenate(out, 0)


SAMPLES_KIND = "samples"  # the `.latentlab` marker kind of a `sample` output folder


def sample(run: str | Path, out: str | Path, cfg: SampleConfig | None = None) -> dict:
    """Sample `cfg.n` latents from a SiT run into directory `out` (replaced atomically); returns a summary."""
    cfg = cfg or SampleConfig()
    check_output(out, SAMPLES_KIND)  # before any work
    device = get_device(cfg.device)
    model, rc = load_sit(run, cfg.weights, device)
    labels = balanced_labels(cfg.n, model.cfg.num_classes, cfg.class_label)
    prov = rc.get("latents", {})
    decoder, source = decoder_for(prov, device) if cfg.decode else (None, "--no-decode was given")
    t0 = time.time()
    latents = sample_latents(model, labels, cfg, rc.get("normalization"))
    summary = {"run": str(run), "out": str(out), "n": cfg.n, "sample_shape": list(latents.shape[1:]),
               "sampler": cfg.sampler, "steps": cfg.steps, "cfg": cfg.cfg, "seed": cfg.seed,
               "class": cfg.class_label, "sample_time_s": round(time.time() - t0, 3),
               "latents_mean": float(latents.mean()), "latents_std": float(latents.std()),
               "decoded": False, "files": {}}
    with output_dir(out, SAMPLES_KIND) as tmp:
        save_npy(latents, tmp / "latents.npy")
        save_npy(labels, tmp / "labels.npy")
        if decoder is not None:
            images = decode_latents(decoder, latents, cfg.batch_size, device)  # (N, H, W, C)
            np.savez_compressed(tmp / "images.npz", images=images, labels=labels)
            (tmp / "images").mkdir()
            for i in range(min(len(images), cfg.max_pngs)):
                save_png(images[i], tmp / "images" / f"{i:05d}.png")
            k = min(len(images), cfg.grid_size)
            save_png(image_grid(images[:k]), tmp / "grid.png", upscale=2 if images.shape[1] < 64 else 1)
            summary.update(decoded=True, decoder=source, image_shape=list(images.shape[1:]))
        else:
            summary["skipped_decoding"] = source
            info(f"skipped decoding: {source}; wrote latents only")
        save_json({**summary, "config": {k: v for k, v in vars(cfg).items()}}, tmp / "summary.json")
    names = ["latents.npy", "labels.npy", "summary.json"] + (["images.npz", "grid.png", "images/"] if summary["decoded"] else [])
    summary["files"] = {n: str(Path(out) / n) for n in names}
    return summary
