"""Running a study's stage graph: local processes (`--jobs N`) or Slurm jobs through submitit.

A `Job` is one stage: its id ("owner/stage"), the stages it needs, and the python arguments that
run it in a fresh process (`-m latentlab run CONFIG --out DIR --stage ID`). `run_graph` starts every
job whose dependencies are complete, at most `launcher.capacity` at once, and keeps going until
every job is done or can no longer run because something it needs failed. What a launcher does:

  LocalLauncher     `--jobs N`: N subprocesses. With GPUs, job slot k owns GPUs k*G .. k*G+G-1
                    (`CUDA_VISIBLE_DEVICES`); a distributed stage with G > 1 runs under
                    `torch.distributed.run --standalone --nproc_per_node G`. On CPU the threads
                    (OMP/MKL) are divided among the jobs. Logs: `DIR/_jobs/<owner>.<stage>.log`.
  SubmititLauncher  `--executor submitit`: each job is a submitit job (Slurm, or submitit's local
                    executor without Slurm) running `stage_job`, which starts the same command, under
                    torchrun across `nodes` x `gpus_per_node` for a distributed stage. Logs:
                    `DIR/_submitit/<job id>_*.out|err`.

Nothing here knows what a stage does: the stage cache (`latentlab.study.cache`) makes a stage
complete or absent, its lock keeps two processes off the same stage, and a stage killed half way
resumes from its checkpoint the next time it is started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from latentlab.errors import LatentlabError

@dataclass
class Job:
    """One stage to run in its own process."""

    id: str                                  # "owner/stage"
    command: list[str]                       # python arguments: ["-m", "latentlab", "run", ...]
    deps: tuple[str, ...] = ()
    distributed: bool = False                # may run on several GPUs (torchrun)


def stage_command(command: list[str], nproc: int = 1, nnodes: int = 1, node_rank: int = 0,
                  master: str | None = None, rdzv_id: str = "latentlab") -> list[str]:
    """The argv that runs `command` (python arguments), under torchrun when it spans several processes."""
    if nproc * nnodes <= 1:
        return [sys.executable, *command]
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        run.append("--standalone")
    else:
        run += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={master}", f"--rdzv_id={rdzv_id}"]
    return run + command


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap a process's CPU threads."""
    return {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "NUMBA_NUM_THREADS")}


class Launcher(Protocol):
    capacity: int

    def start(self, job: Job): ...
    def poll(self, handle) -> int | None: ...
    def where(self, handle) -> str: ...
    def stop(self, handle) -> None: ...


# ---------------------------------------------------------------- local processes

@dataclass
class _Local:
    job: Job
    proc: subprocess.Popen
    slot: int
    log: Path


