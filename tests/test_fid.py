"""Fréchet distance: closed forms, a scipy.linalg.sqrtm reference, streaming, noise monotonicity, caching."""

import numpy as np
import pytest
import scipy.linalg
import torch

from latentlab.errors import LatentlabError
from latentlab.metrics.fid import (FeatureStats, GaussianStats, fd_between, feature_statistics, frechet_distance,
                                   inception_score, trace_sqrt_product)


def random_spd(rng, d, floor=0.1):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + floor * np.eye(d)


def scipy_fd(mu1, s1, mu2, s2):
    """The textbook formula with scipy's matrix square root (pytorch-fid's reference path)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("d", [1, 5, 64])
def test_identity_and_symmetry(rng, d):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9 * d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagonal_gaussians_closed_form(seed):
    rng = np.random.default_rng(seed)
    d = 20
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.01, 5, d), rng.uniform(0.01, 5, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed,d", [(0, 2), (1, 16), (2, 100), (3, 256)])
def test_matches_scipy_sqrtm_reference(seed, d):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d) * 0.1
    s1, s2 = random_spd(rng, d), random_spd(rng, d, floor=1e-3)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_fd(mu1, s1, mu2, s2), rel=1e-8, abs=1e-8)


def sym_trace_sqrt(s1, s2):
    """tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), from symmetric eigendecompositions only."""
    w, v = np.linalg.eigh(s1)
    root = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    return np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()


def test_singular_covariances_fewer_samples_than_features(rng):
    """Rank-deficient covariances (N < D): the result equals the symmetric-form reference."""
    a = feature_statistics(rng.normal(size=(20, 64)))
    b = feature_statistics(rng.normal(size=(30, 64)) * 1.5 + 0.3)
    ref = np.sum((a.mu - b.mu) ** 2) + np.trace(a.sigma) + np.trace(b.sigma) - 2 * sym_trace_sqrt(a.sigma, b.sigma)
    assert fd_between(a, b) == pytest.approx(ref, rel=1e-6)
    assert fd_between(a, a) == pytest.approx(0.0, abs=1e-8)


def test_offset_path_is_the_exact_root_of_the_regularised_product(rng):
    """When the roots of a singular product are too complex, eps*I is added to both covariances."""
    a = feature_statistics(rng.normal(size=(20, 64))).sigma
    b = feature_statistics(rng.normal(size=(30, 64))).sigma
    plain, off0 = trace_sqrt_product(a, b)
    assert off0 == 0.0
    # a tolerance below the rounding noise of the singular product forces the offset
    value, off = trace_sqrt_product(a, b, eps=1e-3, imag_tol=1e-9)
    assert off > 0
    eye = np.eye(64)
    assert value == pytest.approx(sym_trace_sqrt(a + off * eye, b + off * eye), rel=1e-9)
    assert value == pytest.approx(plain, rel=0.05)


def test_not_psd_and_mismatched_inputs_are_errors(rng):
    bad = np.diag([1.0, 2.0, -3.0])
    with pytest.raises(LatentlabError, match="not positive semi-definite"):
        frechet_distance(np.zeros(3), bad, np.zeros(3), np.eye(3))
    with pytest.raises(LatentlabError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(LatentlabError, match="NaN"):
        frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))


@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
def test_streamed_statistics_equal_numpy(rng, batch):
    x = rng.normal(size=(500, 12)) * rng.uniform(0.1, 100, 12) + 1e4   # a large offset tests the merge
    s = feature_statistics(torch.from_numpy(x), batch_size=batch)
    assert s.n == 500
    np.testing.assert_allclose(s.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


def test_fewer_than_two_samples_is_an_error():
    acc = FeatureStats().update(np.ones((1, 3)))
    with pytest.raises(LatentlabError, match="at least 2"):
        acc.cov


def test_inception_score_closed_forms():
    assert inception_score(np.zeros((100, 10)))[0] == pytest.approx(1.0)              # uniform predictions
    confident = np.eye(10)[np.arange(1000) % 10] * 60.0                               # sure, and balanced per split
    assert inception_score(confident, shuffle_seed=None)[0] == pytest.approx(10.0, rel=1e-6)
    assert inception_score(np.eye(10)[np.zeros(100, int)] * 60.0)[0] == pytest.approx(1.0, abs=1e-6)  # one class
    # class-sorted input: in-order splits hold one class each (IS 1); shuffled splits see all classes
    by_class = np.eye(10)[np.repeat(np.arange(10), 100)] * 60.0
    assert inception_score(by_class, shuffle_seed=None)[0] == pytest.approx(1.0, abs=1e-6)
    mean, std = inception_score(by_class)
    assert 9.0 < mean < 10.0 and std < 0.5


# ---------------------------------------------------------------- with the lenet extractor on mnist5k

@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    from latentlab.metrics.extractors import get_extractor

    return get_extractor("lenet", dataset="mnist5k", device="cpu",
                         cache_root=tmp_path_factory.getbasetemp() / "lenet-cache")


@pytest.fixture(scope="module")
def mnist():
    from latentlab.data import get_dataset

    test = get_dataset("mnist5k", "test")
    return test.get_batch(np.arange(len(test)))[0], get_dataset("mnist5k", "train")


def _stats(ext, x, batch):
    from latentlab.metrics.stats import compute_features

    return compute_features(ext, (x[i:i + batch] for i in range(0, len(x), batch)), keep_logits=False).stats


def test_fd_grows_monotonically_with_noise(lenet, mnist):
    x, train = mnist
    ref = _stats(lenet, train.get_batch(np.arange(len(train)))[0], 500)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    fds = [fd_between(ref, _stats(lenet, (x + s * noise).clamp(-1, 1), 500)) for s in (0.0, 0.1, 0.25, 0.5, 1.0)]
    assert all(b > a for a, b in zip(fds, fds[1:])), fds
    assert fds[-1] > 20 * fds[0], fds


def test_fd_does_not_depend_on_batch_size(lenet, mnist):
    x, _ = mnist
    a, b = x[:300:2], x[1:300:2]
    fd = [fd_between(_stats(lenet, a, bs), _stats(lenet, b, bs)) for bs in (150, 64, 7)]
    assert fd[1] == pytest.approx(fd[0], rel=1e-5) and fd[2] == pytest.approx(fd[0], rel=1e-5)


def _scripted(path, scale):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    torch.nn.init.constant_(net[1].weight, scale)
    torch.nn.init.zeros_(net[1].bias)
    torch.jit.save(torch.jit.script(net), str(path))


def test_real_statistics_are_cached_and_invalidated_when_the_extractor_changes(tmp_path):
    from latentlab.metrics.extractors import get_extractor
    from latentlab.metrics.stats import real_statistics, stats_cache_path

    net = tmp_path / "net.pt"
    _scripted(net, 0.01)
    ext = get_extractor(f"torchscript:{net}", device="cpu")
    s1, cached1 = real_statistics("digits", "test", ext)
    path = stats_cache_path("digits", "test", 8, ext)
    mtime = path.stat().st_mtime_ns
    s2, cached2 = real_statistics("digits", "test", get_extractor(f"torchscript:{net}", device="cpu"))
    assert (cached1, cached2) == (False, True) and path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(s1.sigma, s2.sigma)
    _scripted(net, 0.02)                        # same file name, other weights: a different extractor
    ext3 = get_extractor(f"torchscript:{net}", device="cpu")
    s3, cached3 = real_statistics("digits", "test", ext3)
    assert not cached3 and not np.allclose(s3.mu, s1.mu)
    np.testing.assert_allclose(s3.mu, 2 * s1.mu, rtol=1e-5)   # a linear net: twice the weights, twice the mean
    s4, cached4 = real_statistics("digits", "test", ext, limit=100)   # the limit is part of the key too
    assert not cached4 and s4.n == 100


def test_cache_with_a_tampered_identity_is_recomputed(tmp_path):
    from latentlab.metrics.extractors import get_extractor
    from latentlab.metrics.stats import real_statistics, stats_cache_path

    net = tmp_path / "net.pt"
    _scripted(net, 0.01)
    ext = get_extractor(f"torchscript:{net}", device="cpu")
    real_statistics("digits", "test", ext)
    path = stats_cache_path("digits", "test", 8, ext)
    with np.load(path) as z:
        data = dict(z)
    data["identity"] = np.array('{"extractor": "something else"}')
    with open(path, "wb") as f:
        np.savez(f, **data)
    assert real_statistics("digits", "test", ext)[1] is False


def test_gaussian_stats_roundtrip(rng):
    s = GaussianStats.from_stats(FeatureStats().update(rng.normal(size=(10, 3))))
    assert s.n == 10 and s.mu.shape == (3,) and s.sigma.shape == (3, 3)


def test_real_limit_is_a_fixed_spread_subset():
    from latentlab.metrics.images import from_array, limit_indices

    idx = limit_indices(1000, 100)
    assert len(idx) == 100 and np.array_equal(idx, np.sort(idx)) and np.array_equal(idx, limit_indices(1000, 100))
    labels = np.repeat(np.arange(10), 100)                       # class-sorted, like mnist5k's splits
    assert len(np.unique(labels[idx])) == 10
    imgs = from_array(np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1).repeat(4, 1).repeat(4, 2))
    got = torch.cat(list(imgs.batches(7, limit=20)))[:, 0, 0, 0]
    assert torch.equal(got, (torch.from_numpy(limit_indices(50, 20)).float() / 127.5 - 1))


def test_fd_bootstrap_replicates_are_fds_of_resamples(rng):
    from latentlab.metrics.fid import fd_bootstrap, fd_interval

    x = rng.normal(size=(300, 6)) + 0.3
    r = rng.normal(size=(2000, 6))
    ref = GaussianStats(r.mean(0), np.cov(r.T), 2000)
    reps = fd_bootstrap(ref, torch.tensor(x), 40, seed=3)
    idx = torch.randint(0, 300, (1, 300), generator=torch.Generator().manual_seed(3))[0].numpy()
    assert reps[0] == pytest.approx(frechet_distance(ref.mu, ref.sigma, x[idx].mean(0), np.cov(x[idx].T)), rel=1e-9)
    assert np.array_equal(reps, fd_bootstrap(ref, torch.tensor(x), 40, seed=3))  # seeded, bit-identical
    est = frechet_distance(ref.mu, ref.sigma, x.mean(0), np.cov(x.T))
    lo, hi = fd_interval(est, reps)
    assert lo < est < hi and hi - lo == pytest.approx(np.quantile(reps, 0.975) - np.quantile(reps, 0.025))
