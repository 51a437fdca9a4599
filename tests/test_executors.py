"""The stage-graph executors on synthetic graphs: order, parallelism, failures, retries, pinning, submitit."""

import json
import sys
import time

import pytest

from latentlab.errors import LatentlabError
from latentlab.study.executors import (Job, LocalLauncher, ExecutorConfig, SubmititLauncher, run_graph, stage_command)

# a job: check that its dependencies finished, record when it ran and with which environment, write its marker
STEP = """
import json, os, sys, time
root, name, deps, fail_once = sys.argv[1], sys.argv[2], sys.argv[3].split(",") if sys.argv[3] else [], sys.argv[4]
assert all(os.path.exists(os.path.join(root, d + ".done")) for d in deps), "a dependency is not done"
if fail_once == "always" or (fail_once == "once" and not os.path.exists(os.path.join(root, name + ".tried"))):
    open(os.path.join(root, name + ".tried"), "w").close()
    print("boom from", name, file=sys.stderr)
    sys.exit(3)
t0 = time.time()
time.sleep(0.4)
env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
json.dump({"start": t0, "end": time.time(), "env": env}, open(os.path.join(root, name + ".json"), "w"))
open(os.path.join(root, name + ".done"), "w").close()
"""

DIAMOND = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()}


def _jobs(root, graph=DIAMOND, fail=None):
    fail = fail or {}
    return [Job(n, ["-c", STEP, str(root), n, ",".join(d), fail.get(n, "no")], tuple(d)) for n, d in graph.items()]


def _done(root):
    return lambda job: (root / f"{job.id}.done").is_file()


def _times(root, name):
    return json.loads((root / f"{name}.json").read_text())


def test_local_jobs_respect_dependencies_and_run_in_parallel(tmp_path):
    res = run_graph(_jobs(tmp_path), LocalLauncher(2, tmp_path / "logs", threads_per_job=1, gpus=[]), _done(tmp_path),
                    poll=0.05)
    assert sorted(res.ran) == list("abcde") and not res.failed and not res.blocked
    t = {n: _times(tmp_path, n) for n in "abcde"}
    assert t["b"]["start"] >= t["a"]["end"] and t["c"]["start"] >= t["a"]["end"]
    assert t["d"]["start"] >= max(t["b"]["end"], t["c"]["end"])
    assert t["b"]["start"] < t["c"]["end"] and t["c"]["start"] < t["b"]["end"]  # b and c overlapped
    spans = sorted((v["start"], v["end"]) for v in t.values())
    assert max(sum(s <= p[0] < e for s, e in spans) for p in spans) <= 2  # never more than 2 at once
    assert all(v["env"]["OMP_NUM_THREADS"] == "1" for v in t.values())
    again = run_graph(_jobs(tmp_path), LocalLauncher(2, tmp_path / "logs", gpus=[]), _done(tmp_path))
    assert again.ran == [] and sorted(again.complete) == list("abcde")  # a rerun starts nothing


def test_a_failure_blocks_only_what_needs_it_and_retries_resume(tmp_path):
    res = run_graph(_jobs(tmp_path, fail={"b": "always"}), LocalLauncher(2, tmp_path / "logs", gpus=[]),
                    _done(tmp_path), poll=0.05)
    assert set(res.failed) == {"b"} and res.blocked == ["d"] and sorted(res.ran) == ["a", "c", "e"]
    assert "boom from b" in open(res.failed["b"].split(" ")[0]).read()
    # the rerun starts only what is missing: b (which now fails once, then succeeds on its retry) and d
    res = run_graph(_jobs(tmp_path, fail={"b": "once"}), LocalLauncher(2, tmp_path / "logs", gpus=[]),
                    _done(tmp_path), retries=1, poll=0.05)
    assert sorted(res.ran) == ["b", "d"] and not res.failed
    with pytest.raises(LatentlabError, match="not part of the study"):
        run_graph([Job("x", ["-c", "pass"], ("y",))], LocalLauncher(1, tmp_path, gpus=[]), lambda j: False)


def test_gpu_slots_threads_and_torchrun_commands(tmp_path):
    launcher = LocalLauncher(2, tmp_path, gpus_per_job=2, gpus=["0", "1", "2", "3"])
    assert [launcher.env_for(k)["CUDA_VISIBLE_DEVICES"] for k in (0, 1)] == ["0,1", "2,3"]
    cmd = stage_command(["-m", "latentlab", "run", "s.yaml"], nproc=2)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    assert cmd[-4:] == ["-m", "latentlab", "run", "s.yaml"] and stage_command(["-c", "x"]) == [sys.executable, "-c", "x"]
    multi = stage_command(["-m", "latentlab"], nproc=8, nnodes=2, node_rank=1, master="node0:29501")
    assert "--nnodes=2" in multi and "--node_rank=1" in multi and "--rdzv_endpoint=node0:29501" in multi
    with pytest.raises(LatentlabError, match="needs 6 GPUs but 4 are visible"):
        LocalLauncher(3, tmp_path, gpus_per_job=2, gpus=["0", "1", "2", "3"])
    with pytest.raises(LatentlabError, match="no GPU"):
        LocalLauncher(1, tmp_path, gpus_per_job=2, gpus=[])
    assert LocalLauncher(2, tmp_path, gpus=[]).threads >= 1
    p = ExecutorConfig(partition="gpu", gpus_per_node=8, nodes=2, timeout_min=60, additional_parameters={"mail-type": "END"})
    assert p.parameters(True) == {"timeout_min": 60, "gpus_per_node": 8, "nodes": 2, "tasks_per_node": 1,
                                  "slurm_partition": "gpu", "slurm_additional_parameters": {"mail-type": "END"}}
    assert p.parameters(False)["gpus_per_node"] == 1 and p.parameters(False)["nodes"] == 1
    for bad, msg in [({"kind": "ray"}, "unknown executor"), ({"jobs": 0}, "jobs must be >= 1"),
                     ({"retries": -1}, "retries")]:
        with pytest.raises(LatentlabError, match=msg):
            ExecutorConfig(**bad)


def test_submitit_local_executor_runs_the_same_graph(tmp_path):
    import submitit  # noqa: F401  (the `slurm` extra; installed with the `test` extra)
    root = tmp_path / "work"
    root.mkdir()
    launcher = SubmititLauncher(tmp_path / "_submitit", ExecutorConfig(timeout_min=5), cluster="local", max_jobs=2,
                                threads_per_job=1)
    t0 = time.time()
    res = run_graph(_jobs(root, fail={"e": "always"}), launcher, _done(root), poll=0.1)
    assert sorted(res.ran) == list("abcd") and set(res.failed) == {"e"}, res
    assert _times(root, "d")["start"] >= _times(root, "b")["end"] and _times(root, "a")["env"]["OMP_NUM_THREADS"] == "1"
    logs = list((tmp_path / "_submitit").rglob("*.err"))
    assert logs and any("boom from e" in p.read_text() for p in logs)  # submitit's logs, in the study's folder
    assert time.time() - t0 < 60
