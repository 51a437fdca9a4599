"""The stages of `latentlab run`: each calls one library function and writes into its stage directory.

A stage function receives `(work_dir, resume)` from `latentlab.study.cache.run_stage` and returns a
JSON-able result whose paths are relative to the stage directory. Keys hash the stage's own
settings together with the hashes of the stages it reads, so a change anywhere reruns exactly
what depends on it.

Replicates: replicate r of tokenizer NAME lives in ``STUDY/NAME/seed-r/<stage>/`` and draws every
random choice from `StudyContext.seed(r, NAME, stage)` (`utils.derive_seed` of the study seed, r, NAME
and the stage), so replicate 0 is the same whatever `seeds` is, and raising `seeds` adds stages without
touching the existing ones. A tokenizer with nothing to train (pixels, pretrained, store) has one
tokenizer/eval/extract (replicate 0's), shared by its replicates.

What a stage result gives the study tables (see `latentlab.study.columns`):
  "row"         {column: value} of this run
  "per_image"   {"file": CSV, "columns": {column: CSV column}}: one value per held-out image ("index")
  "replicates"  {"file": CSV, "columns": {column: CSV column}}: within-run bootstrap replicates
The study-level "gmm" stage of replicate r gives "rows": {tokenizer: {column: value}}.
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
from latentlab.metrics.diffusability import run_diffusability
from latentlab.metrics.evaluate import eval_tokenizer, fid
from latentlab.sit.sample import sample
from latentlab.sit.training import train_sit
from latentlab.study.cache import StageLog, StageResult
from latentlab.study.columns import fd_column_names
from latentlab.study.config import TOKENIZER_STAGES, plugin_spec
from latentlab.study.report import build_outputs
from latentlab.study.rows import diffusability_result, generation_row, sit_reference_row, with_row
from latentlab.tokenizers.models import TOKENIZERS
from latentlab.tokenizers.plugins import describe_plugin
from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer
from latentlab.utils import derive_seed

# what a tokenizer with nothing to train (pixels, pretrained, python, store) shares across replicates: owner NAME/seed-0
SHARED_STAGES = ("tokenizer", "eval", "extract")
Step = Callable[[str, str, object, Callable[[Path, bool], dict]], StageResult]
OWNER = "_study"
PROBE_COLUMNS = {"top1": "lp_top1", "top5": "lp_top5", "knn_top1": "knn_top1", "silhouette": "silhouette",
                 "calinski_harabasz": "calinski_harabasz", "davies_bouldin": "davies_bouldin",
                 "fisher_ratio": "fisher_ratio", "rankme": "rankme"}


@dataclass
class StudyContext:
    cfg: object            # StudyConfig
    sections: dict         # validated library configs
    out: Path
    log: StageLog
    entries: dict          # name -> validated TokenizerEntry

    def section(self, name: str) -> dict:
        """A section's config as a plain dict (for hashing)."""
        return plain(self.sections[name])

    def seed(self, replicate: int, owner: str, stage: str) -> int:
        """The seed of one stage of one replicate: derive_seed(study seed, replicate, owner, stage)."""
        return derive_seed(self.cfg.seed, replicate, owner, stage)


