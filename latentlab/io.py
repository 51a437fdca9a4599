"""Atomic writes, JSON/CSV helpers, safe .npy reading and safetensors checkpoints.

Everything latentlab writes goes to a temporary name first and is renamed into place,
so a file or directory is either complete or absent, and an older version is never
lost half way. Where a user-facing output may go is decided in `latentlab.outputs`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from latentlab.errors import LatentlabError

if TYPE_CHECKING:  # torch is imported only by the functions that need it
    import torch


TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")  # what tmp_name makes


def tmp_name(path: Path) -> Path:
    """A temporary name beside `path`: .NAME.tmp-PID-RANDOM (a killed writer's leftovers are recognisable)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def os_error(e: OSError, path: Path) -> LatentlabError:
    """A one-line error for an OSError while writing `path`."""
    return LatentlabError(f"cannot write {path} ({e.strerror or type(e).__name__}); "
                          "choose an output location you can write to")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, path) from None
    tmp = tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0  # AT_FDCWD, RENAME_EXCHANGE


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename folder `src` onto `dst`; an old `dst` is swapped out in one step where possible, then removed."""
    src, dst = Path(src), Path(dst)
    try:
        if not dst.exists() or (dst.is_dir() and not any(dst.iterdir())):
            os.replace(src, dst)
        elif _exchange(src, dst):
            shutil.rmtree(src, ignore_errors=True)  # src now holds the old dst
        else:
            old = tmp_name(dst)
            os.replace(dst, old)
            os.replace(src, dst)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise os_error(e, dst) from None


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` (an old `path` is removed only then).

    A low-level helper for folders inside latentlab's own outputs; user-facing outputs go
    through `output_dir`, which first checks that `path` may be replaced.
    """
    path = Path(path)
    tmp = tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise os_error(e, path) from None
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """Replace NaN/inf floats by None so the JSON is strict."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text (NaN becomes null) for numpy/torch scalars, arrays and paths."""
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=indent)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(obj) + "\n")
    return Path(path)


def load_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON, turning a missing or corrupt file into a one-line LatentlabError."""
    path = Path(path)
    if not path.is_file():
        raise LatentlabError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LatentlabError(f"{what} {path} is corrupt ({e.msg if hasattr(e, 'msg') else e}); recreate it") from None


def save_csv(df, path: str | os.PathLike) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def save_npy(arr: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a .npy atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    return Path(path)


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def load_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """A memory-mapped numeric .npy array; anything else (a .npz, a pickle, text, objects) is a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise LatentlabError(f"{what} path {path} is a folder; give a .npy file")
    if not path.is_file():
        raise LatentlabError(f"{what} file not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise LatentlabError(f"cannot read {what} file {path} ({e.strerror or type(e).__name__}); "
                             f"check its permissions") from None
    if head.startswith(_ZIP_MAGIC) or path.suffix.lower() == ".npz":
        raise LatentlabError(f"{what} file {path} is a .npz archive; give one array as a .npy "
                             f"(np.save('{what}.npy', np.load('{path.name}')[KEY]))")
    if head != _NPY_MAGIC:
        raise LatentlabError(f"{what} file {path} is not a .npy array (no NumPy header); save the array with numpy.save")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e) or "bject" in str(e):
            raise LatentlabError(f"{what} file {path} holds Python objects, not numbers; "
                                 f"save a numeric array with numpy.save") from None
        raise LatentlabError(f"{what} file {path} is a corrupt .npy array ({e}); re-save it with numpy.save") from None
    except (OSError, EOFError) as e:
        raise LatentlabError(f"{what} file {path} is a corrupt .npy array ({e}); re-save it with numpy.save") from None
    if arr.size == 0:
        raise LatentlabError(f"{what} in {path} are empty (shape {arr.shape}); give at least one row")
    if np.iscomplexobj(arr):
        raise LatentlabError(f"{what} in {path} are complex ({arr.dtype}); store real values, e.g. the real and "
                             f"imaginary parts as separate channels")
    return arr


def file_hash(path: str | os.PathLike, n: int = 16) -> str:
    """First `n` hex digits of the SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def obj_hash(obj: Any, n: int = 16) -> str:
    """Stable hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(_clean(obj), sort_keys=True, default=_json_default).encode()).hexdigest()[:n]


def save_safetensors(state: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save a state dict as safetensors atomically (tensors made contiguous, on CPU)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path)


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Load a safetensors file; a missing or corrupt file is a one-line LatentlabError."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LatentlabError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises SafetensorError / OSError on corrupt headers
        raise LatentlabError(f"checkpoint {path} is corrupt or not safetensors ({type(e).__name__}); retrain or recopy it") from None


def load_torch_state(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)`: never unpickles arbitrary objects."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise LatentlabError(f"state file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LatentlabError(f"state file {path} is corrupt or holds non-tensor objects ({type(e).__name__}); remove it to start fresh") from None


def save_torch_state(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save atomically (only plain containers of tensors/numbers/strings, loadable with weights_only)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_weights_into(module: torch.nn.Module, path: Path) -> None:
    state = load_safetensors(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError:
        raise LatentlabError(f"checkpoint {path} does not match the model in config.json "
                             "(different architecture); retrain or point at the right run") from None


WEIGHTS = ("ema", "model")  # the two weight files of a run directory


def load_run_weights(run: str | Path, module: torch.nn.Module, which: str = "ema") -> torch.nn.Module:
    """Load `model` or `ema` weights of a run into `module` (one-line error on mismatch or corruption)."""
    if which not in WEIGHTS:
        raise LatentlabError(f"weights must be 'ema' or 'model', got {which!r}")
    path = Path(run) / f"{which}.safetensors"
    load_weights_into(module, path)
    bad = {k: int((~v.isfinite()).sum()) for k, v in module.state_dict().items() if v.is_floating_point()}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise LatentlabError(f"checkpoint {path} holds {sum(bad.values())} NaN or inf weights in {len(bad)} tensors "
                             f"(e.g. {next(iter(bad))}): the run diverged; retrain it (e.g. with a lower --lr)")
    return module


def workspace_root() -> Path:
    """$LATENTLAB_WORKSPACE or ./workspace."""
    return Path(os.environ.get("LATENTLAB_WORKSPACE", "workspace"))
