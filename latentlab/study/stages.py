"""The stages of `latentlab run`: each calls one library function and writes into its stage directory.

A stage function receives `(work_dir, resume)` from `latentlab.study.cache.run_stage` and returns a
JSON-able result whose paths are relative to the stage directory. Keys hash the stage's own
settings together with the hashes of the stages it reads, so a change anywhere reruns exactly
what depends on it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from latentlab.analysis.gmm.curves import fit_gmm_curves
from latentlab.analysis.probe import run_probe
from latentlab.analysis.umap import run_umap
from latentlab.extract import TokenizerLatents, extract, import_pixels, open_tokenizer
from latentlab.io import atomic_dir, atomic_path, file_hash
from latentlab.latents import LatentStore, open_split
from latentlab.metrics.evaluate import eval_tokenizer, fid
from latentlab.sit.sample import sample
from latentlab.sit.training import train_sit
from latentlab.study.cache import StageLog, StageResult
from latentlab.study.config import plugin_spec
from latentlab.study.report import build_outputs, fd_column_names
from latentlab.tokenizers.plugins import describe_plugin
from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer

Step = Callable[[str, str, object, Callable[[Path, bool], dict]], StageResult]
OWNER = "_study"


@dataclass
class StudyContext:
    cfg: object            # StudyConfig
    sections: dict         # validated library configs
    out: Path
    log: StageLog
    entries: dict          # name -> validated TokenizerEntry

    def section(self, name: str) -> dict:
        """A section's config as a plain dict (for hashing)."""
        return json.loads(json.dumps(dataclasses.asdict(self.sections[name]), default=str))


# ---------------------------------------------------------------- per-tokenizer stages

def _train_tokenizer(ctx: StudyContext, entry, work: Path, resume: bool) -> dict:
    train = {"seed": ctx.cfg.seed, "device": ctx.cfg.device, **entry.train}
    run_cfg = TokenizerRunConfig(arch=entry.arch, size=entry.size, dataset=ctx.cfg.dataset, model=dict(entry.model),
                                 train=train)
    first = work / ("run" if entry.decoder_finetune is None else "encoder-run")
    summary = train_tokenizer(run_cfg, first, resume=resume and (first / "config.json").is_file())
    result = {"run": first.name, "psnr": summary.get("psnr"), "teacher": summary.get("teacher"),
              "params": summary.get("params"), "latent_shape": summary.get("latent_shape")}
    if entry.decoder_finetune is not None:
        ft_train = {"seed": ctx.cfg.seed, "device": ctx.cfg.device, **entry.decoder_finetune}
        ft = TokenizerRunConfig(arch=entry.arch, size=entry.size, dataset=ctx.cfg.dataset, stage="decoder-finetune",
                                init=str(first), train=ft_train)
        s2 = train_tokenizer(ft, work / "run", resume=resume and (work / "run" / "config.json").is_file())
        result.update(run="run", psnr=s2.get("psnr"), psnr_before_finetune=summary.get("psnr"))
    return result


