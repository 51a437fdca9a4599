"""Dataclass configs loaded from YAML/JSON/dicts where unknown keys are errors."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from latentlab.errors import LatentlabError

C = TypeVar("C")


def load_mapping(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON file into a dict; a missing or malformed file is a LatentlabError."""
    path = Path(path)
    if not path.is_file():
        raise LatentlabError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise LatentlabError(f"config {path} is not valid YAML{where}; fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LatentlabError(f"config {path} must be a mapping of keys to values")
    return data


def from_dict(cls: type[C], data: dict | None, where: str = "config") -> C:
    """Build dataclass `cls` from `data`; unknown keys raise, nested dataclasses recurse."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LatentlabError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}; "
            f"valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        tp = hints.get(name)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{where}.{name}")
        kwargs[name] = value
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
