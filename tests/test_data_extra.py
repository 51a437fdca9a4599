"""cifar10 (python-pickle folder) and imagefolder loaders, on small files written here."""

import pickle

import numpy as np
import pytest
import torch

from latentlab.data import get_dataset, to_uint8
from latentlab.errors import LatentlabError


def _write_cifar(root, rng):
    root.mkdir()
    truth = {}
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 3)]:
        x = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        y = list(rng.integers(0, 10, n))
        with open(root / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": b"x"}, f)
        truth[name] = (x, y)
    return truth


def test_cifar10_reads_the_pickle_folder(tmp_path, rng):
    truth = _write_cifar(tmp_path / "cifar", rng)
    train = get_dataset(f"cifar10:{tmp_path / 'cifar'}", "train")
    test = get_dataset(f"cifar10:{tmp_path / 'cifar'}", "test")
    assert len(train) == 20 and len(test) == 3 and train.channels == 3 and train.image_size == 32
    x0, y0 = truth["data_batch_1"]
    img, lab = train[1]
    # row-major CHW bytes -> HWC uint8, then [-1, 1]
    assert np.array_equal(to_uint8(img[None])[0], x0[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert lab == y0[1] and img.min() >= -1 and img.max() <= 1
    assert np.array_equal(test.labels, np.asarray(truth["test_batch"][1]))


def test_cifar10_refuses_foreign_pickles_and_missing_folder(tmp_path, rng):
    _write_cifar(tmp_path / "cifar", rng)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(LatentlabError, match="not a CIFAR-10"):
        get_dataset(f"cifar10:{tmp_path / 'cifar'}", "test")
    with pytest.raises(LatentlabError, match="cifar10:"):
        get_dataset("cifar10", "train")


def test_imagefolder_resizes_and_center_crops(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c, color in [("cats", (255, 0, 0)), ("dogs", (0, 0, 255))]:
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(2):
                a = np.zeros((40, 80, 3), np.uint8)  # wide image: the crop keeps the middle 40 columns
                a[:, 20:60] = color
                Image.fromarray(a).save(d / f"{i}.png")
    ds = get_dataset(f"imagefolder:{tmp_path / 'imgs'}", "train", image_size=16)
    assert len(ds) == 4 and ds.class_names == ["cats", "dogs"] and ds.channels == 3
    x, y = ds.get_batch(np.arange(4))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    # the centre crop is all foreground colour (up to bicubic ringing at the borders)
    assert torch.allclose(x[0, :, 4:12, 4:12], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1), atol=0.05)
    assert torch.allclose(x[3, :, 4:12, 4:12], torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1), atol=0.05)


def test_imagefolder_flat_layout_is_split_and_empty_folder_errors(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "flat" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(tmp_path / "flat" / c / f"{i}.jpg")
    tr = get_dataset(f"imagefolder:{tmp_path / 'flat'}", "train", image_size=8)
    te = get_dataset(f"imagefolder:{tmp_path / 'flat'}", "test", image_size=8)
    assert len(tr) == 18 and len(te) == 2 and sorted(te.labels.tolist()) == [0, 1]
    assert not set(tr.source.files) & set(te.source.files)
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(LatentlabError, match="no images"):
        get_dataset(f"imagefolder:{tmp_path / 'empty'}", "train")


def test_imagefolder_imagenet_layout_uses_val_as_test(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("val", 1)):
        for c in ("n01", "n02"):
            (tmp_path / "in" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "in" / split / c / f"{i}.JPEG")
    te = get_dataset(f"imagefolder:{tmp_path / 'in'}", "test", image_size=8)
    assert len(te) == 2 and all("/val/" in f for f in te.source.files)
    assert len(get_dataset(f"imagefolder:{tmp_path / 'in'}", "train", image_size=8)) == 6
