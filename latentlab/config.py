"""Dataclass configs loaded from YAML/JSON/dicts where unknown keys are errors; `TrainConfig`, `ExtractConfig`.

Torch-free, like every `config.py` of the subpackages: the CLI reads its defaults from them
without importing torch.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from latentlab.errors import LatentlabError

C = TypeVar("C")


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and reads `1e-4` as a float (YAML 1.2), not a string."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # unhashable keys: the base class gives its own error
            if key in seen:
                raise LatentlabError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                     f"(first at line {seen[key] + 1}); keep one of them")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789."))


def load_mapping(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON file into a dict; a missing or malformed file, or a duplicate key, is a LatentlabError."""
    path = Path(path)
    if not path.is_file():
        raise LatentlabError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=StrictLoader)
    except LatentlabError as e:
        raise LatentlabError(f"config {path}: {e}") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise LatentlabError(f"config {path} is not valid YAML{where}; fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LatentlabError(f"config {path} must be a mapping of keys to values")
    return data


def _describe(tp: Any) -> str:
    """A type hint in words: 'an integer', 'a list of integers', 'a mapping', ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        if origin is tuple and len(args) >= 1 and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {_describe(args[0]).split(' ', 1)[1]}s"
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s" if args else "a list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against type hint `tp` (ints become floats, lists tuples where asked); _Mismatch if it fails."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        items = [_coerce(v, args[0], where) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _Mismatch
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise _Mismatch
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch
        return value
    return value  # other hints (paths, arrays, Any) are not checked here


def check_fields(cls: type, data: dict, where: str = "config") -> dict:
    """`data` with unknown keys refused and every value checked against `cls`'s field type hints."""
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise LatentlabError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}; "
            f"valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in data.items():
        try:
            out[name] = _coerce(value, hints[name], f"{where}.{name}")
        except _Mismatch:
            raise LatentlabError(f"{where}: {name} must be {_describe(hints[name])}, got {value!r}") from None
    return out


def from_dict(cls: type[C], data: dict | None, where: str = "config") -> C:
    """Build dataclass `cls` from `data`; unknown keys and values of the wrong type raise, nested dataclasses recurse."""
    if data is not None and not isinstance(data, dict):
        raise LatentlabError(f"{where} must be a mapping of keys to values, got {data!r}")
    kwargs = check_fields(cls, dict(data or {}), where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise LatentlabError(f"invalid {where}: {e}") from None


def to_dict(cfg: Any) -> dict:
    """Plain dict of a dataclass config (for checkpoints and hashes)."""
    return dataclasses.asdict(cfg)


def merge(cfg: C, overrides: dict | None, where: str = "config") -> C:
    """A copy of dataclass `cfg` with `overrides` applied (unknown keys raise)."""
    base = to_dict(cfg)
    for k, v in (overrides or {}).items():
        if k in base and isinstance(base[k], dict) and isinstance(v, dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    unknown = sorted(set(overrides or {}) - set(to_dict(cfg)))
    if unknown:
        raise LatentlabError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}; "
                             f"valid keys: {', '.join(to_dict(cfg))}")
    return from_dict(type(cfg), base, where)


SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
UNTIL = ("steps", "plateau")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings of one training run."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999          # the EMA decay after its warm-up (the warm-up's cap)
    ema_warmup: bool = True           # decay_k = 1 - (1 + k)^-ema_power, capped (diffusers' EMAModel warm-up)
    ema_power: float = 2 / 3
    ema_half_life: float | None = 0.1  # cap the decay so the EMA's half-life is <= this fraction of `steps`
    until: str = "steps"              # "steps": train `steps`; "plateau": stop early when the task's monitor stalls
    plateau_evals: int = 3            # plateau: the last N evaluations ...
    plateau_tol: float = 0.01         # ... improved the best before them by less than this fraction
    log_every: int = 50
    eval_every: int = 500
    ckpt_every: int = 1000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)  # YAML gives lists
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must lie in [0, 1)")
        if self.ema_power <= 0:
            raise ValueError("ema_power must be > 0")
        if self.ema_half_life is not None and not 0 < self.ema_half_life <= 1:
            raise ValueError("ema_half_life must lie in (0, 1] (a fraction of steps), or be null for no cap")
        if self.until not in UNTIL:
            raise ValueError(f"until must be one of {UNTIL}, got {self.until!r}")
        if self.plateau_evals < 1 or self.plateau_tol < 0:
            raise ValueError("plateau_evals must be >= 1 and plateau_tol >= 0")


def train_config(defaults: "TrainConfig | dict", overrides: dict | None, where: str = "train config") -> "TrainConfig":
    """A task's default TrainConfig (or a dict of its fields) with the user's overrides; a user-set
    `ema_decay` is used as given.

    The half-life cap (`ema_half_life`) guards the *default* decay of short runs; a decay the
    user chose is not capped unless they also set `ema_half_life`.
    """
    overrides = dict(overrides or {})
    if "ema_decay" in overrides and "ema_half_life" not in overrides:
        overrides["ema_half_life"] = None
    if isinstance(defaults, dict):
        return from_dict(TrainConfig, {**defaults, **overrides}, where)
    return merge(defaults, overrides, where)


@dataclass
class ExtractConfig:
    """The defaults of `extract.extract` (encoding one dataset split into a LatentStore)."""

    split: str = "train"
    batch_size: int = 256
    weights: str = "ema"
    device: str = "auto"
