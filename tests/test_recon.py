"""PSNR and SSIM against scikit-image on random images."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from latentlab.errors import LatentlabError
from latentlab.metrics.recon import gaussian_window, psnr, recon_metrics, ssim, ssim_sigma, to_unit


def pairs(seed, n, c, h, w, noise):
    rng = np.random.default_rng(seed)
    a = rng.random((n, c, h, w))
    b = np.clip(a + rng.normal(0, noise, a.shape), 0, 1)
    return a, b


def sk_ssim(a, b):
    return structural_similarity(a.transpose(1, 2, 0), b.transpose(1, 2, 0), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0, channel_axis=-1)


@pytest.mark.parametrize("seed,c,h,w,noise", [(0, 1, 32, 32, 0.05), (1, 3, 32, 32, 0.2), (2, 3, 17, 23, 0.5),
                                              (3, 1, 11, 11, 0.01), (4, 3, 64, 48, 0.1)])
def test_psnr_and_ssim_match_skimage(seed, c, h, w, noise):
    a, b = pairs(seed, 4, c, h, w, noise)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ours_p, ours_s = psnr(ta, tb).numpy(), ssim(ta, tb).numpy()
    for i in range(len(a)):
        assert ours_p[i] == pytest.approx(peak_signal_noise_ratio(a[i], b[i], data_range=1.0), abs=1e-3)
        assert ours_s[i] == pytest.approx(sk_ssim(a[i], b[i]), abs=1e-3)


def test_float32_inputs_agree_too():
    a, b = pairs(5, 3, 3, 32, 32, 0.1)
    ours = ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float()).numpy()
    assert np.allclose(ours, [sk_ssim(a[i], b[i]) for i in range(3)], atol=1e-3)


def test_identical_images_and_data_range():
    a, b = pairs(6, 2, 1, 16, 16, 0.1)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert torch.allclose(ssim(ta, ta), torch.ones(2, dtype=torch.float64))
    assert torch.isinf(psnr(ta, ta)).all()
    # PSNR is invariant to mapping [0, 1] to [-1, 1] with data_range 2 (SSIM's luminance term is not)
    assert torch.allclose(psnr(2 * ta - 1, 2 * tb - 1, data_range=2.0), psnr(ta, tb))
    # recon_metrics takes [-1, 1] images and measures them in [0, 1] with data_range 1
    m = recon_metrics(2 * ta - 1, 2 * tb - 1)
    assert torch.allclose(m["psnr"], psnr(ta, tb)) and torch.allclose(m["ssim"], ssim(ta, tb))
    assert torch.equal(to_unit(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])), torch.tensor([0, 0, 0.5, 1, 1]))


def test_window_is_scipy_gaussian():
    from scipy.ndimage import gaussian_filter1d

    delta = np.zeros(31)
    delta[15] = 1
    ref = gaussian_filter1d(delta, 1.5, truncate=3.5)[10:21]
    assert np.allclose(gaussian_window().numpy(), ref, atol=1e-12)


def test_bad_shapes_are_errors():
    with pytest.raises(LatentlabError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(LatentlabError, match="one shape"):
        psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))



def test_small_images_use_the_largest_fitting_window():
    """8x8 digits: SSIM with the shrunk sigma equals skimage's with that sigma."""
    rng = np.random.default_rng(3)
    a = rng.uniform(size=(4, 1, 8, 8))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    sigma = ssim_sigma(8, 8)
    assert len(gaussian_window(sigma)) == 7
    ours = recon_metrics(torch.from_numpy(a) * 2 - 1, torch.from_numpy(b) * 2 - 1)["ssim"].numpy()
    ref = [structural_similarity(x[0], y[0], gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                 data_range=1) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert ssim_sigma(32, 32) == 1.5
