"""One process per stage: a lock file that goes stale when its process has died.

`StageLock(path)` creates `path` exclusively (O_CREAT | O_EXCL) and writes who holds it (host,
pid, a random token, the time). While held, a daemon thread touches the file every `heartbeat`
seconds. Another process finds the lock stale when

  - it is on the same host and the holder's pid is no longer alive, or
  - the file has not been touched for `stale_after` seconds (a holder on another node that died,
    as under Slurm on a shared filesystem),

and then breaks it. Breaking is serialised by a second short-lived lock (`path` + ".break") and
re-checks the holder's token, so two processes that both find the same stale lock never both win.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from latentlab.errors import LatentlabError

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(path: Path) -> dict | None:
    """The holder record of a lock file, or None when it is absent or unreadable (being written)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_stale(path: Path, holder: dict | None, stale_after: float = STALE_AFTER_S) -> bool:
    """True when the lock's process has died (same host) or its heartbeat is older than `stale_after`."""
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return False
    if holder and holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
        return True
    return age > stale_after


def _create(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


class StageLock:
    """An exclusive, self-healing lock file (see the module docstring); a context manager."""

    def __init__(self, path: str | os.PathLike, heartbeat: float = HEARTBEAT_S, stale_after: float = STALE_AFTER_S,
                 poll: float = 1.0):
        if stale_after <= heartbeat:
            raise LatentlabError("the lock's stale_after must exceed its heartbeat interval")
        self.path = Path(path)
        self.heartbeat, self.stale_after, self.poll = heartbeat, stale_after, poll
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def _break_if_stale(self) -> None:
        breaker = self.path.with_name(self.path.name + ".break")
        if not _create(breaker, self._record()):
            if is_stale(breaker, read_holder(breaker), 60.0):  # a breaker that died mid-way
                breaker.unlink(missing_ok=True)
            return
        try:
            holder = read_holder(self.path)
            if is_stale(self.path, holder, self.stale_after):
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def try_acquire(self) -> bool:
        """Take the lock if it is free or stale; False when a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            if _create(self.path, self._record()):
                self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lock {self.path.name}")
                self._thread.start()
                return True
            self._break_if_stale()
        return False

    def acquire(self, on_wait=None) -> None:
        """Wait until the lock is ours, polling (`on_wait(holder)` is called once when we have to wait)."""
        waited = False
        while not self.try_acquire():
            if not waited and on_wait is not None:
                on_wait(read_holder(self.path))
            waited = True
            time.sleep(self.poll)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # broken by someone who thought us dead: nothing to refresh
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = read_holder(self.path)
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StageLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
