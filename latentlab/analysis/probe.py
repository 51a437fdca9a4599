"""Linear probing of frozen latents, the MAE protocol (He et al., "Masked Autoencoders Are
Scalable Vision Learners", CVPR 2022, main_linprobe.py): a frozen feature feeds
`BatchNorm1d(affine=False)` then a `Linear` layer, trained with cross-entropy, AdamW or SGD
and a cosine learning-rate schedule over full passes (epochs), in mini-batches, on CPU or CUDA.

Features come from `latentlab.analysis.features.Features`, so a 1.28M x 4096 ImageNet store is
streamed from its memory-mapped shards (chunks in a shuffled order, rows shuffled within a chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from latentlab.analysis.features import Features
from latentlab.errors import LatentlabError
from latentlab.utils import get_device, progress

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class ProbeConfig:
    """Linear-probe training settings (the defaults reach sklearn's LogisticRegression accuracy, see benchmarks/).

    4 epochs: on the benchmark (N=50k, D=1024) and on mnist5k pixels the top-1 after 4 passes is within
    0.1-0.3 points of 10 passes (which lower the training loss, not the test error), at 40% of the time.
    """

    epochs: int = 4
    optimizer: str = "sgd"  # SGD with momentum 0.9; or "adamw"
    lr: float | None = None  # None: 0.1 * batch_size / 256 for SGD, 1e-2 for AdamW
    weight_decay: float = 1e-4
    batch_size: int = 1024  # capped so that an epoch has at least min_steps_per_epoch steps
    min_steps_per_epoch: int = 16
    warmup_epochs: float = 0.0
    device: str = "auto"
    seed: int = 0


class LinearProbe(nn.Module):
    """MAE's linear-probe head: BatchNorm1d(affine=False) then Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D) -> logits (B, num_classes)."""
        return self.head(self.norm(x))


def effective_batch_size(cfg: ProbeConfig, n: int) -> int:
    """cfg.batch_size, lowered (not below 32) so that n rows give at least cfg.min_steps_per_epoch steps."""
    return max(2, min(cfg.batch_size, max(32, n // max(1, cfg.min_steps_per_epoch))))


def default_lr(cfg: ProbeConfig, batch_size: int | None = None) -> float:
    """The peak learning rate: cfg.lr, else 0.1 * batch_size / 256 (SGD) or 1e-2 (AdamW)."""
    if cfg.lr is not None:
        return float(cfg.lr)
    return 1e-2 if cfg.optimizer == "adamw" else 0.1 * (batch_size or cfg.batch_size) / 256


def cosine_lr(base: float, progress_frac: float, warmup_frac: float = 0.0) -> float:
    """Linear warmup to `base`, then half-cosine decay to 0, as a function of training progress in [0, 1]."""
    if warmup_frac > 0 and progress_frac < warmup_frac:
        return base * progress_frac / warmup_frac
    t = (progress_frac - warmup_frac) / max(1e-12, 1.0 - warmup_frac)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _check(cfg: ProbeConfig) -> None:
    if cfg.optimizer not in OPTIMIZERS:
        raise LatentlabError(f"unknown optimizer {cfg.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise LatentlabError(f"need epochs >= 1 and batch_size >= 2 (got {cfg.epochs}, {cfg.batch_size})")


def _make_optimizer(model: nn.Module, cfg: ProbeConfig, lr: float) -> torch.optim.Optimizer:
    params = model.head.parameters()
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)


def train_probe(train: Features, num_classes: int, cfg: ProbeConfig | None = None,
                on_epoch: Callable[[int, float], None] | None = None) -> LinearProbe:
    """Train a LinearProbe on `train` (labels in [0, num_classes)); returns it in eval mode.

    `on_epoch(epoch, mean_loss)` is called after every pass.
    """
    cfg = cfg or ProbeConfig()
    _check(cfg)
    device = get_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = LinearProbe(train.dim, num_classes).to(device)
    bs = effective_batch_size(cfg, train.n)
    base = default_lr(cfg, bs)
    opt = _make_optimizer(model, cfg, base)
    warm = cfg.warmup_epochs / cfg.epochs
    seen, total = 0, cfg.epochs * train.n
    bar = progress(range(cfg.epochs), desc="probe epochs", total=cfg.epochs)
    for epoch in bar:
        model.train()
        loss_sum, count = torch.zeros((), device=device), 0
        for x, y in train.chunks(rng):
            perm = torch.randperm(len(x), generator=gen)
            if x.device != torch.device("cpu"):
                perm = perm.to(x.device)
            for i in range(0, len(x), bs):
                idx = perm[i:i + bs]
                if len(idx) < 2:  # BatchNorm needs two rows
                    continue
                # index_select: a row gather about 2.5x faster than x[idx] (advanced indexing) on CPU
                xb = torch.index_select(x, 0, idx).to(device, torch.float32, non_blocking=True)  # (B, D)
                yb = torch.index_select(y, 0, idx.to(y.device)).to(device, non_blocking=True)  # (B,)
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(base, seen / total, warm)
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(idx)
                count += len(idx)
                seen += len(idx)
        mean_loss = float(loss_sum) / max(1, count)
        if not math.isfinite(mean_loss):
            raise LatentlabError(f"linear probe loss is {mean_loss} at epoch {epoch + 1}; "
                                 f"lower --lr or check the latents for extreme values")
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
    return model.eval()


@torch.no_grad()
def predict_topk(model: LinearProbe, feats: Features, k: int = 5, batch_size: int = 8192) -> np.ndarray:
    """The top-k predicted classes of every row, (n, min(k, num_classes)) int64."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for x, _ in feats.chunks(None):
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size].to(device, torch.float32))  # (B, K)
            out.append(logits.topk(min(k, logits.shape[1]), dim=1).indices.cpu())
    return torch.cat(out).numpy()


def topk_accuracy(topk: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the first k columns of `topk` (n, >=k)."""
    return float((topk[:, :k] == np.asarray(labels)[:, None]).any(1).mean())


def linear_probe(train: Features, test: Features, num_classes: int, cfg: ProbeConfig | None = None,
                 on_epoch: Callable[[int, float], None] | None = None) -> dict:
    """Train on `train`, evaluate on `test`: {top1, top5 (NaN when <= 5 classes), final_loss}."""
    losses: list[float] = []

    def _log(epoch: int, loss: float) -> None:
        losses.append(loss)
        if on_epoch is not None:
            on_epoch(epoch, loss)

    model = train_probe(train, num_classes, cfg, _log)
    top = predict_topk(model, test, k=5)
    return {"top1": topk_accuracy(top, test.labels, 1),
            "top5": topk_accuracy(top, test.labels, 5) if num_classes > 5 else float("nan"),
            "final_loss": losses[-1]}
