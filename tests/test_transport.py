"""Transport: the path, the loss against a closed-form Gaussian optimum, samplers and CFG."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate as sp_integrate

from latentlab.errors import LatentlabError
from latentlab.sit.model import SiT, SiTConfig
from latentlab.sit.transport import (Sampler, drop_labels, flow_loss, guided_velocity, integrate, interpolate,
                                 sample_t, score_from_velocity, target_velocity)

M = torch.tensor([1.0, -2.0, 0.5, 3.0])
S = 0.5


def gauss_velocity(m: torch.Tensor, s: float):
    """E[x - eps | x_t] for x ~ N(m, s^2 I): m + k(t) (x_t - t m), k = (t s^2 - (1-t)) / (t^2 s^2 + (1-t)^2)."""
    def v(xt, t):
        tb = t[:, None]
        k = (tb * s**2 - (1 - tb)) / (tb**2 * s**2 + (1 - tb) ** 2)
        return m + k * (xt - tb * m)
    return v


def min_loss_at(t, s):
    """Closed-form irreducible loss per dimension at time t: s^2 / (t^2 s^2 + (1 - t)^2)."""
    return s**2 / (t**2 * s**2 + (1 - t) ** 2)


def test_interpolant_endpoints_exact():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(5, 7, 3, generator=g), torch.randn(5, 7, 3, generator=g)
    assert torch.equal(interpolate(x, eps, torch.zeros(5)), eps)
    assert torch.equal(interpolate(x, eps, torch.ones(5)), x)
    t = torch.rand(5, generator=g)
    xt = interpolate(x, eps, t)
    # finite-difference derivative in t equals the target velocity
    h = 1e-3
    fd = (interpolate(x, eps, t + h) - interpolate(x, eps, t - h)) / (2 * h)
    assert torch.allclose(fd, target_velocity(x, eps), atol=1e-3)
    assert torch.allclose(xt, t[:, None, None] * x + (1 - t[:, None, None]) * eps)


def test_gaussian_optimal_velocity_reaches_analytic_minimum():
    g = torch.Generator().manual_seed(1)
    n, d = 200_000, 4
    x = M + S * torch.randn(n, d, generator=g)
    eps = torch.randn(n, d, generator=g)
    t = sample_t(n, "uniform", generator=g)
    v = gauss_velocity(M, S)
    loss = flow_loss(v, x, eps, t).double()
    # the expected minimum over uniform t: int_0^1 s^2 / (t^2 s^2 + (1-t)^2) dt = pi s / 2 (closed form) ...
    closed = math.pi * S / 2
    quad = sp_integrate.quad(lambda u: min_loss_at(u, S), 0, 1)[0]
    assert abs(closed - quad) < 1e-8
    # ... and the Monte Carlo estimate agrees within 4 standard errors
    se = float(loss.std() / math.sqrt(n))
    assert abs(float(loss.mean()) - closed) < 4 * se
    # per time on a fixed grid too
    for tv in (0.1, 0.5, 0.9):
        tt = torch.full((n,), tv)
        lt = flow_loss(v, x, eps, tt).double()
        assert abs(float(lt.mean()) - min_loss_at(tv, S)) < 4 * float(lt.std() / math.sqrt(n))
    # a perturbed field is strictly worse on the same samples: the closed form is a minimum
    def worse(xt, tt):
        return v(xt, tt) * 1.1
    assert float(flow_loss(worse, x, eps, t).mean()) > float(loss.mean()) + 0.01


@pytest.mark.parametrize("sampler,steps,tol", [("heun", 50, 1e-3), ("euler", 400, 2e-2)])
def test_ode_maps_standard_normal_to_gaussian(sampler, steps, tol):
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(20_000, 4, generator=g, dtype=torch.float64)
    out = integrate(gauss_velocity(M.double(), S), noise, steps, sampler)
    # the exact flow of this field is linear: x_1 = m + s * x_0 (pointwise)
    assert torch.allclose(out, M.double() + S * noise, atol=tol * 10)
    assert torch.allclose(out.mean(0), M.double(), atol=0.02)
    assert torch.allclose(out.var(0), torch.full((4,), S**2, dtype=torch.float64), rtol=0.05)


def test_sde_sampler_keeps_the_marginals():
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(20_000, 4, generator=g, dtype=torch.float64)
    out = integrate(gauss_velocity(M.double(), S), noise, 150, "sde", generator=g)
    assert torch.allclose(out.mean(0), M.double(), atol=0.03)
    assert torch.allclose(out.var(0), torch.full((4,), S**2, dtype=torch.float64), rtol=0.08)
    # it is stochastic: it does not follow the deterministic flow
    assert float((out - (M.double() + S * noise)).abs().mean()) > 0.05


def test_score_from_velocity_matches_gaussian_score():
    g = torch.Generator().manual_seed(4)
    t = torch.full((10,), 0.3)
    xt = torch.randn(10, 4, generator=g)
    var = t[0] ** 2 * S**2 + (1 - t[0]) ** 2
    true = -(xt - t[0] * M) / var
    assert torch.allclose(score_from_velocity(gauss_velocity(M, S)(xt, t), xt, t), true, atol=1e-5)


def test_logit_normal_time_sampling():
    g = torch.Generator().manual_seed(5)
    t = sample_t(100_000, "logit-normal", generator=g, mean=0.5, std=1.0)
    assert float(t.min()) > 0 and float(t.max()) < 1
    logit = torch.log(t / (1 - t))
    assert abs(float(logit.mean()) - 0.5) < 0.02 and abs(float(logit.std()) - 1.0) < 0.02
    with pytest.raises(LatentlabError, match="unknown time sampling"):
        sample_t(3, "cosine")


def _random_sit(channels=8):
    torch.manual_seed(0)
    m = SiT(SiTConfig(depth=2, hidden_size=32, num_heads=4, sample_shape=(6, channels), num_classes=3))
    with torch.no_grad():
        for p in m.parameters():  # leave the zero-init so outputs depend on t, x and y
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_cfg_scale_one_is_conditional_and_applies_to_all_channels():
    m = _random_sit()
    g = torch.Generator().manual_seed(6)
    x, t, y = torch.randn(4, 6, 8, generator=g), torch.rand(4, generator=g), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond = m(x, t, y)
        uncond = m(x, t, torch.full_like(y, m.null_class))
        assert torch.allclose(guided_velocity(m, y, 1.0, m.null_class)(x, t), cond, atol=1e-6)
        guided = guided_velocity(m, y, 4.0, m.null_class)(x, t)
        assert torch.allclose(guided, uncond + 4.0 * (cond - uncond), atol=1e-5)
        # every channel is guided, not only the first 3
        assert (guided - cond)[..., 3:].abs().max() > 1e-4
        # outside the guidance interval the prediction is the conditional one
        half = guided_velocity(m, y, 4.0, m.null_class, interval=(0.5, 1.0))(x, torch.tensor([0.1, 0.2, 0.7, 0.9]))
        tt = torch.tensor([0.1, 0.2, 0.7, 0.9])
        c2, u2 = m(x, tt, y), m(x, tt, torch.full_like(y, 3))
        assert torch.allclose(half[:2], c2[:2], atol=1e-6)
        assert torch.allclose(half[2:], (u2 + 4 * (c2 - u2))[2:], atol=1e-5)
    with pytest.raises(LatentlabError, match="guidance interval"):
        guided_velocity(m, y, 2.0, 3, interval=(0.8, 0.2))


def test_label_dropout_rate_and_null_class():
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 10, (50_000,), generator=g)
    out = drop_labels(y, 0.1, 10, generator=g)
    dropped = out == 10
    assert abs(float(dropped.float().mean()) - 0.1) < 0.01
    assert torch.equal(out[~dropped], y[~dropped])
    assert torch.equal(drop_labels(y, 0.0, 10), y)
    assert np.isclose(float((drop_labels(y, 1.0, 10) == 10).float().mean()), 1.0)
