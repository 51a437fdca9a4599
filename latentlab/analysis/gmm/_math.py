"""EM mathematics for latentlab.analysis.gmm: batched log-probabilities, streamed statistics, M-step.

All parameters live in float64 in *shifted* coordinates (data minus the source's working origin).
Per chunk, the data is centred on every component's mean at once, `xc = x - mu_k` as a (K, b, D)
float32 tensor; the Mahalanobis terms are one batched matmul `xc @ U_k` (U_k the upper Cholesky
factor of the precision, as sklearn) and the second moments one batched weighted Gram
`xc_k^T diag(r_k) xc_k`. Sums over chunks accumulate in float64. Centring on the current means
keeps the float32 products accurate; only the (K, D, D) algebra runs in float64.
"""

from __future__ import annotations

import math
import warnings

import torch

from latentlab.errors import LatentlabError

EPS64 = torch.finfo(torch.float64).eps
EXP_FLOOR = -80.0  # responsibilities below exp(-80) ~ 2e-35 are raised to it (negligible; avoids slow denormals)


class GMMError(LatentlabError, ValueError):
    """Bad input or an ill-posed fit of a Gaussian mixture (also a ValueError, as in sklearn)."""


class RegularisationWarning(UserWarning):
    """reg_covar was raised to rescue a covariance that is not positive definite."""


class ConvergenceWarning(UserWarning):
    """EM stopped at max_iter before the lower bound changed by less than tol."""


class Stats:
    """Float64 sufficient statistics in one flat buffer (a single all_reduce): ll, Nk, sum xc, sum xc xc^T."""

    def __init__(self, k: int, d: int, full: bool, device: torch.device):
        sizes = [1, k, k * d, k * d * d if full else k * d]
        self.buf = torch.zeros(sum(sizes), dtype=torch.float64, device=device)
        ll, nk, sx, sxx = torch.split(self.buf, sizes)
        self.ll, self.nk, self.sx = ll, nk, sx.view(k, d)  # (1,) (K,) (K, D)
        self.sxx = sxx.view(k, d, d) if full else sxx.view(k, d)  # (K, D, D) or (K, D)


def log_normaliser(weights: torch.Tensor, prec_chol: torch.Tensor, full: bool) -> tuple[torch.Tensor, float]:
    """log w_k + log det U_k - D/2 log(2 pi) split as (relative part (K,), offset).

    The offset (the largest value) is added back in float64, so float32 products only carry differences.
    """
    d = prec_chol.shape[-1]
    diag = torch.diagonal(prec_chol, dim1=-2, dim2=-1) if full else prec_chol  # (K, D)
    ln = torch.log(weights) + torch.log(diag).sum(-1) - 0.5 * d * math.log(2 * math.pi)  # (K,)
    offset = float(ln.max())
    return ln - offset, offset


class Workspace:
    """Preallocated (K, b, D) buffers reused by every chunk (no page faults per chunk)."""

    def __init__(self, k: int, b: int, d: int, device: torch.device, dtype: torch.dtype = torch.float32):
        self.xc = torch.empty(k, b, d, dtype=dtype, device=device)
        self.y = torch.empty(k, b, d, dtype=dtype, device=device)


def weighted_log_prob(x: torch.Tensor, means_c: torch.Tensor, prec_c: torch.Tensor, lognorm_c: torch.Tensor,
                      full: bool, ws: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """(centred data xc (K, b, D), log w_k + log N(x | k) as float32 (K, b)) for a chunk x (b, D)."""
    b = x.shape[0]
    xc = torch.sub(x[None], means_c[:, None], out=ws.xc[:, :b])  # (K, b, D)
    if full:
        y = torch.bmm(xc, prec_c, out=ws.y[:, :b])  # (K, b, D)
    else:
        y = torch.mul(xc, prec_c[:, None, :], out=ws.y[:, :b])  # (K, b, D)
    maha = torch.linalg.vector_norm(y, dim=-1).square_()  # (K, b)
    return xc, lognorm_c[:, None] - 0.5 * maha


def accumulate(st: Stats, xc: torch.Tensor, r: torch.Tensor, full: bool) -> None:
    """Add responsibilities r (K, b) float32 and centred data xc (K, b, D) to the statistics; xc is overwritten."""
    st.nk += r.sum(1, dtype=torch.float64)
    if full:
        sr = r.sqrt()  # (K, b)
        xr = xc.mul_(sr[:, :, None])  # (K, b, D) sqrt(r) * xc, in place
        st.sx += torch.bmm(sr[:, None, :], xr)[:, 0].double()  # (K, D)
        st.sxx += torch.bmm(xr.transpose(1, 2), xr).double()  # (K, D, D)
    else:
        st.sx += torch.bmm(r[:, None, :], xc)[:, 0].double()  # (K, D)
        st.sxx += torch.bmm(r[:, None, :], xc.square_())[:, 0].double()  # (K, D)


@torch.no_grad()
def em_chunk(st: Stats, x: torch.Tensor, means_c: torch.Tensor, prec_c: torch.Tensor,
             lognorm_c: torch.Tensor, offset: float, full: bool, ws: Workspace) -> None:
    """E-step on one chunk x (b, D) and accumulation of its M-step statistics (lognorm = lognorm_c + offset)."""
    xc, wlp = weighted_log_prob(x, means_c, prec_c, lognorm_c, full, ws)  # (K, b, D), (K, b)
    top = wlp.amax(0)  # (b,)
    e = torch.exp(wlp.sub_(top).clamp_min_(EXP_FLOOR))  # (K, b); the floor keeps exp out of denormals
    tot = e.sum(0)  # (b,)
    st.ll += (top + torch.log(tot)).sum(dtype=torch.float64) + offset * x.shape[0]
    accumulate(st, xc, e.div_(tot), full)


@torch.no_grad()
def chunk_log_resp(x: torch.Tensor, means_c: torch.Tensor, prec_c: torch.Tensor, lognorm_c: torch.Tensor,
                   offset: float, full: bool, ws: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x) (b,), log responsibilities (b, K)) for one chunk, float64."""
    wlp = weighted_log_prob(x, means_c, prec_c, lognorm_c, full, ws)[1].double()  # (K, b)
    lpn = torch.logsumexp(wlp, 0)  # (b,)
    return lpn + offset, (wlp - lpn).T


def moments(st: Stats, centres: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(nk + 10 eps, means, covariances without reg_covar) from statistics centred on `centres` (K, D)."""
    nk = st.nk + 10 * EPS64  # as sklearn
    d = st.sx / nk[:, None]  # (K, D) mean shift from the centres
    means = centres + d
    n = st.nk[:, None]
    if full:
        outer = st.sx[:, :, None] * d[:, None, :]  # (K, D, D)
        cov = st.sxx - outer - outer.transpose(1, 2) + n[:, :, None] * d[:, :, None] * d[:, None, :]
        cov = cov / nk[:, None, None]
        cov = 0.5 * (cov + cov.transpose(1, 2))
    else:
        cov = (st.sxx - 2 * st.sx * d + n * d * d) / nk[:, None]
    return nk, means, cov


