"""Tokenizer -> LatentStore: deterministic (posterior mode), batched, sharded across torchrun ranks.

A tokenizer is named by a run directory (`latentlab train-tokenizer`) or an external spec
`diffusers:PATH_OR_REPO` (a diffusers AutoencoderKL from a local folder or the hub cache; see
`latentlab.models.external`). Run tokenizers give "tokens" stores of shape (T, C); AutoencoderKL
gives "grid" stores of shape (C, H, W). The manifest records the tokenizer, its checkpoint hash
and the normalisation statistics (per-channel and global mean/std) that SiT uses.

`cached_latents(run, dataset, split)` extracts on first use into RUN/latents/<dataset>/<split> and
reuses that store while the checkpoint hash is unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from latentlab.data import get_dataset
from latentlab.errors import LatentlabError
from latentlab.io import file_hash, load_json
from latentlab.latents import LatentStore
from latentlab.utils import dist_ready, get_device, is_main, progress, rank, world_size


def open_tokenizer(spec: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A tokenizer and its description (name, checkpoint_hash, layout, image_size, channels, dataset, ...)."""
    spec = str(spec)
    if spec.startswith("diffusers:"):
        from latentlab.models.external import load_autoencoder_kl

        model, info = load_autoencoder_kl(spec.partition(":")[2])
        return model.to(device).eval(), info
    from latentlab.models.tokenizers import load_tokenizer

    run = Path(os.path.expanduser(spec))
    model, cfg = load_tokenizer(run, weights, device)
    m = cfg["model"]
    return model, {"name": run.name, "checkpoint_hash": file_hash(run / f"{weights}.safetensors"), "layout": "tokens",
                   "image_size": m["image_size"], "channels": m["channels"], "dataset": cfg.get("dataset"),
                   "tokenizer": {"run": str(run), "arch": cfg.get("arch"), "size": cfg.get("size"),
                                 "teacher": cfg.get("teacher"), "stage": cfg.get("stage"), "weights": weights}}


def _shard(n: int, r: int, ws: int) -> tuple[int, int]:
    """Contiguous [start, end) of rank r out of ws over n items."""
    return n * r // ws, n * (r + 1) // ws


