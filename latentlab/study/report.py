"""A study's tables, correlations, figures and report: assembled from its finished stages, and read back.

Reading a study directory for the report notebooks, and rendering them to HTML.

The notebooks in `notebooks/` only call these functions (and the plotting and analysis
modules); they hold no library logic. `render_notebook` executes a notebook headless with
nbclient, with its parameters injected as the first cell, and writes HTML with nbconvert.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from latentlab.analysis.relate import correlations, metric_columns
from latentlab.errors import LatentlabError
from latentlab.io import atomic_path, save_csv, save_json
from latentlab.plots.sit import plot_heldout
from latentlab.plots.study import plot_image_panels, plot_metrics_vs_target
from latentlab.study.cache import StageResult
from latentlab.utils import warn

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


FIGURES = {
    "nll_vs_components": "NLL against the number of GMM components (MAETok Fig. 2a)",
    "sit_loss_curves": "SiT held-out loss during training (MAETok Fig. 2b)",
    "umap": "UMAP of each tokenizer's latents, coloured by class (MAETok Fig. 4)",
    "metrics_vs_gfid": "Each latent metric against generation quality",
    "reconstructions": "Originals (top) against reconstructions, per tokenizer",
    "samples": "SiT samples decoded through each tokenizer",
}


def load_study(path: str | os.PathLike) -> StudyResults:
    """Load summary.csv, correlations.csv, the other tables and the figures of a study directory."""
    path = Path(path)
    if not (path / "summary.csv").is_file():
        raise LatentlabError(f"{path} is not a finished study (no summary.csv); run `latentlab run STUDY.yaml --out {path}`")
    config = json.loads((path / "study.json").read_text()) if (path / "study.json").is_file() else {}
    summary = pd.read_csv(path / "summary.csv")
    corr = pd.read_csv(path / "correlations.csv") if (path / "correlations.csv").is_file() else pd.DataFrame()
    figures = {k: path / "figures" / f"{k}.png" for k in FIGURES if (path / "figures" / f"{k}.png").is_file()}
    tables = {p.stem: pd.read_csv(p) for p in sorted((path / "tables").glob("*.csv"))} if (path / "tables").is_dir() else {}
    return StudyResults(path, config, summary, corr, figures, tables)


def strongest_correlations(corr: pd.DataFrame, target: str, k: int = 5) -> pd.DataFrame:
    """The `k` metrics with the largest |Spearman rho| against `target`."""
    if corr.empty:
        return corr
    sub = corr[corr["target"] == target].dropna(subset=["spearman"])
    return sub.reindex(sub["spearman"].abs().sort_values(ascending=False).index).head(k)


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
    src = "# Parameters injected by latentlab.study.report.render_notebook\n" + "\n".join(
        f"{k} = {v!r}" for k, v in parameters.items())
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
        notes = [r.result["note"] for r in (res["eval"], res["gfid"]) if r.result.get("note")]
        recon_rows.append({"tokenizer": name, **res["eval"].result.get("row", {}), "note": res["eval"].result.get("note")})
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
        gfd_rows.append({"tokenizer": name, **gr, "note": res["gfid"].result.get("note")})
        row.update(gr)
        row["note"] = "; ".join(notes) or None
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
    nb = NOTEBOOK_DIR / "report.ipynb"
    if not nb.is_file():
        warn(f"report notebook not found at {nb} (installed without the source tree); skipped report.html")
        return None
    render_notebook(nb, study_dir / "report.html", {"study_dir": str(study_dir)}, cwd=study_dir)
    return "report.html"
