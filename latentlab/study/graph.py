"""A study as a graph of stages, run by an executor: `latentlab run --jobs N`, `--executor submitit`.

The graph (`stage_graph`): one job per stage, its id the stage's folder, ``OWNER/STAGE``:

  NAME/seed-R/<stage>   for each replicate R and tokenizer NAME, the stages of TOKENIZER_STAGES in
                        that order, each needing the one before it. A tokenizer with nothing to train
                        (pixels, pretrained, python, store) has one tokenizer/eval/extract, replicate
                        0's (`stages.SHARED_STAGES`), which every replicate's chain starts from.
  _study/seed-R/gmm     needs every tokenizer's extract of replicate R
  _study/umap           needs every tokenizer's extract of replicate 0
  _study/relate         needs every other stage; it publishes the study's tables

`run_one_stage` (`latentlab run CONFIG --out DIR --stage ID`, what each job runs) walks the same
stage functions as the sequential runner with a `step` that takes the stages the target needs from
the cache (a missing one is a one-line error), runs the target, and stops: nothing after it runs,
and stages it does not need are skipped. `plan` walks them the same way to find the stages that are
complete for the current config. `run_study_graph` runs the incomplete ones with a launcher of
`latentlab.study.executors`; a failed stage blocks only the stages that need it, and a rerun
starts only what is missing or failed (the stage cache skips the rest). Locally (`--jobs N`, one
process per job) a job is a run of one chain's consecutive stages (`chain_groups`: tokenizer..extract,
then probe..gfid; `--stage A --stage B ...`), since a fresh process spends seconds importing torch and
loading data; submitit keeps one job per stage, each with the resources its stage asks for.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import latentlab.study.stages as S
from latentlab.errors import LatentlabError
from latentlab.io import obj_hash, save_json
from latentlab.outputs import claim_dir
from latentlab.study.cache import STAGE_FILE, StageLog, StageResult, finished, run_stage
from latentlab.study.config import (RESUMABLE_STAGES, STUDY_KIND, STUDY_VERSION, TOKENIZER_STAGES, load_study_config,
                                    section_configs)
from latentlab.study.executors import ExecutorConfig, GraphResult, Job, LocalLauncher, SubmititLauncher, run_graph
from latentlab.study.runner import _workspace
from latentlab.tokenizers.models import TOKENIZERS
from latentlab.utils import info, is_main, world_size

RELATE = f"{S.OWNER}/relate"


class _Skip(Exception):
    """A stage the walk does not need (or, when planning, one that is not complete): leave its chain."""


class _Reached(Exception):
    """The target stage has run."""

    def __init__(self, result: StageResult):
        super().__init__(result.name)
        self.result = result


def stage_graph(cfg, entries: dict) -> dict[str, tuple[tuple[str, ...], bool]]:
    """{job id: (the ids it needs, whether it trains)}, in the order the sequential runner runs them."""
    graph: dict[str, tuple[tuple[str, ...], bool]] = {}
    extracts: list[list[str]] = []
    for r in range(cfg.seeds):
        extracts.append([])
        for name, entry in entries.items():
            trained, prev = entry.arch in TOKENIZERS, None
            for stage in TOKENIZER_STAGES:
                owner = S.replicate_dir(name, r if trained or stage not in S.SHARED_STAGES else 0)
                jid = f"{owner}/{stage}"
                graph.setdefault(jid, ((prev,) if prev else (), stage in RESUMABLE_STAGES and
                                       (trained or stage != "tokenizer")))
                prev = jid
                if stage == "extract":
                    extracts[r].append(jid)
        graph[f"{S.OWNER}/seed-{r}/gmm"] = (tuple(extracts[r]), False)
    graph[f"{S.OWNER}/umap"] = (tuple(extracts[0]), False)
    graph[RELATE] = (tuple(graph), False)
    return graph


def _needs(graph: dict, target: str) -> set[str]:
    """Every stage that `target` needs, directly or through others."""
    seen, todo = set(), list(graph[target][0])
    while todo:
        jid = todo.pop()
        if jid not in seen:
            seen.add(jid)
            todo.extend(graph[jid][0])
    return seen


def _cached(out: Path, owner: str, stage: str, key) -> StageResult | None:
    h = obj_hash(key)
    rec = finished(out, owner, stage, h)
    return None if rec is None else StageResult(stage, out / owner / stage, h, rec.get("result", {}), True,
                                                rec.get("seconds", 0.0))


def _context(config, out: Path):
    cfg, entries = load_study_config(config)
    return S.StudyContext(cfg, section_configs(cfg), out, StageLog(), entries)


def plan(ctx: S.StudyContext) -> set[str]:
    """The ids of the stages that are complete for the study's current config."""
    complete: set[str] = set()

    def step(owner, stage, key, fn):
        res = _cached(ctx.out, owner, stage, key)
        if res is None:
            raise _Skip
        complete.add(f"{owner}/{stage}")
        return res

    S.walk(ctx, step, _Skip)
    return complete


