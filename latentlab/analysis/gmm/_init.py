"""Data sources for streamed EM: arrays, tensors and LatentStores as float32 chunks, plus k-means init.

A source always describes the *full* data set. Under torch.distributed each rank streams its
contiguous 1/world_size part (`chunks(shard=True)`); rows needed by every rank alike (the shift,
initial seeds) are read from the full data, so all ranks compute the same values.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from latentlab.errors import LatentlabError
from latentlab.latents import LatentStore, count_nonfinite_rows
from latentlab.utils import all_reduce_, rank, world_size

SHIFT_ROWS = 4096          # rows whose float64 mean becomes the working origin
KMEANS_SEED_ROWS = 100_000  # k-means++ seeds are drawn from a random subsample of at most this many rows
KMEANS_MAX_ITER = 100
KMEANS_TOL = 1e-4          # as sklearn: on the squared centre shift, relative to the mean feature variance


class Source:
    """Full data set `(n, dim)` from a numpy array, a torch tensor or a LatentStore (optionally `indices`)."""

    def __init__(self, data, device: torch.device, indices: np.ndarray | None = None):
        self.device = device
        self.store = data if isinstance(data, LatentStore) else None
        if self.store is not None:
            self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
            self.n = len(self.store) if self.indices is None else len(self.indices)
            self.dim = self.store.dim
        else:
            if isinstance(data, torch.Tensor):
                x = data.detach()
                if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                    x = x.float()
            else:
                x = np.asarray(data)
                if not np.issubdtype(x.dtype, np.number):
                    raise LatentlabError(f"data of dtype {x.dtype} cannot be fitted; pass a float array")
                if x.dtype not in (np.float16, np.float32, np.float64):
                    x = x.astype(np.float64)
            if x.ndim == 1:
                raise LatentlabError(f"expected a 2-D array (n_samples, n_features), got shape {tuple(x.shape)}; "
                                     "reshape 1-D data with x.reshape(-1, 1)")
            x = x.reshape(x.shape[0], -1)
            if indices is not None:
                x = x[torch.as_tensor(indices) if isinstance(x, torch.Tensor) else np.asarray(indices)]
            self.x = x
            self.indices = None
            self.n, self.dim = int(x.shape[0]), int(x.shape[1])
        self.shift = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self.shift32 = self.shift.float()

    # ------------------------------------------------------------ raw reads (float64, unshifted)
    def rows(self, idx: np.ndarray) -> torch.Tensor:
        """Rows at global positions `idx` as float64 (m, dim) on the device (not shifted)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.store is not None:
            src = idx if self.indices is None else self.indices[idx]
            order = np.argsort(src, kind="stable")
            out = np.empty((len(src), self.dim), dtype=np.float64)
            out[order] = self.store.take(src[order], flatten=True, dtype=np.float64)
            return torch.from_numpy(out).to(self.device)
        if isinstance(self.x, torch.Tensor):
            return self.x[torch.as_tensor(idx, device=self.x.device)].to(self.device, torch.float64)
        return torch.from_numpy(np.asarray(self.x[idx], dtype=np.float64)).to(self.device)

    def part(self, shard: bool) -> tuple[int, int]:
        """The [lo, hi) rows (of the full data, or of `indices`) this rank streams."""
        if not shard or world_size() == 1:
            return 0, self.n
        per = -(-self.n // world_size())
        return min(self.n, rank() * per), min(self.n, (rank() + 1) * per)

    def chunks(self, batch_size: int, shard: bool = True, dtype: torch.dtype = torch.float32
               ) -> Iterator[torch.Tensor]:
        """Shifted chunks (b, dim) of `dtype` on the device; this rank's part when `shard`."""
        if self.store is not None:
            rk, ws = (rank(), world_size()) if shard else (0, 1)
            raws = (b for b, _ in self.store.batches(batch_size, flatten=True, dtype=np.float32,
                                                      indices=self.indices, rank=rk, world_size=ws))
        else:
            lo, hi = self.part(shard)
            raws = (self.x[i:min(i + batch_size, hi)] for i in range(lo, hi, batch_size))
        for raw in raws:
            x = raw if isinstance(raw, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(raw))
            x = x.to(self.device, non_blocking=True)
            if x.dtype == torch.float64 or dtype == torch.float64:
                yield (x.double() - self.shift).to(dtype)  # (b, D)
            else:
                yield x.float() - self.shift32  # (b, D)

    def set_shift(self) -> None:
        """Use the float64 mean of the first rows as the working origin (keeps float32 products accurate)."""
        self.shift = self.rows(np.arange(min(self.n, SHIFT_ROWS))).mean(0)  # (D,)
        self.shift32 = self.shift.float()

    def count_nonfinite(self) -> int:
        """Rows holding NaN or inf."""
        if self.store is not None:
            return sum(count_nonfinite_rows(x)
                       for x, _ in self.store.batches(65536, flatten=True, dtype=None, indices=self.indices))
        if isinstance(self.x, torch.Tensor):
            return int((~torch.isfinite(self.x)).any(1).sum())
        return count_nonfinite_rows(self.x)


# ---------------------------------------------------------------- k-means initialisation

def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (n, k) between rows of x (n, D) and c (k, D)."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)  # (n, k)
    return d.clamp_min_(0.0)


def kmeans_plusplus(x: torch.Tensor, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (as sklearn: 2 + log k local trials); returns row indices into x."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(rng.integers(n))
    idx = [first]
    closest = _sq_dist(x, x[first:first + 1])[:, 0]  # (n,)
    pot = float(closest.sum())
    for _ in range(1, k):
        if pot <= 0:  # fewer distinct points than k: take unused rows at random
            rest = np.setdiff1d(np.arange(n), idx)
            idx.append(int(rng.choice(rest)))
            continue
        u = torch.as_tensor(rng.random(trials) * pot, dtype=x.dtype, device=x.device)
        cand = torch.searchsorted(torch.cumsum(closest, 0), u).clamp_(max=n - 1)  # (trials,)
        d = torch.minimum(closest[None], _sq_dist(x, x[cand]).T)  # (trials, n)
        best = int(d.sum(1).argmin())
        idx.append(int(cand[best]))
        closest = d[best]
        pot = float(closest.sum())
    return np.asarray(idx, dtype=np.int64)


def seed_rows(src: Source, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds as global row indices, chosen from a random subsample of at most KMEANS_SEED_ROWS rows."""
    if src.n <= KMEANS_SEED_ROWS:
        sub = np.arange(src.n)
    else:
        sub = np.sort(rng.choice(src.n, size=KMEANS_SEED_ROWS, replace=False))
    x = src.rows(sub) - src.shift  # (m, D) float64
    return sub[kmeans_plusplus(x, k, rng)]


@torch.no_grad()
def lloyd(src: Source, centres: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Lloyd iterations streamed over this rank's rows (sums all-reduced); centres (k, D) float64, shifted."""
    tol = None
    for _ in range(KMEANS_MAX_ITER):
        k, d = centres.shape
        sums = torch.zeros(k, d + 2, dtype=torch.float64, device=centres.device)  # sum x | count | sum x^2
        c32 = centres.float()
        for x in src.chunks(batch_size):
            lab = _sq_dist(x, c32).argmin(1)  # (b,)
            xd = x.double()
            sums[:, :d].index_add_(0, lab, xd)
            sums[:, d].index_add_(0, lab, torch.ones_like(xd[:, 0]))
            sums[0, d + 1] += (xd * xd).sum()
        all_reduce_(sums)
        if tol is None:  # sklearn's tol: relative to the mean feature variance
            mean = sums[:, :d].sum(0) / src.n
            var = float(sums[0, d + 1]) / (src.n * d) - float((mean * mean).mean())
            tol = KMEANS_TOL * max(var, 0.0)
        cnt = sums[:, d]
        new = torch.where(cnt[:, None] > 0, sums[:, :d] / cnt.clamp_min(1)[:, None], centres)  # empty: keep
        shift = float(((new - centres) ** 2).sum())
        centres = new
        if shift <= tol:
            break
    return centres


def assign(x: torch.Tensor, centres32: torch.Tensor) -> torch.Tensor:
    """Hard nearest-centre assignment of a chunk as one-hot responsibilities (k, b) float32."""
    lab = _sq_dist(x, centres32).argmin(1)  # (b,)
    r = torch.zeros(centres32.shape[0], x.shape[0], dtype=torch.float32, device=x.device)
    r[lab, torch.arange(x.shape[0], device=x.device)] = 1.0
    return r
