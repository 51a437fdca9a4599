"""Fréchet distance: features -> streamed float64 statistics -> distance, as small pure functions.

    stats = FeatureStats(dim); stats.update(features_batch) ...   # mean + scatter, float64, streamed
    mu, sigma = stats.mean, stats.cov                             # unbiased covariance (as np.cov)
    frechet_distance(mu1, sigma1, mu2, sigma2)                    # |mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)

Which network made the features decides the metric's name: Inception-v3 gives FID, anything
else gives "FD-<extractor>" (see `latentlab.metrics.extractors`). Real-data statistics are
computed and cached by `latentlab.metrics.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from latentlab.errors import LatentlabError

SINGULAR_OFFSET = 1e-6   # times the mean variance, added to both diagonals when S1 S2 is singular and noisy
IMAG_TOL = 1e-3          # largest imaginary part (relative) of sqrt(eig(S1 S2)) that is discarded


class FeatureStats:
    """Streaming mean and covariance of feature vectors in float64 (Chan et al.'s pairwise merge).

    The sums run in torch, on the device the features come from (a GPU keeps them there), with
    torch's thread setting on the CPU: numpy's BLAS would start its own pool next to torch's.
    """

    def __init__(self, dim: int | None = None):
        self.n = 0
        self.dim = dim
        self._mean: torch.Tensor | None = None      # (D,) float64
        self._scatter: torch.Tensor | None = None   # (D, D) sum of (x - mean)(x - mean)^T

    def update(self, feats: torch.Tensor | np.ndarray) -> "FeatureStats":
        """Add a batch of features (B, D); returns self."""
        x = torch.as_tensor(feats).detach()
        x = x.to(self._mean.device if self._mean is not None else x.device, torch.float64)
        if x.ndim != 2:
            raise LatentlabError(f"features must be (N, D), got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise LatentlabError("the feature extractor returned NaN or inf; check the input images and the extractor")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise LatentlabError(f"feature width changed from {self.dim} to {x.shape[1]} within one set")
        nb = x.shape[0]
        if nb == 0:
            return self
        mb = x.mean(0)                             # (D,)
        xc = x - mb                                # (B, D)
        sb = xc.T @ xc                             # (D, D)
        if self.n == 0:
            self._mean, self._scatter = mb, sb
        else:
            n = self.n + nb
            delta = mb - self._mean                # (D,)
            self._mean = self._mean + delta * (nb / n)
            self._scatter = self._scatter + sb + torch.outer(delta, delta) * (self.n * nb / n)
        self.n += nb
        return self

    @property
    def mean(self) -> np.ndarray:
        """Mean feature (D,), float64."""
        if self.n == 0:
            raise LatentlabError("no features were accumulated")
        return self._mean.cpu().numpy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (D, D), float64 (needs at least 2 samples)."""
        if self.n < 2:
            raise LatentlabError(f"the Fréchet distance needs at least 2 images, got {self.n}")
        return (self._scatter / (self.n - 1)).cpu().numpy()


@dataclass
class GaussianStats:
    """Mean and covariance of a feature set, with its sample count."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_stats(cls, stats: FeatureStats) -> "GaussianStats":
        """Freeze a FeatureStats accumulator."""
        return cls(stats.mean.copy(), stats.cov.copy(), stats.n)


def feature_statistics(feats: torch.Tensor | np.ndarray, batch_size: int | None = None) -> GaussianStats:
    """Mean and covariance of features (N, D), streamed in `batch_size` chunks (all at once if None)."""
    n = len(feats)
    step = batch_size or max(n, 1)
    acc = FeatureStats()
    for i in range(0, n, step):
        acc.update(feats[i:i + step])
    return GaussianStats.from_stats(acc)


def _check_stats(mu1, sigma1, mu2, sigma2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise LatentlabError(f"statistics do not match: means {mu1.shape} / {mu2.shape}, "
                             f"covariances {sigma1.shape} / {sigma2.shape}; use the same extractor for both sets")
    for a in (mu1, mu2, sigma1, sigma2):
        if not np.all(np.isfinite(a)):
            raise LatentlabError("statistics contain NaN or inf; recompute them")
    return mu1, sigma1, mu2, sigma2


def _is_singular(eig: np.ndarray) -> bool:
    """True when an eigenvalue of S1 S2 reaches zero (or below) within rounding."""
    big = float(np.max(np.abs(eig))) if eig.size else 0.0
    return bool(big == 0.0 or np.min(eig.real) <= eig.size * np.finfo(np.float64).eps * big)


def _roots(prod: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Eigenvalues of a covariance product, their complex square roots, and the relative imaginary part."""
    eig = np.linalg.eigvals(prod)                       # (D,) complex in general
    if not np.all(np.isfinite(eig)):
        return eig, eig, np.inf
    root = np.sqrt(eig.astype(np.complex128))           # (D,)
    scale = max(float(np.max(np.abs(root))), 1e-300)
    return eig, root, float(np.max(np.abs(root.imag))) / scale


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = SINGULAR_OFFSET,
                       imag_tol: float = IMAG_TOL) -> tuple[float, float]:
    """tr((S1 S2)^1/2) from the eigenvalues of S1 S2; returns (trace, diagonal offset used).

    For PSD inputs the eigenvalues are real and >= 0, so their roots' imaginary parts are
    rounding noise: they are discarded only when all are below `imag_tol` times the largest
    root. When they are not and the product is singular (an eigenvalue at or below zero within
    rounding), `eps` (times the mean variance) is added to both diagonals and the offset is
    returned, so the caller adds it to tr(S1) + tr(S2) too. Anything else means a covariance is
    not PSD, and this raises.
    """
    eig, root, rel_imag = _roots(sigma1 @ sigma2)
    offset = 0.0
    if rel_imag > imag_tol and (not np.all(np.isfinite(eig)) or _is_singular(eig)):
        offset = eps * max(1.0, float(np.trace(sigma1) + np.trace(sigma2)) / (2 * sigma1.shape[0]))
        reg = offset * np.eye(sigma1.shape[0])
        eig, root, rel_imag = _roots((sigma1 + reg) @ (sigma2 + reg))
    if not np.isfinite(rel_imag):
        raise LatentlabError("the covariance product has non-finite eigenvalues; recompute the statistics")
    if rel_imag > imag_tol:
        raise LatentlabError(f"(S1 S2)^1/2 has a relative imaginary part {rel_imag:.3g} > {imag_tol:g}: "
                             "a covariance is not positive semi-definite; recompute the statistics")
    return float(np.sum(root.real)), offset


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)."""
    mu1, sigma1, mu2, sigma2 = _check_stats(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    tr_sqrt, offset = trace_sqrt_product(sigma1, sigma2)
    # with an offset this is the exact distance between the two regularised Gaussians
    tr = np.trace(sigma1) + np.trace(sigma2) + 2 * offset * len(mu1)
    fd = float(diff @ diff + tr - 2.0 * tr_sqrt)
    return max(fd, 0.0)  # only rounding makes it negative: the true distance is >= 0


def fd_between(a: GaussianStats, b: GaussianStats) -> float:
    """`frechet_distance` of two GaussianStats."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