class LocalLauncher:
    """Up to `jobs` stages at once, each its own subprocess, pinned to its GPUs or its share of the CPU threads."""

    def __init__(self, jobs: int, log_dir: Path, gpus_per_job: int = 1, threads_per_job: int | None = None,
                 gpus: list[str] | None = None):
        if jobs < 1 or gpus_per_job < 1:
            raise LatentlabError("--jobs and --gpus-per-job must be >= 1")
        gpus = visible_gpus() if gpus is None else gpus
        if gpus and jobs * gpus_per_job > len(gpus):
            raise LatentlabError(f"--jobs {jobs} x --gpus-per-job {gpus_per_job} needs {jobs * gpus_per_job} GPUs but "
                                 f"{len(gpus)} are visible; lower --jobs or --gpus-per-job")
        if not gpus and gpus_per_job > 1:
            raise LatentlabError(f"--gpus-per-job {gpus_per_job} but no GPU is visible; drop it on a CPU machine")
        self.capacity = jobs
        self.slots = [gpus[k * gpus_per_job:(k + 1) * gpus_per_job] for k in range(jobs)] if gpus else [[]] * jobs
        self.gpus = bool(gpus)
        total = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or os.cpu_count() or 1
        self.threads = threads_per_job or max(1, total // jobs)
        self.log_dir = Path(log_dir)
        self.busy: set[int] = set()

    def env_for(self, slot: int) -> dict[str, str]:
        """The environment of a job in `slot`: its GPUs, its threads."""
        env = {**os.environ, **thread_env(self.threads)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.slots[slot])
        return env

    def start(self, job: Job) -> _Local:
        slot = min(set(range(self.capacity)) - self.busy)
        self.busy.add(slot)
        nproc = len(self.slots[slot]) if job.distributed else 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / (job.id.replace("/", ".") + ".log")
        with open(log, "ab") as f:
            proc = subprocess.Popen(stage_command(job.command, nproc), env=self.env_for(slot), stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return _Local(job, proc, slot, log)

    def poll(self, handle: _Local) -> int | None:
        rc = handle.proc.poll()
        if rc is not None:
            self.busy.discard(handle.slot)
        return rc

    def where(self, handle: _Local) -> str:
        return str(handle.log)

    def stop(self, handle: _Local) -> None:
        if handle.proc.poll() is None:
            os.killpg(handle.proc.pid, 15)
            handle.proc.wait()
        self.busy.discard(handle.slot)


# ---------------------------------------------------------------- submitit (Slurm, or its local executor)

def stage_job(command: list[str], nproc: int = 1, nnodes: int = 1, env: dict | None = None) -> int:
    """What a submitit job runs: `command` in a subprocess, under torchrun when it spans GPUs or nodes."""
    node, master, rdzv = 0, None, "latentlab"
    if nnodes > 1:
        import submitit

        je = submitit.JobEnvironment()
        port = 29500 + zlib.crc32(str(je.job_id).encode()) % 2000  # one port per job, shared by its nodes
        node, master, rdzv = je.node, f"{je.hostnames[0]}:{port}", str(je.job_id)
    argv = stage_command(command, nproc, nnodes, node, master, rdzv)
    rc = subprocess.run(argv, env={**os.environ, **(env or {})}).returncode
    if rc != 0:
        raise RuntimeError(f"stage command exited with code {rc}: {' '.join(argv)}")
    return rc


EXECUTORS = ("local", "submitit")


@dataclass
class ExecutorConfig:
    """How `latentlab run` runs its stages: the study config's `executor:` section, overridden by the command line."""

    kind: str = "local"                # local (--jobs N processes) | submitit (Slurm, or its local executor)
    jobs: int = 1                      # stages at once (local); at most this many queued jobs (submitit)
    gpus_per_job: int = 1              # GPUs of a local job slot; a training stage with more runs under torchrun
    threads_per_job: int | None = None  # CPU threads of each job (default: the machine's, divided by jobs)
    retries: int = 0                   # restarts of a failed stage in one run (it resumes from its checkpoint)
    cluster: str | None = None         # submitit: slurm | local | None (Slurm when sbatch exists)
    partition: str | None = None       # Slurm, for every job
    gpus_per_node: int = 0             # Slurm: GPUs of a training stage's node (other stages get at most one)
    nodes: int = 1                     # Slurm: nodes of a training stage
    timeout_min: int = 24 * 60
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    additional_parameters: dict = field(default_factory=dict)   # any other sbatch option, e.g. {mail-type: END}
    setup: list = field(default_factory=list)                   # shell lines run before each job (module load ...)

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise LatentlabError(f"unknown executor {self.kind!r}; use {' or '.join(EXECUTORS)}")
        for name in ("jobs", "gpus_per_job", "nodes", "timeout_min"):
            if int(getattr(self, name)) < 1:
                raise LatentlabError(f"executor.{name} must be >= 1")
        if self.retries < 0 or self.gpus_per_node < 0 or (self.threads_per_job is not None and self.threads_per_job < 1):
            raise LatentlabError("executor.retries and gpus_per_node must be >= 0, threads_per_job >= 1")

    def parameters(self, distributed: bool) -> dict:
        """submitit AutoExecutor parameters for one job (a distributed stage gets every GPU and node)."""
        gpus = self.gpus_per_node if distributed else min(1, self.gpus_per_node)
        p = {"timeout_min": int(self.timeout_min), "gpus_per_node": gpus, "nodes": self.nodes if distributed else 1,
             "tasks_per_node": 1}
        if self.cpus_per_task:
            p["cpus_per_task"] = int(self.cpus_per_task)
        if self.mem_gb:
            p["mem_gb"] = self.mem_gb
        for k in ("partition", "account", "qos", "constraint", "exclude"):
            if getattr(self, k):
                p[f"slurm_{k}"] = getattr(self, k)
        if self.additional_parameters:
            p["slurm_additional_parameters"] = dict(self.additional_parameters)
        if self.setup:
            p["slurm_setup"] = list(self.setup)
        return p


class SubmititLauncher:
    """Each job a submitit job: on Slurm when `sbatch` exists (or cluster="slurm"), else submitit's local executor."""

    def __init__(self, folder: Path, options: ExecutorConfig, cluster: str | None = None, max_jobs: int = 256,
                 threads_per_job: int | None = None):
        try:
            import submitit
        except ImportError:
            raise LatentlabError("--executor submitit needs submitit: pip install 'latentlab[slurm]'") from None
        if cluster not in (None, "slurm", "local"):
            raise LatentlabError(f"unknown submitit cluster {cluster!r}; use slurm or local")
        self.folder = Path(folder)
        self.executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=cluster)
        self.cluster = self.executor.cluster
        if self.cluster == "local" and options.nodes > 1:
            raise LatentlabError("submitit's local executor runs on one node; set executor.nodes to 1")
        self.options, self.capacity = options, max_jobs
        self.env = thread_env(threads_per_job) if threads_per_job else {}

    def start(self, job: Job):
        params = self.options.parameters(job.distributed)
        if self.cluster == "local":  # the local executor knows only the generic keys
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        self.executor.update_parameters(name=job.id.replace("/", "."), **params)
        nproc = params["gpus_per_node"] if job.distributed else 1
        return self.executor.submit(stage_job, job.command, max(1, nproc), params["nodes"], self.env)

    def poll(self, handle) -> int | None:
        if not handle.done():
            return None
        try:
            handle.result()
        except Exception:  # the job failed: its logs say why
            return 1
        return 0

    def where(self, handle) -> str:
        return f"{handle.paths.stdout} (job {handle.job_id})"

    def stop(self, handle) -> None:
        handle.cancel(check=False)


# ---------------------------------------------------------------- the scheduling loop

@dataclass
class GraphResult:
    """What happened to each job: ran, already complete, failed (with its log), or blocked by a failure."""

    ran: list[str] = field(default_factory=list)
    complete: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def run_graph(jobs: list[Job], launcher: Launcher, is_complete: Callable[[Job], bool], retries: int = 0,
              poll: float = 0.5, announce: Callable[[str], None] | None = None) -> GraphResult:
    """Run every job that is not complete, each once its dependencies are; a failure blocks only what needs it."""
    ids = {j.id for j in jobs}
    unknown = sorted({d for j in jobs for d in j.deps} - ids)
    if unknown:
        raise LatentlabError(f"stage graph: {unknown[0]} is needed but not part of the study")
    res = GraphResult()
    pending = {}
    for j in jobs:
        (res.complete.append(j.id) if is_complete(j) else pending.__setitem__(j.id, j))
    done, running, tries = set(res.complete), {}, {j: 0 for j in pending}
    say = announce or (lambda s: None)
    try:
        while pending or running:
            for jid, job in list(pending.items()):
                if any(d in res.failed or d in res.blocked for d in job.deps):
                    res.blocked.append(pending.pop(jid).id)
                elif len(running) < launcher.capacity and all(d in done for d in job.deps):
                    running[jid] = (launcher.start(pending.pop(jid)), time.perf_counter())
                    tries[jid] += 1
                    say(f"[{jid}] started")
            for jid, (handle, t0) in list(running.items()):
                rc = launcher.poll(handle)
                if rc is None:
                    continue
                del running[jid]
                job = next(j for j in jobs if j.id == jid)
                if rc == 0 and is_complete(job):
                    done.add(jid)
                    res.ran.append(jid)
                    res.seconds[jid] = round(time.perf_counter() - t0, 1)
                    say(f"[{jid}] done in {res.seconds[jid]:.0f} s")
                elif tries[jid] <= retries:
                    say(f"[{jid}] failed (exit {rc}); retrying, it resumes from its last checkpoint")
                    pending[jid] = job
                else:
                    res.failed[jid] = launcher.where(handle)
                    say(f"[{jid}] failed (exit {rc}); log: {res.failed[jid]}")
            if running or pending:
                if not running and not any(all(d in done for d in pending[j].deps) for j in pending):
                    res.blocked += [j for j in pending if j not in res.blocked]  # nothing can start any more
                    pending.clear()
                time.sleep(poll)
    except BaseException:
        for handle, _ in running.values():
            launcher.stop(handle)
        raise
    return res
