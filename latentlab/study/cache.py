"""Cached, restartable stages for `latentlab run`.

Each stage writes its outputs under ``STUDY_DIR/<tokenizer>/<stage>/`` together with
``stage.json`` (the hash of its config and inputs, its result and its time). A stage is
skipped when the hash is unchanged. A stage works in ``<stage>.work/`` and is renamed
into place only when it finishes, so a failed or killed run leaves no half-written stage:
the next run resumes a training stage from its last checkpoint and starts every other
interrupted stage again from an empty work directory. A lock file per stage keeps two
processes (local jobs, Slurm jobs, or two `latentlab run`s) off the same stage.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from latentlab.io import obj_hash, replace_dir, save_json
from latentlab.outputs import remove_stale_temps
from latentlab.study.lock import StageLock
from latentlab.utils import is_main, world_size

STAGE_FILE = "stage.json"


@dataclass
class StageResult:
    """What a finished stage produced: its directory, hash, result dict and whether it was reused."""

    name: str
    path: Path
    hash: str
    result: dict
    reused: bool
    seconds: float

    def file(self, rel: str) -> Path:
        """A path inside the stage directory."""
        return self.path / rel


@dataclass
class StageLog:
    """Which stages ran and which were reused (for the study log and tests)."""

    entries: list[dict] = field(default_factory=list)

    def add(self, owner: str, stage: str, reused: bool, seconds: float) -> None:
        self.entries.append({"tokenizer": owner, "stage": stage, "reused": reused, "seconds": round(seconds, 3)})

    def reused(self) -> list[str]:
        return [f"{e['tokenizer']}/{e['stage']}" for e in self.entries if e["reused"]]

    def ran(self) -> list[str]:
        return [f"{e['tokenizer']}/{e['stage']}" for e in self.entries if not e["reused"]]


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def finished(root: Path, owner: str, name: str, h: str) -> dict | None:
    """The stage.json of ``root/owner/name`` when it holds a finished result for hash `h`, else None."""
    stage_file = Path(root) / owner / name / STAGE_FILE
    if not stage_file.is_file():
        return None
    try:
        rec = json.loads(stage_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if rec.get("hash") == h else None


def _share(obj):
    """Rank 0's `obj` on every rank (the identity in a single process)."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def _prepare(work: Path, h: str, resumable: bool) -> bool:
    """Make the work directory ready; True when an interrupted attempt with the same key is resumed."""
    stamp = work / ".stage-hash"  # only in the work directory of a resumable stage
    resume = resumable and work.is_dir() and stamp.is_file() and stamp.read_text().strip() == h
    if not resume:
        _clear(work)
        _clear(work.with_name(work.name.removesuffix(".work") + ".old"))  # left by older versions
        work.mkdir(parents=True)
        if resumable:
            stamp.write_text(h + "\n")
    remove_stale_temps(work.parent)
    return resume


def run_stage(root: Path, owner: str, name: str, key: Any,
              fn: Callable[[Path, bool], dict], log: StageLog | None = None,
              announce: Callable[[str], None] | None = None, resumable: bool = False) -> StageResult:
    """Run `fn(work_dir, resume) -> result` unless ``root/owner/name`` already holds a result for `key`.

    `key` is any JSON-able description of the stage's config and inputs (include the hashes
    of upstream stages). `fn` writes its outputs into `work_dir`; paths in its result should
    be relative to the stage directory. A `resumable` stage (training) gets `resume=True` when
    an interrupted attempt with the same key left its work directory behind; every other
    stage, and a resumable one whose leftovers belong to another key, starts from an empty
    work directory, whatever a failed or killed attempt left there.

    Two processes never run the same stage at once: the stage's lock file
    (``root/owner/.<name>.lock``, `latentlab.study.lock`) is held while it runs, and a process
    that finds it held waits, then reuses the finished result. Under torchrun every rank runs
    `fn` in the same work directory; rank 0 alone locks, prepares and publishes the stage.
    """
    h = obj_hash(key)
    final = Path(root) / owner / name
    say = announce or (lambda msg: None)
    rec = finished(root, owner, name, h) if is_main() else None
    lock = StageLock(final.with_name(f".{name}.lock")) if is_main() and rec is None else None
    try:
        if lock is not None:
            lock.acquire(on_wait=lambda who: say(f"[{owner}] {name}: waiting for the process running it "
                                                 f"({(who or {}).get('host', '?')}, pid {(who or {}).get('pid', '?')})"))
            rec = finished(root, owner, name, h)  # it may have finished while we waited
        rec = _share(rec)
        if rec is not None:
            say(f"[{owner}] {name}: reused (inputs unchanged)")
            if log:
                log.add(owner, name, True, 0.0)
            return StageResult(name, final, h, rec.get("result", {}), True, rec.get("seconds", 0.0))
        work = final.with_name(name + ".work")
        resume = _share(_prepare(work, h, resumable) if is_main() else None)
        say(f"[{owner}] {name}: {'resuming' if resume else 'running'}")
        t0 = time.perf_counter()
        result = fn(work, resume) or {}
        seconds = time.perf_counter() - t0
        _barrier()
        if is_main():
            (work / ".stage-hash").unlink(missing_ok=True)
            save_json({"hash": h, "key": key, "result": result, "seconds": round(seconds, 3),
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, work / STAGE_FILE)
            replace_dir(work, final)  # an older result stays whole until the new one is in place
        _barrier()
    finally:
        if lock is not None:
            lock.release()
    if log:
        log.add(owner, name, False, seconds)
    return StageResult(name, final, h, _share(result), False, seconds)