@torch.no_grad()
def fd_bootstrap(ref: GaussianStats, feats: torch.Tensor | np.ndarray, n_boot: int, seed: int = 0,
                 batch: int | None = None) -> np.ndarray:
    """(n_boot,) FD between `ref` and bootstrap resamples (with replacement) of the features (N, D).

    The reference statistics stay fixed: this is the sampling noise of the generated set only. The
    replicates are biased upward (a resample has fewer distinct points), so use their spread, not their
    level: `fd_interval` centres them on the estimate. tr((S1 S2)^1/2) is taken as the sum of the roots of
    the eigenvalues of the symmetric S1^1/2 S2 S1^1/2 (the same eigenvalues), batched. On the CPU this runs
    on one thread, so the replicates are bit-identical from run to run whatever the machine's load.
    """
    threads = torch.get_num_threads()
    if torch.as_tensor(feats).device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _fd_bootstrap(ref, feats, n_boot, seed, batch)
    finally:
        torch.set_num_threads(threads)


def _fd_bootstrap(ref: GaussianStats, feats, n_boot: int, seed: int, batch: int | None) -> np.ndarray:
    x = torch.as_tensor(feats).double()                                  # (N, D), on the features' device
    n = x.shape[0]
    if n < 2 or n_boot < 1:
        return np.zeros(0)
    mu1 = torch.as_tensor(ref.mu, dtype=torch.float64, device=x.device)
    s1 = torch.as_tensor(ref.sigma, dtype=torch.float64, device=x.device)
    ev, vec = torch.linalg.eigh(s1)
    root1 = (vec * ev.clamp(min=0).sqrt()) @ vec.T                       # (D, D) S1^1/2
    g = torch.Generator().manual_seed(int(seed))
    batch = batch or max(1, min(8, 2 ** 25 // (n * x.shape[1])))  # resamples at a time: about 256 MB of temporaries
    out = []
    for start in range(0, n_boot, batch):
        b = min(batch, n_boot - start)
        idx = torch.randint(0, n, (b, n), generator=g).to(x.device)
        w = torch.zeros(b, n, dtype=x.dtype, device=x.device).scatter_add_(1, idx, torch.ones_like(idx, dtype=x.dtype))
        mu = w @ x / n                                                   # (b, D)
        cov = ((x.T * w[:, None]) @ x - n * mu[:, :, None] * mu[:, None]) / (n - 1)   # (b, D, D)
        lam = torch.linalg.eigvalsh(root1 @ cov @ root1).clamp(min=0)     # (b, D)
        fd = ((mu - mu1) ** 2).sum(1) + torch.diagonal(cov, dim1=1, dim2=2).sum(1) + s1.trace() \
            - 2 * lam.sqrt().sum(1)
        out.append(fd.clamp(min=0))
    return torch.cat(out).cpu().numpy()


def fd_interval(estimate: float, replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """A percentile interval of the replicates' spread around `estimate` (their mean is moved onto it)."""
    r = np.asarray(replicates, np.float64)
    if len(r) < 2:
        return float("nan"), float("nan")
    a = (1 - confidence) / 2
    lo, hi = np.quantile(r - r.mean(), [a, 1 - a]) + estimate
    return max(0.0, float(lo)), float(hi)


def inception_score(logits: torch.Tensor | np.ndarray, splits: int = 10, shuffle_seed: int | None = 0
                    ) -> tuple[float, float]:
    """Inception score exp(E_x KL(p(y|x) || p(y))) of classifier logits (N, K): mean and std over splits.

    The samples are shuffled with a fixed seed before splitting (as torch-fidelity does), so
    class-sorted inputs do not give single-class splits; `shuffle_seed=None` keeps the order.
    """
    z = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).double()
    if z.ndim != 2 or len(z) < 2:
        raise LatentlabError(f"the Inception score needs logits (N >= 2, K), got shape {tuple(z.shape)}")
    if shuffle_seed is not None:
        z = z[torch.from_numpy(np.random.default_rng(shuffle_seed).permutation(len(z)))]
    splits = max(1, min(splits, len(z)))
    logp = torch.log_softmax(z, dim=1)                                  # (N, K)
    scores = []
    for chunk in torch.tensor_split(logp, splits):
        log_py = torch.logsumexp(chunk, dim=0) - np.log(len(chunk))     # (K,) log of the marginal p(y)
        kl = (chunk.exp() * (chunk - log_py)).sum(dim=1).mean()
        scores.append(float(torch.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))
