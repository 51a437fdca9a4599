"""Two gloo processes on CPU fit the same mixture as one process (all-reduced EM statistics)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from latentlab.analysis.gmm import GaussianMixture
from latentlab.latents import LatentStore

WORKER = textwrap.dedent("""
    import sys, warnings
    import numpy as np, torch
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rank, world, init_file, store_path, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    torch.distributed.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
    from latentlab.analysis.gmm import GaussianMixture
    from latentlab.latents import LatentStore
    from latentlab.utils import world_size
    from latentlab.analysis.stream import Rows
    assert world_size() == 2
    mine = torch.cat(list(Rows(np.arange(1000.0)[:, None]).batches(300, shard=True)))[:, 0]
    assert torch.equal(mine, torch.arange(500 * rank, 500 * rank + 500, dtype=torch.float64))
    X = np.load(store_path + ".npy")
    store = LatentStore.open(store_path)
    res = {}
    for name, data, kw in CASES:
        g = GaussianMixture(4, device="cpu", **kw).fit(store if data == "store" else X)
        res[name + "_score"] = np.array(g.score(store if data == "store" else X))
        for a in ("weights_", "means_", "covariances_"):
            res[name + a] = getattr(g, a)
        res[name + "_n_iter"] = np.array(g.n_iter_)
        res[name + "_lower_bound"] = np.array(g.lower_bound_)
    if rank == 0:
        np.savez(out, **res)
    torch.distributed.destroy_process_group()
""")

CASES = [
    ("array_full", "array", dict(covariance_type="full", random_state=0, batch_size=100, max_iter=10, tol=0)),
    ("store_diag", "store", dict(covariance_type="diag", random_state=1, batch_size=100, max_iter=10, tol=0,
                                 init_params="k-means++")),
    ("store_kmeans", "store", dict(covariance_type="full", random_state=2, batch_size=100, n_init=2)),
]


@pytest.mark.filterwarnings("ignore::latentlab.analysis.gmm.ConvergenceWarning")
def test_two_gloo_processes_match_one(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(4, size=1000)
    X = (rng.normal(size=(1000, 5)) + 4 * rng.normal(size=(4, 5))[labels]).astype(np.float32)
    store_path = str(tmp_path / "store")
    LatentStore.create(store_path, X, labels, shard_size=300)
    np.save(store_path + ".npy", X)
    script = tmp_path / "worker.py"
    script.write_text(f"CASES = {CASES!r}\n" + WORKER)
    out = tmp_path / "dist.npz"
    env = dict(os.environ, LATENTLAB_PROGRESS="0", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(tmp_path / "init"), store_path, str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    logs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    dist = np.load(out)
    store = LatentStore.open(store_path)
    for name, data, kw in CASES:
        g = GaussianMixture(4, device="cpu", **kw).fit(store if data == "store" else X)
        assert int(dist[name + "_n_iter"]) == g.n_iter_
        assert float(dist[name + "_lower_bound"]) == pytest.approx(g.lower_bound_, rel=1e-6)
        assert float(dist[name + "_score"]) == pytest.approx(g.score(store if data == "store" else X), rel=1e-6)
        for a in ("weights_", "means_", "covariances_"):
            np.testing.assert_allclose(dist[name + a], getattr(g, a), rtol=1e-6, atol=1e-6)