def plain(cfg) -> dict:
    """A dataclass config as a plain JSON-able dict (for stage keys)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def replicate_dir(name: str, replicate: int) -> str:
    """The owner directory of one replicate: NAME/seed-R."""
    return f"{name}/seed-{replicate}"


# ---------------------------------------------------------------- per-tokenizer stages

def _train_tokenizer(ctx: StudyContext, name: str, entry, r: int, work: Path, resume: bool) -> dict:
    train = {"seed": ctx.seed(r, name, "tokenizer"), "device": ctx.cfg.device, **entry.train}
    run_cfg = TokenizerRunConfig(arch=entry.arch, size=entry.size, dataset=ctx.cfg.dataset, model=dict(entry.model),
                                 train=train)
    first = work / ("run" if entry.decoder_finetune is None else "encoder-run")
    summary = train_tokenizer(run_cfg, first, resume=resume and (first / "config.json").is_file())
    result = {"run": first.name, "psnr": summary.get("psnr"), "teacher": summary.get("teacher"),
              "params": summary.get("params"), "latent_shape": summary.get("latent_shape")}
    if entry.decoder_finetune is not None:
        ft_train = {"seed": ctx.seed(r, name, "decoder-finetune"), "device": ctx.cfg.device, **entry.decoder_finetune}
        ft = TokenizerRunConfig(arch=entry.arch, size=entry.size, dataset=ctx.cfg.dataset, stage="decoder-finetune",
                                init=str(first), train=ft_train)
        s2 = train_tokenizer(ft, work / "run", resume=resume and (work / "run" / "config.json").is_file())
        result.update(run="run", psnr=s2.get("psnr"), psnr_before_finetune=summary.get("psnr"))
    return result


def tokenizer_stages(ctx: StudyContext, name: str, entry, r: int, step: Step) -> dict[str, StageResult]:
    """tokenizer -> eval -> extract -> probe -> diffusability -> sit -> sample -> gfid for replicate `r` of one tokenizer."""
    cfg, arch = ctx.cfg, entry.arch
    trained = arch in TOKENIZERS
    own = replicate_dir(name, r)
    fixed = own if trained else replicate_dir(name, 0)  # nothing to train: every replicate shares replicate 0's
    entry_key = {k: v for k, v in dataclasses.asdict(entry).items() if k != "sweep"}
    base = {"entry": entry_key, "dataset": cfg.dataset, "version": 2,
            "seed": ctx.seed(r, name, "tokenizer") if trained else None}
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
        return {**_train_tokenizer(ctx, name, entry, r, work, resume), "kind": "trained"}

    res["tokenizer"] = step(fixed, "tokenizer", base, tok_fn)
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
                "per_image": {"file": "recon_images.csv", "columns": {"psnr": "psnr", "ssim": "ssim"}},
                "figure": "recon_grid.png"}

    res["eval"] = step(fixed, "eval", {"up": tok.hash, "metrics": ctx.section("metrics")}, eval_fn)

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

    res["extract"] = step(fixed, "extract", {"up": tok.hash}, extract_fn)
    lat = latents_of(name, res["extract"])

    probe_cfg = ctx.sections["probe"]
    probe_cfg = dataclasses.replace(probe_cfg, probe=dataclasses.replace(probe_cfg.probe, seed=ctx.seed(r, name, "probe")))

    def probe_fn(work: Path, resume: bool) -> dict:
        s = run_probe([lat], work, probe_cfg)
        raw = s["rows"][0]
        return {"row": {new: raw.get(old) for old, new in PROBE_COLUMNS.items()}, "probe": raw, "csv": "probe.csv",
                "per_image": {"file": "probe_images.csv",
                              "columns": {c: c for c in ("lp_top1", "lp_top5", "knn_top1")}}}

    res["probe"] = step(own, "probe", {"up": res["extract"].hash, "probe": plain(probe_cfg)}, probe_fn)

    # one seed per replicate, shared by its tokenizers: the same test images, noise and masks for all (paired)
    diff_cfg = dataclasses.replace(ctx.sections["diffusability"], seed=ctx.seed(r, OWNER, "diffusability"))

    def diffusability_fn(work: Path, resume: bool) -> dict:
        return diffusability_result(run_diffusability([lat], work, diff_cfg))

    res["diffusability"] = step(own, "diffusability", {"up": res["extract"].hash, "diffusability": plain(diff_cfg),
                                                       "version": 2},  # 2: TwoNN bootstrap interval
                                diffusability_fn)

    sit_cfg = ctx.sections["sit"]
    sit_cfg = dataclasses.replace(sit_cfg, train={**sit_cfg.train, "seed": ctx.seed(r, name, "sit")})

    def sit_fn(work: Path, resume: bool) -> dict:
        spec_arg = f"{name}={res['extract'].file('latents')}"
        s = train_sit(spec_arg, work / "run", sit_cfg, resume=resume and (work / "run" / "config.json").is_file(),
                      dataset=cfg.dataset)
        return {"run": "run", "heldout_loss": s.get("heldout_loss"), "curve": "run/heldout_loss.csv",
                "row": {"sit_loss": s.get("heldout_loss")},
                "per_image": {"file": "run/heldout_images.csv", "columns": {"sit_loss": "loss"}}}

    sit_stage = step(own, "sit", {"up": res["extract"].hash, "sit": plain(sit_cfg)}, sit_fn)
    res["sit"] = with_row(sit_stage, sit_reference_row)  # the linear reference etc., read from its files

    sample_cfg = dataclasses.replace(ctx.sections["sample"], seed=ctx.seed(r, name, "sample"))

    def sample_fn(work: Path, resume: bool) -> dict:
        s = sample(res["sit"].file("run"), work / "samples", sample_cfg)
        return {"samples": "samples", "decoded": s["decoded"], "n": s["n"],
                "grid": "samples/grid.png" if s["decoded"] else None, "skipped_decoding": s.get("skipped_decoding")}

    res["sample"] = step(own, "sample", {"up": res["sit"].hash, "sample": plain(sample_cfg)}, sample_fn)

    metrics_cfg = dataclasses.replace(ctx.sections["metrics"], seed=ctx.seed(r, name, "gfid"))

    def gfid_fn(work: Path, resume: bool) -> dict:
        if not res["sample"].result.get("decoded"):
            why = res["sample"].result.get("skipped_decoding") or "samples were not decoded"
            return {"row": {}, "note": f"gFD skipped: {why}"}
        images = res["sample"].file("samples/images.npz")
        s = fid(f"{cfg.dataset}:train", str(images), metrics_cfg, out=work)
        return generation_row(s, work, images, derive_seed(metrics_cfg.seed, "cond-bootstrap"))

    gfid_key = {"up": res["sample"].hash, "metrics": plain(metrics_cfg), "version": 2}  # 2: KID, floor, cond. accuracy
    res["gfid"] = step(own, "gfid", gfid_key, gfid_fn)
    return res


def latents_of(name: str, extract_stage: StageResult) -> TokenizerLatents:
    """The train/test stores an extract stage wrote, labelled with the tokenizer's study name."""
    path = extract_stage.file(extract_stage.result["latents"])
    return TokenizerLatents(name=name, train=open_split(path, "train"), test=open_split(path, "test", required=False),
                            source=str(path))


