import numpy as np
import pandas as pd
import pytest

from latentlab.analysis.probe import gmm_nll_lookup
from latentlab.analysis.stream import Rows
from latentlab.analysis.structure import cluster_scores, fisher_ratio, knn_accuracy, rankme
from latentlab.errors import LatentlabError
from latentlab.latents import LatentStore

def F(x, y):
    return Rows(x, labels=y)


def test_knn_temperature_weighting_closed_form():
    # query along e1; class 0 has two neighbours at cosine 0.5, class 1 one neighbour at cosine 0.6
    bank = np.array([[0.5, np.sqrt(0.75), 0], [0.5, -np.sqrt(0.75), 0], [0.6, 0, 0.8]], dtype=np.float32)
    bank_y = np.array([0, 0, 1])
    q, qy = np.array([[2.0, 0, 0]], dtype=np.float32), np.array([1])
    # T=0.07: exp(0.6/T) > 2 exp(0.5/T) -> class 1; T=1: 2 e^0.5 > e^0.6 -> class 0
    assert knn_accuracy(F(bank, bank_y), F(q, qy), 2, k=3, temperature=0.07)["top1"] == 1.0
    assert knn_accuracy(F(bank, bank_y), F(q, qy), 2, k=3, temperature=1.0)["top1"] == 0.0
    # k=1 takes the single nearest row whatever the temperature
    assert knn_accuracy(F(bank, bank_y), F(q, qy), 2, k=1, temperature=1.0)["top1"] == 1.0


def test_knn_matches_brute_force_with_streamed_bank(tmp_path, rng):
    k, temp, classes = 20, 0.07, 7
    bank = rng.normal(size=(600, 6)).astype(np.float32)
    bank_y = rng.integers(0, classes, 600)
    q = rng.normal(size=(150, 6)).astype(np.float32)
    qy = rng.integers(0, classes, 150)
    nb = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    nq = q / np.linalg.norm(q, axis=1, keepdims=True)
    sim = nq @ nb.T
    top = np.argsort(-sim, axis=1)[:, :k]
    votes = np.zeros((150, classes))
    for i in range(150):
        np.add.at(votes[i], bank_y[top[i]], np.exp(sim[i, top[i]] / temp))
    order = np.argsort(-votes, axis=1)
    ref1, ref5 = (order[:, 0] == qy).mean(), (order[:, :5] == qy[:, None]).any(1).mean()
    st = LatentStore.create(tmp_path / "bank", bank, bank_y, shard_size=128)
    streamed = Rows(st, max_bytes=0, chunk_rows=100)
    got = knn_accuracy(streamed, F(q, qy), classes, k, temp, query_batch=64, bank_block=70)
    assert got["top1"] == pytest.approx(ref1) and got["top5"] == pytest.approx(ref5)


def test_fisher_ratio_and_cluster_scores_closed_form():
    # 1-D: class 0 at {0, 2}, class 1 at {10, 12}: S_B = 2*25 + 2*25 = 100, S_W = 4
    x = np.array([[0.0], [2.0], [10.0], [12.0]], dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    assert fisher_ratio(F(x, y)) == pytest.approx(25.0)
    s = cluster_scores(F(x, y))
    assert s["silhouette"] == pytest.approx((9 / 11 + 7 / 9) / 2)  # a=2, b=11 or 9
    assert s["calinski_harabasz"] == pytest.approx(25.0 * (4 - 2) / (2 - 1))  # = Fisher ratio * (n-k)/(k-1)
    assert s["davies_bouldin"] == pytest.approx((1 + 1) / 10)  # scatter 1 each, centroids 10 apart


def test_fisher_ratio_streamed_matches_direct(tmp_path, rng):
    x = (rng.normal(size=(700, 5)) * [1, 2, 3, 4, 5] + 100.0).astype(np.float32)  # a large offset
    y = rng.integers(0, 4, 700)
    x[y == 2] += 3.0
    x64 = x.astype(np.float64)
    mu = x64.mean(0)
    sb = sum((y == c).sum() * np.sum((x64[y == c].mean(0) - mu) ** 2) for c in range(4))
    sw = sum(np.sum((x64[y == c] - x64[y == c].mean(0)) ** 2) for c in range(4))
    st = LatentStore.create(tmp_path / "s", x, y)
    assert fisher_ratio(Rows(st, max_bytes=0, chunk_rows=97)) == pytest.approx(sb / sw, rel=1e-6)
    # population value for two classes at +-m on one axis with unit noise in D dims: m^2 / D
    n, d, m = 20000, 4, 1.5
    yy = rng.integers(0, 2, n)
    xx = rng.normal(size=(n, d))
    xx[:, 0] += np.where(yy == 1, m, -m)
    assert fisher_ratio(F(xx.astype(np.float32), yy)) == pytest.approx(m**2 / d, rel=0.05)


def test_cluster_scores_sample_large_n(rng):
    x = rng.normal(size=(3000, 3)).astype(np.float32)
    y = rng.integers(0, 3, 3000)
    x[:, 0] += 4 * y
    a = cluster_scores(F(x, y), max_samples=500, seed=1)
    b = cluster_scores(F(x, y), max_samples=500, seed=1)
    assert a == b and 0.3 < a["silhouette"] < 0.9


def test_rankme_isotropic_and_low_rank(rng):
    d = 16
    iso = rng.normal(size=(5000, d)).astype(np.float32)
    r_iso = rankme(F(iso, np.zeros(5000, int)))
    assert 0.97 * d < r_iso <= d
    r = 5
    low = (rng.normal(size=(3000, r)) @ rng.normal(size=(r, 40))).astype(np.float32)
    r_low = rankme(F(low, np.zeros(3000, int)))
    assert 1.5 < r_low <= r + 0.05
    # equals the paper's formula on numpy singular values (raw, uncentred matrix; rows < dims too)
    z = (rng.normal(size=(30, 50)) + 2.0).astype(np.float32)
    sv = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = sv / sv.sum() + 1e-7
    assert rankme(F(z, np.zeros(30, int))) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)


def test_gmm_lookup(tmp_path):
    df = pd.DataFrame({"tokenizer": ["a", "a", "b"], "n_components": [1, 8, 8], "pca_dim": [16, 16, 16],
                       "heldout_nll": [3.0, 2.0, 1.0]})
    df.to_csv(tmp_path / "gmm.csv", index=False)
    assert gmm_nll_lookup(tmp_path / "gmm.csv", 8) == {"a": 2.0, "b": 1.0}
    with pytest.raises(LatentlabError, match="choose --gmm-k from 1, 8"):
        gmm_nll_lookup(tmp_path / "gmm.csv", 4)
    df.drop(columns="heldout_nll").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(LatentlabError, match="heldout_nll"):
        gmm_nll_lookup(tmp_path / "bad.csv", 8)
    with pytest.raises(LatentlabError, match="not found"):
        gmm_nll_lookup(tmp_path / "missing.csv", 8)
