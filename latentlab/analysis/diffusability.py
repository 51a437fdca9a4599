"""Diffusability measures on arrays: latent spectrum, intrinsic dimension, curve areas and their intervals.

The field's hypotheses beside "few modes" and "discriminability" (the decoder-side half, which
decodes through the tokenizer and compares images, is `latentlab.metrics.diffusability`):

- **Spectrum** ("Improving the Diffusability of Autoencoders", Skorokhodov et al., ICML 2025,
  arXiv 2502.14831; EQ-VAE; Spectrum Matching, arXiv 2603.14645): autoencoder latents carry more
  high-frequency energy than images. For a grid latent (C, H, W) in normalised units the power
  of the orthonormal 2D DCT-II (`scipy.fft.dctn(..., norm="ortho")`) is taken per channel and
  averaged over channels and images; `radial_profile` averages it over rings of radial index
  round(sqrt(u^2 + v^2)). `hf_energy` is the share of the non-DC power at sqrt(u^2 + v^2) >
  min(H, W) / 2; `spectral_slope` is the least-squares slope of log power against log radius over
  radii 1 .. min(H, W) - 1 (the complete rings). White noise has a flat spectrum (slope 0, and
  `hf_energy` equal to the share of non-DC bins above the radius); natural images fall off
  (slope around -2 to -3).
- **Intrinsic dimension**: TwoNN (Facco, d'Errico, Rodriguez, Laio, Sci. Rep. 2017), from
  scikit-dimension (`skdim.id.TwoNN`: the ratio mu = r2 / r1 of each point's two nearest
  neighbour distances follows Pareto(1, d); d is the slope of -log(1 - F(mu)) against log mu,
  the largest 10% of ratios discarded).

Every estimate comes with an interval: `bootstrap_interval` resamples images (scipy.stats.bootstrap,
percentile method); TwoNN's interval resamples the points' neighbour ratios (`twonn_interval`:
resampling the rows themselves would create duplicates, r1 = 0); statistics that repeated rows bias
(FD, RankMe) get the bootstrap spread centred on the estimate (`metrics.fid.fd_interval`).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import scipy.fft
import scipy.stats

from latentlab.errors import LatentlabError


# ---------------------------------------------------------------- intervals

def bootstrap_interval(data: tuple[np.ndarray, ...], statistic: Callable, n_boot: int, level: float,
                       seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval over the last axis (the images) of paired samples; NaN when degenerate.

    `statistic(*samples, axis)` reduces the image axis; resampled samples arrive as (..., n_boot, n), so
    a statistic of (R, n) arrays sees (R, n_boot, n) and must keep its other axes in front.
    """
    if data[0].shape[-1] < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate resample distribution gives NaN, reported as such
        res = scipy.stats.bootstrap(data, statistic, n_resamples=n_boot, confidence_level=level, method="percentile",
                                    paired=True, vectorized=True, axis=-1, random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_interval(values: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float, float]:
    """(mean, lo, hi) of per-image values (n,) with a percentile bootstrap interval."""
    values = np.asarray(values, np.float64)
    lo, hi = bootstrap_interval((values,), lambda v, axis: v.mean(axis), n_boot, level, seed)
    return float(values.mean()), lo, hi


# ---------------------------------------------------------------- spectrum

def dct_power(x: np.ndarray) -> np.ndarray:
    """|DCT-II|^2 (orthonormal) over the last two axes of (..., H, W), in float64."""
    return scipy.fft.dctn(np.asarray(x, np.float64), type=2, axes=(-2, -1), norm="ortho") ** 2


def radial_index(h: int, w: int) -> np.ndarray:
    """(H, W) radial frequency index sqrt(u^2 + v^2) of each DCT bin."""
    u, v = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.sqrt(u ** 2 + v ** 2)


def high_frequency_bins(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(bins above min(H, W) / 2, non-DC bins) as boolean (H, W) masks."""
    r = radial_index(h, w)
    return r > min(h, w) / 2, r > 0


def radial_profile(power: np.ndarray) -> np.ndarray:
    """Mean power over rings of radial index round(sqrt(u^2 + v^2)): (..., H, W) -> (..., R)."""
    h, w = power.shape[-2:]
    ring = np.rint(radial_index(h, w)).astype(int).ravel()        # (H*W,)
    avg = np.zeros((h * w, ring.max() + 1))
    avg[np.arange(h * w), ring] = 1.0
    avg /= avg.sum(0, keepdims=True)                               # (H*W, R): the mean over each ring
    return power.reshape(*power.shape[:-2], h * w) @ avg


def log_log_slope(profile: np.ndarray, axis: int = -1) -> np.ndarray:
    """Least-squares slope of log power against log radius over radii 1 .. R_fit, along `axis` (R_fit + 1 entries)."""
    prof = np.moveaxis(np.asarray(profile, np.float64), axis, -1)
    k = np.arange(1, prof.shape[-1])
    if len(k) < 2:
        return np.full(prof.shape[:-1], np.nan)
    lx = np.log(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        ly = np.log(prof[..., 1:])
    lx = lx - lx.mean()
    return (ly * lx).sum(-1) / (lx ** 2).sum()


def spectrum(x: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Spectral summary of grid arrays x (n, C, H, W), normalised per channel by the caller.

    Returns hf_energy and spectral_slope with (lo, hi) bootstrap intervals over images, and the
    mean radial profile (R,) ("profile"). The slope is fitted on the complete rings 1 .. min(H, W) - 1.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 4:
        raise LatentlabError(f"the spectrum needs (n, C, H, W) arrays, got shape {x.shape}")
    n, _, h, w = x.shape
    p = dct_power(x).mean(1)                                   # (n, H, W): channel average per image
    hf, nondc = high_frequency_bins(h, w)
    hi_pow, tot_pow = p[:, hf].sum(1), p[:, nondc].sum(1)      # (n,), (n,)
    prof = radial_profile(p)[:, :min(h, w)]                    # (n, R_fit + 1): complete rings only
    with np.errstate(divide="ignore", invalid="ignore"):
        hf_energy = float(hi_pow.sum() / tot_pow.sum())
    slope = float(log_log_slope(prof.mean(0)))
    out = {"hf_energy": hf_energy, "spectral_slope": slope, "profile": radial_profile(p.mean(0)),
           "hf_bins": int(hf.sum()), "nondc_bins": int(nondc.sum())}
    out["hf_energy_lo"], out["hf_energy_hi"] = bootstrap_interval(
        (hi_pow, tot_pow), lambda a, b, axis: a.sum(axis) / b.sum(axis), n_boot, level, seed)
    if math.isfinite(slope):
        out["spectral_slope_lo"], out["spectral_slope_hi"] = bootstrap_interval(
            (prof.T,), lambda s, axis: log_log_slope(s.mean(axis), axis=0), n_boot, level, seed + 1)
    else:
        out["spectral_slope_lo"] = out["spectral_slope_hi"] = math.nan
    return out


def normalise_channels(x: np.ndarray) -> np.ndarray:
    """(n, C, H, W) -> zero mean, unit std per channel over images and positions (std 0 becomes 1)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.where(std > 0, std, 1.0)


def area_pool(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """(n, C, H, W) -> (n, C, h, w) by averaging blocks (H, W multiples of h, w): images at a latent's resolution."""
    n, c, hh, ww = x.shape
    if hh % h or ww % w:
        raise LatentlabError(f"cannot pool {hh}x{ww} images to the {h}x{w} latent grid (not a divisor)")
    return x.reshape(n, c, h, hh // h, w, ww // w).mean(axis=(3, 5))


# ---------------------------------------------------------------- curves and intrinsic dimension

def curve_area(levels: np.ndarray | tuple, values: np.ndarray) -> np.ndarray:
    """Area under values (..., L) over levels (L,), divided by the level range: the curve's mean height."""
    levels = np.asarray(levels, np.float64)
    values = np.asarray(values, np.float64)
    if len(levels) == 1:
        return values[..., 0]
    return np.trapezoid(values, levels, axis=-1) / (levels[-1] - levels[0])


def _skdim():
    try:
        import skdim
    except ImportError:
        raise LatentlabError("TwoNN needs scikit-dimension: pip install scikit-dimension") from None
    return skdim


def twonn(x: np.ndarray) -> float:
    """TwoNN intrinsic dimension of rows x (n, D), by scikit-dimension (linear fit, 10% of ratios discarded)."""
    x = np.asarray(x, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate rows are dropped by skdim with a warning
        return float(_skdim().id.TwoNN().fit(x).dimension_)


def neighbour_ratios(x: np.ndarray) -> np.ndarray:
    """mu = r2 / r1 of each row's two nearest neighbours among the rows (n, D); rows with a duplicate dropped."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, np.float64)
    dist, _ = NearestNeighbors(n_neighbors=3).fit(x).kneighbors(x)  # column 0: the row itself
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = dist[:, 2] / dist[:, 1]
    return mu[np.isfinite(mu)]


def twonn_interval(x: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float, float]:
    """(TwoNN estimate, lo, hi): the estimate of `twonn`, with a percentile bootstrap interval over the points.

    TwoNN's model treats the neighbour ratios mu as independent Pareto(1, d) draws, so the bootstrap resamples
    them (computed once on all rows) and refits skdim's estimator on each resample: the interval is that of
    the same number of points, around the estimate itself. (Subsampling fewer rows would not do: the estimate
    moves with the number of points, so such an interval can miss its own estimate.)
    """
    mu = neighbour_ratios(x)
    fit = _skdim().id.TwoNN(dist=True)

    def stat(m):
        return float(fit.fit(np.stack([np.ones_like(m), m], 1)).dimension_)

    est = stat(mu)
    if len(mu) < 3:
        return est, math.nan, math.nan
    res = scipy.stats.bootstrap((mu,), stat, n_resamples=n_boot, confidence_level=level, method="percentile",
                                vectorized=False, random_state=np.random.default_rng(seed))
    return est, float(res.confidence_interval.low), float(res.confidence_interval.high)
