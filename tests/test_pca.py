import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA as SKPCA

from latentlab.analysis.pca import PCA, common_dim
from latentlab.errors import LatentlabError
from latentlab.latents import LatentStore


def _planted(rng, n, spectrum, offset=3.0):
    """Rows whose covariance has eigenvalues `spectrum` along a random rotation."""
    d = len(spectrum)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (rng.normal(size=(n, d)) * np.sqrt(spectrum)) @ q.T + offset * rng.normal(size=d)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_full_svd(seed):
    rng = np.random.default_rng(seed)
    x = _planted(rng, 600, np.logspace(1, -3, 24))
    sk = SKPCA(n_components=10, svd_solver="full").fit(x)
    ours = PCA(10, batch_size=10_000).fit(x)
    np.testing.assert_allclose(ours.explained_variance_ratio_, sk.explained_variance_ratio_, atol=1e-5)
    np.testing.assert_allclose(ours.explained_variance_, sk.explained_variance_, rtol=1e-8)  # ddof=1 like sklearn
    np.testing.assert_allclose(ours.mean_, sk.mean_, atol=1e-10)
    signs = np.sign((ours.components_ * sk.components_).sum(1))
    assert np.all(np.abs(signs) == 1)
    np.testing.assert_allclose(ours.components_ * signs[:, None], sk.components_, atol=1e-4)
    np.testing.assert_allclose(ours.singular_values_, sk.singular_values_, rtol=1e-8)
    white = SKPCA(n_components=10, svd_solver="full", whiten=True).fit_transform(x)
    np.testing.assert_allclose(np.abs(ours.transform(x, whiten=True)), np.abs(white), atol=1e-6)
    # the variance-threshold rule picks the same dimension as sklearn's float n_components
    for t in (0.5, 0.9, 0.99):
        assert PCA(t).fit(x).n_components_ == SKPCA(t, svd_solver="full").fit(x).n_components_


def test_streamed_small_batches_equal_full(tmp_path):
    rng = np.random.default_rng(3)
    x = _planted(rng, 777, np.linspace(5, 0.1, 12), offset=100.0).astype(np.float32)
    full = PCA(None, batch_size=10_000).fit(x)
    small = PCA(None, batch_size=13).fit(x)
    store = LatentStore.create(tmp_path / "s", x.reshape(777, 3, 4), shard_size=100)
    streamed = PCA(None, batch_size=29).fit(store)
    gen = PCA(None).fit(x[i:i + 50] for i in range(0, 777, 50))
    tensor = PCA(None, batch_size=64).fit(torch.from_numpy(x))
    for p in (small, streamed, gen, tensor):
        np.testing.assert_allclose(p.all_explained_variance_, full.all_explained_variance_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(p.mean_, full.mean_, rtol=1e-12)
        np.testing.assert_allclose(np.abs(p.components_), np.abs(full.components_), atol=1e-8)
    # a subset of rows by index equals fitting those rows directly
    idx = np.sort(rng.permutation(777)[:500])
    np.testing.assert_allclose(PCA(None, batch_size=7).fit(store, indices=idx).all_explained_variance_,
                               PCA(None).fit(x[idx]).all_explained_variance_, rtol=1e-9)


def test_zscores_have_mean_zero_std_one():
    rng = np.random.default_rng(4)
    x = _planted(rng, 400, np.logspace(2, -1, 16))
    p = PCA(0.9).fit(x)
    z = p.transform(x, zscore=True)
    assert z.shape == (400, p.n_components_)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-10)
    np.testing.assert_allclose(np.corrcoef(z.T), np.eye(p.n_components_), atol=1e-10)


def test_common_dimension_on_planted_spectra():
    rng = np.random.default_rng(5)
    # A: 92% of the variance in 3 dims (75% in 2); B: 9 of 20 dims hold 94.7% (84.2% in 8)
    a = np.array([45, 30, 17] + [8 / 17] * 17, float)
    b = np.array([1.0] * 9 + [0.5] + [1e-6] * 10)
    pa = PCA(None).fit(_planted(rng, 20_000, a))
    pb = PCA(None).fit(_planted(rng, 20_000, b))
    assert pa.dim_for_variance(0.9) == 3 and pb.dim_for_variance(0.9) == 9
    cd = common_dim({"a": pa, "b": pb}, 0.9)
    assert cd.dim == 9 and cd.own_dims == {"a": 3, "b": 9}
    assert cd.explained_variance["b"] >= 0.9 and cd.explained_variance["a"] > cd.explained_variance["b"]
    np.testing.assert_allclose(cd.explained_variance["a"], (92 + 6 * 8 / 17) / 100, atol=0.01)
    fixed = common_dim({"a": pa, "b": pb}, 0.9, fixed=5)
    assert fixed.dim == 5
    np.testing.assert_allclose(fixed.explained_variance["b"], 5 / 9.5, atol=0.02)
    with pytest.raises(LatentlabError, match="out of range"):
        common_dim({"a": pa}, 0.9, fixed=21)


def test_bad_inputs():
    x = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(LatentlabError, match=r"\(0, 1\]"):
        PCA(1.5).fit(x)
    with pytest.raises(LatentlabError, match="between 1 and"):
        PCA(9).fit(x)
    with pytest.raises(LatentlabError, match="not fitted"):
        PCA().transform(x)
    flat = np.c_[x[:, :2], np.zeros((30, 2))]
    p = PCA(4).fit(flat)
    with pytest.raises(LatentlabError, match="no variance"):
        p.transform(flat, zscore=True)


def test_distributed_two_gloo_ranks_match_single_process():
    import socket

    import torch.multiprocessing as mp

    from _pca_dist import fit_worker

    x = _planted(np.random.default_rng(6), 301, np.logspace(1, -2, 8))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=fit_worker, args=(r, 2, port, x, q)) for r in range(2)]
    for p in procs:
        p.start()
    ev, mean = q.get(timeout=120)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    single = PCA(None).fit(x)
    np.testing.assert_allclose(ev, single.all_explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(mean, single.mean_, rtol=1e-12, atol=1e-12)
