"""Reconstruction metrics in torch: PSNR and SSIM per image.

Conventions (the same as scikit-image, against which the tests check them):
- Images are compared in [0, 1] (`data_range=1`); callers with [-1, 1] tensors use `to_unit`.
- PSNR = 10 log10(data_range^2 / MSE) per image, over all pixels and channels
  (skimage.metrics.peak_signal_noise_ratio).
- SSIM uses the Gaussian window of Wang et al. (2004): sigma = 1.5, truncated at 3.5 sigma
  (11 x 11), population covariances, K1 = 0.01, K2 = 0.03, averaged over the valid
  (un-padded) region and then over channels; this equals
  skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1). Images smaller than the 11 x 11
  window (sklearn's 8 x 8 digits) use the largest sigma whose window fits (`ssim_sigma`), which
  skimage reproduces with the same sigma; the sigma used is reported next to the SSIM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latentlab.data import check_image_pair as _check_pair, psnr, to_unit  # noqa: F401  (re-exported)
from latentlab.errors import LatentlabError

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    """The normalised 1-D Gaussian of scipy.ndimage (radius int(truncate * sigma + 0.5)), float64."""
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()                                                  # (2r + 1,)


def _filter(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable valid-region Gaussian filter of (M, 1, H, W)."""
    k = len(w)
    x = F.conv2d(x, w.view(1, 1, k, 1))                                 # (M, 1, H-k+1, W)
    return F.conv2d(x, w.view(1, 1, 1, k))                              # (M, 1, H-k+1, W-k+1)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM per image (N,) of images (N, C, H, W) with a Gaussian window (see the module doc)."""
    _check_pair(a, b)
    w = gaussian_window(sigma).to(a.device)
    k = len(w)
    n, c, h, wd = a.shape
    if min(h, wd) < k:
        raise LatentlabError(f"SSIM with a Gaussian window needs images of at least {k}x{k} pixels, got {h}x{wd}")
    x = a.double().reshape(n * c, 1, h, wd)                             # (N*C, 1, H, W)
    y = b.double().reshape(n * c, 1, h, wd)
    mx, my = _filter(x, w), _filter(y, w)
    vx = _filter(x * x, w) - mx * mx
    vy = _filter(y * y, w) - my * my
    cxy = _filter(x * y, w) - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))  # (N*C, 1, h', w')
    return s.flatten(1).mean(1).view(n, c).mean(1)                      # (N,)


def ssim_sigma(height: int, width: int) -> float:
    """1.5, or for images smaller than its 11 x 11 window the largest sigma whose window fits."""
    side = min(height, width)
    if side >= len(gaussian_window(SSIM_SIGMA)):
        return SSIM_SIGMA
    radius = (side - 1) // 2
    if radius < 1:
        raise LatentlabError(f"SSIM needs images of at least 3x3 pixels, got {height}x{width}")
    return (radius - 0.49) / SSIM_TRUNCATE  # int(3.5 * sigma + 0.5) == radius


def recon_metrics(originals: torch.Tensor, recons: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM of reconstructions, both (N,), for images (N, C, H, W) in [-1, 1]."""
    a, b = to_unit(originals), to_unit(recons)
    return {"psnr": psnr(a, b), "ssim": ssim(a, b, sigma=ssim_sigma(*a.shape[-2:]))}
