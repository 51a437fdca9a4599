"""Seeds, devices, progress bars and torch.distributed helpers shared by every module."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
import zlib
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from latentlab.errors import LatentlabError

T = TypeVar("T")


def get_device(spec: str | torch.device | None = None) -> torch.device:
    """Resolve 'auto' / None to CUDA when available, else CPU; validate explicit names."""
    if isinstance(spec, torch.device):
        return spec
    if spec in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise LatentlabError(f"unknown device {spec!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LatentlabError(f"device {spec!r} requested but CUDA is not available; use --device cpu")
    return dev


# ---------------------------------------------------------------- distributed

def dist_ready() -> bool:
    """True when torch.distributed is initialised (for example under torchrun)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if dist_ready() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if dist_ready() else 1


def is_main() -> bool:
    return rank() == 0


def rank_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous rows [lo, hi) of `rank` out of `world_size` over n rows: the one rank split.

    Parts differ in size by at most one row, and no rank is empty while n >= world_size.
    """
    return n * rank // world_size, n * (rank + 1) // world_size


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` in place over ranks (no-op outside torch.distributed). float64 is kept as is."""
    if dist_ready():
        torch.distributed.all_reduce(t)
    return t


def init_distributed_from_env() -> bool:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1). Returns True if initialised."""
    if dist_ready():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


# ---------------------------------------------------------------- progress

def progress_enabled() -> bool:
    """Progress bars go to stderr on rank 0 unless LATENTLAB_PROGRESS=0."""
    return is_main() and os.environ.get("LATENTLAB_PROGRESS", "1") != "0"


class Progress(tqdm):
    """A tqdm bar that shows it is alive before and between steps.

    A heartbeat thread redraws the bar every `heartbeat` seconds (so the elapsed time keeps moving while
    a long first step runs), `status(item)` names the item being worked on in the postfix, and the count
    is kept current at every step (so a postfix refresh never shows a stale 0/N).
    """

    def __init__(self, *args, status: Callable[[Any], str] | None = None, heartbeat: float | None = None, **kw):
        self._status = status
        self._stop = threading.Event()
        super().__init__(*args, **kw)
        if not self.disable and heartbeat:
            threading.Thread(target=_beat, args=(weakref.ref(self), self._stop, heartbeat), daemon=True).start()

    def __iter__(self):
        if self.disable:
            yield from self.iterable
            return
        try:
            for item in self.iterable:
                if self._status is not None:
                    self.set_postfix_str(self._status(item))
                yield item
                self.update(1)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the heartbeat, then close the bar."""
        self._stop.set()
        super().close()


def _beat(ref: weakref.ref, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        bar = ref()
        if bar is None or bar.disable:
            return
        bar.refresh()
        del bar


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None,
             leave: bool = False, status: Callable[[T], str] | None = None, heartbeat: float | None = None,
             **kw) -> Progress:
    """A `Progress` bar on stderr (disabled off rank 0 or with LATENTLAB_PROGRESS=0).

    `status(item)` is shown while an item is worked on; the bar is redrawn every `heartbeat` seconds
    (default 1 s on a terminal, 30 s in a log file, where tqdm also writes a line at most every 30 s).
    """
    tty = sys.stderr.isatty()
    if not tty:  # a log file, not a terminal: a line every 30 s, not every 0.1 s
        kw.setdefault("mininterval", 30.0)
    return Progress(iterable, desc=desc, total=total, leave=leave, file=sys.stderr, disable=not progress_enabled(),
                    dynamic_ncols=True, status=status, heartbeat=heartbeat or (1.0 if tty else 30.0), **kw)


def warn(msg: str) -> None:
    """A one-line warning on stderr (rank 0 only)."""
    if is_main():
        print(f"warning: {msg}", file=sys.stderr)


def info(msg: str) -> None:
    """A one-line status message on stderr (rank 0 only)."""
    if is_main():
        print(msg, file=sys.stderr)


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Draws from torch's global CPU generator inside the block start from `seed`; the caller's state comes back after.

    For what draws from the global generator without taking a `torch.Generator` (module
    initialisation): `with torch_seeded(seed): model = Model(cfg)`. No global state leaks.
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield


def derive_seed(*parts) -> int:
    """The one seed derivation: a 32-bit seed from any parts (e.g. study seed, replicate, tokenizer, stage)."""
    return int(np.random.SeedSequence([zlib.crc32(str(p).encode()) for p in parts]).generate_state(1)[0])