def run_one_stage(config, out, target: str) -> dict:
    """Run stage `target` of a study in this process, its upstream stages taken from the cache."""
    out = Path(out).resolve()
    if not (out / "study.json").is_file():
        raise LatentlabError(f"{out} is not a started study; --stage runs one stage of a study that "
                             "`latentlab run CONFIG --out DIR` started")
    ctx = _context(config, out)
    graph = stage_graph(ctx.cfg, ctx.entries)
    if target not in graph:
        raise LatentlabError(f"{target!r} is not a stage of this study; stages are named like "
                             f"{next(iter(graph))} or {RELATE}")
    if world_size() > 1 and not graph[target][1]:
        raise LatentlabError(f"{target} is not a training stage; run it in one process, not under torchrun")
    needs = _needs(graph, target)

    def step(owner, stage, key, fn):
        jid = f"{owner}/{stage}"
        if jid not in graph:
            raise LatentlabError(f"the study runs {jid}, which its stage graph lacks (latentlab.study.graph is out of "
                                 "date); run without --jobs/--executor")
        if jid == target:
            raise _Reached(run_stage(out, owner, stage, key, fn, ctx.log, announce=info,
                                     resumable=stage in RESUMABLE_STAGES))
        if jid not in needs:
            raise _Skip
        res = _cached(out, owner, stage, key)
        if res is None:
            raise LatentlabError(f"{target} needs {jid}, which is not complete; run the study, or --stage {jid} first")
        return res

    with _workspace(out / "workspace"):
        try:
            S.walk(ctx, step, _Skip)
        except _Reached as reached:
            res = reached.result
        else:
            raise LatentlabError(f"{target} was never reached (latentlab.study.graph is out of date); "
                                 "run without --jobs/--executor")
    if target == RELATE and is_main():
        S.publish(res, out)
    return {"stage": target, "reused": res.reused, "seconds": round(res.seconds, 1), "path": str(res.path)}


def chain_groups(graph: dict, complete: set[str]) -> list[list[str]]:
    """The incomplete stages of `graph` as groups to run one after another in one process each, in graph order.

    A group is a run of one chain's consecutive stages (one owner, each needing the one before), cut after a
    stage that a stage of another owner needs (extract: the gmm and umap stages wait only for that), so no
    parallelism is lost; study-wide stages stay alone. Relate, which needs everything, does not cut.
    """
    owner = lambda j: j.rpartition("/")[0]  # noqa: E731
    needed = {d for j, (deps, _) in graph.items() if j != RELATE for d in deps if owner(d) != owner(j)}
    groups: list[list[str]] = []
    for j, (deps, _) in graph.items():
        if j in complete:
            continue
        last = groups[-1][-1] if groups else None
        if last is not None and owner(last) == owner(j) != S.OWNER and deps == (last,) and last not in needed:
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups


def most_successors_first(jobs: list[Job]) -> list[Job]:
    """`jobs` ordered by how many jobs need them, directly or through others, most first (stable); `run_graph`
    starts ready jobs in this order, so the tokenizer trainings that everything waits for start before the
    chains' later stages (list scheduling's most-successors rule: a shorter tail with the other slots idle)."""
    graph = {j.id: (j.deps, j.distributed) for j in jobs}
    users = Counter(d for jid in graph for d in _needs(graph, jid))
    return sorted(jobs, key=lambda j: -users[j.id])


def _done(out: Path, jid: str) -> bool:
    return (out / jid / STAGE_FILE).is_file()


def _stage_seconds(out: Path, jid: str) -> float:
    """The seconds a finished stage's stage.json records (0 if unreadable)."""
    try:
        return round(float(json.loads((out / jid / STAGE_FILE).read_text()).get("seconds", 0.0)), 1)
    except (OSError, ValueError):
        return 0.0


def stage_results(res: GraphResult, members: dict[str, list[str]], out: Path) -> GraphResult:
    """`run_graph`'s result for grouped jobs, stage by stage: a failed group's stages before the failure ran,
    the first incomplete one failed (the group's log), the rest did not run. A job alone keeps its wall time;
    a group's stages take theirs from stage.json."""
    def stages(g: str) -> list[str]:
        return members.get(g, [g])

    by = GraphResult(complete=[j for g in res.complete for j in stages(g)],
                     blocked=[j for g in res.blocked for j in stages(g)])
    for g in res.ran:
        for j in stages(g):
            by.ran.append(j)
            by.seconds[j] = res.seconds.get(g, 0.0) if len(stages(g)) == 1 else _stage_seconds(out, j)
    for g, where in res.failed.items():
        rest = [j for j in stages(g) if not _done(out, j)]
        for j in stages(g):
            if j not in rest:
                by.ran.append(j)
                by.seconds[j] = _stage_seconds(out, j)
        by.failed[rest[0] if rest else stages(g)[-1]] = where
        by.blocked += rest[1:]
    return by


