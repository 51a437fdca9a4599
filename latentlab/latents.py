"""LatentStore: sharded, memory-mappable latents + labels + manifest (the on-disk format only).

On disk (see ARCHITECTURE.md)::

    STORE/
      manifest.json        format version, tokenizer id + checkpoint hash, dataset, split,
                           sample_shape, layout, dtype, count, normalisation stats, created
      latents-00000.npy    shards of shape (n_i, *sample_shape), memory-mappable
      labels.npy           int64 (count,), -1 where a sample has no label
      .latentlab           {"kind": "store", "files": [...]}: replaced only by another store

A store is written to a temporary directory and renamed, so it is complete or absent.
`sample_shape` is `(tokens, channels)` for 1D-token tokenizers ("tokens" layout), or
`(channels, height, width)` for 2D latent grids ("grid" layout). Analyses read a store through
`latentlab.analysis.stream.Rows`, which flattens each sample to one vector of
`dim = prod(sample_shape)` features (or pools it) and splits the rows by rank.

A *store set* is a directory whose `train/` and `test/` subdirectories are stores
(what `import-latents --dataset`, `extract --split train,test` and the per-run latent cache write); `open_split` finds
the requested split in either form.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentlab.errors import LatentlabError
from latentlab.io import load_json, save_json
from latentlab.outputs import output_dir

FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 65536
LAYOUTS = ("tokens", "grid")
STORE_KIND, STORE_SET_KIND = "store", "store set"  # their `.latentlab` marker kinds (latentlab.outputs)


@dataclass
class _Moments:
    """Streaming float64 sums for per-channel and global mean/std."""

    n: int = 0
    s: np.ndarray | None = None
    ss: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:  # x: (rows, C)
        x = x.astype(np.float64, copy=False)
        if self.s is None:
            self.s = np.zeros(x.shape[1])
            self.ss = np.zeros(x.shape[1])
        self.n += x.shape[0]
        self.s += x.sum(0)
        self.ss += np.square(x).sum(0)

    def stats(self) -> dict:
        if not self.n:
            return {}
        mean = self.s / self.n
        var = np.maximum(self.ss / self.n - mean**2, 0.0)
        gmean = float(self.s.sum() / (self.n * len(self.s)))
        gvar = max(float(self.ss.sum() / (self.n * len(self.s)) - gmean**2), 0.0)
        return {"channel_mean": mean.tolist(), "channel_std": np.sqrt(var).tolist(),
                "global_mean": gmean, "global_std": float(np.sqrt(gvar))}


def _channels_last(x: np.ndarray, layout: str) -> np.ndarray:
    """(n, *sample_shape) -> (rows, C) with the channel axis last."""
    if layout == "grid":
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


class LatentStoreWriter:
    """Streams batches into shards of a new store; `close()` renames it into place.

    Use as a context manager; an exception leaves no store behind.
    """

    def __init__(self, path: str | os.PathLike, sample_shape: tuple[int, ...], meta: dict | None = None,
                 dtype: str = "float32", layout: str = "tokens", shard_size: int = DEFAULT_SHARD_SIZE,
                 parents: bool = True):
        if layout not in LAYOUTS:
            raise LatentlabError(f"unknown layout {layout!r}; use one of {LAYOUTS}")
        self.path = Path(path)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.dtype = np.dtype(dtype)
        self.layout = layout
        self.meta = dict(meta or {})
        self.shard_size = int(shard_size)
        self._ctx = output_dir(self.path, STORE_KIND, parents)
        self._tmp = self._ctx.__enter__()
        self._buf: list[np.ndarray] = []
        self._buf_n = 0
        self._labels: list[np.ndarray] = []
        self._shards: list[dict] = []
        self._moments = _Moments()
        self.count = 0
        self._closed = False

    def append(self, latents: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add a batch of shape (n, *sample_shape) with optional int labels (n,)."""
        latents = np.asarray(latents)
        if tuple(latents.shape[1:]) != self.sample_shape:
            raise LatentlabError(f"batch shape {latents.shape[1:]} does not match the store's {self.sample_shape}")
        n = latents.shape[0]
        if labels is None:
            labels = np.full(n, -1, dtype=np.int64)
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.shape[0] != n:
            raise LatentlabError(f"{n} latents but {labels.shape[0]} labels; they must have the same length")
        bad = count_nonfinite_rows(latents)
        if bad:
            raise LatentlabError(f"{bad} of {n} latent rows contain NaN or inf; clean them before storing")
        self._moments.update(_channels_last(latents, self.layout))
        self._labels.append(labels)
        self._buf.append(latents.astype(self.dtype, copy=False))
        self._buf_n += n
        self.count += n
        while self._buf_n >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self._buf, 0) if len(self._buf) > 1 else self._buf[0]
        shard, rest = data[:n], data[n:]
        name = f"latents-{len(self._shards):05d}.npy"
        np.save(self._tmp / name, np.ascontiguousarray(shard))
        self._shards.append({"file": name, "count": int(shard.shape[0])})
        self._buf = [rest] if rest.shape[0] else []
        self._buf_n = int(rest.shape[0])

    def close(self) -> "LatentStore":
        """Write the last shard, labels and manifest, and rename the store into place."""
        if self._closed:
            return LatentStore.open(self.path)
        if self.count == 0:
            self.abort()
            raise LatentlabError(f"no latents were written to {self.path}")
        if self._buf_n:
            self._flush(self._buf_n)
        labels = np.concatenate(self._labels)
        np.save(self._tmp / "labels.npy", labels)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": self.meta.pop("name", self.path.name),
            "tokenizer": self.meta.pop("tokenizer", None),
            "checkpoint_hash": self.meta.pop("checkpoint_hash", None),
            "dataset": self.meta.pop("dataset", None),
            "split": self.meta.pop("split", None),
            "sample_shape": list(self.sample_shape),
            "layout": self.layout,
            "dtype": self.dtype.name,
            "count": int(self.count),
            "num_classes": int(labels.max() + 1) if (labels >= 0).any() else 0,
            "has_labels": bool((labels >= 0).all()),
            "stats": self._moments.stats(),
            "shards": self._shards,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "meta": self.meta,
        }
        save_json(manifest, self._tmp / "manifest.json")
        self._ctx.__exit__(None, None, None)
        self._closed = True
        return LatentStore.open(self.path)

    def abort(self) -> None:
        """Discard everything written so far."""
        if not self._closed:
            self._closed = True
            try:
                self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass

    def __enter__(self) -> "LatentStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class LatentStore:
    """A read-only view of a store directory; shards are memory-mapped, never loaded whole."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self._shards = [np.load(path / s["file"], mmap_mode="r") for s in manifest["shards"]]
        self._offsets = np.cumsum([0] + [s["count"] for s in manifest["shards"]])
        self._labels = np.load(path / "labels.npy", mmap_mode="r")
        self._nonfinite: int | None = None

    # ------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | os.PathLike, latents: np.ndarray, labels: np.ndarray | None = None,
               meta: dict | None = None, layout: str | None = None, dtype: str | None = None,
               shard_size: int = DEFAULT_SHARD_SIZE) -> "LatentStore":
        """Write `latents` (N, T, C), (N, D) or (N, C, H, W) and `labels` (N,) as a new store.

        (N, D) is stored as (N, 1, D); 4-D input uses the "grid" layout.
        """
        latents = np.asarray(latents)
        if latents.ndim == 2:
            latents = latents[:, None, :]
        if latents.ndim not in (3, 4):
            raise LatentlabError(f"latents must be (N, T, C), (N, D) or (N, C, H, W); got shape {latents.shape}")
        if labels is not None and len(labels) != len(latents):
            raise LatentlabError(f"{len(latents)} latents but {len(labels)} labels; they must have the same length")
        layout = layout or ("grid" if latents.ndim == 4 else "tokens")
        dtype = dtype or (latents.dtype.name if latents.dtype in (np.float16, np.float32, np.float64) else "float32")
        with LatentStoreWriter(path, latents.shape[1:], meta, dtype=dtype, layout=layout, shard_size=shard_size) as w:
            for i in range(0, len(latents), shard_size):
                w.append(latents[i:i + shard_size], None if labels is None else labels[i:i + shard_size])
        return cls.open(path)

    @classmethod
    def writer(cls, path: str | os.PathLike, sample_shape: tuple[int, ...], meta: dict | None = None,
               **kw) -> LatentStoreWriter:
        """A streaming writer for stores too large to hold in memory."""
        return LatentStoreWriter(path, sample_shape, meta, **kw)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "LatentStore":
        """Open a store; a missing, partial or corrupt store is a one-line LatentlabError."""
        path = Path(path)
        if not path.exists():
            raise LatentlabError(f"latent store not found: {path}")
        if not (path / "manifest.json").is_file():
            raise LatentlabError(f"{path} is not a latent store (no manifest.json); create one with `latentlab import-latents`")
        manifest = load_json(path / "manifest.json", "latent store manifest")
        for key in ("format_version", "sample_shape", "count", "shards", "dtype"):
            if key not in manifest:
                raise LatentlabError(f"latent store {path} has a corrupt manifest (missing {key!r}); recreate the store")
        if manifest["format_version"] > FORMAT_VERSION:
            raise LatentlabError(f"latent store {path} has format {manifest['format_version']}; upgrade latentlab")
        try:
            store = cls(path, manifest)
        except (OSError, ValueError, EOFError) as e:
            raise LatentlabError(f"latent store {path} is corrupt ({type(e).__name__}: {e}); recreate it") from None
        shape = tuple(manifest["sample_shape"])
        total = 0
        for s, arr in zip(manifest["shards"], store._shards):
            if tuple(arr.shape[1:]) != shape or arr.shape[0] != s["count"]:
                raise LatentlabError(f"latent store {path}: shard {s['file']} has shape {arr.shape}, "
                                     f"manifest says ({s['count']}, {shape}); recreate the store")
            total += arr.shape[0]
        if total != manifest["count"] or store._labels.shape != (total,):
            raise LatentlabError(f"latent store {path}: {total} latents and {store._labels.shape[0]} labels, "
                                 f"manifest says {manifest['count']}; recreate the store")
        return store

    # ------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        return f"LatentStore({str(self.path)!r}, n={len(self)}, sample_shape={self.sample_shape})"

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.path.name

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["sample_shape"])

    @property
    def layout(self) -> str:
        return self.manifest.get("layout", "tokens")

    @property
    def dim(self) -> int:
        """Features per sample once flattened."""
        return int(np.prod(self.sample_shape))

    @property
    def stats(self) -> dict:
        """Normalisation statistics: channel_mean, channel_std, global_mean, global_std."""
        return self.manifest.get("stats", {})

    @property
    def split(self) -> str | None:
        return self.manifest.get("split")

    @property
    def dataset(self) -> str | None:
        return self.manifest.get("dataset")

    @property
    def has_labels(self) -> bool:
        return bool(self.manifest.get("has_labels", False))

    @property
    def labels(self) -> np.ndarray:
        """All labels as int64 (N,), -1 for unlabelled samples."""
        return np.asarray(self._labels, dtype=np.int64)

    # ------------------------------------------------------------ reading
    def get(self, start: int, stop: int, flatten: bool = False, dtype=np.float32) -> np.ndarray:
        """Rows [start, stop) as an array (copied out of the memory maps)."""
        start, stop = max(0, start), min(len(self), stop)
        parts = []
        i = int(np.searchsorted(self._offsets, start, side="right") - 1)
        while start < stop:
            lo = start - self._offsets[i]
            hi = min(stop, self._offsets[i + 1]) - self._offsets[i]
            parts.append(np.asarray(self._shards[i][lo:hi], dtype=dtype))
            start = self._offsets[i] + hi
            i += 1
        out = np.concatenate(parts, 0) if parts else np.zeros((0, *self.sample_shape), dtype)
        return out.reshape(out.shape[0], -1) if flatten else out

    def take(self, indices: np.ndarray, flatten: bool = False, dtype=np.float32) -> np.ndarray:
        """Rows at `indices` (any order)."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.sample_shape), dtype=dtype)
        shard = np.searchsorted(self._offsets, indices, side="right") - 1
        for s in np.unique(shard):
            m = shard == s
            out[m] = self._shards[s][indices[m] - self._offsets[s]]
        return out.reshape(len(indices), -1) if flatten else out

    def load(self, flatten: bool = False, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """The whole store in memory, for small stores: (latents, labels)."""
        return self.get(0, len(self), flatten, dtype), self.labels

    def count_nonfinite(self, batch_size: int = 65536) -> int:
        """Number of rows holding NaN or inf (streamed once; the count is kept for this open store)."""
        if self._nonfinite is None:
            self._nonfinite = sum(count_nonfinite_rows(shard, batch_size) for shard in self._shards)
        return self._nonfinite


def count_nonfinite_rows(x: np.ndarray, chunk: int = 65536) -> int:
    """Rows of `x` (n, ...) holding NaN or inf, counted in chunks so a memory map is never copied whole."""
    n = len(x)
    return int(sum((~np.isfinite(np.asarray(x[i:i + chunk]).reshape(min(chunk, n - i), -1))).any(1).sum()
                   for i in range(0, n, chunk)))


def is_store(path: str | os.PathLike) -> bool:
    return (Path(path) / "manifest.json").is_file()


def open_split(path: str | os.PathLike, split: str = "train", required: bool = True) -> LatentStore | None:
    """Open `split` from a store or a store set (a directory with train/ and test/ stores).

    A plain store answers for its own split (or any split when its manifest names none).
    """
    path = Path(path)
    if is_store(path / split):
        return LatentStore.open(path / split)
    if is_store(path):
        store = LatentStore.open(path)
        # a plain store answers for its own split; one that is not "test" also serves as train
        if store.split in (None, split) or (split == "train" and store.split != "test"):
            return store
        if not required:
            return None
        raise LatentlabError(f"{path} holds the {store.split!r} split, not {split!r}")
    if not required:
        return None
    if not path.exists():
        raise LatentlabError(f"latent store not found: {path}")
    raise LatentlabError(f"{path} is not a latent store (no manifest.json); create one with `latentlab import-latents`")
