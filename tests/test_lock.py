"""The stage lock: exclusive, released, stale when its process died or its heartbeat stopped."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from latentlab.errors import LatentlabError
from latentlab.study.lock import StageLock, read_holder


def test_exclusive_and_released(tmp_path):
    path = tmp_path / "tok" / ".train.lock"
    a, b = StageLock(path), StageLock(path)
    assert a.try_acquire() and path.is_file()
    assert not b.try_acquire()  # a live process (this one) holds it
    assert read_holder(path)["pid"] == os.getpid()
    a.release()
    assert not path.exists() and b.try_acquire()
    a.release()  # not a's lock any more: b's stays
    assert read_holder(path)["token"] == b.token
    b.release()
    with pytest.raises(LatentlabError):
        StageLock(path, heartbeat=10, stale_after=5)


def test_dead_holder_on_this_host_is_stale(tmp_path):
    path = tmp_path / ".s.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "token": "x"}))
    lock = StageLock(path)
    assert lock.try_acquire() and read_holder(path)["token"] == lock.token
    lock.release()


def test_other_host_is_stale_only_without_heartbeat(tmp_path):
    path = tmp_path / ".s.lock"
    path.write_text(json.dumps({"host": "some-other-node", "pid": 1, "token": "x"}))
    assert not StageLock(path).try_acquire()  # fresh heartbeat: alive as far as we can tell
    old = time.time() - 600
    os.utime(path, (old, old))
    lock = StageLock(path)
    assert lock.try_acquire()
    lock.release()


def test_heartbeat_keeps_a_long_holder_alive(tmp_path):
    path = tmp_path / ".s.lock"
    lock = StageLock(path, heartbeat=0.05, stale_after=1.0)
    assert lock.try_acquire()
    old = time.time() - 600
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 1.0
    lock.release()


HOLD = """
import sys, time
from latentlab.study.lock import StageLock
lock = StageLock(sys.argv[1])
assert lock.try_acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_sigkilled_holder_leaves_a_stale_lock(tmp_path):
    path = tmp_path / ".s.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "held"
    assert not StageLock(path).try_acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = StageLock(path)
    assert lock.try_acquire()  # the holder died: the lock is stale and broken
    lock.release()


def _worker(path, log, n):
    for _ in range(n):
        with StageLock(path, poll=0.02):
            with open(log, "a") as f:
                f.write(f"start {os.getpid()}\n")
            time.sleep(0.01)
            with open(log, "a") as f:
                f.write(f"end {os.getpid()}\n")


def test_processes_never_hold_it_at_once(tmp_path):
    path, log = tmp_path / ".s.lock", tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(path), str(log), 3)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = log.read_text().split()
    events = list(zip(lines[0::2], lines[1::2]))
    assert len(events) == 18
    for i in range(0, len(events), 2):  # every start is followed by the same process's end
        assert events[i][0] == "start" and events[i + 1] == ("end", events[i][1])


def _stage_rank(rank, world, init_file, root, out):
    import torch

    from latentlab.study.cache import run_stage

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        def fn(work, resume):
            (work / f"rank{rank}.txt").write_text(str(resume))  # every rank works in the one work directory
            return {"rank": rank}

        res = run_stage(root, "tok", "train", {"k": 1}, fn, resumable=True)
        again = run_stage(root, "tok", "train", {"k": 1}, fn, resumable=True)
        with open(f"{out}-{rank}.json", "w") as f:
            json.dump({"result": res.result, "reused": [res.reused, again.reused]}, f)
    finally:
        torch.distributed.destroy_process_group()


def test_a_stage_under_two_ranks_is_run_by_both_and_published_once(tmp_path):
    import torch.multiprocessing as tmp

    root = tmp_path / "study"
    tmp.spawn(_stage_rank, args=(2, str(tmp_path / "init"), str(root), str(tmp_path / "r")), nprocs=2, join=True)
    final = root / "tok" / "train"
    assert sorted(p.name for p in final.iterdir()) == ["rank0.txt", "rank1.txt", "stage.json"]
    assert json.loads((final / "stage.json").read_text())["result"] == {"rank": 0}
    for r in (0, 1):  # every rank sees rank 0's result; the second call reuses on both
        assert json.loads((tmp_path / f"r-{r}.json").read_text()) == {"result": {"rank": 0}, "reused": [False, True]}
    assert not (root / "tok" / ".train.lock").exists() and not (root / "tok" / "train.work").exists()


SLOW_STAGE = """
import sys, time
from pathlib import Path
from latentlab.study.cache import run_stage
def fn(work, resume):
    print("running", flush=True)
    time.sleep(1.5)
    (work / "out.txt").write_text("first")
    return {"by": "first"}
run_stage(Path(sys.argv[1]), "tok", "eval", {"k": 1}, fn)
"""


def test_a_second_process_waits_for_the_running_stage_and_reuses_it(tmp_path):
    from latentlab.study.cache import run_stage

    proc = subprocess.Popen([sys.executable, "-c", SLOW_STAGE, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "running"
    said = []
    res = run_stage(tmp_path, "tok", "eval", {"k": 1}, lambda w, r: pytest.fail("ran twice"), announce=said.append)
    assert proc.wait() == 0
    assert res.reused and res.result == {"by": "first"} and (res.path / "out.txt").read_text() == "first"
    assert any("waiting for the process running it" in s for s in said)
