"""Tokenizers from your own code: `python:MODULE:CALLABLE[:ARG=VALUE,...]` and the `latentlab.tokenizers` entry points.

MODULE is a module name (`import MODULE` must work: installed, or on PYTHONPATH) or the path of a
`.py` file. CALLABLE is called with the keyword arguments ARG=VALUE (each VALUE read as YAML: numbers,
booleans, strings, [lists]) and returns an object with

  encode(images) -> latents   images (B, C, H, W) in [-1, 1]; latents a tensor (B, T, C) or
                              (B, C, H, W), or an object with .mode() (and optionally .sample(generator))
  decode(latents) -> images   optional; (B, C, H, W) in [-1, 1]. Without it reconstruction and gFD
                              are skipped.

and optionally the attributes `image_size` and `channels` (the images it expects; default: the
dataset's). A package registers a factory under the entry-point group `latentlab.tokenizers`
(`name = "package.module:callable"`); it is then `python:NAME[:ARG=VALUE,...]`.

Every plug-in is described without calling its factory (`describe_plugin`): module, callable,
kwargs, the SHA-256 of the module file and of every kwarg that names an existing file. That
description is the store manifest's provenance and its hash the tokenizer's checkpoint hash, so a
cached extraction is redone when the module or a checkpoint it names changes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from latentlab.errors import LatentlabError
from latentlab.io import file_hash, obj_hash
from latentlab.tokenizers.losses import DeterministicPosterior

PREFIX = "python:"
GROUP = "latentlab.tokenizers"
_ARG = re.compile(r"[A-Za-z_]\w*=")


# ---------------------------------------------------------------- spec strings

def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def parse_args(text: str, spec: str) -> dict[str, Any]:
    """'a=1,b=x,c=[1, 2]' -> {'a': 1, 'b': 'x', 'c': [1, 2]} (values read as YAML)."""
    out: dict[str, Any] = {}
    for item in _split_top(text):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.isidentifier():
            raise LatentlabError(f"bad argument {item!r} in {spec!r}; write ARG=VALUE,ARG2=VALUE2")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise LatentlabError(f"cannot read the value of {key} in {spec!r}; quote it") from None
    return out


def format_args(kwargs: dict[str, Any]) -> str:
    """The inverse of `parse_args`: plain strings stay bare, everything else is written as JSON."""
    items = []
    for k, v in kwargs.items():
        bare = isinstance(v, str) and v and "," not in v and yaml.safe_load(v) == v
        items.append(f"{k}={v if bare else json.dumps(v)}")
    return ",".join(items)


def split_spec_args(rest: str) -> tuple[str, str]:
    """'PATH:a=1,b=2' -> ('PATH', 'a=1,b=2'): the arguments start at the first ':NAME='."""
    m = re.search(r":(?=[A-Za-z_]\w*=)", rest)
    return (rest[:m.start()], rest[m.end():]) if m else (rest, "")


@dataclass(frozen=True)
class PluginSpec:
    """A parsed `python:` spec: the factory (module and callable), its kwargs, and the entry point it came from."""

    module: str
    callable: str
    kwargs: dict = field(default_factory=dict)
    entry_point: str | None = None
    distribution: str | None = None

    @property
    def spec(self) -> str:
        """The canonical spec string (what stores and SiT runs record)."""
        target = self.entry_point or f"{self.module}:{self.callable}"
        args = format_args(self.kwargs)
        return f"{PREFIX}{target}" + (f":{args}" if args else "")

    @property
    def label(self) -> str:
        """The default tokenizer name: the entry point's or the callable's."""
        return self.entry_point or self.callable


def is_plugin(spec: str | Path) -> bool:
    """True for a `python:` spec."""
    return str(spec).startswith(PREFIX)


def parse_plugin(spec: str) -> PluginSpec:
    """Parse `python:MODULE:CALLABLE[:ARGS]` or `python:NAME[:ARGS]` (NAME a registered entry point)."""
    rest = str(spec)[len(PREFIX):]
    parts = rest.split(":")
    if len(parts) >= 2 and parts[1] and not _ARG.match(parts[1]):
        return PluginSpec(parts[0], parts[1], parse_args(":".join(parts[2:]), spec))
    return plugin_from_factory(parts[0], parse_args(":".join(parts[1:]), spec))


def plugin_from_factory(factory: str, kwargs: dict | None = None) -> PluginSpec:
    """A PluginSpec from a study config's `factory` (MODULE:CALLABLE, or a registered name) and `kwargs`."""
    kwargs = dict(kwargs or {})
    if ":" in factory:
        module, _, fn = factory.rpartition(":")
        if not module or not fn.isidentifier():
            raise LatentlabError(f"factory {factory!r} must be MODULE:CALLABLE (or a registered tokenizer name)")
        return PluginSpec(module, fn, kwargs)
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}
    if factory not in eps:
        known = ", ".join(sorted(eps)) or "none are installed"
        raise LatentlabError(f"no tokenizer {factory!r} is registered under the entry-point group {GROUP} "
                             f"(registered: {known}); write python:MODULE:CALLABLE instead")
    ep = eps[factory]
    dist = f"{ep.dist.name}=={ep.dist.version}" if getattr(ep, "dist", None) else None
    return PluginSpec(ep.module, ep.attr, kwargs, entry_point=factory, distribution=dist)


