"""`latentlab run` (a whole study) and `latentlab report` (render a study's report notebook)."""

from __future__ import annotations

from pathlib import Path

import click

from latentlab.cli import cli
from latentlab.cli.common import emit, json_option


def _text(s: dict) -> str:
    import math

    import pandas as pd

    df = pd.read_csv(s["summary"])
    metrics = [c for c in df.columns if c in ("psnr", "lp_top1", "knn_top1", "sit_loss")
               or (c.startswith(("rfd", "rfid", "gfd", "gfid")) and not c.endswith(("_lo", "_hi")))]

    def cell(row, c) -> str:
        v, lo, hi = row[c], row.get(f"{c}_lo"), row.get(f"{c}_hi")
        if lo is None or not (isinstance(lo, float) and math.isfinite(lo)):
            return f"{v:.4g}"
        return f"{v:.4g} [{lo:.4g}, {hi:.4g}]"

    table = pd.DataFrame([{"tokenizer": r["tokenizer"] + (" (baseline)" if r.get("baseline") else ""),
                           "interval": r.get("interval"), **{c: cell(r, c) for c in metrics}}
                          for r in df.to_dict("records")])
    lines = []
    if s.get("primary"):
        lines.append(s["primary"] + "\n")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        lines.append(table.to_string(index=False))
    lines.append(f"\nran {len(s['ran'])} stages, reused {len(s['reused'])} in {s['seconds']:.0f} s")
    lines.append(f"summary:      {s['summary']} (95% intervals: M_lo, M_hi)\ncomparisons:  {s['comparisons']}\n"
                 f"correlations: {s['correlations']}")
    if s.get("report"):
        lines.append(f"report:       {s['report']}")
    return "\n".join(lines)


@cli.command("run")
@click.argument("config", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Study directory (created; reused stages are kept).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Jobs at once, each its own process (default 1: every stage in this process, in order); locally a "
                   "job is a run of one chain's consecutive stages. "
                   "Overrides executor.jobs; with submitit, the most jobs queued at once.")
@click.option("--gpus-per-job", type=click.IntRange(min=1), default=None,
              help="GPUs of each local job (CUDA_VISIBLE_DEVICES); a training stage with more than one runs under "
                   "torchrun. Overrides executor.gpus_per_job.")
@click.option("--executor", "kind", type=click.Choice(["local", "submitit"]), default=None,
              help="local processes, or one submitit job per stage (Slurm; settings from the config's executor: "
                   "section). Overrides executor.kind.")
@click.option("--cluster", type=click.Choice(["slurm", "local"]), default=None,
              help="submitit: slurm, or submitit's local executor (no Slurm). Default: Slurm when sbatch exists.")
@click.option("--stage", multiple=True, hidden=True,
              help="Internal (what each job runs): run only stage OWNER/STAGE, its upstream stages from the cache; "
                   "repeated, these stages one after another.")
@json_option
def run_cmd(config, out, jobs, gpus_per_job, kind, cluster, stage, as_json):
    """Run a whole study from a YAML config: train/load tokenizers, extract latents, measure their
    structure (GMM NLL, probes, UMAP), train SiT on them, sample, compute gFD/gFID and relate it all.

    Each stage is cached under OUT/<tokenizer>/seed-<r>/<stage>/ and skipped while its inputs are
    unchanged; a run that was killed finishes where it stopped when started again, and raising `seeds`
    runs only the new replicates. With --jobs N (or --executor submitit) independent stages run at
    once in their own processes (locally a chain's consecutive stages share one; with submitit each
    stage is a job); a failed stage stops only the stages that need it.

    \b
    latentlab run studies/default.yaml --out demo-out
    latentlab run studies/default.yaml --out demo-out --jobs 8
    """
    from latentlab.study.config import executor_config, load_study_config
    from latentlab.study.graph import run_one_stage, run_study_graph
    from latentlab.study.runner import run_study

    if stage:
        for one in stage:  # one process, one stage after another (a job of `--jobs N` runs a chain's stages)
            emit(run_one_stage(config, out, one), as_json, lambda s: f"{s['stage']}: {s['path']}")
        return
    opts = executor_config(load_study_config(config)[0], kind=kind, jobs=jobs, gpus_per_job=gpus_per_job,
                           cluster=cluster)
    if opts.kind == "local" and opts.jobs == 1 and opts.gpus_per_job == 1:
        emit(run_study(config, out), as_json, _text)  # every stage in this process, in order
    else:
        emit(run_study_graph(config, out, opts), as_json, _text)


@cli.command("report")
@click.argument("study_dir", type=click.Path())
@click.option("--out", default=None, type=click.Path(), help="HTML file (default: STUDY_DIR/report.html).")
@json_option
def report_cmd(study_dir, out, as_json):
    """Render notebooks/report.ipynb for a finished study directory as HTML."""
    from latentlab.outputs import check_output_file
    from latentlab.study.report import INJECTED, NOTEBOOK_DIR, load_study, render_notebook

    load_study(study_dir)  # a one-line error when it is not a finished study
    if out is not None:
        check_output_file(out, INJECTED)  # never replaces a file latentlab did not write
    html = render_notebook(NOTEBOOK_DIR / "report.ipynb", out or Path(study_dir) / "report.html",
                           {"study_dir": str(Path(study_dir).resolve())}, cwd=study_dir)
    emit({"report": str(html)}, as_json, f"wrote {html}")
