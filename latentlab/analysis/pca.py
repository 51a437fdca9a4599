"""Streaming PCA in torch: float64 mean and scatter from batches, then one eigendecomposition.

`PCA.fit` accepts an array, a tensor, a LatentStore (streamed through `analysis.stream.Rows`)
or any iterable of `(n, D)` batches. The statistics are float64 sums, so a store larger
than memory is read once, on CPU or CUDA; under torch.distributed every rank streams its
own part of the rows and the sums are all-reduced. The fitted attributes follow
scikit-learn (`components_`, `explained_variance_` with ddof=1, `explained_variance_ratio_`,
`mean_`, `n_components_`), and the full spectrum is kept so that a common dimension can be
chosen across several tokenizers (`common_dim`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from latentlab.analysis.stream import Rows, is_rows
from latentlab.errors import LatentlabError
from latentlab.utils import all_reduce_, get_device


def _batches(data, batch_size: int, indices: np.ndarray | None,
             shard: bool) -> tuple[Iterator[torch.Tensor], int | None]:
    """(batches (b, D), D or None): an array, tensor or store through the stream adapter (this rank's part
    when `shard`), or an iterable of batches, taken as this rank's own part."""
    if is_rows(data):
        rows = Rows(data, indices)
        return rows.batches(batch_size, shard=shard), rows.dim
    if indices is not None:
        raise LatentlabError("row indices need an array, a tensor or a LatentStore, not a stream of batches")
    return (torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).reshape(len(x), -1)
            for x in data), None


def _flip_signs(v: torch.Tensor) -> torch.Tensor:
    """Make the largest-magnitude entry of each row positive (scikit-learn's svd_flip on Vt)."""
    i = v.abs().argmax(1)  # (k,)
    s = torch.sign(v[torch.arange(v.shape[0]), i])
    s[s == 0] = 1
    return v * s[:, None]


