"""Assemble a study's tables, correlations, figures and report from its finished stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from latentlab.analysis.relate import correlations, metric_columns
from latentlab.io import save_csv, save_json
from latentlab.stages import StageResult
from latentlab.utils import warn

PROBE_COLUMNS = {"top1": "lp_top1", "top5": "lp_top5", "knn_top1": "knn_top1", "silhouette": "silhouette",
                 "calinski_harabasz": "calinski_harabasz", "davies_bouldin": "davies_bouldin",
                 "fisher_ratio": "fisher_ratio", "rankme": "rankme"}


def summary_columns(components: list[int], rmetric: str, gmetric: str) -> list[str]:
    """The documented columns of summary.csv, in order (the first is the tokenizer name)."""
    return (["tokenizer", "arch", "teacher", "psnr", "ssim", rmetric] + list(PROBE_COLUMNS.values())
            + ["pca_dim", "explained_variance"]
            + [f"gmm_nll_k{k}" for k in components] + [f"gmm_nll_per_dim_k{k}" for k in components]
            + ["sit_loss", "sit_loss_curve", gmetric])


def fd_column_names(metrics_cfg) -> tuple[str, str]:
    """(reconstruction, generation) FD column names for the study's extractor: rfid/gfid only for Inception."""
    name = metrics_cfg.extractor.split(":")[0]
    base = "fid" if name == "inception" else f"fd_{name}"
    return "r" + base, "g" + base


def _sit_curve(stage: StageResult) -> pd.DataFrame | None:
    path = stage.file(stage.result.get("curve", ""))
    return pd.read_csv(path) if path.is_file() else None


def build_outputs(ctx, done: dict[str, dict[str, StageResult]], gmm: StageResult, umap: StageResult,
                  work: Path) -> dict:
    """Write summary.csv, correlations.csv, tables/, figures/ (and report.html) into `work`."""
    from latentlab.plots.sit import plot_heldout
    from latentlab.plots.study import plot_image_panels, plot_metrics_vs_target

    components = list(ctx.sections["gmm"].components)
    rmetric, gmetric = fd_column_names(ctx.sections["metrics"])
    tables, figures = work / "tables", work / "figures"
    tables.mkdir()
    figures.mkdir()

    gmm_table = pd.read_csv(gmm.file("gmm.csv"))
    rows, curves, probe_rows, recon_rows, gfd_rows = [], {}, [], [], []
    for name, res in done.items():
        tok = res["tokenizer"].result
        row: dict = {"tokenizer": name, "arch": ctx.entries[name].arch, "teacher": tok.get("teacher")}
        row.update({k: float(v) if v == "inf" else v
                    for k, v in res["eval"].result.get("row", {}).items() if k in ("psnr", "ssim", rmetric)})
        recon_rows.append({"tokenizer": name, **res["eval"].result.get("row", {})})
        pr = res["probe"].result["row"]
        probe_rows.append(pr)
        row.update({new: pr.get(old) for old, new in PROBE_COLUMNS.items()})
        g = gmm_table[gmm_table.tokenizer == name]
        if len(g):
            row["pca_dim"] = int(g.pca_dim.iloc[0])
            row["explained_variance"] = float(g.explained_variance.iloc[0])
            for _, r in g.iterrows():
                row[f"gmm_nll_k{int(r.n_components)}"] = float(r.heldout_nll)
                row[f"gmm_nll_per_dim_k{int(r.n_components)}"] = float(r.nll_per_dim)
        curve = _sit_curve(res["sit"])
        if curve is not None:
            curves[name] = curve
            mean = curve[curve.t.astype(str) == "mean"].sort_values("step")
            row["sit_loss"] = float(mean.loss.iloc[-1]) if len(mean) else None
            row["sit_loss_curve"] = json.dumps([[int(s), round(float(v), 6)] for s, v in zip(mean.step, mean.loss)])
        gr = res["gfid"].result.get("row", {})
        gfd_rows.append({"tokenizer": name, **gr})
        row.update(gr)
        rows.append(row)

    cols = summary_columns(components, rmetric, gmetric)
    summary = pd.DataFrame(rows)
    extra = [c for c in summary.columns if c not in cols]
    summary = summary.reindex(columns=cols + extra)
    targets = [c for c in ("sit_loss", gmetric) if c in summary]
    corr = correlations(summary, targets)
    save_csv(summary, work / "summary.csv")
    save_csv(corr, work / "correlations.csv")
    save_csv(gmm_table, tables / "gmm.csv")
    save_csv(pd.DataFrame(probe_rows), tables / "probe.csv")
    save_csv(pd.DataFrame(recon_rows), tables / "recon.csv")
    save_csv(pd.DataFrame(gfd_rows), tables / "generation.csv")
    if curves:
        save_csv(pd.concat([c.assign(tokenizer=n) for n, c in curves.items()], ignore_index=True)
                 [["tokenizer", "step", "t", "loss"]], tables / "sit_curves.csv")
        plot_heldout(curves, figures / "sit_loss_curves.png")
    shutil.copyfile(gmm.file("nll_vs_components.png"), figures / "nll_vs_components.png")
    shutil.copyfile(umap.file("umap.png"), figures / "umap.png")
    save_csv(pd.read_csv(umap.file("umap.csv")), tables / "umap.csv")
    target = gmetric if summary[gmetric].notna().any() else "sit_loss"
    plot_metrics_vs_target(summary, metric_columns(summary, targets), target, figures / "metrics_vs_gfid.png", corr)
    recon = {n: r["eval"].file("recon_grid.png") for n, r in done.items() if r["eval"].file("recon_grid.png").is_file()}
    plot_image_panels(recon, figures / "reconstructions.png")
    samples = {n: r["sample"].file("samples/grid.png") for n, r in done.items()
               if r["sample"].file("samples/grid.png").is_file()}
    plot_image_panels(samples, figures / "samples.png", "SiT samples")
    save_json({"dataset": ctx.cfg.dataset, "tokenizers": list(done), "components": components,
               "targets": targets}, work / "study.json")
    report = None
    if ctx.cfg.report:
        report = render_report(work)
    return {"summary": "summary.csv", "correlations": "correlations.csv", "report": report,
            "columns": list(summary.columns)}


def render_report(study_dir: Path) -> str | None:
    """Execute notebooks/report.ipynb against `study_dir` into report.html (None if the notebook is absent)."""
    from latentlab.report import NOTEBOOK_DIR, render_notebook

    nb = NOTEBOOK_DIR / "report.ipynb"
    if not nb.is_file():
        warn(f"report notebook not found at {nb} (installed without the source tree); skipped report.html")
        return None
    render_notebook(nb, study_dir / "report.html", {"study_dir": str(study_dir)}, cwd=study_dir)
    return "report.html"
