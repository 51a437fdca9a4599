"""Resolving `--tokenizer` arguments to latent stores.

A tokenizer argument is `[LABEL=]SPEC`, where SPEC is one of
  - a LatentStore directory, or a store set with train/ and test/ stores;
  - a tokenizer run directory (latents are extracted on first use and cached in
    RUN/latents/<dataset>/<split>, reused while the checkpoint hash is unchanged);
  - a pretrained tokenizer "diffusers:PATH_OR_REPO" (needs the dataset; latents cached in
    WORKSPACE/pretrained/);
  - a name under the workspace: WORKSPACE/stores/NAME or WORKSPACE/runs/NAME.
The workspace is $LATENTLAB_WORKSPACE, or ./workspace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from latentlab.errors import LatentlabError
from latentlab.latents import LatentStore, is_store, open_split


def workspace_root() -> Path:
    """$LATENTLAB_WORKSPACE or ./workspace."""
    return Path(os.environ.get("LATENTLAB_WORKSPACE", "workspace"))


@dataclass
class TokenizerLatents:
    """The latents of one tokenizer on one dataset: a label, the train store and the test store if any."""

    name: str
    train: LatentStore
    test: LatentStore | None
    source: str


def _is_run(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def resolve_path(spec: str) -> Path:
    """Turn SPEC into an existing path (a store, store set or run), looking in the workspace too."""
    p = Path(os.path.expanduser(spec))
    if p.exists():
        return p
    for sub in ("stores", "runs"):
        q = workspace_root() / sub / spec
        if q.exists():
            return q
    raise LatentlabError(f"no latent store, tokenizer run or workspace name {spec!r} "
                         f"(looked in ./ and {workspace_root()}/stores, /runs); check the path or set LATENTLAB_WORKSPACE")


def resolve_tokenizer(arg: str, dataset: str | None = None, need_test: bool = False) -> TokenizerLatents:
    """Resolve one `--tokenizer [LABEL=]SPEC` argument to its train (and test) latent stores."""
    label, sep, spec = arg.partition("=")
    if not sep:
        label, spec = "", arg
    if spec.startswith("diffusers:"):
        from latentlab.extract import cached_pretrained

        train = cached_pretrained(spec, dataset, "train")
        test = cached_pretrained(spec, dataset, "test")
        return TokenizerLatents(name=label or spec.split(":", 1)[1].rstrip("/").split("/")[-1], train=train,
                                test=test, source=spec)
    path = resolve_path(spec)
    if _is_run(path):
        from latentlab.extract import cached_latents

        train = cached_latents(path, dataset=dataset, split="train")
        test = cached_latents(path, dataset=dataset, split="test")
    elif is_store(path) or is_store(path / "train"):
        train = open_split(path, "train")
        test = open_split(path, "test", required=False)
        if test is not None and test.path == train.path:
            test = None
    else:
        raise LatentlabError(f"{path} is neither a latent store nor a tokenizer run")
    if need_test and test is None:
        raise LatentlabError(f"{path} has no test split; import or extract one with --split test")
    name = label or train.name or path.name
    return TokenizerLatents(name=name, train=train, test=test, source=str(path))


def resolve_tokenizers(args: list[str] | tuple[str, ...], dataset: str | None = None) -> list[TokenizerLatents]:
    """Resolve several `--tokenizer` arguments; labels must be unique."""
    if not args:
        raise LatentlabError("give at least one --tokenizer (a latent store, a tokenizer run or a workspace name)")
    out = [resolve_tokenizer(a, dataset) for a in args]
    names = [t.name for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LatentlabError(f"two tokenizers are both called {dup[0]!r}; label them as --tokenizer LABEL=PATH")
    return out
