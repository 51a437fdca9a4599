"""The linear-Gaussian reference of the SiT loss: what the best linear denoiser reaches on these latents.

With the package's path (t = 1 is data), x_t = t x + (1 - t) eps and the velocity target
v = x - eps. Let x have covariance Sigma with eigenvalues lambda_i (its mean only shifts the
best predictor's intercept), eps ~ N(0, I). In Sigma's eigenbasis every coordinate is
independent; for one of variance lambda

    Var(x_t) = t^2 lambda + (1 - t)^2,    Cov(v, x_t) = t lambda - (1 - t),    Var(v) = lambda + 1,

so the best affine predictor of v from x_t leaves the error

    lambda + 1 - (t lambda - (1 - t))^2 / (t^2 lambda + (1 - t)^2) = lambda / (t^2 lambda + (1 - t)^2),

the numerator (lambda + 1)(t^2 lambda + (1 - t)^2) - (t lambda - (1 - t))^2 being
lambda (t + (1 - t))^2 = lambda. For Gaussian x the affine predictor is the exact posterior
mean E[v | x_t], so this is the lowest loss any network reaches on Gaussian latents with the same
covariance. The SiT loss is the mean over all D latent dimensions, so the reference at time t is

    L_lin(t) = (1/D) sum_i lambda_i / (t^2 lambda_i + (1 - t)^2),

averaged over the held-out t grid as `sit_loss_linear`. i.i.d. N(0, 1) latents give 1.573 on
the 8-point grid; a latent of lower rank gives less (a collapsed one 0), which is why the SiT
loss alone rewards low rank, and why `sit_loss_gap = sit_loss - sit_loss_linear` is reported:
a negative gap is structure beyond second order that the network uses.
"""

from __future__ import annotations

import numpy as np
import torch

from latentlab.latents import LatentStore
from latentlab.utils import warn

MAX_COVARIANCE_DIM = 8192   # above this many latent dimensions the spectrum comes from a Gram matrix of rows


def linear_loss(eigenvalues: np.ndarray, t: np.ndarray | float, dim: int | None = None) -> np.ndarray:
    """L_lin(t) = (1/D) sum_i lambda_i / (t^2 lambda_i + (1 - t)^2) for each t; D = `dim` or len(eigenvalues)."""
    lam = np.clip(np.asarray(eigenvalues, np.float64), 0.0, None)[None, :]     # (1, k)
    tt = np.atleast_1d(np.asarray(t, np.float64))[:, None]                     # (n_t, 1)
    d = dim if dim is not None else lam.shape[1]
    return (lam / (tt ** 2 * lam + (1 - tt) ** 2)).sum(1) / d                   # (n_t,)


def covariance_spectrum(batches, dim: int, max_rows_gram: int = MAX_COVARIANCE_DIM) -> np.ndarray:
    """Eigenvalues (descending, ddof=1) of the covariance of streamed rows (b, dim), in float64.

    Up to MAX_COVARIANCE_DIM dimensions this is the (dim, dim) covariance; above, the nonzero
    eigenvalues come from the Gram matrix of the first `max_rows_gram` rows (exact when there
    are no more rows than that; zero eigenvalues contribute nothing to `linear_loss`).
    """
    if dim <= MAX_COVARIANCE_DIM:
        n, s = 0, torch.zeros(dim, dtype=torch.float64)
        scatter = torch.zeros(dim, dim, dtype=torch.float64)   # (D, D)
        shift = None
        for x in batches:
            x = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)     # (b, D)
            shift = x[0].clone() if shift is None else shift                     # avoids cancellation
            xc = x - shift
            n += len(x)
            s += xc.sum(0)
            scatter.addmm_(xc.T, xc)
        cov = (scatter - torch.outer(s, s) / n) / max(n - 1, 1)
        return torch.linalg.eigvalsh((cov + cov.T) / 2).flip(0).clamp_min(0).numpy()
    rows = []
    for x in batches:
        rows.append(torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1))
        if sum(len(r) for r in rows) >= max_rows_gram:
            warn(f"the SiT linear reference of {dim}-dimensional latents uses the first {max_rows_gram} rows "
                 f"(Gram matrix): its rank is at most {max_rows_gram - 1}")
            break
    x = torch.cat(rows)[:max_rows_gram]
    xc = x - x.mean(0)
    gram = xc @ xc.T / max(len(x) - 1, 1)                                         # (n, n)
    return torch.linalg.eigvalsh((gram + gram.T) / 2).flip(0).clamp_min(0).numpy()


def latent_spectrum(store: LatentStore, rows: np.ndarray, normalize_fn, batch_size: int = 4096) -> np.ndarray:
    """Covariance eigenvalues of `store[rows]` after `normalize_fn` (the model's own view), flattened."""
    def batches():
        for i in range(0, len(rows), batch_size):
            x = torch.from_numpy(store.take(rows[i:i + batch_size]))             # (b, *shape)
            yield normalize_fn(x).reshape(len(x), -1)                             # (b, D)
    return covariance_spectrum(batches(), store.dim)


def reference_losses(eigenvalues: np.ndarray, t_grid: np.ndarray, dim: int) -> dict:
    """{"sit_loss_linear": mean over t, "sit_loss_linear@t=...": per t} for an eigenvalue spectrum."""
    per_t = linear_loss(eigenvalues, t_grid, dim)
    return {"sit_loss_linear": float(per_t.mean()),
            **{f"sit_loss_linear@t={t:.4f}": float(v) for t, v in zip(t_grid, per_t)}}