def registered_tokenizers() -> list[dict]:
    """The tokenizers packages register under the `latentlab.tokenizers` entry-point group."""
    out = []
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        out.append({"name": ep.name, "factory": ep.value, "spec": f"{PREFIX}{ep.name}",
                    "distribution": f"{dist.name}=={dist.version}" if dist else None})
    return out


# ---------------------------------------------------------------- loading

def _import(module: str):
    """Import a module by name, or execute a .py file as a module."""
    if module.endswith(".py"):
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise LatentlabError(f"tokenizer module file not found: {module}")
        stem = re.sub(r"\W", "_", path.stem)
        name = f"latentlab_plugin_{stem}_{obj_hash([str(path), file_hash(path)], 8)}"  # an edited file re-executes
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException as e:
            del sys.modules[name]
            raise LatentlabError(f"importing {module} failed: {type(e).__name__}: {e}") from None
        return mod
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.split(".")[0] != e.name.split(".")[0]:
            raise LatentlabError(f"tokenizer module {module} needs {e.name}, which is not installed") from None
        raise LatentlabError(f"cannot import tokenizer module {module!r}; install it, add its folder to "
                             "PYTHONPATH, or give the path of its .py file") from None
    except Exception as e:
        raise LatentlabError(f"importing {module} failed: {type(e).__name__}: {e}") from None


def _factory(ps: PluginSpec):
    mod = _import(ps.module)
    fn = getattr(mod, ps.callable, None)
    if not callable(fn):
        raise LatentlabError(f"module {ps.module} has no callable {ps.callable!r}; check the spec")
    return mod, fn


def describe_plugin(spec: str | PluginSpec) -> dict:
    """Provenance of a plug-in without calling its factory: module, callable, kwargs, file hashes and their hash."""
    ps = parse_plugin(spec) if isinstance(spec, str) else spec
    mod, _ = _factory(ps)
    path = getattr(mod, "__file__", None)
    files = {k: file_hash(v) for k, v in ps.kwargs.items() if isinstance(v, str) and Path(v).expanduser().is_file()}
    prov = {"external": "python", "spec": ps.spec, "module": ps.module, "callable": ps.callable, "kwargs": ps.kwargs,
            "module_file": str(Path(path).resolve()) if path else None,
            "module_hash": file_hash(path) if path and Path(path).is_file() else None,
            "kwarg_file_hashes": files, "entry_point": ps.entry_point, "distribution": ps.distribution}
    return {**prov, "checkpoint_hash": obj_hash({k: v for k, v in prov.items() if k != "module_file"})}


