"""The training loop's schedules: learning rate, EMA decay and early stopping, as pure functions of a TrainConfig.

    get_lr(step, cfg)            linear warm-up, then cosine decay (or constant)
    ema_decay_at(step, cfg)      diffusers' EMAModel warm-up 1 - (1 + step)^-power, capped by `ema_max_decay`
    ema_max_decay(cfg)           `ema_decay`, lowered so the EMA's half-life is <= `ema_half_life * steps`
    plateau_reached(history, cfg)  the `until: plateau` rule on the monitored held-out metric
"""

from __future__ import annotations

import math

from latentlab.config import TrainConfig


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate at `step`: linear warm-up, then cosine decay to lr * min_lr_ratio (or constant)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(cfg.steps - cfg.warmup_steps, 1)
    t = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def ema_max_decay(cfg: TrainConfig) -> float:
    """`ema_decay`, lowered when needed so that the EMA's half-life is at most `ema_half_life * steps` steps.

    An EMA of decay d has half-life log(1/2) / log(d) steps; keeping it <= h * steps means
    d <= (1/2)^(1 / (h * steps)).
    """
    if cfg.ema_half_life is None:
        return cfg.ema_decay
    return min(cfg.ema_decay, 0.5 ** (1.0 / (cfg.ema_half_life * cfg.steps)))


def ema_decay_at(step: int, cfg: TrainConfig) -> float:
    """EMA decay of the update after optimizer step `step` (0-based), as diffusers' EMAModel with inv_gamma 1.

    The first update copies the model (decay 0); then 1 - (1 + step)^-ema_power (warm-up),
    capped at `ema_max_decay(cfg)`; without warm-up the cap from the first step on.
    """
    if step <= 0:
        return 0.0
    cap = ema_max_decay(cfg)
    return min(1.0 - (1.0 + step) ** -cfg.ema_power, cap) if cfg.ema_warmup else cap


def plateau_reached(history: list[float], cfg: TrainConfig) -> bool:
    """True when the last `plateau_evals` values improved the best before them by less than `plateau_tol` (relative).

    `history` holds the monitored evaluation (lower is better) in order; fewer than
    `plateau_evals + 1` values never form a plateau.
    """
    k = cfg.plateau_evals
    if len(history) <= k:
        return False
    before, recent = min(history[:-k]), min(history[-k:])
    return before - recent < cfg.plateau_tol * abs(before)