class PCA:
    """Principal components from streamed float64 sums (scikit-learn's attribute names).

    n_components: an int keeps that many dimensions; a float in (0, 1] keeps the fewest
    dimensions whose explained-variance ratio reaches it; None keeps all.
    """

    def __init__(self, n_components: int | float | None = 0.90, device: str | torch.device | None = "cpu",
                 batch_size: int = 8192):
        self.n_components = n_components
        self.device = device
        self.batch_size = batch_size

    # ------------------------------------------------------------ fitting
    def fit(self, data, indices: np.ndarray | None = None) -> "PCA":
        """Accumulate the mean and scatter of `data` (rows `indices` only) and eigendecompose."""
        dev = get_device(self.device)
        rows, dim = _batches(data, self.batch_size, indices, shard=True)
        first = next(rows, None)
        if first is None and dim is None:
            raise LatentlabError("cannot fit a PCA on an empty stream of batches")
        d = first.shape[1] if first is not None else dim
        # Shift by a rough mean (the first batch's, averaged over ranks) so the scatter does not cancel.
        shift = self._common_shift(first, d, dev)  # (D,)
        n = torch.zeros((), dtype=torch.float64, device=dev)
        s = torch.zeros(d, dtype=torch.float64, device=dev)  # (D,)
        scatter = torch.zeros(d, d, dtype=torch.float64, device=dev)  # (D, D)
        for x in itertools.chain([first] if first is not None else [], rows):
            xc = x.to(dev, torch.float64) - shift  # (b, D) float64
            n += xc.shape[0]
            s += xc.sum(0)
            scatter.addmm_(xc.T, xc)
        for t in (n, s, scatter):
            all_reduce_(t)
        if n.item() == 0:
            raise LatentlabError("cannot fit a PCA on zero rows")
        return self._finish(int(n.item()), shift + s / n, scatter - torch.outer(s, s) / n)

    @staticmethod
    def _common_shift(x: torch.Tensor | None, d: int, dev: torch.device) -> torch.Tensor:
        """The first batch's mean, averaged over the ranks that have one (identical everywhere)."""
        m = torch.zeros(d + 1, dtype=torch.float64, device=dev)  # (D+1,): sum, count
        if x is not None:
            m[:-1], m[-1] = x.to(dev, torch.float64).sum(0), x.shape[0]
        all_reduce_(m)
        return m[:-1] / m[-1].clamp_min(1)

    def _finish(self, n: int, mean: torch.Tensor, scatter: torch.Tensor) -> "PCA":
        if n < 2:
            raise LatentlabError(f"a PCA needs at least 2 rows; got {n}")
        d = scatter.shape[0]
        cov = (scatter + scatter.T) / (2 * (n - 1))  # (D, D), ddof=1 as scikit-learn
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        rank_ = min(n - 1, d)  # a centred sample of n rows spans at most n-1 dimensions
        evals[rank_:] = 0
        self.n_samples_, self.n_features_in_ = n, d
        self.mean_ = mean.cpu().numpy()  # (D,)
        self.all_components_ = _flip_signs(evecs.T).cpu().numpy()  # (D, D), rows are components
        self.all_explained_variance_ = evals.cpu().numpy()  # (D,)
        total = float(evals.sum())
        self.total_variance_ = total
        self.all_explained_variance_ratio_ = (self.all_explained_variance_ / total if total > 0
                                              else np.zeros(d))
        self.select(self._resolve_k())
        return self

    def _resolve_k(self) -> int:
        nc, top = self.n_components, min(self.n_features_in_, self.n_samples_)
        if nc is None:
            return top
        if isinstance(nc, float):
            return self.dim_for_variance(nc)
        if not 1 <= int(nc) <= top:
            raise LatentlabError(f"n_components={nc} must be between 1 and min(n_samples, n_features)={top}; "
                                 f"lower the PCA dimension")
        return int(nc)

    # ------------------------------------------------------------ dimensions
    def dim_for_variance(self, threshold: float) -> int:
        """The fewest leading dimensions whose explained-variance ratio reaches `threshold` in (0, 1]."""
        self._check_fitted()
        if not 0.0 < threshold <= 1.0:
            raise LatentlabError(f"the explained-variance threshold must be in (0, 1]; got {threshold}")
        cum = np.cumsum(self.all_explained_variance_ratio_)
        k = int(np.searchsorted(cum, threshold - 1e-12) + 1)
        return min(k, int(np.count_nonzero(self.all_explained_variance_)) or 1, self.n_features_in_)

    def explained_variance_at(self, k: int) -> float:
        """Cumulative explained-variance ratio of the first `k` dimensions."""
        self._check_fitted()
        return float(self.all_explained_variance_ratio_[:k].sum())

    def select(self, k: int) -> "PCA":
        """Keep the first `k` components (sets components_, explained_variance_, ...)."""
        self._check_fitted()
        if not 1 <= k <= self.n_features_in_:
            raise LatentlabError(f"cannot keep {k} PCA dimensions of {self.n_features_in_}")
        self.n_components_ = int(k)
        self.components_ = self.all_components_[:k]  # (k, D)
        self.explained_variance_ = self.all_explained_variance_[:k]  # (k,)
        self.explained_variance_ratio_ = self.all_explained_variance_ratio_[:k]  # (k,)
        self.singular_values_ = np.sqrt(self.explained_variance_ * (self.n_samples_ - 1))  # (k,)
        rest = self.all_explained_variance_[k:min(self.n_features_in_, self.n_samples_)]
        self.noise_variance_ = float(rest.mean()) if rest.size else 0.0
        return self

    # ------------------------------------------------------------ transforming
    def transform(self, data, indices: np.ndarray | None = None, whiten: bool = False,
                  zscore: bool = False) -> np.ndarray:
        """Project rows onto the kept components -> float64 (n, k).

        whiten: divide by sqrt(explained_variance_) (ddof=1, as scikit-learn's whiten=True).
        zscore: divide by the population std of the fitted data, so the fitted rows get
        mean 0 and std 1 (numpy's ddof=0) in every kept dimension.
        """
        self._check_fitted()
        if whiten and zscore:
            raise LatentlabError("choose whiten or zscore, not both")
        dev = get_device(self.device)
        comps = torch.from_numpy(self.components_).to(dev)  # (k, D)
        mean = torch.from_numpy(self.mean_).to(dev)  # (D,)
        rows, _ = _batches(data, self.batch_size, indices, shard=False)
        out = [((x.to(dev, torch.float64) - mean) @ comps.T).cpu() for x in rows]
        z = torch.cat(out).numpy() if out else np.zeros((0, self.n_components_))  # (n, k)
        if whiten or zscore:
            z = z / self.projection_std(zscore)
        return z

    def projection_std(self, zscore: bool = True) -> np.ndarray:
        """Per-dimension std of the fitted projections: population (zscore) or ddof=1 (whiten)."""
        var = self.explained_variance_ * ((self.n_samples_ - 1) / self.n_samples_ if zscore else 1.0)
        if np.any(var <= 1e-12 * max(float(self.all_explained_variance_[0]), 1e-300)):
            k = int(np.argmax(var <= 1e-12 * max(float(self.all_explained_variance_[0]), 1e-300)))
            raise LatentlabError(f"PCA dimension {k + 1} of {self.n_components_} has no variance (the data has rank "
                                 f"{k}); lower the PCA dimension to at most {k}")
        return np.sqrt(var)

    def fit_transform(self, data, **kw) -> np.ndarray:
        """`fit(data)` then `transform(data, **kw)`."""
        return self.fit(data).transform(data, **kw)

    def _check_fitted(self) -> None:
        if not hasattr(self, "all_explained_variance_"):
            raise LatentlabError("this PCA is not fitted yet; call fit() first")

    def info(self) -> dict:
        """JSON-able summary: sizes, kept dimension, explained variance and the leading spectrum."""
        return {"n_samples": self.n_samples_, "n_features": self.n_features_in_, "pca_dim": self.n_components_,
                "explained_variance": self.explained_variance_at(self.n_components_),
                "dims_for_variance": {str(t): self.dim_for_variance(t) for t in (0.5, 0.8, 0.9, 0.95, 0.99)},
                "explained_variance_ratio": self.all_explained_variance_ratio_[:min(256, self.n_features_in_)].tolist()}


