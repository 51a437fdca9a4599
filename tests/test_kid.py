"""KID (unbiased polynomial-kernel MMD^2) and conditional accuracy against independent references."""

import numpy as np
import pytest
from scipy.stats import beta
from sklearn.metrics.pairwise import polynomial_kernel as sk_poly

from latentlab.metrics.accuracy import conditional_accuracy
from latentlab.metrics.kid import kid


def _mmd2_by_pairs(x, y):
    """The unbiased estimator written out over index pairs, with scikit-learn's kernel (gamma = 1/d, coef0 = 1)."""
    kxx, kyy, kxy = (sk_poly(a, b, degree=3, gamma=1.0 / x.shape[1], coef0=1) for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    xx = sum(kxx[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(kyy[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return xx + yy - 2 * kxy.mean()


def test_kid_equals_the_pairwise_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 7)), rng.normal(0.3, 1.2, size=(40, 7))
    mean, std, size = kid(x, y, subsets=1, subset_size=40)       # one subset of everything: the full estimator
    assert size == 40 and std == 0.0
    assert mean == pytest.approx(_mmd2_by_pairs(x, y), rel=1e-10)
    m2, s2, size2 = kid(x, y, subsets=20, subset_size=1000)       # the subset size drops to the set size
    assert size2 == 40 and m2 == pytest.approx(mean, rel=1e-10) and s2 < 1e-12   # subsets of all rows: same value


def test_kid_is_unbiased_where_fd_is_not():
    rng = np.random.default_rng(1)
    # one distribution: the estimator's mean over independent draws is 0 within its standard error
    vals = [kid(rng.normal(size=(30, 5)), rng.normal(size=(30, 5)), subsets=1)[0] for _ in range(300)]
    assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals))
    # a linear kernel x.y makes MMD^2 = |mu_x - mu_y|^2 exactly in expectation
    shift = np.array([0.5, -1.0, 0.0, 0.25])
    lin = [kid(rng.normal(size=(25, 4)), rng.normal(size=(25, 4)) + shift, subsets=1, degree=1, gamma=1.0,
               coef0=0.0)[0] for _ in range(400)]
    assert np.mean(lin) == pytest.approx(shift @ shift, abs=4 * np.std(lin) / np.sqrt(len(lin)))


def test_conditional_accuracy_and_its_exact_interval():
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 4
    logits = rng.normal(size=(200, 4))
    logits[np.arange(150), labels[:150]] += 10.0                  # the first 150 are classified as asked
    c = conditional_accuracy(logits, labels)
    hits = int((logits.argmax(1) == labels).sum())
    assert c["acc"] == hits / 200 and c["n"] == 200 and c["chance"] == 0.25
    assert c["lo"] == pytest.approx(beta.ppf(0.025, hits, 200 - hits + 1), rel=1e-9)     # Clopper-Pearson
    assert c["hi"] == pytest.approx(beta.ppf(0.975, hits + 1, 200 - hits), rel=1e-9)
    assert conditional_accuracy(logits, np.r_[labels[:100], -np.ones(100, int)])["n"] == 100   # unconditional rows skipped
