"""A study's tables, correlations, figures and report: assembled from its finished stages, and read back.

Reading a study directory for the report notebooks, and rendering them to HTML.

The notebooks in `notebooks/` only call these functions (and the plotting and analysis
modules); they hold no library logic. `render_notebook` executes a notebook headless with
nbclient, with its parameters injected as the first cell, and writes HTML with nbconvert.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from latentlab.analysis.hypotheses import hypotheses_paragraph, hypotheses_table, pairs_table
from latentlab.analysis.inference import MetricRuns, interval
from latentlab.analysis.relate import correlations, predictor_columns
from latentlab.errors import LatentlabError
from latentlab.io import atomic_path, save_csv, save_json
from latentlab.plots.hypotheses import plot_hypothesis_ranking
from latentlab.plots.study import (plot_comparisons, plot_curve_bands, plot_image_panels, plot_metrics_vs_target,
                                   plot_nll_bands)
from latentlab.study.cache import StageResult
from latentlab.study.columns import HYPOTHESES, control_column, fd_column_names, representatives, study_metrics
from latentlab.study.tables import collect_runs, comparisons_table, summary_table
from latentlab.utils import derive_seed, warn

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass
class StudyResults:
    """The tables and figures of a finished study directory."""

    path: Path
    config: dict
    summary: pd.DataFrame
    correlations: pd.DataFrame
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict = field(default_factory=dict)      # analysis.json: baselines, reference, predictors, primary, ...
    hypotheses: pd.DataFrame = field(default_factory=pd.DataFrame)        # hypotheses.csv
    hypothesis_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # hypotheses_pairs.csv


FIGURES = {
    "hypotheses": "Every hypothesis's predictors ranked by |rho| against each target (95% intervals; * = representative)",
    "metrics_vs_gfid": "Each latent metric against generation quality (error bars: 95% intervals)",
    "comparisons": "Each tokenizer minus the reference on the same held-out images (95% intervals)",
    "nll_vs_components": "NLL against the number of GMM components (MAETok Fig. 2a; bands: 95% across seeds)",
    "sit_loss_curves": "SiT held-out loss during training (MAETok Fig. 2b; bands: 95% across seeds)",
    "umap": "UMAP of each tokenizer's latents, coloured by class (MAETok Fig. 4)",
    "reconstructions": "Originals (top) against reconstructions, per tokenizer",
    "samples": "SiT samples decoded through each tokenizer",
}


def load_study(path: str | os.PathLike) -> StudyResults:
    """Load runs.csv, summary.csv, comparisons.csv, correlations.csv, the other tables and the figures of a study."""
    path = Path(path)
    if not (path / "summary.csv").is_file():
        raise LatentlabError(f"{path} is not a finished study (no summary.csv); run `latentlab run STUDY.yaml --out {path}`")
    config = json.loads((path / "study.json").read_text()) if (path / "study.json").is_file() else {}
    summary = pd.read_csv(path / "summary.csv")
    corr = pd.read_csv(path / "correlations.csv") if (path / "correlations.csv").is_file() else pd.DataFrame()
    figures = {k: path / "figures" / f"{k}.png" for k in FIGURES if (path / "figures" / f"{k}.png").is_file()}
    figures.update({p.stem: p for p in sorted((path / "figures").glob("metrics_vs_*.png")) if p.stem not in figures})
    tables = {p.stem: pd.read_csv(p) for p in sorted((path / "tables").glob("*.csv"))} if (path / "tables").is_dir() else {}
    runs = pd.read_csv(path / "runs.csv") if (path / "runs.csv").is_file() else pd.DataFrame()
    comparisons = pd.read_csv(path / "comparisons.csv") if (path / "comparisons.csv").is_file() else pd.DataFrame()
    info = json.loads((path / "analysis.json").read_text()) if (path / "analysis.json").is_file() else {}
    hyp, pairs = (pd.read_csv(path / f) if (path / f).is_file() else pd.DataFrame()
                  for f in ("hypotheses.csv", "hypotheses_pairs.csv"))
    return StudyResults(path, config, summary, corr, figures, tables, runs, comparisons, info, hyp, pairs)


def figure_caption(key: str) -> str:
    """The caption of a study figure (`FIGURES`, or "metrics_vs_TARGET": each metric against that target)."""
    if key in FIGURES:
        return FIGURES[key]
    return f"Each latent metric against {key.removeprefix('metrics_vs_')} (error bars: 95% intervals)"


def hypotheses_reading(res: StudyResults) -> str:
    """The generated paragraph on which hypothesis predicts the headline target (`hypotheses_paragraph`)."""
    if res.hypotheses.empty:
        return "This study has no hypotheses.csv (no predictor of a hypothesis varies across its tokenizers)."
    target = res.info.get("headline_target") or res.hypotheses.target.iloc[0]
    return hypotheses_paragraph(res.hypotheses, res.hypothesis_pairs, target, hypotheses=list(HYPOTHESES))


def strongest_correlations(corr: pd.DataFrame, target: str, k: int = 5) -> pd.DataFrame:
    """The `k` exploratory predictors with the largest |Spearman rho| against `target`."""
    if corr.empty:
        return corr
    sub = corr[(corr["target"] == target) & ~corr["primary"].astype(bool)].dropna(subset=["spearman"])
    return sub.reindex(sub["spearman"].abs().sort_values(ascending=False).index).head(k)


INJECTED = "# Parameters injected by latentlab.study.report.render_notebook"  # in every report: marks it as ours


def render_notebook(notebook: str | os.PathLike, out_html: str | os.PathLike, parameters: dict,
                    timeout: int = 600, cwd: str | os.PathLike | None = None) -> Path:
    """Execute `notebook` headless with `parameters` injected, and write it as HTML (atomically)."""
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbconvert import HTMLExporter
    except ImportError:
        raise LatentlabError("rendering reports needs the notebooks extra: pip install 'latentlab[notebooks]'") from None
    notebook = Path(notebook)
    if not notebook.is_file():
        raise LatentlabError(f"notebook not found: {notebook}")
    nb = nbformat.read(notebook, as_version=4)
    src = "\n".join([INJECTED] + [f"{k} = {v!r}" for k, v in parameters.items()])
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    at = tagged[0] + 1 if tagged else 0  # right after the notebook's own defaults, as papermill does
    nb.cells.insert(at, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or Path.cwd())}})
    try:
        client.execute()
    except Exception as e:  # nbclient raises CellExecutionError with the cell's traceback
        first = str(e).strip().splitlines()
        raise LatentlabError(f"notebook {notebook.name} failed: {first[-1] if first else type(e).__name__}") from None
    body, _ = HTMLExporter(exclude_input=False).from_notebook_node(nb)
    with atomic_path(out_html) as tmp:
        tmp.write_text(body)
    return Path(out_html)


# ---------------------------------------------------------------- assembling a study's outputs

def _fmt(v: float, spec: str = "+.2f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def primary_sentence(corr: pd.DataFrame) -> str:
    """The study's declared hypothesis and its result in one sentence: estimate, interval, p and n."""
    rows = corr[corr["primary"].astype(bool)] if len(corr) and "primary" in corr else corr.iloc[0:0]
    if rows.empty:
        return ("No primary hypothesis was declared (set `primary: {predictor: ..., target: ...}` in the study "
                "config): every correlation below is exploratory.")
    r = rows.iloc[0]
    return (f"Primary hypothesis, {r.predictor} against {r.target}: Spearman rho = {_fmt(r.spearman)} "
            f"[95% interval {_fmt(r.spearman_lo)}, {_fmt(r.spearman_hi)}], p = {_fmt(r.p_exact, '.3g')} "
            f"({r.p_method or 'no test'}), n = {int(r.n)} tokenizers (baselines excluded).")


