"""Tokenizer -> LatentStore: deterministic (posterior mode), batched, sharded across torchrun ranks.

A tokenizer is named by a run directory (`latentlab train-tokenizer`) or an external spec:
`diffusers:SOURCE[:ARGS]` (a diffusers AutoencoderKL or AutoencoderDC from a folder, a single
LDM-layout checkpoint or the hub cache; `latentlab.tokenizers.external`) or
`python:MODULE:CALLABLE[:ARGS]` (your own code, or a registered plug-in; `latentlab.tokenizers.plugins`).
Latents of shape (T, C) give "tokens" stores, (C, H, W) "grid" stores. The manifest records the
tokenizer (for plug-ins: module, callable, kwargs and file hashes), its checkpoint hash and the
normalisation statistics (per-channel and global mean/std) that SiT uses.

Importing: `import_arrays` stores latents computed elsewhere, `import_pixels` the pixels baseline.

Resolving `--tokenizer` arguments to latent stores (`resolve_tokenizer`):

A tokenizer argument is `[LABEL=]SPEC`, where SPEC is one of
  - a LatentStore directory, or a store set with train/ and test/ stores;
  - planted modes "planted:modes=M,dim=D,n=N,seed=S" (`latentlab.planted`; cached in WORKSPACE/planted/);
  - a tokenizer run directory (`cached_latents`: extracted on first use into
    RUN/latents/<dataset>/<split>, reused while the checkpoint hash is unchanged);
  - an external tokenizer "diffusers:..." or "python:..." (needs the dataset; latents cached in
    WORKSPACE/pretrained/, redone when the checkpoint or plug-in module changes);
  - a name under the workspace: WORKSPACE/stores/NAME or WORKSPACE/runs/NAME.
The workspace is $LATENTLAB_WORKSPACE, or ./workspace.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from latentlab.config import ExtractConfig
from latentlab.data import get_dataset
from latentlab.errors import LatentlabError
from latentlab.io import file_hash, load_json, load_npy, obj_hash, workspace_root
from latentlab.latents import STORE_KIND, STORE_SET_KIND, LatentStore, count_nonfinite_rows, is_store, open_split
from latentlab.outputs import check_output, output_dir
from latentlab.planted import parse_planted, planted_slug, write_planted
from latentlab.tokenizers.external import PREFIX as DIFFUSERS, SINGLE_FILE, load_diffusers, parse_diffusers
from latentlab.tokenizers.plugins import describe_plugin, is_plugin, load_plugin, parse_plugin
from latentlab.tokenizers.training import load_tokenizer
from latentlab.utils import get_device, is_main, progress, rank, rank_range, world_size


def is_external(spec: str | Path) -> bool:
    """True for a tokenizer that latentlab did not train: a `diffusers:` or `python:` spec."""
    return str(spec).startswith(DIFFUSERS) or is_plugin(spec)


def open_tokenizer(spec: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A tokenizer and its description (name, checkpoint_hash, image_size, channels, dataset, decodes, ...)."""
    spec = str(spec)
    if is_external(spec):
        model, info = load_diffusers(spec) if spec.startswith(DIFFUSERS) else load_plugin(spec)
        return model.to(device).eval(), info
    run = Path(os.path.expanduser(spec))
    model, cfg = load_tokenizer(run, weights, device)
    m = cfg["model"]
    return model, {"name": run.name, "checkpoint_hash": file_hash(run / f"{weights}.safetensors"), "layout": "tokens",
                   "image_size": m["image_size"], "channels": m["channels"], "dataset": cfg.get("dataset"),
                   "decodes": True, "tokenizer": {"run": str(run), "arch": cfg.get("arch"), "size": cfg.get("size"),
                                 "teacher": cfg.get("teacher"), "stage": cfg.get("stage"), "weights": weights}}


