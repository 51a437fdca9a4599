"""Planted modes: a Gaussian mixture with a known number of modes, as a latent source with ground truth.

`PlantedSpec` names the mixture (`modes=M,dim=D,n=N,seed=S` plus optional `test=`, `sep=`):
M equally weighted Gaussian components in D dimensions that share one covariance. Before
whitening, the means are drawn i.i.d. from N(0, sep^2 I) and every component has covariance I;
the whole mixture is then whitened with the exact (population) total covariance

    Sigma_tot = I + sum_m pi_m (mu_m - mu_bar)(mu_m - mu_bar)^T,    W = Sigma_tot^(-1/2),

so the mixture's mean is 0 and its total covariance is exactly the identity for every M.
Every M therefore has the same linear-Gaussian reference (the best linear denoiser sees
N(0, I)), and whatever a model does better than that comes from the modes. A sample's
label is the mode it was drawn from. `PlantedMixture.log_density` is the exact log-density
of the whitened mixture; `mode_of` assigns points to their most probable mode.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from scipy.stats import chi2

from latentlab.errors import LatentlabError
from latentlab.latents import STORE_SET_KIND, LatentStore
from latentlab.outputs import output_dir
from latentlab.utils import derive_seed

SPEC_KEYS = ("modes", "dim", "n", "seed", "test", "sep")


@dataclass(frozen=True)
class PlantedSpec:
    """modes=M, dim=D, n=N train rows (test rows: `test`, default max(M, N // 4)), seed, mean spread `sep`."""

    modes: int
    dim: int
    n: int
    seed: int = 0
    test: int | None = None
    sep: float = 4.0

    def __post_init__(self):
        if self.modes < 1 or self.dim < 1 or self.n < max(2, self.modes):
            raise LatentlabError(f"planted modes need modes >= 1, dim >= 1 and n >= max(2, modes); got modes="
                                 f"{self.modes}, dim={self.dim}, n={self.n}")
        if self.test is not None and self.test < self.modes:
            raise LatentlabError(f"planted test= must be at least modes={self.modes}; got {self.test}")
        if not self.sep > 0:
            raise LatentlabError(f"planted sep= must be > 0; got {self.sep}")

    @property
    def n_test(self) -> int:
        """Rows of the test split."""
        return self.test if self.test is not None else max(self.modes, self.n // 4)

    def key(self) -> str:
        """The canonical spec string (the stores' dataset name)."""
        return (f"planted:modes={self.modes},dim={self.dim},n={self.n},seed={self.seed},test={self.n_test},"
                f"sep={self.sep:g}")


def parse_planted(spec: str) -> PlantedSpec:
    """'modes=4,dim=16,n=2000,seed=0' (an optional 'planted:' prefix) -> PlantedSpec; bad specs are one-line errors."""
    body = spec.partition("planted:")[2] if spec.startswith("planted:") else spec
    vals: dict = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        k, sep, v = part.partition("=")
        if not sep or k not in SPEC_KEYS:
            raise LatentlabError(f"bad planted spec {spec!r}: {part!r} is not KEY=VALUE with KEY one of "
                                 f"{', '.join(SPEC_KEYS)} (e.g. modes=4,dim=16,n=2000,seed=0)")
        try:
            vals[k] = float(v) if k == "sep" else int(v)
        except ValueError:
            raise LatentlabError(f"bad planted spec {spec!r}: {k}={v!r} is not a number") from None
    missing = [k for k in ("modes", "dim", "n") if k not in vals]
    if missing:
        raise LatentlabError(f"planted spec {spec!r} lacks {', '.join(missing)}; give e.g. modes=4,dim=16,n=2000,seed=0")
    return PlantedSpec(**vals)


class PlantedMixture:
    """The whitened mixture of a PlantedSpec: weights (M,), means (M, D), shared covariance (D, D)."""

    def __init__(self, spec: PlantedSpec):
        self.spec = spec
        rng = np.random.default_rng(derive_seed("planted-means", spec.seed, spec.modes, spec.dim))
        m, d = spec.modes, spec.dim
        self.weights = np.full(m, 1.0 / m)                                     # (M,)
        raw = rng.normal(0.0, spec.sep, size=(m, d)) if m > 1 else np.zeros((1, d))   # (M, D)
        centred = raw - self.weights @ raw                                     # (M, D)
        between = (centred * self.weights[:, None]).T @ centred                # (D, D)
        evals, evecs = np.linalg.eigh(np.eye(d) + between)
        w = evecs @ np.diag(evals ** -0.5) @ evecs.T                           # (D, D) symmetric Sigma_tot^(-1/2)
        self.means = centred @ w                                               # (M, D)
        self.cov = w @ w                                                       # (D, D) = W I W^T
        self._chol = np.linalg.cholesky(self.cov)                              # (D, D) lower
        self._logdet = 2.0 * float(np.log(np.diag(self._chol)).sum())

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) float32 points and their (n,) int64 modes (each mode n/M times, shuffled), seeded by `seed`."""
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.arange(n) % self.spec.modes).astype(np.int64)     # (n,) balanced modes
        z = rng.standard_normal((n, self.spec.dim))                                     # (n, D)
        return (self.means[labels] + z @ self._chol.T).astype(np.float32), labels

    def mahalanobis2(self, x: np.ndarray) -> np.ndarray:
        """(n, M) squared Mahalanobis distance of each point to each mode (shared covariance C)."""
        x = np.asarray(x, np.float64).reshape(len(x), -1)                       # (n, D)
        if x.shape[1] != self.spec.dim:
            raise LatentlabError(f"points have {x.shape[1]} dimensions; the planted mixture has {self.spec.dim}")
        diff = x[:, None, :] - self.means[None]                                 # (n, M, D)
        sol = np.linalg.solve(self._chol, diff.reshape(-1, self.spec.dim).T)    # (D, n*M)
        return np.square(sol).sum(0).reshape(len(x), self.spec.modes)           # (n, M)

    def component_log_density(self, x: np.ndarray) -> np.ndarray:
        """(n, M) log pi_m + log N(x; mu_m, C) in float64."""
        d = self.spec.dim
        return np.log(self.weights)[None] - 0.5 * (self.mahalanobis2(x) + self._logdet + d * math.log(2 * math.pi))

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """(n,) exact log-density of the whitened mixture at x (n, D)."""
        return logsumexp(self.component_log_density(x), axis=1)

    def mode_of(self, x: np.ndarray) -> np.ndarray:
        """(n,) the most probable mode of each point."""
        return np.argmax(self.component_log_density(x), axis=1)

    def coverage(self, x: np.ndarray, min_share: float = 0.1, level: float = 0.99) -> dict:
        """Which modes points x hit. A point is in mode m when m is its most probable mode and it lies inside
        m's `level` ellipsoid (squared Mahalanobis distance <= the chi^2_D quantile).

        in_mode: share of points inside some mode; mode_coverage: share of modes holding at least
        `min_share` of their expected count of such points; mode_balance: entropy of the histogram of
        those points over the modes, divided by log M (1: every mode equally often; 1 for M = 1).
        """
        m = self.spec.modes
        maha = self.mahalanobis2(x)                                               # (n, M)
        best = np.argmax(np.log(self.weights)[None] - 0.5 * maha, axis=1)         # shared C: most probable mode
        inside = maha[np.arange(len(x)), best] <= chi2.ppf(level, self.spec.dim)
        counts = np.bincount(best[inside], minlength=m)                           # (M,)
        expected = len(x) * self.weights
        p = counts / max(counts.sum(), 1)
        ent = -float(np.sum(p[p > 0] * np.log(p[p > 0])))
        return {"in_mode": float(inside.mean()), "mode_coverage": float(np.mean(counts >= min_share * expected)),
                "mode_balance": ent / math.log(m) if m > 1 else float(counts.sum() > 0), "mode_counts": counts.tolist()}


def score_generated(mix: PlantedMixture, x: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Exact mean log-density (and its standard error) of points x under the mixture, and, for class-conditional
    points, the share whose most probable mode is the one asked for (`mode_accuracy`)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    lp = mix.log_density(x)
    out = {"logp": float(lp.mean()), "logp_se": float(lp.std(ddof=1) / np.sqrt(len(lp))) if len(lp) > 1 else 0.0}
    if labels is not None and (np.asarray(labels) >= 0).all():
        out["mode_accuracy"] = float(np.mean(mix.mode_of(x) == np.asarray(labels)))
    return out


def write_planted(spec: PlantedSpec | str, out: str | os.PathLike, name: str | None = None) -> dict[str, LatentStore]:
    """A store set OUT/train, OUT/test of the planted mixture, (N, 1, D) tokens labelled by mode."""
    spec = parse_planted(spec) if isinstance(spec, str) else spec
    mix = PlantedMixture(spec)
    out = Path(out)
    with output_dir(out, STORE_SET_KIND) as tmp:  # checked before any work; the set appears whole or not at all
        for split, n in (("train", spec.n), ("test", spec.n_test)):
            x, y = mix.sample(n, derive_seed("planted-rows", spec.seed, split, n))
            meta = {"name": name or f"planted-m{spec.modes}", "tokenizer": "planted", "dataset": spec.key(),
                    "split": split, "planted": {**dataclasses.asdict(spec), "test": spec.n_test}}
            LatentStore.create(tmp / split, x, y, meta)
    return {split: LatentStore.open(out / split) for split in ("train", "test")}


def planted_slug(spec: PlantedSpec) -> str:
    """A directory name for the spec."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec.key())
