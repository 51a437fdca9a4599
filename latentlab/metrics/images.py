"""Image sets for the metrics: a folder of PNG/JPEG files or an images.npz (uint8 N x H x W x C under "images").

`open_images(path)` checks the set up front (readable, one size, one channel count, at least
2 images) and returns an `ImageSet` that yields float batches (B, C, H, W) in [-1, 1]; folders
are read lazily, batch by batch, so 50,000 ImageNet-size samples never sit in memory at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from latentlab.data import to_tensor
from latentlab.errors import LatentlabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_KEY = "images"


def limit_indices(n: int, limit: int | None) -> np.ndarray:
    """All of range(n), or a fixed random subset of `limit` of them (sorted; datasets are often class-sorted)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:limit])


@dataclass
class ImageSet:
    """N images of one size: from an in-memory uint8 array (N, H, W, C) or a list of files."""

    source: str
    n: int
    height: int
    width: int
    channels: int
    array: np.ndarray | None = None      # (N, H, W, C) uint8, or None for files
    files: list[Path] | None = None
    labels: np.ndarray | None = None     # (N,) class each image was generated for (an npz's "labels"), if known

    def uint8(self, idx: np.ndarray) -> np.ndarray:
        """Images at `idx` as uint8 (B, H, W, C)."""
        if self.array is not None:
            return self.array[idx]
        return np.stack([_read_file(self.files[int(i)], self.channels) for i in idx])

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        """Float batches (B, C, H, W) in [-1, 1], in order (a fixed random subset of `limit` images if given)."""
        idx = limit_indices(self.n, limit)
        for i in range(0, len(idx), batch_size):
            yield to_tensor(self.uint8(idx[i:i + batch_size]))

    def describe(self) -> dict:
        """Source, count and shape, for summaries."""
        return {"source": self.source, "n": self.n, "height": self.height, "width": self.width,
                "channels": self.channels}


def _read_file(path: Path, channels: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    return arr[..., None] if arr.ndim == 2 else arr          # (H, W, C)


def _check_count(n: int, path: str, min_images: int) -> None:
    if n < min_images:
        raise LatentlabError(f"{path} holds {n} image{'s' if n != 1 else ''}; the Fréchet distance needs at "
                             f"least {min_images}")


def from_array(images: np.ndarray, source: str = "array", min_images: int = 2) -> ImageSet:
    """Wrap uint8 images (N, H, W, C) (or (N, H, W)) after checking their shape."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise LatentlabError(f"{source}: images must be uint8 of shape (N, H, W, C) with C = 1 or 3, "
                             f"got shape {tuple(a.shape)}")
    if a.dtype != np.uint8:
        raise LatentlabError(f"{source}: images must be uint8 (0..255), got {a.dtype}; "
                             "convert with latentlab.data.to_uint8")
    _check_count(len(a), source, min_images)
    return ImageSet(source, len(a), a.shape[1], a.shape[2], a.shape[3], array=a)


def _open_npz(path: Path, min_images: int) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            if NPZ_KEY not in z.files:
                raise LatentlabError(f"{path} has no array {NPZ_KEY!r} (it has {', '.join(z.files) or 'none'}); "
                                     f"save uint8 (N, H, W, C) images under the key {NPZ_KEY!r}")
            arr = z[NPZ_KEY]
            labels = z["labels"] if "labels" in z.files else None
    except (ValueError, OSError) as e:
        raise LatentlabError(f"{path} is not a readable .npz ({type(e).__name__}); write it with numpy.savez") from None
    imgs = from_array(arr, str(path), min_images)
    if labels is not None and labels.shape == (imgs.n,) and np.issubdtype(labels.dtype, np.integer):
        imgs.labels = labels.astype(np.int64)
    return imgs


def _open_folder(path: Path, min_images: int) -> ImageSet:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise LatentlabError(f"{path} holds no PNG or JPEG images; point at a folder of images or an images.npz")
    _check_count(len(files), str(path), min_images)
    sizes, gray = {}, True
    for f in files:
        try:
            with Image.open(f) as im:
                sizes.setdefault(im.size, f.name)
                gray &= im.mode in ("1", "L", "LA", "I", "I;16", "F")
        except (UnidentifiedImageError, OSError):
            raise LatentlabError(f"{f} is not a readable image; remove or re-save it") from None
    if len(sizes) > 1:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise LatentlabError(f"{path} mixes image sizes ({s1[0]}x{s1[1]} in {f1}, {s2[0]}x{s2[1]} in {f2}); "
                             "resize them to one size")
    (w, h), = sizes
    return ImageSet(str(path), len(files), h, w, 1 if gray else 3, files=files)


def open_images(path: str | os.PathLike, min_images: int = 2) -> ImageSet:
    """Open a folder of PNG/JPEG images or an images.npz; one-line errors for anything unusable."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        return _open_folder(p, min_images)
    if p.is_file() and p.suffix == ".npz":
        return _open_npz(p, min_images)
    if p.is_file():
        raise LatentlabError(f"{p} is neither a folder of images nor an .npz; give one of those")
    raise LatentlabError(f"no such folder or .npz: {p}")


def fit_images(x: torch.Tensor, channels: int | None, size: int | None, who: str = "extractor") -> torch.Tensor:
    """Convert images (N, C, H, W) to `channels` (gray <-> RGB) and bilinearly (antialiased) to size x size."""
    if channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)                                           # gray -> RGB
    elif channels == 1 and x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)                                      # RGB -> luma (ITU-R 601)
    elif channels is not None and x.shape[1] != channels:
        raise LatentlabError(f"the {who} extractor takes {channels}-channel images, got {x.shape[1]}")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x                                                                  # (N, channels, size, size)
