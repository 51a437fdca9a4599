"""Where latentlab may write: the one rule every command that writes follows.

An output location is used only when it is

- absent (its parent folder must exist, except inside the workspace),
- an empty folder, or
- a folder latentlab itself wrote for the same kind of output, marked by a small
  `.latentlab` JSON file ({"kind": ..., "files": [...]}).

Anything else (a regular file, a folder of someone else's files, another kind of latentlab
output, an unwritable place) is a one-line LatentlabError that names the path, and nothing is
changed. Outputs replaced whole (stores, samples, analysis tables) are written to a temporary
folder and swapped into place (`output_dir`); outputs that grow in place (training runs,
studies) are claimed with `claim_dir` and never replaced. Temporaries left by a killed writer
(`.NAME.tmp-PID-*`, PID no longer running) are removed by the next writer of the same output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from latentlab.errors import LatentlabError
from latentlab.io import TMP_PATTERN, atomic_dir, os_error, save_json, tmp_name, workspace_root

MARKER = ".latentlab"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there: never judge, keep the temporary
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove `.NAME.tmp-*` entries in `folder` (any NAME when None) whose writing process has died."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = TMP_PATTERN.match(p.name)
        if not m or (name is not None and m["name"] != name) or (m["pid"] and _pid_alive(int(m["pid"]))):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _legacy(path: Path) -> tuple[str | None, list[str] | None]:
    """Kind and files of outputs written before markers existed: stores, runs, studies."""
    try:
        if (path / "manifest.json").is_file():
            m = json.loads((path / "manifest.json").read_text())
            if "format_version" in m and "shards" in m:
                return "store", ["manifest.json", "labels.npy"] + [s["file"] for s in m["shards"]]
        if (path / "config.json").is_file():
            kind = json.loads((path / "config.json").read_text()).get("kind")
            if isinstance(kind, str):
                return f"{kind} run", None
        if (path / "study.json").is_file() and (path / "run_log.json").is_file():
            return "study", None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return None, None


def output_kind(path: str | os.PathLike) -> tuple[str | None, list[str] | None]:
    """(kind, files) that latentlab recorded for folder `path`: kind None when latentlab did not write it."""
    path = Path(path)
    try:
        rec = json.loads((path / MARKER).read_text())
        return str(rec["kind"]), rec.get("files")
    except FileNotFoundError:
        return _legacy(path)
    except (OSError, ValueError, TypeError, KeyError):
        return None, None


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != MARKER and not TMP_PATTERN.match(p.name))


def _check_parent(shown: Path, path: Path, parents: bool) -> None:
    """The folder that will hold `path` exists (or may be made) and can be written to."""
    parent = path.parent
    if not parent.exists():
        up = next(p for p in parent.parents if p.exists() or p == p.parent)
        if up.exists() and not up.is_dir():
            raise LatentlabError(f"{up} is a file, not a folder; choose another --out than {shown}")
        if not parents and not _inside(parent, workspace_root()):
            raise LatentlabError(f"the folder {shown.parent} does not exist; create it first "
                                 f"(mkdir -p {shown.parent}) or choose another --out")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, shown) from None
    elif not parent.is_dir():
        raise LatentlabError(f"{parent} is a file, not a folder; choose another --out than {shown}")
    _probe(path, shown)


def _probe(path: Path, shown: Path) -> None:
    """Make and remove a temporary folder beside `path`: the only sure test of writability."""
    probe = tmp_name(path)
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise os_error(e, shown) from None


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.abspath(root)) in (path, *path.parents)


def check_output(path: str | os.PathLike, kind: str, parents: bool = False) -> bool:
    """Refuse `path` as a `kind` output unless absent, an empty folder or latentlab's own `kind` output.

    Returns True when `path` already holds a `kind` output. A missing parent folder is created only
    when `parents` (or inside the workspace); a regular file, a foreign folder, another kind of
    latentlab output or an unwritable location is a one-line LatentlabError. Nothing is changed.
    """
    shown, path = Path(path), Path(os.path.abspath(path))
    if path == path.parent:
        raise LatentlabError(f"{shown} is the root folder; give --out a folder below it")
    if path.is_symlink() and not path.is_dir():
        raise LatentlabError(f"{shown} is a broken symbolic link; remove it or choose another --out")
    if path.exists() and not path.is_dir():
        raise LatentlabError(f"{shown} is a file, not a folder; give --out a folder that does not exist yet "
                             "(or an empty one)")
    _check_parent(shown, path, parents)
    if not path.exists():
        return False
    try:
        entries = _entries(path)
    except OSError as e:
        raise os_error(e, shown) from None
    found, files = output_kind(path)
    if found is None and not entries:
        return False
    if found is None:
        listed = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise LatentlabError(f"{shown} is a folder that latentlab did not write (it holds {listed}); latentlab never "
                             "replaces files it did not write: choose a new or empty --out")
    if found != kind:
        raise LatentlabError(f"{shown} holds a latentlab {found}, not a {kind}; choose another --out")
    foreign = [e for e in entries if files is not None and e not in files]
    if foreign:
        raise LatentlabError(f"{shown} is a latentlab {kind} but also holds {', '.join(foreign[:3])}, which latentlab "
                             "did not write; move them out or choose another --out")
    return True


def check_output_file(path: str | os.PathLike, signature: str, parents: bool = False) -> None:
    """Refuse `path` as an output file unless absent or a file latentlab wrote (it holds `signature`).

    The file itself is replaced atomically by the caller; a folder, a file without the signature, a missing
    parent folder (unless `parents`) or an unwritable location is a one-line LatentlabError.
    """
    shown, path = Path(path), Path(os.path.abspath(path))
    if path.is_dir():
        raise LatentlabError(f"{shown} is a folder; give --out a file name (for example {shown / 'report.html'})")
    _check_parent(shown, path, parents)
    if path.exists() or path.is_symlink():
        try:
            with open(path, "rb") as f:
                ours = signature.encode() in f.read(1 << 20)
        except OSError as e:
            raise os_error(e, shown) from None
        if not ours:
            raise LatentlabError(f"{shown} is a file that latentlab did not write; latentlab never replaces files "
                                 "it did not write: choose a new --out")


def write_marker(folder: str | os.PathLike, kind: str, files: list[str] | None = None) -> None:
    """Mark `folder` as latentlab's `kind` output (with the names it wrote, for outputs replaced whole)."""
    save_json({"kind": kind, **({"files": files} if files is not None else {})}, Path(folder) / MARKER)


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, kind: str, parents: bool = False) -> Iterator[Path]:
    """`check_output`, then a temporary folder that replaces `path` whole when the block succeeds."""
    check_output(path, kind, parents)
    path = Path(os.path.abspath(path))
    if path in Path.cwd().parents or path == Path.cwd():
        raise LatentlabError(f"{path} holds the current folder; give --out a folder below it")
    remove_stale_temps(path.parent, path.name)
    with atomic_dir(path) as tmp:
        yield tmp
        write_marker(tmp, kind, _entries(tmp))


def claim_dir(path: str | os.PathLike, kind: str, parents: bool = False) -> bool:
    """Create (or reopen) a `kind` output that grows in place, such as a run or a study; True if it existed.

    Stale temporaries of killed writers, beside it and inside it, are removed.
    """
    existed = check_output(path, kind, parents)
    shown, path = path, Path(os.path.abspath(path))
    remove_stale_temps(path.parent, path.name)
    try:
        path.mkdir(exist_ok=True)
    except OSError as e:
        raise os_error(e, Path(shown)) from None
    _probe(path / MARKER, Path(shown))  # it grows in place: we must be able to write inside it
    remove_stale_temps(path)
    if not (path / MARKER).is_file():
        write_marker(path, kind)
    return existed
