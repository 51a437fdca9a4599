"""Flow matching on latents: the linear path, the velocity loss, ODE/SDE samplers and CFG.

Time convention (one for the whole package; the SiT paper's):

    x_t = t * x + (1 - t) * eps,    eps ~ N(0, I),    t in [0, 1]
    t = 0 is pure noise, t = 1 is data; sampling integrates t from 0 up to 1.
    The target velocity is dx_t/dt = x - eps.

Conversions, where another convention meets this one:
  - "noise level" sigma (rectified-flow / SD3 papers with t' = 0 at data) is sigma = 1 - t;
  - a guidance interval given as sigma in [lo, hi] is t in [1 - hi, 1 - lo];
  - logit-normal time sampling draws t = sigmoid(mean + std * n) in *this* convention, so a
    positive mean favours the data end (SD3's `m` with t' = 1 - t is `-mean` here);
  - the score of p_t follows from the velocity: E[eps | x_t] = x_t - t * v, so
    grad log p_t(x) = -(x - t * v(x, t)) / (1 - t).

The loss is the per-sample mean of (v_theta - (x - eps))^2 over all latent dimensions.
Classifier-free guidance is v_u + w * (v_c - v_u) on *all* channels (not the first 3).
"""

from __future__ import annotations

from typing import Callable

import torch

from latentlab.errors import LatentlabError
from latentlab.sit.config import Sampler, TimeSampling, parse_enum

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (N, ...), t (N,)) -> v (N, ...)


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)  # (N, 1, ..., 1)


# ---------------------------------------------------------------- path and loss

def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t * x + (1 - t) * eps for data x, noise eps (N, ...) and t (N,)."""
    tb = _bcast(t, x)
    return tb * x + (1 - tb) * eps


def target_velocity(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """dx_t/dt = x - eps (independent of t for the linear path)."""
    return x - eps


def sample_t(n: int, kind: TimeSampling | str = TimeSampling.UNIFORM, generator: torch.Generator | None = None,
             mean: float = 0.0, std: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n,) training times: U(0, 1), or sigmoid(mean + std * N(0, 1))."""
    kind = parse_enum(TimeSampling, kind, "time sampling")
    if kind is TimeSampling.UNIFORM:
        return torch.rand(n, generator=generator, device=device)
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, ...) x 2 -> (N,) mean squared error over every latent dimension, in float32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def flow_loss(velocity: VelocityFn, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(N,) velocity-matching loss of `velocity(x_t, t)` at the given data, noise and times."""
    return per_sample_mse(velocity(interpolate(x, eps, t), t), target_velocity(x, eps))


def drop_labels(y: torch.Tensor, p: float, null_class: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by `null_class` with probability p (label dropout for CFG)."""
    if p <= 0:
        return y
    drop = torch.rand(y.shape[0], generator=generator, device=y.device) < p  # (N,)
    return torch.where(drop, torch.full_like(y, null_class), y)


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """grad log p_t(x) = -(x - t v) / (1 - t) for the linear path (singular at t = 1)."""
    tb = _bcast(t, x)
    return -(x - tb * v) / (1 - tb)


# ---------------------------------------------------------------- classifier-free guidance

def guided_velocity(model: torch.nn.Module, y: torch.Tensor, scale: float, null_class: int,
                    interval: tuple[float, float] | None = None) -> VelocityFn:
    """v(x, t) = v_u + w * (v_c - v_u) on all channels; w = scale inside `interval` (in t), else 1.

    Scale 1 (or t outside the interval) gives the conditional prediction with one forward pass
    per sample; otherwise the conditional and null-class halves run as one batch.
    """
    lo, hi = interval if interval is not None else (0.0, 1.0)
    if not 0.0 <= lo <= hi <= 1.0:
        raise LatentlabError(f"guidance interval ({lo}, {hi}) must satisfy 0 <= lo <= hi <= 1 (in t, 1 = data)")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w = torch.where((t >= lo) & (t <= hi), torch.full_like(t, float(scale)), torch.ones_like(t))  # (N,)
        if bool((w == 1).all()):
            return model(x, t, y)
        null = torch.full_like(y, null_class)
        v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))  # (2N, ...)
        v_c, v_u = v.chunk(2)                                                  # (N, ...) each
        return v_u + _bcast(w, v_c) * (v_c - v_u)
    return fn


# ---------------------------------------------------------------- samplers

@torch.no_grad()
def integrate(velocity: VelocityFn, noise: torch.Tensor, steps: int, sampler: Sampler | str = Sampler.HEUN,
              generator: torch.Generator | None = None, sde_scale: float = 1.0) -> torch.Tensor:
    """Carry x_0 = noise at t = 0 to t = 1 on a uniform grid of `steps` steps.

    euler: x += dt v.  heun: Euler predictor and trapezoid corrector (2 evaluations per step).
    sde: Euler-Maruyama on dX = [v + e_t grad log p_t] dt + sqrt(2 e_t) dW, which keeps the
    marginals of the ODE for any e_t >= 0. We take e_t = sde_scale * (1 - t): the drift becomes
    v - sde_scale * (x - t v), which has no singularity at t = 1, and the noise vanishes at the data end.
    """
    sampler = parse_enum(Sampler, sampler, "sampler")
    if steps < 1:
        raise LatentlabError(f"steps must be at least 1, got {steps}")
    x = noise.clone()
    n = x.shape[0]
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    for i in range(steps):
        t0, t1 = float(grid[i]), float(grid[i + 1])
        dt = t1 - t0
        tt = torch.full((n,), t0, device=x.device)  # (N,)
        v = velocity(x, tt).to(x.dtype)              # (N, ...)
        if sampler is Sampler.EULER:
            x = x + dt * v
        elif sampler is Sampler.HEUN:
            xp = x + dt * v
            v1 = velocity(xp, torch.full((n,), t1, device=x.device)).to(x.dtype)
            x = x + dt * 0.5 * (v + v1)
        else:
            drift = v - sde_scale * (x - t0 * v)
            noise_std = (2.0 * sde_scale * (1.0 - t0) * dt) ** 0.5
            dw = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + dt * drift + noise_std * dw
    return x
