"""The study config: `StudyConfig` and its tokenizer entries, strict and validated before anything runs."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from latentlab.analysis.config import (DiffusabilityConfig, DiscriminabilityConfig, FitGMMConfig, ProbeConfig,
                                       UmapConfig, check_config)
from latentlab.config import check_fields, from_dict, load_mapping
from latentlab.data import DATASETS, parse_spec
from latentlab.errors import LatentlabError
from latentlab.metrics.config import MetricsConfig
from latentlab.study.columns import fd_column_names, study_metrics
from latentlab.study.executors import ExecutorConfig
from latentlab.sit.config import SampleConfig, SiTTrainConfig
from latentlab.tokenizers.config import TokenizerConfig, TokenizerRunConfig, check_applicable
from latentlab.tokenizers.models import TOKENIZERS
from latentlab.tokenizers.plugins import describe_plugin, plugin_from_factory
from latentlab.tokenizers.targets import TEACHER_PACKAGES

STUDY_VERSION = 1
SPECIAL_ARCHS = ("pixels", "pretrained", "store", "python")
TOKENIZER_STAGES = ("tokenizer", "eval", "extract", "probe", "diffusability", "sit", "sample", "gfid")
RESUMABLE_STAGES = ("tokenizer", "sit")  # training: a killed attempt continues from its last checkpoint
STUDY_GMM_N_INIT = 3  # EM starts per K in a study (the best fit kept; their spread is heldout_nll_spread)
STUDY_KIND = "study"  # the `.latentlab` marker kind of a study directory


@dataclass
class TokenizerEntry:
    """One tokenizer of a study: a trainable arch, pixels, a pretrained one, your own code (python), or a store."""

    arch: str                          # ae | vae | vavae | maetok | pixels | pretrained | python | store (required)
    size: str = "tiny"                 # size preset of a trainable arch
    model: dict = field(default_factory=dict)     # TokenizerConfig overrides (teacher, masking, ...)
    train: dict = field(default_factory=dict)     # TrainConfig overrides (steps, batch_size, lr, ...)
    decoder_finetune: dict | None = None          # MAETok's 2nd stage: TrainConfig overrides, or None to skip
    pretrained: str | None = None      # arch=pretrained: "diffusers:/path/to/sd-vae" (or a "python:..." spec)
    factory: str | None = None         # arch=python: MODULE:CALLABLE (or a registered plug-in name)
    kwargs: dict = field(default_factory=dict)    # arch=python: keyword arguments of the factory
    store: str | None = None           # arch=store: a store set (train/ and test/) extracted elsewhere
    baseline: bool | None = None       # reported, never counted in a correlation (None: true for pixels only)
    sweep: dict = field(default_factory=dict)     # {"model.mask_ratio": [0.25, 0.5]}: one variant per setting


@dataclass
class StudyConfig:
    """The whole study. Nested sections override the defaults of the library's own dataclasses."""

    dataset: str = "mnist5k"
    seed: int = 0
    seeds: int = 1                                   # replicates of every tokenizer's whole chain
    device: str = "auto"
    tokenizers: dict = field(default_factory=dict)   # name -> TokenizerEntry fields (a `sweep:` expands into variants)
    primary: dict | None = None                      # {predictor: COLUMN, target: COLUMN}: the one tested hypothesis
    reference: str | None = None                     # comparisons.csv's reference (default: the first non-baseline)
    sit: dict = field(default_factory=dict)          # SiTTrainConfig fields (model, train: {steps, ...})
    sample: dict = field(default_factory=dict)       # SampleConfig fields (n = gFID sample count, steps, sampler)
    gmm: dict = field(default_factory=dict)          # FitGMMConfig fields (components, pca_dim, n_init: 3, ...)
    probe: dict = field(default_factory=dict)        # DiscriminabilityConfig fields (pool, probe: {epochs}, ...)
    umap: dict = field(default_factory=dict)         # UmapConfig fields (n, pca_dim, ...)
    diffusability: dict = field(default_factory=dict)  # DiffusabilityConfig fields (n_images, taus, fd_boot, ...)
    metrics: dict = field(default_factory=dict)      # MetricsConfig fields (extractor, ...)
    report: bool = True                              # render report.html from notebooks/report.ipynb
    executor: dict = field(default_factory=dict)     # ExecutorConfig fields (kind, jobs, partition, ...): how stages run


SWEEP_SECTIONS = ("model", "train", "decoder_finetune")


