"""A small LeNet-style CNN classifier, trained on a dataset's train split, as an offline feature extractor.

It stands in for Inception-v3 when no pretrained network is available (offline runs, the
embedded data). Its penultimate activations give "FD-lenet" (never "FID"), its softmax gives
"IS-lenet", and its test accuracy is stored with it so a reader can judge it.

Trained once per (dataset, image size, training config) with a fixed seed, and cached as
WORKSPACE/extractors/lenet-<dataset>-<native|SIZEpx>-<config hash>/{model.safetensors, lenet.json}.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from latentlab.data import get_dataset
from latentlab.errors import LatentlabError
from latentlab.io import atomic_dir, file_hash, load_json, load_safetensors, obj_hash, save_json, save_safetensors
from latentlab.metrics.images import fit_images
from latentlab.utils import info, progress, torch_seeded


MIN_SIZE = 16


@dataclass
class LeNetConfig:
    """Architecture and training recipe of the lenet extractor (part of its cache key)."""

    width: int = 8           # channels of the first conv (the second has 2x)
    feature_dim: int = 128   # penultimate width: the FD-lenet feature dimension
    epochs: int = 5
    min_steps: int = 300     # small datasets get more epochs, up to this many optimiser steps
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    shift: int = 2           # random translation (pixels) as augmentation
    seed: int = 0
    max_train: int | None = None  # use only the first N train images (tests)


class LeNet(nn.Module):
    """conv5-pool-conv5-pool-fc(feature_dim)-fc(classes) on images of `image_size` >= 12 pixels."""

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 16, feature_dim: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5)
        side = ((image_size // 2) - 4) // 2
        if side < 1:
            raise LatentlabError(f"lenet needs images of at least 12x12 pixels, got {image_size}")
        self.fc1 = nn.Linear(2 * width * side * side, feature_dim)
        self.fc2 = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, feature_dim) of images (B, C, H, W) in [-1, 1]."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)          # (B, w, H/2, W/2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)          # (B, 2w, s, s)
        return F.relu(self.fc1(x.flatten(1)))               # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, feature_dim), logits (B, classes))."""
        f = self.features(x)
        return f, self.fc2(f)


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Randomly translate each image by up to `max_shift` pixels (zero-padded with -1, the background)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)            # (B, C, H+2s, W+2s)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    iy = dy[:, None] + torch.arange(h)                       # (B, H)
    ix = dx[:, None] + torch.arange(w)                       # (B, W)
    out = pad[torch.arange(b)[:, None, None], :, iy[:, :, None], ix[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()              # (B, C, H, W)


@torch.no_grad()
def accuracy(model: LeNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` on images (N, C, H, W) with labels (N,)."""
    model.eval()
    hits = 0
    for i in range(0, len(images), batch_size):
        hits += int((model(images[i:i + batch_size])[1].argmax(1) == labels[i:i + batch_size]).sum())
    return hits / max(len(images), 1)


@contextlib.contextmanager
def _one_thread():
    """Run on one intra-op thread: the same float sums on any machine (so the seed fixes the weights),
    and no synchronisation cost, which for a net this small outweighs any gain from threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def train_lenet(dataset: str, image_size: int | None = None, config: LeNetConfig | None = None
                ) -> tuple[LeNet, dict]:
    """Train a LeNet on `dataset`'s train split with a fixed seed; returns (model, record with test accuracy)."""
    with _one_thread():
        return _train(dataset, image_size, config or LeNetConfig())


def _train(dataset: str, image_size: int | None, cfg: LeNetConfig) -> tuple[LeNet, dict]:
    train = get_dataset(dataset, "train", image_size=image_size)
    test = get_dataset(dataset, "test", image_size=image_size)
    size = input_size(train.image_size)
    n = len(train) if cfg.max_train is None else min(cfg.max_train, len(train))
    x, y = train.get_batch(np.arange(n))                     # (N, C, H, W), (N,)
    xt, yt = test.get_batch(np.arange(len(test)))
    x, xt = fit_images(x, None, size), fit_images(xt, None, size)   # small images are upsampled, as at use
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch_seeded(cfg.seed):
        model = LeNet(train.channels, train.num_classes, size, cfg.width, cfg.feature_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    epochs = max(cfg.epochs, -(-cfg.min_steps // per_epoch))
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1))
    t0 = time.time()
    for _ in progress(range(epochs), desc="training lenet extractor"):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb = _shift(x[idx], cfg.shift, gen)              # (B, C, H, W)
            loss = F.cross_entropy(model(xb)[1], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    record = {"extractor": "lenet", "dataset": dataset, "image_size": size, "data_image_size": train.image_size,
              "channels": train.channels, "num_classes": train.num_classes, "config": asdict(cfg),
              "n_train": n, "epochs": epochs, "test_accuracy": accuracy(model, xt, yt), "n_test": len(test),
              "train_seconds": round(time.time() - t0, 2)}
    return model, record


def input_size(image_size: int) -> int:
    """The lenet's input size: the data's size, upsampled to at least MIN_SIZE (16) pixels."""
    return max(int(image_size), MIN_SIZE)


def _slug(spec: str) -> str:
    """A file-name-safe form of a dataset spec ('cifar10:/data/x' -> 'cifar10-<hash>')."""
    name, _, root = spec.partition(":")
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f"{base}-{obj_hash(root, 8)}" if root else base


def lenet_dir(cache_root: Path, dataset: str, image_size: int | None, config: LeNetConfig) -> Path:
    """Where the lenet for (dataset, image size or 'native', config) is cached."""
    size = "native" if image_size is None else f"{image_size}px"
    return Path(cache_root) / f"lenet-{_slug(dataset)}-{size}-{obj_hash(asdict(config), 10)}"


def load_or_train_lenet(dataset: str, cache_root: Path, image_size: int | None = None,
                        config: LeNetConfig | None = None) -> tuple[LeNet, dict]:
    """The cached lenet for `dataset` (trained and cached on first use); returns (model, record)."""
    cfg = config or LeNetConfig()
    path = lenet_dir(cache_root, dataset, image_size, cfg)
    if not (path / "model.safetensors").is_file():
        info(f"training the lenet feature extractor on {dataset}; cached in {path}")
        model, record = train_lenet(dataset, image_size, cfg)
        with atomic_dir(path) as tmp:
            save_safetensors(model.state_dict(), tmp / "model.safetensors")
            record["weights_hash"] = file_hash(tmp / "model.safetensors")
            save_json(record, tmp / "lenet.json")
    record = load_json(path / "lenet.json", "lenet record")
    if record.get("weights_hash") != file_hash(path / "model.safetensors"):
        raise LatentlabError(f"the cached lenet in {path} does not match its record; remove the folder to retrain it")
    model = LeNet(record["channels"], record["num_classes"], record["image_size"],
                  record["config"]["width"], record["config"]["feature_dim"])
    model.load_state_dict(load_safetensors(path / "model.safetensors"))
    model.eval()
    record["path"] = str(path)
    return model, record
