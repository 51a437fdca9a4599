"""The one streaming adapter: rows of an array, a tensor or a LatentStore, in batches, split by rank.

Every analysis reads its data through `Rows`: the PCA, the Gaussian mixture, the linear probe
and the structure metrics. A view holds the full data set (optionally only the rows `indices`),
so that every rank of a torch.distributed job sees the same `n` and rows; `batches(shard=True)`
streams this rank's contiguous part (`utils.rank_range`), `take` reads any rows.

A sample of a store of shape (T, C) ("tokens" layout) or (C, H, W) ("grid" layout) becomes one
row: `flatten` keeps every value (T*C), `mean` averages over tokens / spatial positions (C).
Small stores can be read into memory once (`max_bytes`); large ones (ImageNet: 1.28M x 4096) are
streamed from the memory-mapped shards, in batches of shuffled contiguous blocks when given an
`rng` (a batch then mixes rows from all over a store that is sorted by class).

Rows come back as torch tensors of the data's own float dtype (CPU for arrays and stores, the
tensor's device for a tensor; integer data as float64, pooled store rows as float32).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from latentlab.analysis.config import POOLS
from latentlab.errors import LatentlabError
from latentlab.latents import LatentStore
from latentlab.utils import rank, rank_range, world_size

DEFAULT_CHUNK_ROWS = 65536
DEFAULT_BLOCK_ROWS = 1024  # contiguous rows read at once when shuffling
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def pool_features(x: np.ndarray, layout: str, pool: str) -> np.ndarray:
    """(n, *sample_shape) -> (n, D): flattened, or averaged over tokens / positions."""
    if pool == "flatten":
        return x.reshape(x.shape[0], -1)  # (n, T*C)
    if pool == "mean":
        if layout == "grid":
            return x.mean(axis=(2, 3))  # (n, C, H, W) -> (n, C)
        return x.mean(axis=1)  # (n, T, C) -> (n, C)
    raise LatentlabError(f"unknown pool {pool!r}; use one of {', '.join(POOLS)}")


def pooled_dim(store: LatentStore, pool: str) -> int:
    """Feature dimension of `store` under `pool`."""
    if pool == "flatten":
        return store.dim
    return int(store.sample_shape[0] if store.layout == "grid" else store.sample_shape[-1])


def check_labels(store: LatentStore, what: str = "") -> np.ndarray:
    """The store's labels (N,), or a one-line LatentlabError when they cannot be used for classes."""
    where = what or str(store.path)
    labels = store.labels
    if labels.shape != (len(store),):
        raise LatentlabError(f"{where}: {len(store)} latents but {labels.shape[0]} labels; "
                             f"they must have the same length (recreate the store)")
    if not store.has_labels or (labels < 0).any():
        raise LatentlabError(f"{where} has no class labels; import it with --labels y.npy "
                             f"(discriminability needs a class per sample)")
    if len(np.unique(labels)) < 2:
        raise LatentlabError(f"{where} has a single class ({int(labels[0])}); "
                             f"discriminability needs at least 2 classes")
    return labels


def is_rows(data) -> bool:
    """Whether `Rows` can view `data` (an array, a tensor or a LatentStore)."""
    return isinstance(data, (np.ndarray, torch.Tensor, LatentStore))


def _as_2d(data) -> np.ndarray | torch.Tensor:
    """An array or tensor as (n, D) rows of a float dtype (integers become float64)."""
    if isinstance(data, torch.Tensor):
        x = data.detach()
        if x.dtype not in FLOATS:
            x = x.double()
    else:
        x = np.asarray(data)
        if not np.issubdtype(x.dtype, np.number):
            raise LatentlabError(f"data of dtype {x.dtype} cannot be analysed; pass a float array")
        if x.dtype not in (np.float16, np.float32, np.float64):
            x = x.astype(np.float64)
    if x.ndim < 2:
        raise LatentlabError(f"expected a 2-D array (n_samples, n_features), got shape {tuple(x.shape)}; "
                             "reshape 1-D data with x.reshape(-1, 1)")
    return x.reshape(x.shape[0], -1)