def _launcher(opts: ExecutorConfig, out: Path):
    if opts.kind == "local":
        return LocalLauncher(opts.jobs, out / "_jobs", opts.gpus_per_job, opts.threads_per_job)
    threads = opts.threads_per_job
    if threads is None and opts.cluster == "local":  # one machine: its threads divided among the jobs
        threads = max(1, (int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or os.cpu_count() or 1) // opts.jobs)
    return SubmititLauncher(out / "_submitit", opts, cluster=opts.cluster, max_jobs=opts.jobs, threads_per_job=threads)


def run_study_graph(config, out, opts: ExecutorConfig) -> dict:
    """Run (or resume) a study as a graph of jobs, one process (or Slurm job) per stage; returns its summary."""
    if world_size() > 1:
        raise LatentlabError("latentlab run starts its own processes; run it without torchrun (--gpus-per-job G "
                             "runs the training stages under torchrun)")
    cfg, _ = load_study_config(config)
    launcher = _launcher(opts, Path(os.path.abspath(out)))  # a bad --gpus-per-job is refused before anything is written
    claim_dir(out, STUDY_KIND)
    out = Path(out).resolve()
    save_json({**asdict(cfg), "version": STUDY_VERSION}, out / "study.json")
    if isinstance(config, dict):  # the jobs read the config from a file
        save_json(config, out / "_jobs" / "config.json")
        config = out / "_jobs" / "config.json"
    ctx = _context(config, out)
    graph = stage_graph(ctx.cfg, ctx.entries)
    command = ["-m", "latentlab", "run", str(Path(config).resolve()), "--out", str(out)]
    t0 = time.perf_counter()
    complete = plan(ctx)
    # one process per stage, or (local, one process per job) per run of a chain's stages: a stage process spends
    # seconds importing torch and loading data, which on a CPU study of small stages is much of the work
    groups = (chain_groups(graph, complete) if opts.kind == "local" and opts.gpus_per_job == 1
              else [[j] for j in graph if j not in complete]) + [[j] for j in graph if j in complete]
    members = {(f"{g[0]}..{g[-1].rpartition('/')[2]}" if len(g) > 1 else g[0]): g for g in groups}
    group_of = {j: gid for gid, g in members.items() for j in g}
    jobs = most_successors_first([
        Job(gid, command + [a for j in g for a in ("--stage", j)],
            tuple(dict.fromkeys(group_of[d] for j in g for d in graph[j][0] if group_of[d] != gid)),
            any(graph[j][1] for j in g))
        for gid, g in members.items()])
    asked = set()

    def is_complete(job: Job) -> bool:  # first from the plan; after a job ran, its stages are in place
        if job.id not in asked:
            asked.add(job.id)
            return job.id in complete
        return all(_done(out, j) for j in members.get(job.id, [job.id]))

    with _workspace(out / "workspace"):  # the jobs inherit it
        res = stage_results(run_graph(jobs, launcher, is_complete, retries=opts.retries, announce=info), members, out)
    log = [{"tokenizer": j.rpartition("/")[0], "stage": j.rpartition("/")[2], "reused": j in res.complete,
            "seconds": res.seconds.get(j, 0.0)} for j in graph if j in res.complete or j in res.ran]
    summary = {"out": str(out), "executor": opts.kind, "jobs": opts.jobs, "ran": res.ran, "reused": res.complete,
               "failed": res.failed, "blocked": res.blocked, "seconds": round(time.perf_counter() - t0, 1)}
    if res.failed:
        save_json({"log": log, **summary}, out / "run_log.json")
        failed = "; ".join(f"{j} (log: {where})" for j, where in res.failed.items())
        raise LatentlabError(f"{len(res.failed)} stage(s) failed: {failed}; {len(res.blocked)} stage(s) that need "
                             "them did not run; fix the cause and run again (complete stages are kept)")
    rec = json.loads((out / RELATE / STAGE_FILE).read_text())
    relate = StageResult("relate", out / RELATE, rec["hash"], rec.get("result", {}), True, rec.get("seconds", 0.0))
    S.publish(relate, out)
    summary.update({"runs": str(out / "runs.csv"), "summary": str(out / "summary.csv"),
                    "comparisons": str(out / "comparisons.csv"), "correlations": str(out / "correlations.csv"),
                    "primary": relate.result.get("primary"),
                    "report": str(out / "report.html") if (out / "report.html").is_file() else None,
                    "figures": sorted(str(p) for p in (out / "figures").glob("*.png"))})
    save_json({"log": log, **summary}, out / "run_log.json")
    return summary