@torch.no_grad()
def encode_dataset(model: torch.nn.Module, ds, start: int, end: int, batch_size: int, device: torch.device):
    """Yield (latents as float32 numpy, labels) for images start..end-1, encoding with the posterior mode."""
    for i in progress(range(start, end, batch_size), desc="extract", total=-(-(end - start) // batch_size)):
        x, y = ds.get_batch(np.arange(i, min(i + batch_size, end)))
        z = model.encode(x.to(device)).mode()  # (B, T, C) or (B, C, H, W)
        yield z.float().cpu().numpy(), y.numpy()


def _layout(z: np.ndarray) -> str:
    """The LatentStore layout of a batch of latents: (B, T, C) tokens or (B, C, H, W) grid."""
    return "tokens" if z.ndim == 3 else "grid"


def extract(tokenizer: str | Path, dataset: str | None = None, split: str = ExtractConfig.split,
            out: str | Path | None = None, batch_size: int = ExtractConfig.batch_size,
            weights: str = ExtractConfig.weights, device: str = ExtractConfig.device,
            name: str | None = None) -> LatentStore:
    """Encode a dataset split with a tokenizer into a new LatentStore at `out` (rank 0 writes; all ranks encode)."""
    return extract_set(tokenizer, dataset, (split,), out, batch_size, weights, device, name, as_set=False)[split]


def extract_set(tokenizer: str | Path, dataset: str | None = None, splits: Sequence[str] = ("train", "test"),
                out: str | Path | None = None, batch_size: int = ExtractConfig.batch_size,
                weights: str = ExtractConfig.weights, device: str = ExtractConfig.device,
                name: str | None = None, as_set: bool = True) -> dict[str, LatentStore]:
    """Encode several splits with one loaded tokenizer into a store set OUT/<split>/, which appears whole or not
    at all (with as_set=False and one split: the store OUT itself)."""
    if out is None:
        raise LatentlabError("give --out, the store directory to write")
    if batch_size < 1:
        raise LatentlabError("--batch-size must be >= 1")
    if not splits or len(set(splits)) != len(splits) or (not as_set and len(splits) != 1):
        raise LatentlabError(f"give each split once (got {', '.join(splits) or 'none'})")
    out = Path(out)
    check_output(out, STORE_SET_KIND if as_set else STORE_KIND)  # before any work
    dev = get_device(device)
    model, info = open_tokenizer(tokenizer, weights, dev)
    dataset = dataset or info.get("dataset")
    if not dataset:
        raise LatentlabError(f"{tokenizer} does not record its dataset; pass --dataset")
    if not as_set:
        return {splits[0]: _extract_split(model, info, tokenizer, dataset, splits[0], out, out, batch_size, dev, name)}
    with output_dir(out, STORE_SET_KIND) if is_main() else contextlib.nullcontext(None) as tmp:
        for split in splits:  # rank 0 writes into the set's temporary folder; part files go beside the set
            _extract_split(model, info, tokenizer, dataset, split, tmp / split if tmp is not None else None,
                           out.with_name(f"{out.name}-{split}"), batch_size, dev, name)
    if world_size() > 1:
        torch.distributed.barrier()
    return {split: LatentStore.open(out / split) for split in splits}


def _extract_split(model: torch.nn.Module, info: dict, tokenizer: str | Path, dataset: str, split: str,
                   out: Path | None, parts: Path, batch_size: int, dev: torch.device, name: str | None
                   ) -> LatentStore | None:
    """Encode one split with a loaded tokenizer into the store `out` (rank 0; other ranks may pass None).

    Under several ranks each encodes its contiguous shard to `.PARTS.part-RANK.npz` and rank 0 assembles them.
    """
    ds = get_dataset(dataset, split, image_size=info["image_size"])
    if info["channels"] is not None and ds.channels != info["channels"]:
        raise LatentlabError(f"{tokenizer} expects {info['channels']}-channel images but {dataset} has {ds.channels}; "
                             "pick a matching dataset")
    meta = {"name": name or info["name"], "tokenizer": info.get("tokenizer", info["name"]),
            "checkpoint_hash": info["checkpoint_hash"], "dataset": dataset, "split": split,
            "encode": "posterior mode", "image_size": ds.image_size, "channels": ds.channels, "spec": str(tokenizer)}
    r, ws = rank(), world_size()
    start, end = rank_range(len(ds), r, ws)
    if ws == 1:
        writer = None
        for z, y in encode_dataset(model, ds, start, end, batch_size, dev):
            if writer is None:
                writer = LatentStore.writer(out, z.shape[1:], dict(meta), layout=_layout(z))
            try:
                writer.append(z, y)
            except BaseException:
                writer.abort()
                raise
        if writer is None:
            raise LatentlabError(f"{dataset} split {split} is empty")
        return writer.close()
    shard = f".{parts.name}.part-{{}}.npz".format  # each rank's part file, beside the store
    part = parts.with_name(shard(r))
    if is_main():  # a killed earlier run (perhaps with more ranks) may have left parts behind
        for stale in parts.parent.glob(shard("*")):
            stale.unlink(missing_ok=True)
    torch.distributed.barrier()
    chunks = list(encode_dataset(model, ds, start, end, batch_size, dev))
    part.parent.mkdir(parents=True, exist_ok=True)
    if chunks:
        np.savez(part, z=np.concatenate([c[0] for c in chunks]), y=np.concatenate([c[1] for c in chunks]))
    torch.distributed.barrier()
    try:
        if is_main():
            writer = None
            for f in filter(Path.is_file, (parts.with_name(shard(q)) for q in range(ws))):  # ranks with rows
                with np.load(f) as d:
                    if writer is None:
                        writer = LatentStore.writer(out, d["z"].shape[1:], dict(meta), layout=_layout(d["z"]))
                    writer.append(d["z"], d["y"])
            writer.close()
        torch.distributed.barrier()
    finally:
        part.unlink(missing_ok=True)
    return LatentStore.open(out) if out is not None else None


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
    path.parent.mkdir(parents=True, exist_ok=True)  # a cache: latentlab owns the folders above it
    return build()


def cached_pretrained(spec: str, dataset: str | None, split: str = "train") -> LatentStore:
    """Latents of an external tokenizer spec ("diffusers:..." or "python:...") on `dataset`/`split`, cached in the workspace.

    The cache lives in WORKSPACE/pretrained/<spec>/<dataset>/<split> and is reused while the store
    records the same spec and, for a plug-in, the same hash of its module file and the files its
    kwargs name (computed without building the model; a diffusers checkpoint hash is read from the
    store, so reuse does not load the model).
    """
    if not dataset:
        raise LatentlabError(f"{spec} is a pretrained tokenizer: give --dataset to say which images to encode")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec)
    slug = slug if len(slug) <= 120 else f"{slug[:100]}-{obj_hash(spec)}"
    path = cache_dir(workspace_root() / "pretrained" / slug, dataset, split)
    current = describe_plugin(spec)["checkpoint_hash"] if is_plugin(spec) else None
    return _cached(path, lambda m: m.get("meta", {}).get("spec") == spec
                   and (current is None or m.get("checkpoint_hash") == current),
                   lambda: extract(spec, dataset, split, out=path, name=slug))


def default_label(spec: str) -> str:
    """The name an unlabelled external tokenizer gets: the plug-in's callable or entry point, the diffusers folder."""
    if is_plugin(spec):
        return parse_plugin(spec).label
    source = Path(parse_diffusers(spec)[0].rstrip("/"))
    return source.stem if source.suffix in SINGLE_FILE else source.name


def cached_planted(spec: str) -> dict[str, LatentStore]:
    """The train/test stores of a planted-modes spec ("planted:modes=4,dim=16,n=2000,seed=0"), cached in the workspace."""
    ps = parse_planted(spec)
    path = workspace_root() / "planted" / planted_slug(ps)
    stores = {split: _cached(path / split, lambda m: m.get("dataset") == ps.key(), lambda: None)
              for split in ("train", "test")}
    return stores if all(stores.values()) else write_planted(ps, path)


# ---------------------------------------------------------------- importing

def import_arrays(latents: str | os.PathLike, labels: str | os.PathLike | None, out: str | os.PathLike,
                  name: str | None = None, split: str | None = None, dataset: str | None = None) -> LatentStore:
    """Store latents extracted elsewhere: X.npy of shape (N, T, C), (N, D) or (N, C, H, W), optional y.npy (N,)."""
    check_output(out, STORE_KIND)  # before reading anything
    x = load_npy(latents, "latents")
    if x.ndim not in (2, 3, 4):
        raise LatentlabError(f"latents must be (N, T, C), (N, D) or (N, C, H, W); {latents} has shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise LatentlabError(f"latents in {latents} have dtype {x.dtype}; save them as floats")
    y = None
    if labels is not None:
        y = np.asarray(load_npy(labels, "labels"))
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise LatentlabError(f"labels must be a 1-D integer array; {labels} is {y.dtype} {y.shape}")
        if len(y) != len(x):
            raise LatentlabError(f"{len(x)} latents but {len(y)} labels; they must have the same length")
        neg = int((y < 0).sum())
        if neg:
            raise LatentlabError(f"{neg} of {len(y)} labels in {labels} are negative; class labels are 0, 1, 2, ... "
                                 f"(drop --labels for unlabelled latents)")
    bad = count_nonfinite_rows(x)
    if bad:
        raise LatentlabError(f"{bad} of {len(x)} latent rows contain NaN or inf; clean or drop them before importing")
    dtype = x.dtype.name if x.dtype in (np.float16, np.float32, np.float64) else "float32"
    meta = {"name": name or Path(out).name, "tokenizer": f"imported:{Path(latents).name}",
            "split": split, "dataset": dataset, "source": str(latents)}
    return LatentStore.create(out, x, y, meta, dtype=dtype)


def import_pixels(dataset: str, out: str | os.PathLike, splits: tuple[str, ...] = ("train", "test"),
                  name: str = "pixels") -> dict[str, LatentStore]:
    """The "pixels" baseline tokenizer: raw images in [-1, 1] as (H*W, C) tokens, one store per split."""
    out = Path(out)
    with output_dir(out, STORE_SET_KIND) as tmp:  # checked before any work; the set appears whole or not at all
        for split in splits:
            ds = get_dataset(dataset, split)
            x = torch_images_to_tokens(ds)
            meta = {"name": name, "tokenizer": "pixels", "dataset": ds.name, "split": split,
                    "checkpoint_hash": None, "image_size": ds.image_size, "channels": ds.channels}
            LatentStore.create(tmp / split, x, ds.labels, meta)
    return {split: LatentStore.open(out / split) for split in splits}


def torch_images_to_tokens(ds) -> np.ndarray:
    """All images of a dataset as float32 (N, H*W, C) pixel tokens in [-1, 1]."""
    parts = []
    for imgs, _ in ds.batches(1024):
        parts.append(imgs.flatten(2).transpose(1, 2).numpy())  # (B, H*W, C)
    return np.concatenate(parts, 0)


# ---------------------------------------------------------------- resolving --tokenizer

@dataclass
class TokenizerLatents:
    """The latents of one tokenizer on one dataset: a label, the train store and the test store if any."""

    name: str
    train: LatentStore
    test: LatentStore | None
    source: str

    def check_finite(self) -> None:
        """Refuse latents holding NaN or inf, naming the tokenizer, the store and how many rows are bad."""
        for store in (self.train, self.test):
            bad = store.count_nonfinite() if store is not None else 0
            if bad:
                raise LatentlabError(f"tokenizer {self.name!r}: {bad} of {len(store)} latent rows in {store.path} "
                                     f"contain NaN or inf; clean or drop them and re-import the store")


def check_finite(tokenizers: Sequence[TokenizerLatents]) -> None:
    """`TokenizerLatents.check_finite` for each tokenizer, before any work starts."""
    for t in tokenizers:
        t.check_finite()


def _is_run(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def resolve_path(spec: str) -> Path:
    """Turn SPEC into an existing path (a store, store set or run), looking in the workspace too."""
    p = Path(os.path.expanduser(spec))
    if p.exists():
        return p
    for sub in ("stores", "runs"):
        q = workspace_root() / sub / spec
        if q.exists():
            return q
    raise LatentlabError(f"no latent store, tokenizer run or workspace name {spec!r} "
                         f"(looked in ./ and {workspace_root()}/stores, /runs); check the path or set LATENTLAB_WORKSPACE")


def _is_spec(spec: str) -> bool:
    """Whether `spec` names a tokenizer by itself: external, planted, an existing path or a workspace name."""
    try:
        return is_external(spec) or spec.startswith("planted:") or resolve_path(spec) is not None
    except LatentlabError:
        return False


def split_label(arg: str) -> tuple[str, str]:
    """`[LABEL=]SPEC` -> (label, spec), label "" when absent. Labels may hold "=" (a variant: ``vae@kl_weight=1e-06``)
    and so may specs (``python:m:f:k=v``): the cut is at the first "=" whose right side names a tokenizer, unless
    the whole argument does; failing both, after a plain label (the spec's own error then names it)."""
    if _is_spec(arg):
        return "", arg
    for i in (i for i, ch in enumerate(arg) if ch == "="):
        if re.fullmatch(r"[\w.+@=,-]+", arg[:i]) and _is_spec(arg[i + 1:]):
            return arg[:i], arg[i + 1:]
    label, sep, spec = arg.partition("=")
    return (label, spec) if sep and re.fullmatch(r"[\w.+-]+", label) else ("", arg)


def resolve_tokenizer(arg: str, dataset: str | None = None, need_test: bool = False) -> TokenizerLatents:
    """Resolve one `--tokenizer [LABEL=]SPEC` argument to its train (and test) latent stores."""
    label, spec = split_label(arg)
    if is_external(spec):
        train = cached_pretrained(spec, dataset, "train")
        test = cached_pretrained(spec, dataset, "test")
        return TokenizerLatents(name=label or default_label(spec), train=train, test=test, source=spec)
    if spec.startswith("planted:"):
        stores = cached_planted(spec)
        return TokenizerLatents(name=label or stores["train"].name, train=stores["train"], test=stores["test"],
                                source=spec)
    path = resolve_path(spec)
    if _is_run(path):
        train = cached_latents(path, dataset=dataset, split="train")
        test = cached_latents(path, dataset=dataset, split="test")
    elif is_store(path) or is_store(path / "train"):
        train = open_split(path, "train")
        test = open_split(path, "test", required=False)
        if test is not None and test.path == train.path:
            test = None
    else:
        raise LatentlabError(f"{path} is neither a latent store nor a tokenizer run")
    if need_test and test is None:
        raise LatentlabError(f"{path} has no test split; import or extract one with --split test")
    name = label or train.name or path.name
    return TokenizerLatents(name=name, train=train, test=test, source=str(path))


def resolve_tokenizers(args: list[str] | tuple[str, ...], dataset: str | None = None) -> list[TokenizerLatents]:
    """Resolve several `--tokenizer` arguments; labels must be unique."""
    if not args:
        raise LatentlabError("give at least one --tokenizer (a latent store, a tokenizer run or a workspace name)")
    out = [resolve_tokenizer(a, dataset) for a in args]
    names = [t.name for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LatentlabError(f"two tokenizers are both called {dup[0]!r}; label them as --tokenizer LABEL=PATH")
    return out
