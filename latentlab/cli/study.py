"""`latentlab run` (a whole study) and `latentlab report` (render a study's report notebook)."""

from __future__ import annotations

from pathlib import Path

import click

from latentlab.cli import cli
from latentlab.cli.common import emit, json_option


def _text(s: dict) -> str:
    import pandas as pd

    lines = []
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 4):
        df = pd.read_csv(s["summary"])
        show = [c for c in df.columns if c in ("tokenizer", "psnr", "ssim", "lp_top1", "knn_top1", "rankme",
                                               "pca_dim", "sit_loss") or c.startswith(("rfd", "rfid", "gfd", "gfid"))
                or c.startswith("gmm_nll_k")][:16]
        lines.append(df[show].to_string(index=False))
    lines.append(f"\nran {len(s['ran'])} stages, reused {len(s['reused'])} in {s['seconds']:.0f} s")
    lines.append(f"summary:      {s['summary']}\ncorrelations: {s['correlations']}")
    if s.get("report"):
        lines.append(f"report:       {s['report']}")
    return "\n".join(lines)


@cli.command("run")
@click.argument("config", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Study directory (created; reused stages are kept).")
@json_option
def run_cmd(config, out, as_json):
    """Run a whole study from a YAML config: train/load tokenizers, extract latents, measure their
    structure (GMM NLL, probes, UMAP), train SiT on them, sample, compute gFD/gFID and relate it all.

    Each stage is cached under OUT/<tokenizer>/<stage>/ and skipped while its inputs are unchanged;
    a run that was killed finishes where it stopped when started again.

    \b
    latentlab run studies/default.yaml --out demo-out
    """
    from latentlab.study.runner import run_study

    emit(run_study(config, out), as_json, _text)


@cli.command("report")
@click.argument("study_dir", type=click.Path())
@click.option("--out", default=None, type=click.Path(), help="HTML file (default: STUDY_DIR/report.html).")
@json_option
def report_cmd(study_dir, out, as_json):
    """Render notebooks/report.ipynb for a finished study directory as HTML."""
    from latentlab.study.report import NOTEBOOK_DIR, load_study, render_notebook

    load_study(study_dir)  # a one-line error when it is not a finished study
    html = render_notebook(NOTEBOOK_DIR / "report.ipynb", out or Path(study_dir) / "report.html",
                           {"study_dir": str(Path(study_dir).resolve())}, cwd=study_dir)
    emit({"report": str(html)}, as_json, f"wrote {html}")
