"""Features for the discriminability analyses: a LatentStore's rows, pooled, in memory or streamed.

A sample of shape (T, C) ("tokens" layout) or (C, H, W) ("grid" layout) becomes one vector:
`flatten` keeps every value (T*C), `mean` averages over tokens / spatial positions (C).
Small feature sets are read into memory once; large ones (ImageNet: 1.28M x 4096) are
streamed from the memory-mapped shards in chunks of shuffled contiguous blocks, per pass.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from latentlab.errors import LatentlabError
from latentlab.latents import LatentStore

POOLS = ("flatten", "mean")
DEFAULT_MAX_BYTES = 4 << 30  # in-memory limit for one feature set (float32)
DEFAULT_CHUNK_ROWS = 65536
DEFAULT_BLOCK_ROWS = 1024  # contiguous rows read at once when streaming


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


class Features:
    """Pooled float32 features of a store's rows (all, or `indices`), with their labels.

    Held in memory when they fit in `max_bytes`, otherwise streamed from the shards.
    `from_arrays` wraps features that are already in memory (numpy or a torch tensor on any device).
    """

    def __init__(self, store: LatentStore | None, indices: np.ndarray | None = None, pool: str = "flatten",
                 max_bytes: int = DEFAULT_MAX_BYTES, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 block_rows: int = DEFAULT_BLOCK_ROWS):
        if pool not in POOLS:
            raise LatentlabError(f"unknown pool {pool!r}; use one of {', '.join(POOLS)}")
        self.store, self.pool, self.chunk_rows, self.block_rows = store, pool, int(chunk_rows), int(block_rows)
        self._x: torch.Tensor | None = None
        if store is None:
            return
        all_labels = store.labels
        self.indices = None if indices is None else np.sort(np.asarray(indices, dtype=np.int64))
        self.labels = np.array(all_labels if self.indices is None else all_labels[self.indices], dtype=np.int64)
        self.n = len(self.labels)
        self.dim = pooled_dim(store, pool)
        if self.n * self.dim * 4 <= max_bytes:
            self._x = torch.from_numpy(self._read(self.indices if self.indices is not None else slice(0, len(store))))

    @classmethod
    def from_arrays(cls, x: np.ndarray | torch.Tensor, y: np.ndarray) -> "Features":
        """Features already in memory: x (n, D), y (n,)."""
        self = cls(None)
        self._x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.labels = np.asarray(y, dtype=np.int64)
        self.indices = None
        self.n, self.dim = int(self._x.shape[0]), int(self._x.shape[1])
        if len(self.labels) != self.n:
            raise LatentlabError(f"{self.n} feature rows but {len(self.labels)} labels; they must have the same length")
        return self

    @property
    def in_memory(self) -> bool:
        return self._x is not None

    def _read(self, rows: np.ndarray | slice) -> np.ndarray:
        """Pooled float32 rows of the store: a slice is read contiguously, an index array by `take`."""
        if isinstance(rows, slice):
            x = self.store.get(rows.start, rows.stop, flatten=False, dtype=np.float32)
        else:
            x = self.store.take(rows, flatten=False, dtype=np.float32)
        return np.ascontiguousarray(pool_features(x, self.store.layout, self.pool), dtype=np.float32)

    def chunks(self, rng: np.random.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x (m, D) float32, y (m,) int64) tensors covering every row once.

        In memory: one chunk of everything. Streamed: chunks of about `chunk_rows` rows made of
        contiguous blocks of `block_rows` rows (cheap memory-map reads). With `rng` the blocks are
        shuffled, so a chunk mixes rows from all over a store even when it is sorted by class
        (shuffle the rows within a chunk yourself).
        """
        y_all = torch.from_numpy(self.labels)
        if self._x is not None:
            yield self._x, y_all.to(self._x.device)
            return
        block = max(1, min(self.block_rows, self.chunk_rows))
        starts = np.arange(0, self.n, block)
        if rng is not None:
            starts = rng.permutation(starts)
        per = max(1, self.chunk_rows // block)
        for g in range(0, len(starts), per):
            xs, ys = [], []
            for s in starts[g:g + per]:
                e = min(int(s) + block, self.n)
                rows = slice(int(s), e) if self.indices is None else self.indices[s:e]
                xs.append(self._read(rows))  # (b, D)
                ys.append(y_all[s:e])
            yield torch.from_numpy(np.concatenate(xs) if len(xs) > 1 else xs[0]), torch.cat(ys)

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows at `positions` (into this feature set) in memory: (x (m, D) float32, y (m,))."""
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        if self._x is not None:
            x = self._x[torch.from_numpy(positions).to(self._x.device)].cpu().numpy()
        else:
            x = self._read(positions if self.indices is None else self.indices[positions])
        return x, self.labels[positions]

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Every row in memory: (x (n, D) float32, y (n,))."""
        if self._x is not None:
            return self._x.cpu().numpy(), self.labels
        return self.take(np.arange(self.n))
