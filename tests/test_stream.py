"""The one streaming adapter (analysis.stream.Rows) and the one rank split (utils.rank_range)."""

import numpy as np
import pytest
import torch

from latentlab.analysis.stream import Rows, pool_features
from latentlab.errors import LatentlabError
from latentlab.latents import LatentStore
from latentlab.utils import rank_range


@pytest.mark.parametrize("n, world", [(1000, 3), (10, 4), (7, 7), (3, 5), (0, 2)])
def test_rank_parts_are_contiguous_balanced_and_complete(n, world):
    parts = [rank_range(n, r, world) for r in range(world)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous, in rank order
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


def test_store_batches_cover_everything_in_order_and_split_by_rank(tmp_path, rng):
    x = rng.normal(size=(1000, 4, 3)).astype(np.float32)
    st = LatentStore.create(tmp_path / "s", x, rng.integers(0, 5, 1000), shard_size=300)
    rows = Rows(st)
    assert (rows.n, rows.dim, rows.in_memory) == (1000, 12, False)
    # streaming batches cover everything in order, across shard borders
    got = np.concatenate([b.numpy() for b in rows.batches(128)])
    np.testing.assert_array_equal(got, x.reshape(1000, -1))
    # rank parts are disjoint and complete
    parts = [np.concatenate([b.numpy() for b in rows.batches(100, shard=(r, 3))]) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), x.reshape(1000, -1))
    assert [len(p) for p in parts] == [333, 333, 334]


@pytest.mark.parametrize("kind", ["numpy", "tensor", "store"])
def test_indices_keep_their_order_in_batches_and_take(tmp_path, rng, kind):
    x = rng.normal(size=(300, 6)).astype(np.float32)
    data = {"numpy": x, "tensor": torch.from_numpy(x),
            "store": LatentStore.create(tmp_path / "s", x, shard_size=64)}[kind]
    idx = rng.permutation(300)[:120]
    rows = Rows(data, idx)
    np.testing.assert_array_equal(torch.cat(list(rows.batches(50))).numpy(), x[idx])
    pos = np.array([5, 100, 0, 77, 5])
    np.testing.assert_array_equal(rows.take(pos).numpy(), x[idx][pos])


def test_shuffled_blocks_are_a_permutation_with_labels(tmp_path, rng):
    x = rng.normal(size=(500, 2, 3)).astype(np.float32)
    y = np.repeat(np.arange(5), 100)  # sorted by class
    st = LatentStore.create(tmp_path / "s", x, y, shard_size=128)
    rows = Rows(st, pool="mean", chunk_rows=100, block_rows=20)
    ref = pool_features(x, "tokens", "mean")
    got = list(rows.batches(rng=np.random.default_rng(1), labels=True))
    assert [len(b) for b, _ in got] == [100] * 5
    assert len(np.unique(got[0][1].numpy())) > 1  # a batch mixes classes
    xs, ys = np.concatenate([b.numpy() for b, _ in got]), np.concatenate([c.numpy() for _, c in got])
    order = np.argsort(xs[:, 0])
    np.testing.assert_array_equal(xs[order], ref[np.argsort(ref[:, 0])])
    np.testing.assert_array_equal(ys[order], y[np.argsort(ref[:, 0])])


def test_in_memory_store_integers_and_bad_input(tmp_path, rng):
    x = rng.normal(size=(40, 5)).astype(np.float16)
    st = LatentStore.create(tmp_path / "s", x, shard_size=16)
    mem = Rows(st, max_bytes=1 << 20, block_rows=8)
    assert mem.in_memory and next(mem.batches()).shape == (40, 5)  # one batch of everything
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    np.testing.assert_array_equal(next(mem.batches(rng=rng)).numpy(), x)  # in order: the caller shuffles rows
    assert rng.bit_generator.state == state  # and the caller's rng is not used
    assert next(Rows(st).batches(8)).dtype == torch.float16  # the store's own dtype
    assert mem.count_nonfinite() == 0
    x[3, 2], x[30, 0] = np.nan, np.inf
    assert Rows(x).count_nonfinite(batch_size=7) == 2 and Rows(torch.from_numpy(x), [3, 4]).count_nonfinite() == 1
    ints = Rows(np.arange(12).reshape(4, 3))
    assert next(ints.batches()).dtype == torch.float64
    with pytest.raises(LatentlabError, match="2-D"):
        Rows(np.zeros(5))
    with pytest.raises(LatentlabError, match="dtype"):
        Rows(np.array([["a"]]))
    with pytest.raises(LatentlabError, match="labels"):
        Rows(np.zeros((4, 2)), labels=np.zeros(3))
    with pytest.raises(LatentlabError, match="no labels"):
        next(Rows(np.zeros((4, 2))).batches(labels=True))