def tokenizer_stages(ctx: StudyContext, name: str, entry, step: Step) -> dict[str, StageResult]:
    """tokenizer -> eval -> extract -> probe -> sit -> sample -> gfid for one tokenizer."""
    cfg, arch = ctx.cfg, entry.arch
    base = {"entry": dataclasses.asdict(entry), "dataset": cfg.dataset, "seed": cfg.seed, "version": 1}
    if arch == "store":
        base["store_hash"] = file_hash(Path(entry.store) / "train" / "manifest.json")
    if arch == "python":  # editing the plug-in's module (or a checkpoint its kwargs name) reruns its stages
        base["plugin_hash"] = describe_plugin(plugin_spec(entry))["checkpoint_hash"]
    res: dict[str, StageResult] = {}

    def tok_fn(work: Path, resume: bool) -> dict:
        if arch == "store":  # extracted elsewhere; its manifest may name the tokenizer run that decodes it
            tok_info = open_split(entry.store, "train").manifest.get("tokenizer")
            run = tok_info.get("run") if isinstance(tok_info, dict) else None
            return {"run": None, "spec": run if run and Path(run).is_dir() else None, "kind": arch,
                    "teacher": tok_info.get("teacher") if isinstance(tok_info, dict) else None}
        if arch == "pixels":
            return {"run": None, "kind": arch}
        if arch in ("pretrained", "python"):
            spec = entry.pretrained if arch == "pretrained" else plugin_spec(entry)
            _, info = open_tokenizer(spec, device="cpu")
            return {"run": None, "spec": spec, "kind": arch, "decodes": info["decodes"]}
        return {**_train_tokenizer(ctx, entry, work, resume), "kind": "trained"}

    res["tokenizer"] = step(name, "tokenizer", base, tok_fn)
    tok = res["tokenizer"]
    spec = (str(tok.file(tok.result["run"])) if tok.result.get("run") else tok.result.get("spec"))

    def eval_fn(work: Path, resume: bool) -> dict:
        if arch == "pixels":  # the identity: exact reconstruction (PSNR is infinite, kept as the string "inf")
            rname = fd_column_names(ctx.sections["metrics"])[0]
            return {"row": {"psnr": "inf", "ssim": 1.0, rname: 0.0}, "note": "identity (raw pixels)"}
        if spec is None:
            return {"row": {}, "note": "no decoder for an imported store"}
        if not tok.result.get("decodes", True):
            return {"row": {}, "note": "reconstruction skipped: the tokenizer has no decode()"}
        s = eval_tokenizer(spec, ctx.sections["metrics"], out=work, dataset=cfg.dataset, split="test")
        return {"row": {"psnr": s["psnr"], "ssim": s["ssim"], s["metric"]: s[s["metric"]],
                        "extractor_test_accuracy": s["extractor"].get("test_accuracy")},
                "figure": "recon_grid.png"}

    res["eval"] = step(name, "eval", {"up": tok.hash, "metrics": ctx.section("metrics")}, eval_fn)

    def extract_fn(work: Path, resume: bool) -> dict:
        if arch == "pixels":
            import_pixels(cfg.dataset, work / "latents", name=name)
        elif arch == "store":
            for split in ("train", "test"):
                src = open_split(entry.store, split, required=split == "train")
                if src is not None:
                    shutil.copytree(src.path, work / "latents" / split)
        else:
            (work / "latents").mkdir()
            for split in ("train", "test"):
                extract(spec, cfg.dataset, split, work / "latents" / split, device=cfg.device, name=name)
        tr = LatentStore.open(work / "latents" / "train")
        return {"latents": "latents", "sample_shape": list(tr.sample_shape), "n_train": len(tr)}

    res["extract"] = step(name, "extract", {"up": tok.hash}, extract_fn)
    lat = latents_of(name, res["extract"])

    def probe_fn(work: Path, resume: bool) -> dict:
        s = run_probe([lat], work, ctx.sections["probe"])
        return {"row": s["rows"][0], "csv": "probe.csv"}

    res["probe"] = step(name, "probe", {"up": res["extract"].hash, "probe": ctx.section("probe")}, probe_fn)

    def sit_fn(work: Path, resume: bool) -> dict:
        spec_arg = f"{name}={res['extract'].file('latents')}"
        s = train_sit(spec_arg, work / "run", ctx.sections["sit"], resume=resume and (work / "run" / "config.json").is_file(),
                      dataset=cfg.dataset)
        return {"run": "run", "heldout_loss": s.get("heldout_loss"), "curve": "run/heldout_loss.csv"}

    res["sit"] = step(name, "sit", {"up": res["extract"].hash, "sit": ctx.section("sit")}, sit_fn)

    def sample_fn(work: Path, resume: bool) -> dict:
        s = sample(res["sit"].file("run"), work / "samples", ctx.sections["sample"])
        return {"samples": "samples", "decoded": s["decoded"], "n": s["n"],
                "grid": "samples/grid.png" if s["decoded"] else None, "skipped_decoding": s.get("skipped_decoding")}

    res["sample"] = step(name, "sample", {"up": res["sit"].hash, "sample": ctx.section("sample")}, sample_fn)

    def gfid_fn(work: Path, resume: bool) -> dict:
        if not res["sample"].result.get("decoded"):
            why = res["sample"].result.get("skipped_decoding") or "samples were not decoded"
            return {"row": {}, "note": f"gFD skipped: {why}"}
        s = fid(f"{cfg.dataset}:train", str(res["sample"].file("samples/images.npz")), ctx.sections["metrics"], out=work)
        metric = s["metric"]
        row = {"g" + metric: s[metric]}
        is_name = s["extractor"].get("is_metric")
        row.update({k: v for k, v in s.items() if is_name and k.startswith(is_name) and isinstance(v, float)})
        return {"row": row}

    res["gfid"] = step(name, "gfid", {"up": res["sample"].hash, "metrics": ctx.section("metrics")}, gfid_fn)
    return res


def latents_of(name: str, extract_stage: StageResult) -> TokenizerLatents:
    """The train/test stores an extract stage wrote, labelled with the tokenizer's study name."""
    path = extract_stage.file(extract_stage.result["latents"])
    return TokenizerLatents(name=name, train=open_split(path, "train"), test=open_split(path, "test", required=False),
                            source=str(path))


# ---------------------------------------------------------------- study-level stages

def _all(done: dict, stage: str) -> dict:
    return {name: res[stage].hash for name, res in done.items()}


def gmm_stage(ctx: StudyContext, done: dict, step: Step) -> StageResult:
    """NLL against components for every tokenizer, in one common PCA dimension."""
    def fn(work: Path, resume: bool) -> dict:
        toks = [latents_of(n, r["extract"]) for n, r in done.items()]
        res = fit_gmm_curves(toks, ctx.sections["gmm"], out=work)
        return {"csv": "gmm.csv", "figure": "nll_vs_components.png",
                "pca_dim": int(res.table["pca_dim"].iloc[0])}

    return step(OWNER, "gmm", {"up": _all(done, "extract"), "gmm": ctx.section("gmm")}, fn)


def umap_stage(ctx: StudyContext, done: dict, step: Step) -> StageResult:
    """One UMAP panel per tokenizer."""
    def fn(work: Path, resume: bool) -> dict:
        run_umap([latents_of(n, r["extract"]) for n, r in done.items()], work, ctx.sections["umap"])
        return {"csv": "umap.csv", "figure": "umap.png"}

    return step(OWNER, "umap", {"up": _all(done, "extract"), "umap": ctx.section("umap")}, fn)


def relate_stage(ctx: StudyContext, done: dict, gmm: StageResult, umap: StageResult, step: Step) -> StageResult:
    """summary.csv, correlations.csv, tables/, figures/ and report.html."""
    key = {"up": {n: {s: r.hash for s, r in res.items()} for n, res in done.items()},
           "gmm": gmm.hash, "umap": umap.hash, "report": bool(ctx.cfg.report), "version": 2}
    return step(OWNER, "relate", key, lambda work, resume: build_outputs(ctx, done, gmm, umap, work))


PUBLISHED = ("summary.csv", "correlations.csv", "report.html", "tables", "figures")


def publish(relate: StageResult, out: Path) -> None:
    """Copy the relate stage's outputs to the top of the study directory (each replaced atomically)."""
    for name in PUBLISHED:
        src = relate.path / name
        if src.is_dir():
            with atomic_dir(out / name) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
        elif src.is_file():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src, tmp)