@torch.no_grad()
def encode_dataset(model: torch.nn.Module, ds, start: int, end: int, batch_size: int, device: torch.device):
    """Yield (latents as float32 numpy, labels) for images start..end-1, encoding with the posterior mode."""
    for i in progress(range(start, end, batch_size), desc="extract", total=-(-(end - start) // batch_size)):
        x, y = ds.get_batch(np.arange(i, min(i + batch_size, end)))
        z = model.encode(x.to(device)).mode()  # (B, T, C) or (B, C, H, W)
        yield z.float().cpu().numpy(), y.numpy()


def extract(tokenizer: str | Path, dataset: str | None = None, split: str = "train", out: str | Path | None = None,
            batch_size: int = 256, weights: str = "ema", device: str = "auto", name: str | None = None) -> LatentStore:
    """Encode a dataset split with a tokenizer into a new LatentStore at `out` (rank 0 writes; all ranks encode)."""
    if out is None:
        raise LatentlabError("give --out, the store directory to write")
    if batch_size < 1:
        raise LatentlabError("--batch-size must be >= 1")
    dev = get_device(device)
    model, info = open_tokenizer(tokenizer, weights, dev)
    dataset = dataset or info.get("dataset")
    if not dataset:
        raise LatentlabError(f"{tokenizer} does not record its dataset; pass --dataset")
    ds = get_dataset(dataset, split, image_size=info["image_size"])
    if ds.channels != info["channels"]:
        raise LatentlabError(f"{tokenizer} expects {info['channels']}-channel images but {dataset} has {ds.channels}; "
                             "pick a matching dataset")
    meta = {"name": name or info["name"], "tokenizer": info.get("tokenizer", info["name"]),
            "checkpoint_hash": info["checkpoint_hash"], "dataset": dataset, "split": split,
            "encode": "posterior mode", "image_size": info["image_size"], "spec": str(tokenizer)}
    out = Path(out)
    r, ws = rank(), world_size()
    start, end = _shard(len(ds), r, ws)
    if ws == 1:
        writer = None
        for z, y in encode_dataset(model, ds, start, end, batch_size, dev):
            if writer is None:
                writer = LatentStore.writer(out, z.shape[1:], dict(meta), layout=info["layout"])
            try:
                writer.append(z, y)
            except BaseException:
                writer.abort()
                raise
        if writer is None:
            raise LatentlabError(f"{dataset} split {split} is empty")
        return writer.close()
    # several ranks: each encodes its contiguous shard to a part file, rank 0 assembles the store in order
    part = out.with_name(f".{out.name}.part-{r}.npz")
    parts = list(encode_dataset(model, ds, start, end, batch_size, dev))
    z = np.concatenate([p[0] for p in parts]) if parts else None
    y = np.concatenate([p[1] for p in parts]) if parts else None
    part.parent.mkdir(parents=True, exist_ok=True)
    if z is not None:
        np.savez(part, z=z, y=y)
    torch.distributed.barrier()
    try:
        if is_main():
            writer = None
            for q in range(ws):
                f = out.with_name(f".{out.name}.part-{q}.npz")
                if not f.is_file():
                    continue
                with np.load(f) as d:
                    if writer is None:
                        writer = LatentStore.writer(out, d["z"].shape[1:], dict(meta), layout=info["layout"])
                    writer.append(d["z"], d["y"])
            writer.close()
        torch.distributed.barrier()
    finally:
        part.unlink(missing_ok=True)
    return LatentStore.open(out)


def cache_dir(run: str | Path, dataset: str, split: str) -> Path:
    """RUN/latents/<dataset>/<split> (the dataset spec made filesystem-safe)."""
    return Path(run) / "latents" / re.sub(r"[^A-Za-z0-9._-]+", "_", dataset) / split


def cached_latents(run_path: str | Path, dataset: str | None = None, split: str = "train") -> LatentStore:
    """The run's latents of `dataset`/`split`, extracted on first use and reused while the checkpoint is unchanged."""
    run = Path(run_path)
    cfg = load_json(run / "config.json", "run config")
    dataset = dataset or cfg.get("dataset")
    if not dataset:
        raise LatentlabError(f"{run} does not record its dataset; pass --dataset")
    path = cache_dir(run, dataset, split)
    current = file_hash(run / "ema.safetensors")
    return _cached(path, lambda m: m.get("checkpoint_hash") == current,
                   lambda: extract(run, dataset, split, out=path, name=run.name))


def _cached(path: Path, still_valid, build) -> LatentStore:
    """The store at `path` when it opens and `still_valid(manifest)`, else `build()` (a corrupt cache is rebuilt)."""
    if (path / "manifest.json").is_file():
        try:
            store = LatentStore.open(path)
            if still_valid(store.manifest):
                return store
        except LatentlabError:
            pass
    return build()


def cached_pretrained(spec: str, dataset: str | None, split: str = "train") -> LatentStore:
    """Latents of a pretrained tokenizer spec (e.g. "diffusers:PATH") on `dataset`/`split`, cached in the workspace.

    The cache lives in WORKSPACE/pretrained/<spec>/<dataset>/<split> and is reused while the store
    records the same spec and checkpoint hash (the hash is read from the store, so reuse does not load
    the model).
    """
    from latentlab.workspace import workspace_root

    if not dataset:
        raise LatentlabError(f"{spec} is a pretrained tokenizer: give --dataset to say which images to encode")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec)
    path = cache_dir(workspace_root() / "pretrained" / slug, dataset, split)
    return _cached(path, lambda m: m.get("meta", {}).get("spec") == spec,
                   lambda: extract(spec, dataset, split, out=path, name=slug))
