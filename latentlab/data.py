"""Datasets as tensors: a registered dataset split (`latentlab.datasets`) as float images (C, H, W)
in [-1, 1] with int labels, for the tokenizers, the metrics and extraction.

`get_dataset("mnist5k", "train")` loads the split's source (uint8 images, torch-free) and wraps it
in an `ImageDataset` (a `torch.utils.data.Dataset`). The registry itself (`DATASETS`, `SPLITS`,
`parse_spec`, `stratified_split`, `make_shapes`) lives in `latentlab.datasets`; it is re-exported
here for the callers that already hold this module.

The image arithmetic every room below the metrics needs lives here too: `to_unit` ([-1, 1] -> [0, 1])
and `psnr` (per image, in dB; `latentlab.metrics.recon` re-exports both beside SSIM).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from latentlab.datasets import (DATASETS, SPLITS, ImageSource, load_source, make_shapes,  # noqa: F401  (re-exported)
                                parse_spec, stratified_split)
from latentlab.errors import LatentlabError


class ImageDataset(torch.utils.data.Dataset):
    """One dataset split as tensors: `__getitem__` returns (image (C, H, W) float in [-1, 1], label int)."""

    def __init__(self, source: ImageSource):
        self.source = source
        self.name, self.split, self.labels = source.name, source.split, source.labels
        self.class_names, self.channels, self.image_size = source.class_names, source.channels, source.image_size

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        """A JSON-able description used in manifests and cache keys."""
        return self.source.describe()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.source.pixels(np.array([i]))[0]), int(self.labels[i])

    def get_batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (n, C, H, W) and labels (n,) at `idx` as tensors."""
        idx = np.asarray(idx, dtype=np.int64)
        return to_tensor(self.source.pixels(idx)), torch.from_numpy(np.array(self.labels[idx], dtype=np.int64))

    def batches(self, batch_size: int, indices: np.ndarray | None = None, num_workers: int = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images, labels) batches in order (or over `indices`)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        if num_workers == 0:
            for i in range(0, len(idx), batch_size):
                yield self.get_batch(idx[i:i + batch_size])
        else:
            sub = torch.utils.data.Subset(self, idx.tolist())
            yield from torch.utils.data.DataLoader(sub, batch_size=batch_size, num_workers=num_workers)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float (..., C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
    return x.movedim(-1, -3).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def get_dataset(spec: str, split: str = "train", image_size: int | None = None, root: str | None = None) -> ImageDataset:
    """Load a registered dataset split by spec ("mnist5k", "cifar10:/data/cifar-10-batches-py", ...) as tensors."""
    return ImageDataset(load_source(spec, split, image_size, root))


# ---------------------------------------------------------------- image arithmetic

def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((images + 1) / 2).clamp(0, 1)


def check_image_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    """Refuse two image batches that are not (N, C, H, W) of one shape."""
    if a.shape != b.shape or a.ndim != 4:
        raise LatentlabError(f"images must be two (N, C, H, W) tensors of one shape, got {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image (N,) of images (N, C, H, W); inf where they are identical."""
    check_image_pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)           # (N,)
    return 10 * torch.log10(data_range ** 2 / mse)