def _value_text(v) -> str:
    """A sweep value as it appears in a variant name: 1e-06, 0.5, true, hog+pixels."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "+".join(map(_value_text, v)) or "none"
    return str(v)


def expand_sweep(name: str, raw: dict) -> dict[str, dict]:
    """A tokenizer entry with `sweep:` -> one entry per setting (the product over keys), named NAME@key=value,...

    Keys are `model.X`, `train.X`, `decoder_finetune.X` or a top-level field such as `size`; a name uses
    the key's last part (`maetok@mask_ratio=0.5`). An entry without a sweep is returned as is.
    """
    sweep = raw.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise LatentlabError(f"tokenizers.{name}.sweep must map keys to lists of values, e.g. "
                             "{model.mask_ratio: [0.25, 0.5]}")
    if not sweep:
        return {name: {k: v for k, v in raw.items() if k != "sweep"}}
    fields = {f.name for f in dataclasses.fields(TokenizerEntry)} - {"sweep", "arch", "baseline"}
    for key, values in sweep.items():
        head, _, tail = str(key).partition(".")
        if (tail and head not in SWEEP_SECTIONS) or (not tail and head not in fields):
            raise LatentlabError(f"tokenizers.{name}.sweep: cannot sweep {key!r}; use model.KEY, train.KEY, "
                                 f"decoder_finetune.KEY or one of {', '.join(sorted(fields))}")
        if not isinstance(values, list) or not values:
            raise LatentlabError(f"tokenizers.{name}.sweep.{key} must be a non-empty list of values")
    short = [str(k).rpartition(".")[2] for k in sweep]
    labels = [s if short.count(s) == 1 else str(k) for s, k in zip(short, sweep)]
    out = {}
    for combo in itertools.product(*sweep.values()):
        entry = copy.deepcopy({k: v for k, v in raw.items() if k != "sweep"})
        for key, value in zip(sweep, combo):
            head, _, tail = str(key).partition(".")
            if tail:
                section = entry.get(head) if isinstance(entry.get(head), dict) else {}
                entry[head] = {**section, tail: value}
            else:
                entry[head] = value
        variant = name + "@" + ",".join(f"{lab}={_value_text(v)}" for lab, v in zip(labels, combo))
        if variant in out:
            raise LatentlabError(f"tokenizers.{name}.sweep gives the variant {variant!r} twice; make the values distinct")
        out[variant] = entry
    return out


def _entry(name: str, raw) -> TokenizerEntry:
    archs = ", ".join(sorted(TOKENIZERS) + list(SPECIAL_ARCHS))
    if not isinstance(raw, dict):
        raise LatentlabError(f"tokenizer {name!r} must be a mapping with at least 'arch:' (one of {archs}), "
                             f"e.g. {name}: {{arch: ...}}")
    if "arch" not in raw:
        raise LatentlabError(f"tokenizer {name!r} has no 'arch:'; every tokenizer names its kind, one of {archs}")
    e = from_dict(TokenizerEntry, raw, f"tokenizers.{name}")
    if e.arch not in TOKENIZERS and e.arch not in SPECIAL_ARCHS:
        raise LatentlabError(f"tokenizer {name!r} has unknown arch {e.arch!r}; choose one of {archs}")
    if e.arch in TOKENIZERS:  # validate the nested overrides now, not after hours of training
        TokenizerRunConfig(arch=e.arch, size=e.size, train=e.train).train_config(f"tokenizers.{name}.train")
        if e.decoder_finetune is not None:
            TokenizerRunConfig(arch=e.arch, size=e.size, train=e.decoder_finetune).train_config(
                f"tokenizers.{name}.decoder_finetune")
        check_fields(TokenizerConfig, e.model, f"tokenizers.{name}.model")
        check_applicable(e.arch, e.model, f"tokenizers.{name}.model")
    if e.arch == "pretrained" and not e.pretrained:
        raise LatentlabError(f"tokenizer {name!r}: arch 'pretrained' needs 'pretrained: diffusers:PATH'")
    if e.arch == "python":
        if not e.factory or not isinstance(e.kwargs, dict):
            raise LatentlabError(f"tokenizer {name!r}: arch 'python' needs 'factory: MODULE:CALLABLE' "
                                 "(and optionally 'kwargs: {...}')")
        describe_plugin(plugin_spec(e))  # the module imports and has the callable, before anything runs
    elif e.factory or e.kwargs:
        raise LatentlabError(f"tokenizer {name!r}: 'factory' and 'kwargs' belong to arch 'python'")
    if e.arch == "store" and not e.store:
        raise LatentlabError(f"tokenizer {name!r}: arch 'store' needs 'store: PATH' (a store set with train/ and test/)")
    if e.baseline is None:
        e.baseline = e.arch == "pixels"
    return e


def plugin_spec(entry: TokenizerEntry) -> str:
    """The `python:` spec of an arch-python entry (what its stores and SiT runs record)."""
    return plugin_from_factory(entry.factory, entry.kwargs).spec


def expand_entries(tokenizers: dict) -> dict[str, TokenizerEntry]:
    """Validated entries of every tokenizer, sweeps expanded into their variants (in config order)."""
    entries: dict[str, TokenizerEntry] = {}
    for name, raw in tokenizers.items():
        name = str(name)
        if not isinstance(raw, dict):  # _entry says what a tokenizer entry needs
            entries[name] = _entry(name, raw)
            continue
        for variant, sub in expand_sweep(name, raw).items():
            if variant in entries:
                raise LatentlabError(f"two tokenizers are named {variant!r}; rename one")
            entries[variant] = _entry(variant, sub)
    return entries


def _check_study(cfg: StudyConfig, entries: dict[str, TokenizerEntry], sections: dict) -> None:
    """seeds, primary and reference: well formed and naming what the study has."""
    if isinstance(cfg.seeds, bool) or not isinstance(cfg.seeds, int) or cfg.seeds < 1:
        raise LatentlabError(f"seeds must be a whole number >= 1, got {cfg.seeds!r}")
    if cfg.reference is not None and cfg.reference not in entries:
        raise LatentlabError(f"reference {cfg.reference!r} is not a tokenizer of the study; choose one of "
                             f"{', '.join(entries)}")
    if cfg.primary is None:
        return
    if not isinstance(cfg.primary, dict) or set(cfg.primary) != {"predictor", "target"}:
        raise LatentlabError("primary must be {predictor: COLUMN, target: COLUMN}, e.g. "
                             "{predictor: lp_top1, target: gfd_lenet}")
    rfd, gfd = fd_column_names(sections["metrics"])
    cols = study_metrics(list(sections["gmm"].components), rfd, gfd)
    for key, roles in (("predictor", ("predictor", "quality")), ("target", ("target",))):
        valid = [m.name for m in cols if m.role in roles]
        if cfg.primary[key] not in valid:
            raise LatentlabError(f"primary {key} {cfg.primary[key]!r} is not a {key} of this study; choose one of "
                                 f"{', '.join(valid)}")


def section_configs(cfg: StudyConfig) -> dict:
    """The library configs of every section, built (and so validated) from the study config."""
    probe = dict(cfg.probe)
    if isinstance(probe.get("probe"), dict):
        probe["probe"] = from_dict(ProbeConfig, {"device": cfg.device, "seed": cfg.seed, **probe["probe"]},
                                  "probe.probe")
    else:
        probe.setdefault("probe", ProbeConfig(device=cfg.device, seed=cfg.seed))
    sit = dict(cfg.sit)
    sit["train"] = {"seed": cfg.seed, "device": cfg.device, **sit.get("train", {})}
    sit_cfg = from_dict(SiTTrainConfig, sit, "sit")
    sit_cfg.train_config("sit.train")  # validates the nested train overrides
    metrics = from_dict(MetricsConfig, {"device": cfg.device, **cfg.metrics}, "metrics")
    return {
        "sit": sit_cfg,
        "sample": from_dict(SampleConfig, {"device": cfg.device, "seed": cfg.seed, **cfg.sample}, "sample"),
        "gmm": check_config(from_dict(FitGMMConfig, {"device": cfg.device, "seed": cfg.seed, "n_init": STUDY_GMM_N_INIT,
                                                      **cfg.gmm}, "gmm")),
        "probe": from_dict(DiscriminabilityConfig, probe, "probe"),
        "umap": from_dict(UmapConfig, {"seed": cfg.seed, **cfg.umap}, "umap"),
        # the corrupted decodes' FD in the study's features unless the section says otherwise
        "diffusability": from_dict(DiffusabilityConfig, {"device": cfg.device, "seed": cfg.seed,
                                                         "extractor": metrics.extractor, **cfg.diffusability},
                                   "diffusability"),
        "metrics": metrics,
    }


def executor_config(cfg: StudyConfig, **overrides) -> ExecutorConfig:
    """The study's `executor:` section with the command line's `overrides` (those not None) on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return from_dict(ExecutorConfig, {**(cfg.executor or {}), **given}, "executor")