@dataclass
class CommonDim:
    """One PCA dimension shared by several tokenizers, and what each keeps at it."""

    dim: int
    own_dims: dict[str, int]
    explained_variance: dict[str, float]
    rule: str


def common_dim(pcas: dict[str, PCA], threshold: float = 0.90, fixed: int | None = None) -> CommonDim:
    """The smallest dimension giving every tokenizer >= `threshold` explained variance, or `fixed`.

    NLLs in different dimensions cannot be compared, so all tokenizers use this one K
    (the largest of their own threshold dimensions), as in the MAETok paper.
    """
    if not pcas:
        raise LatentlabError("common_dim needs at least one fitted PCA")
    own = {name: p.dim_for_variance(threshold) for name, p in pcas.items()}
    if fixed is not None:
        k, rule = int(fixed), f"fixed pca_dim={int(fixed)}"
    else:
        k, rule = max(own.values()), f"smallest dim with explained variance >= {threshold} for every tokenizer"
    for name, p in pcas.items():
        if not 1 <= k <= min(p.n_features_in_, p.n_samples_ - 1):
            raise LatentlabError(f"PCA dimension {k} is out of range for {name!r} ({p.n_features_in_} features, "
                                 f"{p.n_samples_} training rows); choose --pca-dim between 1 and "
                                 f"{min(p.n_features_in_, p.n_samples_ - 1)}")
    return CommonDim(dim=k, own_dims=own, explained_variance={n: p.explained_variance_at(k) for n, p in pcas.items()},
                     rule=rule)