# ---------------------------------------------------------------- study-level stages

def _all(done: dict, stage: str) -> dict:
    return {name: res[stage].hash for name, res in done.items()}


def gmm_stage(ctx: StudyContext, done: dict[str, dict[str, StageResult]], r: int, step: Step) -> StageResult:
    """The GMM as a mode counter for every tokenizer of replicate r, in one common PCA dimension (`gmm.pca_dim`).

    Each tokenizer's row: modes_heldout, modes_bic, gain_k{K} (modes.csv), below_pca_variance,
    heldout_nll_spread (the largest over K) and, for the tables only, the raw NLLs gmm_nll_k{K}
    and gmm_nll_per_dim_k{K}; all at the main dimension (a `pca_dims` sweep stays in gmm.csv).
    """
    gmm_cfg = dataclasses.replace(ctx.sections["gmm"], seed=ctx.seed(r, OWNER, "gmm"))

    def fn(work: Path, resume: bool) -> dict:
        toks = [latents_of(n, res["extract"]) for n, res in done.items()]
        curves = fit_gmm_curves(toks, gmm_cfg, out=work)
        dim = int(curves.reduction["pca_dim"])
        table, modes = curves.table[curves.table["pca_dim"] == dim], curves.modes[curves.modes["pca_dim"] == dim]
        rows: dict[str, dict] = {}
        for _, g in table.iterrows():
            row = rows.setdefault(str(g.tokenizer), {"pca_dim": int(g.pca_dim),
                                                     "explained_variance": float(g.explained_variance)})
            row[f"gmm_nll_k{int(g.n_components)}"] = float(g.heldout_nll)
            row[f"gmm_nll_per_dim_k{int(g.n_components)}"] = float(g.nll_per_dim)
        for name, g in table.groupby("tokenizer", sort=False):
            rows[str(name)]["heldout_nll_spread"] = float(g["heldout_nll_spread"].max())
        for _, m in modes.iterrows():
            rows[str(m.tokenizer)].update({k: (int(v) if k in ("modes_heldout", "modes_bic", "below_pca_variance")
                                               else float(v))
                                           for k, v in m.items() if k.startswith(("modes_", "gain_k", "below_"))})
        return {"csv": "gmm.csv", "modes": "modes.csv", "figure": "nll_vs_components.png", "pca_dim": dim,
                "rows": rows}

    key = {"up": _all(done, "extract"), "gmm": plain(gmm_cfg), "version": 2}  # 2: modes, gains, n_init spread
    return step(f"{OWNER}/seed-{r}", "gmm", key, fn)