def curve_bands(curves: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per tokenizer and step, the mean held-out SiT loss over seeds with its across-seed bootstrap interval."""
    rows = []
    mean = curves[curves.t.astype(str) == "mean"]
    for (name, stp), g in mean.groupby(["tokenizer", "step"], sort=False):
        runs = MetricRuns.set_level(g["loss"].to_numpy())
        est, lo, hi = interval(runs, rng=derive_seed(seed, name, int(stp), "curve"))
        rows.append({"tokenizer": name, "step": int(stp), "loss": est, "loss_lo": lo, "loss_hi": hi, "seeds": len(g)})
    return pd.DataFrame(rows, columns=["tokenizer", "step", "loss", "loss_lo", "loss_hi", "seeds"])


def _notes(reps: list[dict[str, StageResult]]) -> str | None:
    """What a tokenizer's eval, diffusability and gfid stages skipped, and why (e.g. no decode()), once each."""
    notes = [r[s].result["note"] for r in reps for s in ("eval", "diffusability", "gfid")
             if s in r and r[s].result.get("note")]
    return "; ".join(dict.fromkeys(notes)) or None


def _stage_tables(done: dict, gmms: list[StageResult]) -> dict[str, pd.DataFrame]:
    """The per-stage tables of every run, with a replicate column."""
    out: dict[str, list] = {"gmm": [], "probe": [], "recon": [], "generation": [], "diffusability": [],
                            "robustness": [], "sit_curves": []}
    for r, g in enumerate(gmms):
        out["gmm"].append(pd.read_csv(g.file("gmm.csv")).assign(replicate=r))
    for name, reps in done.items():
        for r, res in enumerate(reps):
            out["probe"].append(pd.DataFrame([{**res["probe"].result.get("probe", {}), "replicate": r}]))
            out["recon"].append(pd.DataFrame([{"tokenizer": name, "replicate": r, **res["eval"].result.get("row", {}),
                                               "note": res["eval"].result.get("note")}]))
            out["generation"].append(pd.DataFrame([{"tokenizer": name, "replicate": r, **res["gfid"].result.get("row", {}),
                                                    "note": res["gfid"].result.get("note")}]))
            diff = res["diffusability"]
            for table, file_key in (("diffusability", "csv"), ("robustness", "curves")):  # the stage's own CSVs
                if diff.result.get(file_key) and diff.file(diff.result[file_key]).is_file():
                    out[table].append(pd.read_csv(diff.file(diff.result[file_key])).assign(tokenizer=name, replicate=r))
            curve = res["sit"].file(res["sit"].result.get("curve", ""))
            if curve.is_file():
                out["sit_curves"].append(pd.read_csv(curve).assign(tokenizer=name, replicate=r))
    tables = {k: pd.concat(v, ignore_index=True) for k, v in out.items() if v}
    if "sit_curves" in tables:
        tables["sit_curves"] = tables["sit_curves"][["tokenizer", "replicate", "step", "t", "loss"]]
    return tables


def build_outputs(ctx, done: dict[str, list[dict[str, StageResult]]], gmms: list[StageResult], umap: StageResult,
                  work: Path) -> dict:
    """Write runs.csv, summary.csv, comparisons.csv, correlations.csv, tables/, figures/ (and report.html)."""
    components = list(ctx.sections["gmm"].components)
    rmetric, gmetric = fd_column_names(ctx.sections["metrics"])
    metrics = study_metrics(components, rmetric, gmetric)
    tables, figures = work / "tables", work / "figures"
    tables.mkdir()
    figures.mkdir()
    info = {name: {"arch": e.arch, "baseline": bool(e.baseline),
                   "teacher": done[name][0]["tokenizer"].result.get("teacher"), "note": _notes(done[name])}
            for name, e in ctx.entries.items()}
    values = collect_runs(done, gmms, metrics, info)
    summary, draws = summary_table(values, metrics, info, ctx.cfg.seed)
    baselines = [n for n, e in ctx.entries.items() if e.baseline]
    reference = ctx.cfg.reference or next((n for n in ctx.entries if n not in baselines), next(iter(ctx.entries)))
    comparisons = comparisons_table(values, reference, metrics, info, ctx.cfg.seed)
    targets = [m.name for m in metrics if m.role == "target" and m.name in summary]
    candidates = [m.name for m in metrics if m.role in ("predictor", "quality")]
    predictors, dropped = predictor_columns(summary, candidates, "baseline")
    primary = (ctx.cfg.primary["predictor"], ctx.cfg.primary["target"]) if ctx.cfg.primary else None
    corr = correlations(summary, predictors, targets, draws, "baseline", primary, control_column(rmetric),
                        seed=ctx.cfg.seed)
    corr = pd.concat([corr[corr.primary.astype(bool)], corr[~corr.primary.astype(bool)]], ignore_index=True)
    target = gmetric if gmetric in summary and summary[gmetric].notna().any() else "sit_loss"
    headline = primary[1] if primary and primary[1] in targets else target
    order = [headline] + [t for t in targets if t != headline]
    hyp_of = {m.name: m.hypothesis for m in metrics if m.role == "predictor" and m.hypothesis and m.name in predictors}
    reps = representatives(metrics, predictors)
    hyp = hypotheses_table(corr, hyp_of, reps, order)
    pairs = pairs_table(summary, hyp_of, reps, order, draws, "baseline", ctx.cfg.seed)
    save_csv(values.runs, work / "runs.csv")
    save_csv(summary, work / "summary.csv")
    save_csv(comparisons, work / "comparisons.csv")
    save_csv(corr, work / "correlations.csv")
    save_csv(hyp, work / "hypotheses.csv")
    save_csv(pairs, work / "hypotheses_pairs.csv")
    stage_tables = _stage_tables(done, gmms)
    for name, table in stage_tables.items():
        save_csv(table, tables / f"{name}.csv")
    save_csv(pd.read_csv(umap.file("umap.csv")), tables / "umap.csv")
    if "sit_curves" in stage_tables:
        bands = curve_bands(stage_tables["sit_curves"], ctx.cfg.seed)
        save_csv(bands, tables / "sit_curve_bands.csv")
        plot_curve_bands(bands, summary, figures / "sit_loss_curves.png")
    plot_nll_bands(summary, components, sorted(set(stage_tables["gmm"]["pca_dim"].astype(int))),
                   figures / "nll_vs_components.png")
    shutil.copyfile(umap.file("umap.png"), figures / "umap.png")
    plot_hypothesis_ranking(hyp, order, figures / "hypotheses.png", list(HYPOTHESES))
    plot_metrics_vs_target(summary, predictors, target, figures / "metrics_vs_gfid.png", corr)
    for t in targets:  # every other target gets its scatter too (issue 12: rho, interval and p in each title)
        if t != target and summary[t].notna().any():
            plot_metrics_vs_target(summary, predictors, t, figures / f"metrics_vs_{t}.png", corr)
    plot_comparisons(comparisons, figures / "comparisons.png")
    first = {n: reps[0] for n, reps in done.items()}
    recon = {n: r["eval"].file("recon_grid.png") for n, r in first.items() if r["eval"].file("recon_grid.png").is_file()}
    plot_image_panels(recon, figures / "reconstructions.png")
    samples = {n: r["sample"].file("samples/grid.png") for n, r in first.items()
               if r["sample"].file("samples/grid.png").is_file()}
    plot_image_panels(samples, figures / "samples.png", "SiT samples")
    sentence = primary_sentence(corr)
    reading = hypotheses_paragraph(hyp, pairs, headline, hypotheses=list(HYPOTHESES))
    save_json({"dataset": ctx.cfg.dataset, "tokenizers": list(done), "seeds": ctx.cfg.seeds, "components": components,
               "baselines": baselines, "reference": reference, "targets": targets, "predictors": predictors,
               "dropped_predictors": dropped, "primary": ctx.cfg.primary, "primary_result": sentence,
               "partial_control": control_column(rmetric), "headline_target": headline, "representatives": reps,
               "hypotheses_result": reading}, work / "analysis.json")
    report = render_report(work) if ctx.cfg.report else None
    return {"runs": "runs.csv", "summary": "summary.csv", "comparisons": "comparisons.csv",
            "correlations": "correlations.csv", "hypotheses": "hypotheses.csv", "hypotheses_pairs": "hypotheses_pairs.csv",
            "report": report, "columns": list(summary.columns), "primary": sentence, "hypotheses_result": reading}


def render_report(study_dir: Path) -> str | None:
    """Execute notebooks/report.ipynb against `study_dir` into report.html (None if the notebook is absent)."""
    nb = NOTEBOOK_DIR / "report.ipynb"
    if not nb.is_file():
        warn(f"report notebook not found at {nb} (installed without the source tree); skipped report.html")
        return None
    render_notebook(nb, study_dir / "report.html", {"study_dir": str(study_dir)}, cwd=study_dir)
    return "report.html"
