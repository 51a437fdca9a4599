"""Kernel distance (KID): the unbiased squared MMD with a cubic polynomial kernel, over random subsets.

    k(x, y) = (x . y / d + 1)^3                          (Binkowski et al. 2018; torch-fidelity's defaults)
    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2

Unlike the Fréchet distance, this estimator is unbiased at any sample size: two sets from one
distribution give 0 in expectation, so a small KID is not an artefact of a small n. `kid`
returns the mean and the standard deviation over `subsets` random pairs of subsets of
`subset_size` rows each (100 and 1000 by default, as torch-fidelity; the subset size is lowered
to the smaller set when needed). Named after the extractor: `kid_inception`, `kid_lenet`, ...
"""

from __future__ import annotations

import numpy as np
import torch

from latentlab.errors import LatentlabError


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> torch.Tensor:
    """(x y^T * gamma + coef0)^degree, gamma = 1 / d by default. x: (m, d), y: (n, d) -> (m, n)."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * g + coef0) ** degree


def mmd2_unbiased(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> float:
    """The unbiased squared MMD from the three kernel matrices (diagonals of kxx and kyy left out)."""
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())


def kid(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> tuple[float, float, int]:
    """(mean, std over subsets, subset size used) of the unbiased polynomial-kernel MMD^2 between two feature sets."""
    x = torch.as_tensor(np.asarray(real) if not isinstance(real, torch.Tensor) else real).double()
    y = torch.as_tensor(np.asarray(fake) if not isinstance(fake, torch.Tensor) else fake).double()
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise LatentlabError(f"KID needs two feature sets (N, D) of one width; got {tuple(x.shape)} and {tuple(y.shape)}")
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise LatentlabError(f"KID needs at least 2 features on each side; got {len(x)} and {len(y)}")
    if subsets < 1:
        raise LatentlabError(f"KID needs at least one subset; got {subsets}")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        a = x[torch.from_numpy(rng.choice(len(x), size, replace=False))]              # (s, D)
        b = y[torch.from_numpy(rng.choice(len(y), size, replace=False))]              # (s, D)
        vals.append(mmd2_unbiased(polynomial_kernel(a, a, degree, gamma, coef0),
                                  polynomial_kernel(b, b, degree, gamma, coef0),
                                  polynomial_kernel(a, b, degree, gamma, coef0)))
    return float(np.mean(vals)), float(np.std(vals)), size