def umap_stage(ctx: StudyContext, done: dict[str, dict[str, StageResult]], step: Step) -> StageResult:
    """One UMAP panel per tokenizer (replicate 0: a picture, not a measurement)."""
    def fn(work: Path, resume: bool) -> dict:
        run_umap([latents_of(n, r["extract"]) for n, r in done.items()], work, ctx.sections["umap"])
        return {"csv": "umap.csv", "figure": "umap.png"}

    return step(OWNER, "umap", {"up": _all(done, "extract"), "umap": ctx.section("umap")}, fn)


def relate_stage(ctx: StudyContext, done: dict[str, list[dict[str, StageResult]]], gmms: list[StageResult],
                 umap: StageResult, step: Step) -> StageResult:
    """runs.csv, summary.csv, comparisons.csv, correlations.csv, tables/, figures/ and report.html."""
    key = {"up": {n: [{s: r.hash for s, r in rep.items()} for rep in reps] for n, reps in done.items()},
           "gmm": [g.hash for g in gmms], "umap": umap.hash, "report": bool(ctx.cfg.report),
           "primary": ctx.cfg.primary, "reference": ctx.cfg.reference,
           "baseline": {n: e.baseline for n, e in ctx.entries.items()},
           "version": 4}  # 3: hypotheses tables; 4: tables/diffusability.csv, tables/robustness.csv
    return step(OWNER, "relate", key, lambda work, resume: build_outputs(ctx, done, gmms, umap, work))


def walk(ctx: StudyContext, step: Step, skip: type[Exception] | tuple = ()) -> StageResult | None:
    """Every stage of the study in order: per replicate each tokenizer's chain, then its gmm; then umap, relate.

    Returns relate's result. `step` may raise `skip` to leave a chain or a study-wide stage (the graph
    executor's walks do, to plan or to run one stage); a study-wide stage whose inputs are then missing
    is left out. The sequential runner passes no `skip`: every stage runs, in this order.
    """
    done: dict[str, list[dict]] = {name: [] for name in ctx.entries}
    gmms: list[StageResult | None] = []

    def attempt(call):
        try:
            return call()
        except skip:
            return None

    for r in range(ctx.cfg.seeds):
        for name, entry in ctx.entries.items():
            rec: dict[str, StageResult] = {}

            def keep(owner, stage, key, fn, rec=rec):
                rec[stage] = step(owner, stage, key, fn)
                return rec[stage]

            chain = attempt(lambda: tokenizer_stages(ctx, name, entry, r, keep))
            done[name].append(rec if chain is None else chain)  # a whole chain: its results as the tables read them
        reps = {n: reps[r] for n, reps in done.items()}
        gmms.append(attempt(lambda: gmm_stage(ctx, reps, r, step)) if all("extract" in x for x in reps.values())
                    else None)
    first = {n: reps[0] for n, reps in done.items()}
    umap = attempt(lambda: umap_stage(ctx, first, step)) if all("extract" in x for x in first.values()) else None
    whole = all(len(x) == len(TOKENIZER_STAGES) for reps in done.values() for x in reps)
    if whole and umap is not None and all(g is not None for g in gmms):
        return attempt(lambda: relate_stage(ctx, done, gmms, umap, step))
    return None


PUBLISHED = ("runs.csv", "summary.csv", "comparisons.csv", "correlations.csv", "hypotheses.csv", "hypotheses_pairs.csv",
             "analysis.json", "report.html", "tables", "figures")


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
