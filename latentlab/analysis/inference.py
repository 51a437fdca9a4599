"""Statistical inference for studies: every estimate with an interval, every p-value exact or a stated permutation test.

    MetricRuns                one metric of one tokenizer over its seeds (per-image values, or set-level estimates
                              with their within-run bootstrap replicates)
    hierarchical_draws        bootstrap draws of the mean over seeds: resample seeds, then images within each seed
    interval                  (estimate, lo, hi) of a MetricRuns from those draws (percentile interval)
    paired_difference         A - reference on the same images: hierarchical interval and a sign-flip permutation p
    spearman_test             |rho| permutation p: all n! pairings for n <= EXACT_MAX_N, else >= N_PERMUTATIONS draws
    spearman_draws            rho of each bootstrap draw of the tokenizers' values (paired across predictors)
    spearman_interval         rho's interval from per-tokenizer bootstrap draws (replicates resampled within tokenizer)
    partial_spearman          rank partial correlation of x and y given z
    holm                      Holm's step-down adjustment of a family of p-values

The within-run level uses `scipy.stats.bootstrap` (its bootstrap distribution) and the tests use
`scipy.stats.permutation_test`; only the seed level (which scipy has no notion of) is drawn here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_BOOT = 2000               # bootstrap draws per interval
EXACT_MAX_N = 9             # up to 9! = 362,880 pairings are enumerated
N_PERMUTATIONS = 10_000     # Monte Carlo permutation draws above that
KINDS = ("per-image", "set")
_BATCH_ELEMENTS = 2 ** 22   # resampled values held at once


@dataclass
class MetricRuns:
    """One metric of one tokenizer over its seeds.

    kind "per-image": `values[s]` holds the per-image values of seed s (the run's estimate is their mean).
    kind "set": `values[s]` holds seed s's within-run bootstrap replicates, centred on `estimates[s]`
    (one value when the run has none). Use `per_image` / `set_level` to build one.
    """

    kind: str
    values: list[np.ndarray]
    estimates: np.ndarray

    @classmethod
    def per_image(cls, values: list) -> "MetricRuns":
        """Per-image values of each seed (1-D arrays, non-finite entries dropped)."""
        vals = [np.asarray(v, dtype=np.float64).ravel() for v in values]
        vals = [v[np.isfinite(v)] for v in vals]
        return cls("per-image", vals, np.array([v.mean() if len(v) else np.nan for v in vals]))

    @classmethod
    def set_level(cls, estimates: list, replicates: list | None = None) -> "MetricRuns":
        """Set-level estimates of each seed, with optional within-run bootstrap replicates (re-centred on the estimate).

        Centring removes the bootstrap's own bias (resampling with replacement inflates a Frechet distance),
        so the replicates carry only the spread.
        """
        est = np.asarray(estimates, dtype=np.float64).ravel()
        reps = replicates if replicates is not None else [None] * len(est)
        vals = []
        for e, r in zip(est, reps):
            r = np.asarray(r if r is not None else [], dtype=np.float64).ravel()
            r = r[np.isfinite(r)]
            vals.append(e + (r - r.mean()) if len(r) >= 2 else np.array([e]))
        return cls("set", vals, est)

    @property
    def n_seeds(self) -> int:
        """Number of seeds (replicates of the whole chain)."""
        return len(self.values)

    @property
    def estimate(self) -> float:
        """The mean over seeds of each seed's estimate (missing ones ignored; an infinite one, e.g. the PSNR of
        an exact reconstruction, stays infinite)."""
        known = self.estimates[~np.isnan(self.estimates)]
        return float(known.mean()) if len(known) else math.nan

    @property
    def has_spread(self) -> bool:
        """True when there is anything to resample: two seeds, or within-run values."""
        return self.n_seeds >= 2 or (self.n_seeds == 1 and len(self.values[0]) >= 2)


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def within_draws(values: np.ndarray, kind: str, m: int, rng: np.random.Generator) -> np.ndarray:
    """m draws of one run's estimate: bootstrap means of its per-image values, or picks among its replicates."""
    values = np.asarray(values, dtype=np.float64)
    if m == 0:
        return np.zeros(0)
    if len(values) == 0:
        return np.full(m, np.nan)
    if kind == "set" or len(values) == 1 or np.ptp(values) == 0:
        return values[rng.integers(0, len(values), m)] if kind == "set" else np.full(m, values.mean())
    res = stats.bootstrap((values,), np.mean, n_resamples=m, method="percentile", vectorized=True,
                          batch=max(1, _BATCH_ELEMENTS // len(values)), rng=rng)
    return np.asarray(res.bootstrap_distribution, dtype=np.float64)


def seed_choice(n_seeds: int, n_boot: int, rng) -> np.ndarray:
    """(n_boot, n_seeds) seed indices drawn with replacement (all zeros with one seed: nothing to resample)."""
    rng = _rng(rng)
    if n_seeds <= 1:
        return np.zeros((n_boot, max(n_seeds, 1)), dtype=np.int64)
    return rng.integers(0, n_seeds, (n_boot, n_seeds))


def hierarchical_draws(runs: MetricRuns, choice: np.ndarray | int = N_BOOT, rng=0) -> np.ndarray:
    """Bootstrap draws (n_boot,) of the mean over seeds: seeds resampled by `choice`, then images within each seed.

    `choice` is a (n_boot, n_seeds) matrix from `seed_choice` (share one across the metrics of a tokenizer
    to keep them paired) or a number of draws. A seed picked twice in one draw gets two independent
    within-run resamples.
    """
    rng = _rng(rng)
    if isinstance(choice, (int, np.integer)):
        choice = seed_choice(runs.n_seeds, int(choice), rng)
    out = np.empty(choice.shape, dtype=np.float64)
    for s in range(runs.n_seeds):
        mask = choice == s
        out[mask] = within_draws(runs.values[s], runs.kind, int(mask.sum()), rng)
    return out.mean(axis=1)


def percentile_interval(draws: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` percentile interval of bootstrap draws (NaN when fewer than 2 are finite)."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return math.nan, math.nan
    a = (1 - confidence) / 2
    lo, hi = np.quantile(d, [a, 1 - a])
    return float(lo), float(hi)


def interval(runs: MetricRuns, n_boot: int = N_BOOT, rng=0, confidence: float = CONFIDENCE
             ) -> tuple[float, float, float]:
    """(estimate, lo, hi): the mean over seeds and its hierarchical bootstrap interval (NaN when nothing varies)."""
    if not runs.has_spread:
        return runs.estimate, math.nan, math.nan
    return (runs.estimate, *percentile_interval(hierarchical_draws(runs, n_boot, rng), confidence))


# ---------------------------------------------------------------- paired differences

def _weighted_means(rows: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """(n_draws, n) seed-resampled means of `rows` (n_seeds, n): each draw averages n_seeds rows picked with replacement."""
    s = rows.shape[0]
    if s == 1:
        return np.repeat(rows, n_draws, axis=0)
    return _counts(rng.integers(0, s, (n_draws, s)), s) / s @ rows


def _counts(idx: np.ndarray, k: int) -> np.ndarray:
    """(B, k) how often each of 0..k-1 occurs in each row of idx (B, m)."""
    b = idx.shape[0]
    return np.bincount((idx + k * np.arange(b)[:, None]).ravel(), minlength=b * k).reshape(b, k).astype(np.float64)


def paired_difference(a: np.ndarray, ref: np.ndarray, n_boot: int = N_BOOT, rng=0,
                      n_permutations: int = N_PERMUTATIONS, confidence: float = CONFIDENCE) -> dict:
    """mean(a) - mean(ref) on the same images: a (S_a, n), ref (S_r, n), columns aligned image by image.

    The interval resamples each side's seeds independently and the images jointly (the pairing).
    The p-value is a sign-flip permutation test of the seed-averaged per-image differences: the share
    of sign assignments whose |mean difference| is at least the observed one (all 2^n of them when
    2^n <= n_permutations, else n_permutations random ones).
    """
    rng = _rng(rng)
    a, ref = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(ref, np.float64))
    keep = np.isfinite(a).all(0) & np.isfinite(ref).all(0)
    a, ref = a[:, keep], ref[:, keep]
    n = a.shape[1]
    out = {"n_images": int(n), "diff": math.nan, "diff_lo": math.nan, "diff_hi": math.nan, "p": math.nan,
           "p_method": ""}
    if n < 2:
        return out
    out["diff"] = float(a.mean() - ref.mean())
    draws, step = [], max(1, _BATCH_ELEMENTS // (4 * n))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        w = _counts(rng.integers(0, n, (b, n)), n) / n                                  # (b, n) image weights
        diff = _weighted_means(a, b, rng) - _weighted_means(ref, b, rng)                 # (b, n)
        draws.append((diff * w).sum(1))
    out["diff_lo"], out["diff_hi"] = percentile_interval(np.concatenate(draws), confidence)
    da, dr = a.mean(0), ref.mean(0)
    if np.all(da == dr):
        out.update(p=1.0, p_method="exact (all differences are 0)")
        return out
    exact = n < math.log2(n_permutations + 1)
    res = stats.permutation_test((da, dr), lambda x, y, axis: np.abs(np.mean(x - y, axis=axis)),
                                 permutation_type="samples", vectorized=True, alternative="greater", batch=20_000,
                                 n_resamples=np.inf if exact else n_permutations, rng=rng)
    out.update(p=float(res.pvalue), p_method=f"exact (all {2 ** n:,} sign flips)" if exact
               else f"permutation ({n_permutations:,} sign flips)")
    return out


# ---------------------------------------------------------------- rank correlations

def _pearson_rows(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    den = np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=axis) / np.where(den > 0, den, 1.0), np.nan)


def spearman(x, y) -> float:
    """Spearman's rho (NaN when either side is constant or n < 3)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def kendall(x, y) -> float:
    """Kendall's tau-b (NaN when either side is constant or n < 3)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


@functools.lru_cache(maxsize=16)
def _untied_null(n: int) -> np.ndarray:
    """|rho| over all n! pairings of untied ranks (it depends on n only), via scipy's exact enumeration."""
    r = np.arange(1.0, n + 1)
    res = stats.permutation_test((r,), lambda a, axis: np.abs(_pearson_rows(a, r, axis)), permutation_type="pairings",
                                 vectorized=True, n_resamples=np.inf, batch=20_000)
    return np.sort(res.null_distribution)


def spearman_test(x, y, n_permutations: int = N_PERMUTATIONS, exact_max_n: int = EXACT_MAX_N,
                  rng=0) -> tuple[float, str]:
    """(p, method): the share of pairings of x with y whose |rho| is at least the observed |rho|.

    For n <= exact_max_n every one of the n! pairings is enumerated ("exact"; without ties the null
    distribution depends on n only and is enumerated once per n); above, n_permutations random
    pairings are drawn ("permutation"; scipy counts the observed pairing, so p >= 1/(draws + 1)).
    Ties keep their average ranks in every pairing.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    if math.isnan(spearman(x, y)):
        return math.nan, ""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    exact = n <= exact_max_n
    method = f"exact (all {math.factorial(n):,} permutations)" if exact else f"permutation ({n_permutations:,} draws)"
    obs = abs(float(_pearson_rows(rx, ry)))
    if exact and len(np.unique(rx)) == n and len(np.unique(ry)) == n:
        null = _untied_null(n)
        return float(len(null) - np.searchsorted(null, obs * (1 - 1e-12), side="left")) / len(null), method
    # one sample only: scipy then permutes its order against the fixed ry (n! pairings, not n!^2)
    res = stats.permutation_test((rx,), lambda a, axis: np.abs(_pearson_rows(a, ry, axis)),
                                 permutation_type="pairings", vectorized=True, alternative="greater", batch=20_000,
                                 n_resamples=np.inf if exact else n_permutations, rng=_rng(rng))
    return float(res.pvalue), method


def spearman_draws(x_draws: np.ndarray, y_draws: np.ndarray) -> np.ndarray:
    """rho of every bootstrap draw (n_boot,) from draws (n_tokenizers, n_boot) of each tokenizer's x and y.

    Draw b ranks the tokenizers by their b-th x and y and correlates the ranks; NaN for a draw with a missing
    value or one side constant, and for every draw when there are fewer than 3 tokenizers.
    """
    xd, yd = np.asarray(x_draws, np.float64), np.asarray(y_draws, np.float64)
    if xd.ndim != 2 or xd.shape != yd.shape or xd.shape[0] < 3:
        return np.full(xd.shape[-1] if xd.ndim else 0, np.nan)
    ok = np.isfinite(xd).all(0) & np.isfinite(yd).all(0)
    rho = np.full(xd.shape[1], np.nan)
    rho[ok] = _pearson_rows(stats.rankdata(xd[:, ok], axis=0), stats.rankdata(yd[:, ok], axis=0), axis=0)
    return rho


def spearman_interval(x_draws: np.ndarray, y_draws: np.ndarray, confidence: float = CONFIDENCE
                      ) -> tuple[float, float]:
    """rho's percentile interval from bootstrap draws (n_tokenizers, n_boot) of each tokenizer's x and y
    (`spearman_draws`); a draw in which one side is constant is dropped. NaN when fewer than half give a rho."""
    xd = np.asarray(x_draws, np.float64)
    if xd.ndim != 2 or xd.shape != np.shape(y_draws) or xd.shape[0] < 3:
        return math.nan, math.nan
    rho = spearman_draws(xd, y_draws)
    rho = rho[np.isfinite(rho)]
    if len(rho) < xd.shape[1] / 2:
        return math.nan, math.nan
    return percentile_interval(rho, confidence)


def partial_spearman(x, y, z) -> float:
    """Spearman correlation of x and y controlling for z: the partial correlation of their ranks.

    rho_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)) with r the Spearman coefficients;
    NaN with n < 4 or when z ranks like x or y exactly.
    """
    x, y, z = (np.asarray(v, np.float64) for v in (x, y, z))
    if len(x) < 4:
        return math.nan
    rxy, rxz, ryz = spearman(x, y), spearman(x, z), spearman(y, z)
    den = math.sqrt(max(0.0, (1 - rxz ** 2) * (1 - ryz ** 2)))
    if not all(map(math.isfinite, (rxy, rxz, ryz))) or den < 1e-12:
        return math.nan
    return float(np.clip((rxy - rxz * ryz) / den, -1.0, 1.0))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979); NaNs stay NaN and do not count towards the family size.

    With the m finite p-values sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
