import json

import numpy as np
import pytest

from conftest import run_cli
from latentlab.errors import LatentlabError
from latentlab.extract import import_arrays
from latentlab.latents import LatentStore, open_split


def test_roundtrip_tokens_and_stats(tmp_path, rng):
    x = rng.normal(2.0, 3.0, size=(1000, 4, 3)).astype(np.float32)
    y = rng.integers(0, 5, 1000)
    st = LatentStore.create(tmp_path / "s", x, y, {"name": "t", "split": "train"}, shard_size=300)
    assert len(st.manifest["shards"]) == 4
    assert st.sample_shape == (4, 3) and st.dim == 12 and len(st) == 1000
    xs, ys = st.load()
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)
    flat = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(st.stats["channel_mean"], flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st.stats["channel_std"], flat.std(0), rtol=1e-6)
    np.testing.assert_allclose(st.stats["global_std"], flat.std(), rtol=1e-6)
    idx = rng.permutation(1000)[:77]
    np.testing.assert_array_equal(st.take(idx), x[idx])
    assert st.count_nonfinite(batch_size=300) == 0


def test_shards_are_memory_mapped(tmp_path, rng):
    st = LatentStore.create(tmp_path / "s", rng.normal(size=(50, 8)).astype(np.float16))
    assert isinstance(st._shards[0], np.memmap)
    assert st.sample_shape == (1, 8) and st.manifest["dtype"] == "float16"


def test_grid_layout_channel_stats(tmp_path, rng):
    x = rng.normal(size=(20, 4, 3, 3)) * np.arange(1, 5)[None, :, None, None]
    st = LatentStore.create(tmp_path / "g", x.astype(np.float32))
    assert st.layout == "grid"
    np.testing.assert_allclose(st.stats["channel_std"], x.transpose(0, 2, 3, 1).reshape(-1, 4).std(0), rtol=1e-5)


def test_writer_is_atomic_on_error(tmp_path, rng):
    path = tmp_path / "s"
    LatentStore.create(path, rng.normal(size=(10, 2, 2)).astype(np.float32))
    before = json.loads((path / "manifest.json").read_text())
    with pytest.raises(RuntimeError):
        with LatentStore.writer(path, (2, 2)) as w:
            w.append(rng.normal(size=(5, 2, 2)))
            raise RuntimeError("killed")
    assert json.loads((path / "manifest.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_nan_rejected_with_count(tmp_path, rng):
    x = rng.normal(size=(10, 3)).astype(np.float32)
    x[[2, 5], 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(LatentlabError, match="2 of 10 latent rows"):
        import_arrays(tmp_path / "x.npy", None, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_corrupt_store_errors(tmp_path, rng):
    st = LatentStore.create(tmp_path / "s", rng.normal(size=(10, 3)).astype(np.float32))
    (st.path / "manifest.json").write_text("{not json")
    with pytest.raises(LatentlabError, match="corrupt"):
        LatentStore.open(st.path)
    with pytest.raises(LatentlabError, match="not found"):
        LatentStore.open(tmp_path / "missing")


def test_import_cli(tmp_path, rng):
    np.save(tmp_path / "x.npy", rng.normal(size=(30, 5, 2)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 30))
    code, out, err = run_cli("import-latents", "--latents", str(tmp_path / "x.npy"), "--labels",
                             str(tmp_path / "y.npy"), "--out", str(tmp_path / "s"), "--json")
    assert code == 0, err
    assert json.loads(out)["stores"]["train"]["count"] == 30
    np.save(tmp_path / "y2.npy", rng.integers(0, 3, 29))
    code, out, err = run_cli("import-latents", "--latents", str(tmp_path / "x.npy"), "--labels",
                             str(tmp_path / "y2.npy"), "--out", str(tmp_path / "s2"))
    assert code == 2 and err.count("\n") == 1 and "30 latents but 29 labels" in err


def test_pixels_store_set(tmp_path):
    code, out, err = run_cli("import-latents", "--dataset", "digits", "--out", str(tmp_path / "px"))
    assert code == 0, err
    tr, te = open_split(tmp_path / "px", "train"), open_split(tmp_path / "px", "test")
    assert tr.sample_shape == (64, 1) and len(tr) + len(te) == 1797
    x, _ = tr.load()
    assert x.min() >= -1 and x.max() <= 1