def load_plugin(spec: str | PluginSpec) -> tuple[PluginTokenizer, dict]:
    """Call a plug-in's factory: (the tokenizer interface around its object, the description extract records)."""
    ps = parse_plugin(spec) if isinstance(spec, str) else spec
    _, fn = _factory(ps)
    prov = describe_plugin(ps)
    try:
        obj = fn(**ps.kwargs)
    except TypeError as e:
        raise LatentlabError(f"{ps.module}:{ps.callable} rejected its arguments {ps.kwargs}: {e}") from None
    except LatentlabError:
        raise
    except Exception as e:
        raise LatentlabError(f"{ps.module}:{ps.callable}({format_args(ps.kwargs)}) failed: {type(e).__name__}: {e}") from None
    if not callable(getattr(obj, "encode", None)):
        raise LatentlabError(f"{ps.module}:{ps.callable} returned a {type(obj).__name__} without encode(images); "
                             "return an object with encode (and optionally decode)")
    model = PluginTokenizer(obj, ps.spec)
    tok = {k: v for k, v in prov.items() if k != "checkpoint_hash"}
    info = {"name": ps.label, "checkpoint_hash": prov["checkpoint_hash"], "layout": None,
            "image_size": getattr(obj, "image_size", None), "channels": getattr(obj, "channels", None),
            "dataset": getattr(obj, "dataset", None), "decodes": model.decodes, "tokenizer": tok}
    return model, info


# ---------------------------------------------------------------- the tokenizer interface

def _check_latents(z, batch: int, spec: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise LatentlabError(f"{spec}: encode returned {type(z).__name__}; return a tensor (B, T, C) or (B, C, H, W), "
                             "or an object with .mode()")
    if z.ndim not in (3, 4) or z.shape[0] != batch:
        raise LatentlabError(f"{spec}: encode of {batch} images gave latents of shape {tuple(z.shape)}; "
                             f"expected ({batch}, T, C) or ({batch}, C, H, W)")
    return z


class _Posterior:
    """A plug-in's posterior object, its mode and samples checked for shape."""

    def __init__(self, post, batch: int, spec: str):
        self.post, self.batch, self.spec = post, batch, spec

    def mode(self) -> torch.Tensor:
        return _check_latents(self.post.mode(), self.batch, self.spec)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        fn = getattr(self.post, "sample", None)
        return _check_latents(fn(generator) if fn else self.post.mode(), self.batch, self.spec)


class PluginTokenizer(nn.Module):
    """The latentlab tokenizer interface (encode -> posterior, decode -> images in [-1, 1]) around a plug-in object."""

    def __init__(self, obj, spec: str):
        super().__init__()
        self.obj = obj  # an nn.Module is registered as a submodule, so .to() and .eval() reach it
        self.spec = spec
        self.register_buffer("_device", torch.zeros(0), persistent=False)

    @property
    def decodes(self) -> bool:
        """Whether the plug-in has decode()."""
        return callable(getattr(self.obj, "decode", None))

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if not isinstance(self.obj, nn.Module) and callable(getattr(self.obj, "to", None)):
            self.obj.to(self._device.device)
        return out

    def train(self, mode: bool = True):
        super().train(mode)
        if not isinstance(self.obj, nn.Module) and callable(getattr(self.obj, "eval", None)) and not mode:
            self.obj.eval()
        return self

    def _call(self, what: str, x: torch.Tensor):
        try:
            return getattr(self.obj, what)(x)
        except LatentlabError:
            raise
        except Exception as e:
            raise LatentlabError(f"{self.spec}: {what} of a batch of shape {tuple(x.shape)} failed: "
                                 f"{type(e).__name__}: {e}") from None

    def encode(self, x: torch.Tensor):
        """Images (B, C, H, W) in [-1, 1] -> a posterior whose .mode() is (B, T, C) or (B, C, H, W)."""
        z = self._call("encode", x)
        if isinstance(z, torch.Tensor):
            return DeterministicPosterior(_check_latents(z, x.shape[0], self.spec))
        if callable(getattr(z, "mode", None)):
            return _Posterior(z, x.shape[0], self.spec)
        return DeterministicPosterior(_check_latents(z, x.shape[0], self.spec))  # raises: wrong type

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, C, H, W) in [-1, 1] (clamped)."""
        if not self.decodes:
            raise LatentlabError(f"{self.spec} has no decode(latents); reconstruction and generation need one")
        x = self._call("decode", z)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != z.shape[0]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise LatentlabError(f"{self.spec}: decode of {z.shape[0]} latents gave {got}; expected images (B, C, H, W)")
        return x.clamp(-1.0, 1.0)