class Rows:
    """A view of rows (n, dim) of an array, a tensor or a LatentStore, streamed in batches.

    indices: only these rows of `data`, in this order. pool: how a store's samples become rows.
    labels: one int per row (default: the store's labels; None for arrays without them).
    max_bytes: read a store's rows into memory once (float32) when they fit in this many bytes.
    chunk_rows / block_rows: the default batch size when streaming, and the contiguous blocks
    that are shuffled when `batches` gets an `rng`.
    """

    def __init__(self, data, indices: np.ndarray | None = None, *, pool: str = "flatten",
                 labels: np.ndarray | None = None, max_bytes: int = 0, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 block_rows: int = DEFAULT_BLOCK_ROWS):
        if pool not in POOLS:
            raise LatentlabError(f"unknown pool {pool!r}; use one of {', '.join(POOLS)}")
        self.pool, self.chunk_rows, self.block_rows = pool, int(chunk_rows), int(block_rows)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.rows = self.indices  # the rows of `data` in this view, in order (None: all); kept when copied to memory
        self.store = data if isinstance(data, LatentStore) else None
        self._x: np.ndarray | torch.Tensor | None = None
        if self.store is not None:
            self.n = len(self.store) if self.indices is None else len(self.indices)
            self.dim = pooled_dim(self.store, pool)
            pooled = pool != "flatten"
            self._dtype = np.dtype(np.float32) if pooled else np.dtype(self.store.manifest.get("dtype", "float32"))
            if labels is None:
                labels = self.store.labels if self.indices is None else self.store.labels[self.indices]
            if self.n * self.dim * 4 <= max_bytes:
                self._x = self._read(self.indices if self.indices is not None else slice(0, len(self.store)))
                self._x = self._x.float()
                self.indices = None
        elif is_rows(data):
            if pool != "flatten":
                raise LatentlabError(f"pool {pool!r} needs a LatentStore (it knows the layout); pool arrays yourself")
            x = _as_2d(data)
            if self.indices is not None:
                x = x[torch.as_tensor(self.indices, device=x.device) if isinstance(x, torch.Tensor) else self.indices]
                self.indices = None
            self._x = x
            self.n, self.dim = int(x.shape[0]), int(x.shape[1])
        else:
            raise LatentlabError(f"cannot read rows from a {type(data).__name__}; give an array, a tensor "
                                 "or a LatentStore")
        self.labels = None if labels is None else np.array(labels, dtype=np.int64)  # a writable copy
        if self.labels is not None and len(self.labels) != self.n:
            raise LatentlabError(f"{self.n} rows but {len(self.labels)} labels; they must have the same length")

    def __len__(self) -> int:
        return self.n

    @property
    def in_memory(self) -> bool:
        """True when the rows are an array or tensor (given, or a store read into memory)."""
        return self._x is not None

    # ------------------------------------------------------------ reading
    def _read(self, rows: np.ndarray | slice) -> torch.Tensor:
        """Rows of the store as a CPU tensor: a slice is read contiguously, an index array by `take`."""
        if isinstance(rows, slice):
            x = self.store.get(rows.start, rows.stop, flatten=False, dtype=self._dtype)
        else:
            x = self.store.take(rows, flatten=False, dtype=self._dtype)
        return torch.from_numpy(np.ascontiguousarray(pool_features(x, self.store.layout, self.pool)))  # (m, D)

    def _span(self, lo: int, hi: int) -> torch.Tensor:
        """Rows at positions [lo, hi) of this view."""
        if self._x is not None:
            x = self._x[lo:hi]
            return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        return self._read(slice(lo, hi) if self.indices is None else self.indices[lo:hi])

    def take(self, positions: np.ndarray) -> torch.Tensor:
        """Rows at `positions` (into this view), in that order: (m, dim)."""
        positions = np.asarray(positions, dtype=np.int64)
        if self._x is not None:
            if isinstance(self._x, torch.Tensor):
                return self._x[torch.from_numpy(positions).to(self._x.device)]
            return torch.from_numpy(np.ascontiguousarray(self._x[positions]))
        src = positions if self.indices is None else self.indices[positions]
        order = np.argsort(src, kind="stable")  # memory maps are read in order
        x = self._read(src[order])
        out = torch.empty_like(x)
        out[torch.from_numpy(order)] = x
        return out

    def batches(self, batch_size: int | None = None, *, shard: bool | tuple[int, int] = False,
                rng: np.random.Generator | None = None, labels: bool = False,
                device: torch.device | str | None = None) -> Iterator:
        """Yield the rows in batches (b, dim), or (rows, labels (b,) int64) with `labels=True`.

        batch_size: rows per batch; None: everything at once when in memory, else `chunk_rows`.
        shard: True streams this rank's contiguous part under torch.distributed, (rank, world_size)
        that rank's part, False every row. rng: batches are made of contiguous blocks of
        `block_rows` rows in a shuffled order (shuffle the rows within a batch yourself), except
        that rows held in memory and read as one batch come in order, without using `rng`.
        device: move each batch there.
        """
        if labels and self.labels is None:
            raise LatentlabError("these rows have no labels")
        if batch_size is None:
            batch_size = self.n if self._x is not None else self.chunk_rows
        batch_size = max(1, int(batch_size))
        r, w = (rank(), world_size()) if shard is True else shard if shard else (0, 1)
        lo, hi = rank_range(self.n, r, w)
        if rng is None or (self._x is not None and batch_size >= hi - lo):  # one batch in memory: in order
            spans = [(s, min(s + batch_size, hi)) for s in range(lo, hi, batch_size)]
            groups = [[sp] for sp in spans]
        else:
            block = max(1, min(self.block_rows, batch_size))
            starts = rng.permutation(np.arange(lo, hi, block))
            per = max(1, batch_size // block)
            groups = [[(int(s), min(int(s) + block, hi)) for s in starts[g:g + per]]
                      for g in range(0, len(starts), per)]
        y_all = None if not labels else torch.from_numpy(self.labels)
        for group in groups:
            parts = [self._span(a, b) for a, b in group]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            if device is not None:
                x = x.to(device, non_blocking=True)
            if not labels:
                yield x
                continue
            y = y_all[group[0][0]:group[0][1]] if len(group) == 1 else torch.cat([y_all[a:b] for a, b in group])
            yield x, y.to(x.device)

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Every row in memory: (x (n, dim) float32, labels (n,) or None)."""
        x = self._x if self._x is not None else self._span(0, self.n)
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        return np.ascontiguousarray(x, dtype=np.float32), self.labels

    def count_nonfinite(self, batch_size: int = 65536) -> int:
        """Number of rows holding NaN or inf (streamed)."""
        return sum(int((~torch.isfinite(x)).any(1).sum()) for x in self.batches(batch_size))