def load_study_config(source: str | os.PathLike | dict) -> tuple[StudyConfig, dict[str, TokenizerEntry]]:
    """Read and validate a study config (unknown keys and unknown tokenizers are one-line errors)."""
    data = dict(source) if isinstance(source, dict) else load_mapping(source)
    cfg = from_dict(StudyConfig, data, "study config")
    if not cfg.tokenizers or not isinstance(cfg.tokenizers, dict):
        raise LatentlabError("the study config needs 'tokenizers:', a mapping of names to tokenizer settings")
    if parse_spec(cfg.dataset)[0] not in DATASETS:
        raise LatentlabError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(sorted(DATASETS))}")
    bad = [str(n) for n in cfg.tokenizers if str(n).startswith("_") or "/" in str(n) or "@" in str(n)
           or str(n) in (".", "..")]
    if bad:
        raise LatentlabError(f"tokenizer name {bad[0]!r} is not allowed; use letters, digits, '-' and '_'")
    entries = expand_entries(cfg.tokenizers)
    bad = [n for n in entries if "/" in n or "\\" in n]
    if bad:
        raise LatentlabError(f"the sweep variant {bad[0]!r} would name a directory with a path separator; "
                             "sweep settings that are not paths")
    sections = section_configs(cfg)  # validate every section now, before anything runs
    executor_config(cfg)
    _check_study(cfg, entries, sections)
    check_requirements(cfg, entries, sections)
    return cfg, entries


