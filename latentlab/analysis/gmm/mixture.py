"""GaussianMixture: streamed EM in torch with scikit-learn's API and semantics.

Differences from `sklearn.mixture.GaussianMixture` (everything else matches it, see tests/test_gmm.py):
- `fit` also takes a torch tensor or a LatentStore (streamed, optionally a subset `indices`), and
  each EM iteration streams the data in chunks of `batch_size` rows (None: chosen from K*D and the
  device); sufficient statistics accumulate in float64, so memory is O(batch_size*K*D + K*D^2).
- Under torch.distributed, pass every rank the *full* data (the same array or store): each rank
  streams its contiguous 1/world_size part and the statistics are all-reduced, so `fit`, `score`,
  `bic` and `aic` equal the single-process results; the initialisation is computed identically on
  every rank and broadcast from rank 0. `score_samples`, `predict` and `predict_proba` return all
  rows on every rank.
- The per-chunk products run in float32 on the data centred on each component's mean (see
  `_gmm_math`); scores agree with sklearn to ~1e-8 relative from the same init (tests hold 1e-5).
  `compute_dtype="float64"` makes them float64 (as exact as sklearn, slower). From a chaotic start
  (many overlapping components) EM amplifies any round-off, in float32 as between BLAS builds.
- `device` None means CUDA when available, else CPU. `progress=True` shows a bar over EM iterations.
- Covariance types "full" and "diag" only.
- "kmeans" init runs torch k-means (greedy k-means++ seeds, then Lloyd iterations streamed over all
  rows, sklearn's tolerance); the seeds, and the "k-means++" init, come from a random subsample of at
  most 100,000 rows, so stores larger than memory work. The random draws differ from sklearn's.
- Degenerate covariances: with `reg_covar > 0`, a failed Cholesky factorisation raises `reg_covar`
  tenfold (a `RegularisationWarning` names the component count) up to `reg_covar_max` (1e-2), then
  a GMMError says what to change. `reg_covar=0` (or `reg_covar_max=None`) is strict, as sklearn: the
  first failure raises. The reg_covar finally used is `reg_covar_`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin

import latentlab.analysis.gmm._math as M
from latentlab.analysis.gmm._math import ConvergenceWarning, GMMError, RegularisationWarning
from latentlab.analysis.gmm._init import Source, assign, lloyd, seed_rows
from latentlab.utils import all_reduce_, dist_ready, get_device, info, progress

__all__ = ["GaussianMixture", "GMMError", "ConvergenceWarning", "RegularisationWarning"]

COVARIANCE_TYPES = ("full", "diag")
INIT_PARAMS = ("kmeans", "k-means++", "random_from_data")
COMPUTE_DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 26}  # floats per (K, b, D) chunk tensor


@dataclass
class _Params:
    """Mixture parameters in float64 on the device, means in shifted coordinates."""

    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    covariances: torch.Tensor  # (K, D, D) or (K, D)
    prec_chol: torch.Tensor  # (K, D, D) upper, or (K, D)


def _rng(random_state) -> np.random.Generator:
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**31 - 1))
    return np.random.default_rng(random_state)


TIE_RTOL = 1e-6  # restarts whose lower bounds agree to this relative precision are ties


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM in torch; scikit-learn's parameters, methods and fitted attributes.

    A scikit-learn estimator: `get_params`, `set_params`, `clone`, repr and pipelines come from
    `BaseEstimator`, the density-estimator type from `DensityMixin`.
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1, init_params: str = "kmeans",
                 weights_init=None, means_init=None, precisions_init=None, random_state=None,
                 warm_start: bool = False, verbose: int = 0, device: str | torch.device | None = None,
                 batch_size: int | None = None, reg_covar_max: float | None = 1e-2, progress: bool = False,
                 compute_dtype: str = "float32"):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.device = device
        self.batch_size = batch_size
        self.reg_covar_max = reg_covar_max
        self.progress = progress
        self.compute_dtype = compute_dtype

    # ------------------------------------------------------------ validation
    def _check_parameters(self) -> None:
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise GMMError(f"n_components must be an integer >= 1, got {self.n_components!r}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise GMMError(f"unknown covariance_type {self.covariance_type!r}; use one of {', '.join(COVARIANCE_TYPES)}")
        if self.init_params not in INIT_PARAMS:
            raise GMMError(f"unknown init_params {self.init_params!r}; use one of {', '.join(INIT_PARAMS)}")
        if not self.tol >= 0:
            raise GMMError(f"tol must be >= 0, got {self.tol!r}")
        if not self.reg_covar >= 0:
            raise GMMError(f"reg_covar must be >= 0, got {self.reg_covar!r}")
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 0:
            raise GMMError(f"max_iter must be an integer >= 0, got {self.max_iter!r}")
        if not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise GMMError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise GMMError(f"unknown compute_dtype {self.compute_dtype!r}; use one of {', '.join(COMPUTE_DTYPES)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise GMMError(f"batch_size must be >= 1 (or None for automatic), got {self.batch_size!r}")

    def _check_inits(self, d: int) -> None:
        k = self.n_components
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (k,):
                raise GMMError(f"weights_init must have shape ({k},), got {w.shape}")
            if (w < 0).any() or (w > 1).any() or not np.allclose(w.sum(), 1.0):
                raise GMMError(f"weights_init must lie in [0, 1] and sum to 1, got sum {w.sum():.6g}")
        if self.means_init is not None and np.shape(self.means_init) != (k, d):
            raise GMMError(f"means_init must have shape ({k}, {d}), got {np.shape(self.means_init)}")
        if self.precisions_init is not None:
            shape = (k, d, d) if self.covariance_type == "full" else (k, d)
            p = np.asarray(self.precisions_init, dtype=np.float64)
            if p.shape != shape:
                raise GMMError(f"precisions_init must have shape {shape} for covariance_type="
                               f"{self.covariance_type!r}, got {p.shape}")
            if self.covariance_type == "diag" and (p <= 0).any():
                raise GMMError("precisions_init must be positive")
            if self.covariance_type == "full" and not np.allclose(p, p.transpose(0, 2, 1)):
                raise GMMError("precisions_init must hold symmetric matrices")

    def _source(self, X, indices=None, fitting: bool = False) -> Source:
        src = Source(X, get_device(self.device), indices)
        if fitting:
            if src.n < 2:
                raise GMMError(f"at least 2 samples are needed to fit a mixture, got {src.n}")
            if src.n < self.n_components:
                raise GMMError("Expected n_samples >= n_components "
                               f"but got n_components = {self.n_components}, n_samples = {src.n}")
        elif hasattr(self, "means_") and src.dim != self.means_.shape[1]:
            raise GMMError(f"X has {src.dim} features, but the mixture was fitted with {self.means_.shape[1]}")
        bad = src.data.count_nonfinite()
        if bad:
            raise GMMError(f"{bad} of {src.n} input rows contain NaN or inf; clean or drop them first")
        src.set_shift()
        return src

    @property
    def _full(self) -> bool:
        return self.covariance_type == "full"

    def _batch(self, src: Source) -> int:
        if self.batch_size is not None:
            return int(self.batch_size)
        per = CHUNK_ELEMENTS.get(src.device.type, CHUNK_ELEMENTS["cuda"]) // max(1, self.n_components * src.dim)
        return max(64, min(src.n, per))

    # ------------------------------------------------------------ fitting
    def fit(self, X, y=None, indices: np.ndarray | None = None) -> "GaussianMixture":
        """Estimate the parameters by EM (n_init restarts, best lower bound kept); X: array, tensor or LatentStore."""
        self._fit(self._fit_source(X, indices))
        return self

    def fit_predict(self, X, y=None, indices: np.ndarray | None = None) -> np.ndarray:
        """Fit, then return the most probable component of each row (consistent with predict)."""
        src = self._fit_source(X, indices)
        self._fit(src)
        return self._log_resp(src)[1].argmax(1)

    def _fit_source(self, X, indices) -> Source:
        self._check_parameters()
        src = self._source(X, indices, fitting=True)
        self._check_inits(src.dim)
        return src

    def _fit(self, src: Source) -> None:
        full, bs = self._full, self._batch(src)
        do_init = not (self.warm_start and hasattr(self, "converged_") and hasattr(self, "means_"))
        if not do_init and self.means_.shape[1] != src.dim:
            raise GMMError(f"warm start: X has {src.dim} features, the fitted mixture {self.means_.shape[1]}")
        rng = _rng(self.random_state)
        max_lb, best, best_n_iter, best_lbs, best_reg = -math.inf, None, 0, [], self.reg_covar
        self.converged_ = False
        for init in range(self.n_init if do_init else 1):
            # the bar exists before the (k-means) initialisation, so a long one shows it is alive
            bar = progress(total=self.max_iter, desc=f"EM K={self.n_components}") if self.progress else None
            if do_init:
                reg = float(self.reg_covar)
                if bar is not None:
                    bar.set_postfix_str(f"{self.init_params} initialisation")
                params, reg = self._initial_params(src, rng, bs, reg)
                lb = -math.inf
            else:
                reg = max(float(self.reg_covar), float(getattr(self, "reg_covar_", 0.0)))
                params, lb = self._params_from_attributes(src), float(self.lower_bound_)
            if self.verbose:
                info(f"GMM K={self.n_components}: initialisation {init}")
            if self.max_iter == 0:
                if bar is not None:
                    bar.close()
                best, best_n_iter, best_reg = params, 0, reg
                continue
            lbs, converged = [], False
            for n_iter in range(1, self.max_iter + 1):
                prev = lb
                params, lb, reg = self._em_step(src, params, bs, reg, full)
                lbs.append(lb)
                if bar is not None:  # the count advances with every EM iteration, shown with its lower bound
                    bar.update(1)
                    bar.set_postfix(lower_bound=f"{lb:.4f}")
                if self.verbose >= 2:
                    info(f"  iteration {n_iter}: lower bound {lb:.6f} (change {lb - prev:.3g})")
                if abs(lb - prev) < self.tol:
                    converged = True
                    break
            if bar is not None:
                bar.close()
            # a later init must beat the best by more than float noise: equal optima (often the same mixture with
            # its components permuted) keep the first, so the choice does not depend on summation order (ranks)
            if max_lb == -math.inf or lb > max_lb + TIE_RTOL * abs(max_lb):
                max_lb, best, best_n_iter, best_lbs, best_reg = lb, params, n_iter, lbs, reg
                self.converged_ = converged
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(f"EM for K={self.n_components} did not converge in max_iter={self.max_iter} iterations "
                          f"(tol={self.tol:g}); increase max_iter or tol, or try another init",
                          ConvergenceWarning, stacklevel=3)
        self._set_attributes(best, src)
        self.n_iter_, self.lower_bound_, self.lower_bounds_ = best_n_iter, max_lb, best_lbs
        self.reg_covar_ = best_reg
        self.n_features_in_ = src.dim

    @torch.no_grad()
    def _initial_params(self, src: Source, rng: np.random.Generator, bs: int, reg: float) -> tuple[_Params, float]:
        """sklearn's initialisation: responsibilities from the init method, then one M-step (unless all inits given)."""
        k, full, dev = self.n_components, self._full, src.device
        given = lambda v: None if v is None else torch.as_tensor(np.asarray(v, np.float64), device=dev)  # noqa: E731
        w0, m0, p0 = given(self.weights_init), given(self.means_init), given(self.precisions_init)
        if m0 is not None:
            m0 = m0 - src.shift
        if w0 is None or m0 is None or p0 is None:
            if self.init_params == "kmeans":
                centres = src.rows(seed_rows(src, k, rng)) - src.shift  # (K, D)
                centres32 = lloyd(src, centres, bs).float()
                st = M.Stats(k, src.dim, full, dev)
                for x in src.chunks(bs):
                    M.accumulate(st, x[None] - centres32[:, None], assign(x, centres32), full)
                all_reduce_(st.buf)
                nk, means, cov0 = M.moments(st, centres32.double(), full)
            else:
                idx = seed_rows(src, k, rng) if self.init_params == "k-means++" \
                    else rng.choice(src.n, size=k, replace=False)
                nk = torch.full((k,), 1.0 + 10 * M.EPS64, dtype=torch.float64, device=dev)
                means = (src.rows(idx) - src.shift) / nk[:, None]
                cov0 = torch.zeros((k, src.dim, src.dim) if full else (k, src.dim), dtype=torch.float64, device=dev)
            weights = nk / src.n  # unnormalised, as sklearn
            if p0 is None:
                cov, prec, reg = M.factorise(cov0, reg, self.reg_covar_max, full)
        weights = weights if w0 is None else w0
        means = means if m0 is None else m0
        if p0 is not None:
            prec = M.precision_cholesky_from_precisions(p0, full)
            cov = M.covariances_from_precision_cholesky(prec, full)
        params = _Params(weights, means, cov, prec)
        if dist_ready():  # every rank computes the same init; broadcast rank 0's to rule out any drift
            for t in (params.weights, params.means, params.covariances, params.prec_chol):
                torch.distributed.broadcast(t, 0)
        return params, reg

    @torch.no_grad()
    def _em_step(self, src: Source, p: _Params, bs: int, reg: float, full: bool) -> tuple[_Params, float, float]:
        """One streamed E-step + M-step; returns (new params, mean log-likelihood under the old ones, reg)."""
        dt = COMPUTE_DTYPES[self.compute_dtype]
        lognorm_c, offset = M.log_normaliser(p.weights, p.prec_chol, full)  # (K,), float
        lognorm_c, means_c, prec_c = lognorm_c.to(dt), p.means.to(dt), p.prec_chol.to(dt)
        st = M.Stats(self.n_components, src.dim, full, src.device)
        ws = M.Workspace(self.n_components, bs, src.dim, src.device, dt)
        for x in src.chunks(bs, dtype=dt):
            M.em_chunk(st, x, means_c, prec_c, lognorm_c, offset, full, ws)
        all_reduce_(st.buf)
        lb = float(st.ll) / src.n
        nk, means, cov0 = M.moments(st, means_c.double(), full)  # centred on the rounded means
        cov, prec, reg = M.factorise(cov0, reg, self.reg_covar_max, full)
        return _Params(nk / nk.sum(), means, cov, prec), lb, reg

    # ------------------------------------------------------------ attributes
    def _set_attributes(self, p: _Params, src: Source) -> None:
        np64 = lambda t: t.detach().to("cpu", torch.float64).numpy()  # noqa: E731
        self.weights_ = np64(p.weights)
        self.means_ = np64(p.means + src.shift)
        self.covariances_ = np64(p.covariances)
        self.precisions_cholesky_ = np64(p.prec_chol)
        u = self.precisions_cholesky_
        self.precisions_ = u @ u.transpose(0, 2, 1) if self._full else u**2

    def _params_from_attributes(self, src: Source) -> _Params:
        t = lambda a: torch.as_tensor(np.asarray(a, np.float64), device=src.device)  # noqa: E731
        return _Params(t(self.weights_), t(self.means_) - src.shift, t(self.covariances_), t(self.precisions_cholesky_))

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise GMMError("this GaussianMixture is not fitted yet; call fit first")

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def _log_resp(self, src: Source, shard: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(log p(x) (n,), log responsibilities (n, K)) as numpy float64 for the rows streamed."""
        self._check_fitted()
        p = self._params_from_attributes(src)
        dt = COMPUTE_DTYPES[self.compute_dtype]
        lognorm_c, offset = M.log_normaliser(p.weights, p.prec_chol, self._full)
        lognorm_c, means_c, prec_c = lognorm_c.to(dt), p.means.to(dt), p.prec_chol.to(dt)
        bs = self._batch(src)
        ws = M.Workspace(self.n_components, bs, src.dim, src.device, dt)
        lpn, lr = [], []
        for x in src.chunks(bs, shard=shard, dtype=dt):
            a, b = M.chunk_log_resp(x, means_c, prec_c, lognorm_c, offset, self._full, ws)
            lpn.append(a.cpu())
            lr.append(b.cpu())
        return torch.cat(lpn).numpy(), torch.cat(lr).numpy()

    def score_samples(self, X, indices: np.ndarray | None = None) -> np.ndarray:
        """Log-likelihood of each row, (n,) float64."""
        return self._log_resp(self._source(X, indices))[0]

    def score(self, X, y=None, indices: np.ndarray | None = None) -> float:
        """Mean log-likelihood per row (all-reduced over ranks under torch.distributed)."""
        src = self._source(X, indices)
        lpn = self._log_resp(src, shard=True)[0]
        tot = all_reduce_(torch.tensor([lpn.sum(), len(lpn)], dtype=torch.float64, device=src.device))
        return float(tot[0] / tot[1])

    def predict(self, X, indices: np.ndarray | None = None) -> np.ndarray:
        """Most probable component of each row, (n,) int64."""
        return self._log_resp(self._source(X, indices))[1].argmax(1)

    def predict_proba(self, X, indices: np.ndarray | None = None) -> np.ndarray:
        """Responsibilities, (n, K) float64 rows summing to 1."""
        return np.exp(self._log_resp(self._source(X, indices))[1])

    def _n_parameters(self) -> int:
        """Free parameters: K-1 weights, K*D means, K*D(D+1)/2 (full) or K*D (diag) covariance entries."""
        k, d = self.n_components, self.means_.shape[1] if hasattr(self, "means_") else 0
        cov = k * d * (d + 1) / 2.0 if self._full else k * d
        return int(cov + d * k + k - 1)

    def bic(self, X, indices: np.ndarray | None = None) -> float:
        """Bayesian information criterion on X (lower is better)."""
        n = len(indices) if indices is not None else len(X)
        return -2 * self.score(X, indices=indices) * n + self._n_parameters() * math.log(n)

    def aic(self, X, indices: np.ndarray | None = None) -> float:
        """Akaike information criterion on X (lower is better)."""
        n = len(indices) if indices is not None else len(X)
        return -2 * self.score(X, indices=indices) * n + 2 * self._n_parameters()
