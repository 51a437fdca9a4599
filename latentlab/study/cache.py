"""Cached, restartable stages for `latentlab run`.

Each stage writes its outputs under ``STUDY_DIR/<tokenizer>/<stage>/`` together with
``stage.json`` (the hash of its config and inputs, its result and its time). A stage is
skipped when the hash is unchanged. A stage works in ``<stage>.work/`` and is renamed
into place only when it finishes, so a failed or killed run leaves no half-written stage:
the next run resumes a training stage from its last checkpoint and starts every other
interrupted stage again from an empty work directory.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from latentlab.io import obj_hash, replace_dir, save_json
from latentlab.outputs import remove_stale_temps

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
    """
    h = obj_hash(key)
    final = Path(root) / owner / name
    stage_file = final / STAGE_FILE
    if stage_file.is_file():
        try:
            rec = json.loads(stage_file.read_text())
        except json.JSONDecodeError:
            rec = {}
        if rec.get("hash") == h:
            if announce:
                announce(f"[{owner}] {name}: reused (inputs unchanged)")
            if log:
                log.add(owner, name, True, 0.0)
            return StageResult(name, final, h, rec.get("result", {}), True, rec.get("seconds", 0.0))
    work = final.with_name(name + ".work")
    stamp = work / ".stage-hash"  # only in the work directory of a resumable stage
    resume = resumable and work.is_dir() and stamp.is_file() and stamp.read_text().strip() == h
    if not resume:
        _clear(work)
        _clear(final.with_name(name + ".old"))  # left by older versions of this function
        work.mkdir(parents=True)
        if resumable:
            stamp.write_text(h + "\n")
    remove_stale_temps(final.parent)
    if announce:
        announce(f"[{owner}] {name}: {'resuming' if resume else 'running'}")
    t0 = time.perf_counter()
    result = fn(work, resume) or {}
    seconds = time.perf_counter() - t0
    stamp.unlink(missing_ok=True)
    save_json({"hash": h, "key": key, "result": result, "seconds": round(seconds, 3),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, work / STAGE_FILE)
    replace_dir(work, final)  # an older result stays whole until the new one is in place
    if log:
        log.add(owner, name, False, seconds)
    return StageResult(name, final, h, result, False, seconds)