def _requirements(cfg: StudyConfig, entries: dict[str, TokenizerEntry], sections: dict) -> list[tuple[str, str, str]]:
    """(module, what needs it, how to do without it) for every optional package the study will import."""
    needs = []
    if cfg.report:
        needs += [(m, "report: true", "pip install 'latentlab[notebooks]', or set report: false")
                  for m in ("nbformat", "nbclient", "nbconvert", "ipykernel")]
    for section in ("metrics", "diffusability"):
        extractor = sections[section].extractor.partition(":")[0]
        if extractor in ("inception", "dinov2"):
            needs.append(("torch_fidelity", f"{section}.extractor {extractor}",
                          f"pip install 'latentlab[fid]', or set {section}: {{extractor: lenet}}"))
    for name, e in entries.items():
        specs = ([e.model.get("teacher", "hog")] if e.arch == "vavae" else
                 list(e.model.get("aux_targets", ["hog"])) if e.arch == "maetok" else [])
        for kind in {str(spec).partition(":")[0] for spec in specs} & set(TEACHER_PACKAGES):
            needs.append((TEACHER_PACKAGES[kind], f"tokenizers.{name} (teacher {kind})",
                          "pip install 'latentlab[teachers]', or use the hog teacher (or torchscript:PATH)"))
        if e.arch == "pretrained" and str(e.pretrained).startswith("diffusers:"):
            needs.append(("diffusers", f"tokenizers.{name} ({e.pretrained})", "pip install 'latentlab[external]'"))
    return needs


def check_requirements(cfg: StudyConfig, entries: dict[str, TokenizerEntry], sections: dict) -> None:
    """Refuse a study that needs an optional package it lacks, before any stage runs."""
    for module, what, fix in _requirements(cfg, entries, sections):
        if find_spec(module) is None:
            raise LatentlabError(f"{what} needs the {module} package, which is not installed: {fix}")


# ---------------------------------------------------------------- variants (for analyses/)

def base_config(scale: str, data: str | None = None) -> dict:
    """The shipped study config for `scale` ("cpu": studies/default.yaml, "imagenet": studies/imagenet.yaml)."""
    root = Path(__file__).resolve().parents[2] / "studies"
    names = {"cpu": "default.yaml", "imagenet": "imagenet.yaml"}
    if scale not in names:
        raise LatentlabError(f"unknown scale {scale!r}; use cpu or imagenet")
    if not (root / names[scale]).is_file():
        raise LatentlabError(f"{root / names[scale]} not found; run the analyses from a latentlab source checkout")
    cfg = load_mapping(root / names[scale])
    if data:
        cfg["dataset"] = data
    return cfg


def with_tokenizers(cfg: dict, tokenizers: dict[str, dict], steps: int | None = None) -> dict:
    """A copy of study config `cfg` with these tokenizers; `steps` (for quick checks) caps every training length."""
    out = copy.deepcopy(cfg)
    out["tokenizers"] = copy.deepcopy(tokenizers)
    if steps is not None:
        for entry in out["tokenizers"].values():
            entry.setdefault("train", {})["steps"] = steps
            if entry.get("decoder_finetune") is not None:
                entry["decoder_finetune"]["steps"] = max(1, steps // 4)
        out.setdefault("sit", {}).setdefault("train", {})["steps"] = steps
    return out
