"""The SiT loss's linear-Gaussian reference: closed forms, a fitted linear denoiser, and the model's own view."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression

from latentlab.latents import LatentStore
from latentlab.sit.reference import covariance_spectrum, linear_loss
from latentlab.sit.training import SiTTrainConfig, build_sit_task, normalize
from latentlab.sit.transport import interpolate, target_velocity

GRID = (np.arange(8) + 0.5) / 8


def _cov(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + np.diag(np.linspace(0.0, 2.0, d))


def test_linear_loss_closed_forms():
    assert linear_loss(np.ones(16), GRID).mean() == pytest.approx(1.5734, abs=1e-4)   # i.i.d. N(0, 1) latents
    fine = (np.arange(100_000) + 0.5) / 100_000                 # int_0^1 dt / (t^2 + (1-t)^2) = pi / 2
    assert linear_loss(np.ones(3), fine).mean() == pytest.approx(np.pi / 2, rel=1e-8)
    assert linear_loss(np.zeros(16), GRID).max() == 0.0                              # a collapsed latent
    lam = np.array([0.3, 1.0, 4.0])
    assert np.allclose(linear_loss(lam, [0.0, 1.0]), [lam.mean(), 1.0])   # t=0: Var(x); t=1: Var(eps)
    # the matrix form of the Gaussian posterior error, without eigenvalues
    sigma = _cov(5, 0)
    lam = np.linalg.eigvalsh(sigma)
    for t in GRID:
        var_v, cov_vx, var_x = sigma + np.eye(5), t * sigma - (1 - t) * np.eye(5), t * t * sigma + (1 - t) ** 2 * np.eye(5)
        err = np.trace(var_v - cov_vx @ np.linalg.solve(var_x, cov_vx.T)) / 5
        assert linear_loss(lam, t)[0] == pytest.approx(err, rel=1e-10)


def test_linear_loss_equals_a_fitted_linear_denoiser_on_gaussian_latents():
    d, n = 6, 40_000
    sigma = _cov(d, 1)
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.multivariate_normal(np.full(d, 3.0), sigma, size=n))           # (n, D), mean 3
    eps = torch.from_numpy(rng.standard_normal((n, d)))
    want = linear_loss(np.linalg.eigvalsh(sigma), GRID)
    for t, w in zip(GRID, want):
        xt = interpolate(x, eps, torch.full((n,), t, dtype=torch.float64)).numpy()
        v = target_velocity(x, eps).numpy()
        fit = LinearRegression().fit(xt[: n // 2], v[: n // 2])                             # affine: W x_t + b
        mse = np.mean((fit.predict(xt[n // 2:]) - v[n // 2:]) ** 2)                         # per-dimension mean
        assert mse == pytest.approx(w, rel=0.03), (t, mse, w)


def test_covariance_spectrum_matches_numpy_both_ways():
    x = np.random.default_rng(0).normal(size=(300, 12)) @ np.random.default_rng(1).normal(size=(12, 12))
    want = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
    got = covariance_spectrum((x[i:i + 64] for i in range(0, 300, 64)), 12)
    assert np.allclose(got, want, rtol=1e-9, atol=1e-9)
    import latentlab.sit.reference as ref
    old, ref.MAX_COVARIANCE_DIM = ref.MAX_COVARIANCE_DIM, 4                                   # force the Gram path
    try:
        gram = covariance_spectrum((x[i:i + 64] for i in range(0, 300, 64)), 12)
    finally:
        ref.MAX_COVARIANCE_DIM = old
    assert np.allclose(gram[:12], want, rtol=1e-9, atol=1e-9) and np.allclose(gram[12:], 0, atol=1e-9)


def test_task_reference_uses_the_normalised_training_rows(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(400, 3, 4)) * np.array([1.0, 5.0, 0.2, 2.0]) + 7.0).astype(np.float32)   # (N, T, C)
    x[:, 1] += 0.8 * x[:, 0]                                                                      # correlated tokens
    LatentStore.create(tmp_path / "s" / "train", x[:300], np.arange(300) % 2, {"dataset": "toy"})
    LatentStore.create(tmp_path / "s" / "test", x[300:], np.arange(100) % 2, {"dataset": "toy"})
    task, _ = build_sit_task(str(tmp_path / "s"), SiTTrainConfig(model_overrides={"depth": 1, "hidden_size": 32,
                                                                                    "num_heads": 2}))
    z = normalize(torch.from_numpy(x[:300]), task.norm).reshape(300, -1).numpy()
    want = linear_loss(np.linalg.eigvalsh(np.cov(z.T)), GRID)
    ref = task.reference()
    assert ref["sit_loss_linear"] == pytest.approx(want.mean(), rel=1e-8)
    assert [ref[f"sit_loss_linear@t={t:.4f}"] for t in GRID] == pytest.approx(list(want), rel=1e-8)
