"""The data of streamed EM (shifted chunks of the stream adapter's rows), plus k-means init.

A source always describes the *full* data set. Under torch.distributed each rank streams its
contiguous part (`chunks(shard=True)`, split by `utils.rank_range`); rows needed by every rank
alike (the shift, initial seeds) are read from the full data, so all ranks compute the same values.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from latentlab.analysis.stream import Rows
from latentlab.utils import all_reduce_

SHIFT_ROWS = 4096          # rows whose float64 mean becomes the working origin
KMEANS_SEED_ROWS = 100_000  # k-means++ seeds are drawn from a random subsample of at most this many rows
KMEANS_MAX_ITER = 100
KMEANS_TOL = 1e-4          # as sklearn: on the squared centre shift, relative to the mean feature variance


class Source:
    """The full data set `(n, dim)` of a fit, read through the stream adapter, with a working origin on a device."""

    def __init__(self, data, device: torch.device, indices: np.ndarray | None = None):
        self.device = device
        self.data = Rows(data, indices)
        self.n, self.dim = self.data.n, self.data.dim
        self.shift = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self.shift32 = self.shift.float()

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        """Rows at global positions `idx` as float64 (m, dim) on the device (not shifted)."""
        return self.data.take(idx).to(self.device, torch.float64)

    def chunks(self, batch_size: int, shard: bool = True, dtype: torch.dtype = torch.float32
               ) -> Iterator[torch.Tensor]:
        """The adapter's batches (this rank's part when `shard`), shifted, as `dtype` (b, dim) on the device."""
        for x in self.data.batches(batch_size, shard=shard, device=self.device):
            if x.dtype == torch.float64 or dtype == torch.float64:
                yield (x.double() - self.shift).to(dtype)  # (b, D)
            else:
                yield x.float() - self.shift32  # (b, D)

    def set_shift(self) -> None:
        """Use the float64 mean of the first rows as the working origin (keeps float32 products accurate)."""
        self.shift = self.rows(np.arange(min(self.n, SHIFT_ROWS))).mean(0)  # (D,)
        self.shift32 = self.shift.float()


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