def add_reg(cov: torch.Tensor, reg: float, full: bool) -> torch.Tensor:
    """cov + reg on the diagonal (a new tensor)."""
    if not full:
        return cov + reg
    return cov + reg * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)


def precision_cholesky(cov: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor U of each precision, Lambda = U U^T; bool mask of failed components)."""
    if full:
        chol, info = torch.linalg.cholesky_ex(cov)  # (K, D, D) lower
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov).contiguous()
        prec = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)  # (K, D, D) upper
        bad = (info != 0) | ~torch.isfinite(prec).flatten(1).all(1)
        return torch.where(bad[:, None, None], eye, prec), bad
    bad = (cov <= 0).any(1) | ~torch.isfinite(cov).all(1)
    prec = 1.0 / torch.sqrt(cov.clamp_min(torch.finfo(cov.dtype).tiny))
    return torch.where(bad[:, None], torch.ones_like(prec), prec), bad


def precision_cholesky_from_precisions(prec: torch.Tensor, full: bool) -> torch.Tensor:
    """U with Lambda = U U^T, U upper triangular (sklearn's flip trick), from precision matrices."""
    if not full:
        return torch.sqrt(prec)
    flip = torch.flip(prec, (-2, -1))
    chol, info = torch.linalg.cholesky_ex(flip)
    if bool((info != 0).any()):
        raise GMMError("precisions_init must hold symmetric positive-definite matrices; "
                       f"{int((info != 0).sum())} are not")
    return torch.flip(chol, (-2, -1))


def covariances_from_precision_cholesky(prec_chol: torch.Tensor, full: bool) -> torch.Tensor:
    """Covariance = (U U^T)^{-1}."""
    if not full:
        return 1.0 / prec_chol**2
    eye = torch.eye(prec_chol.shape[-1], dtype=prec_chol.dtype, device=prec_chol.device).expand_as(prec_chol)
    inv = torch.linalg.solve_triangular(prec_chol, eye.contiguous(), upper=True)  # U^{-1}
    return inv.transpose(1, 2) @ inv


def factorise(cov0: torch.Tensor, reg: float, reg_max: float | None, full: bool
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Add reg and factorise; on failure raise reg tenfold up to reg_max with a warning, else GMMError.

    reg == 0 is strict (as sklearn): a failed factorisation raises at once.
    Returns (covariances, precision Cholesky factors, the reg actually used).
    """
    k = cov0.shape[0]
    while True:
        cov = add_reg(cov0, reg, full)
        prec, bad = precision_cholesky(cov, full)
        n_bad = int(bad.sum())
        if not n_bad:
            return cov, prec, reg
        if reg <= 0 or reg_max is None or reg >= reg_max:
            raise GMMError(
                f"Fitting the mixture model failed because {n_bad} of {k} components have ill-defined "
                f"empirical covariance at reg_covar={reg:g} (for instance caused by singleton or collapsed "
                "samples); increase reg_covar, reduce n_components, or scale the input data")
        new = min(reg * 10.0, reg_max)
        warnings.warn(f"n_components={k}: {n_bad} covariance(s) not positive definite at reg_covar={reg:g}; "
                      f"raising reg_covar to {new:g}", RegularisationWarning, stacklevel=4)
        reg = new
