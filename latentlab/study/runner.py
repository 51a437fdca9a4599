"""A whole study from one YAML: `latentlab run study.yaml --out STUDY_DIR`.

For each replicate r = 0 .. seeds-1 and each tokenizer of the config (sweeps expanded into variants)::

    tokenizer  train it (or: pixels / a pretrained tokenizer / an existing store: nothing to train)
    eval       PSNR, SSIM and rFD/rFID on the test split                 (latentlab.metrics)
    extract    train and test latent stores                              (latentlab.extract)
    probe      linear probe, kNN and structure metrics                   (latentlab.analysis.probe)
    sit        SiT trained on the latents, with its held-out loss        (latentlab.sit.training)
    sample     SiT samples decoded through the tokenizer                 (latentlab.sit.sample)
    gfid       FD of the samples against the train split                 (latentlab.metrics)

and for the study as a whole (owner ``_study``): ``gmm`` per replicate (NLL against components in one
common PCA dimension, so it needs every tokenizer of the replicate), ``umap`` (one panel per tokenizer,
replicate 0) and ``relate`` (runs.csv, summary.csv, comparisons.csv, correlations.csv, figures,
report.html). Every stage is cached in ``STUDY_DIR/<tokenizer>/seed-<r>/<stage>/`` (or
``_study/...``) and skipped while the hash of its config and inputs is unchanged
(`latentlab.study.cache`); a killed run, started again, redoes only what did not finish, and raising
`seeds` runs only the new replicates (and the study-level tables).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict
from pathlib import Path

import latentlab.study.stages as S
from latentlab.errors import LatentlabError
from latentlab.io import save_json
from latentlab.outputs import claim_dir
from latentlab.study.cache import StageLog, StageResult, run_stage
from latentlab.study.config import (RESUMABLE_STAGES, STUDY_KIND, STUDY_VERSION, TOKENIZER_STAGES, load_study_config,
                                    section_configs)
from latentlab.utils import info, progress, world_size


@contextlib.contextmanager
def _workspace(path: Path):
    """Cache extractors and statistics inside the study unless LATENTLAB_WORKSPACE is set."""
    old = os.environ.get("LATENTLAB_WORKSPACE")
    if old is None:
        os.environ["LATENTLAB_WORKSPACE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LATENTLAB_WORKSPACE", None)


def run_study(config: str | os.PathLike | dict, out: str | os.PathLike) -> dict:
    """Run (or resume) every stage of a study into `out`; returns the summary (paths and the log)."""
    if world_size() > 1:
        raise LatentlabError("latentlab run is one process (one GPU); run the heavy stages with torchrun "
                             "(train-tokenizer, extract, train-sit) and give the study their runs/stores")
    cfg, entries = load_study_config(config)
    sections = section_configs(cfg)
    claim_dir(out, STUDY_KIND)  # absent, empty or a study: never someone else's folder
    out = Path(out).resolve()
    save_json({**asdict(cfg), "version": STUDY_VERSION}, out / "study.json")
    log = StageLog()
    t0 = time.perf_counter()
    ctx = S.StudyContext(cfg, sections, out, log, entries)
    total = cfg.seeds * (len(entries) * len(TOKENIZER_STAGES) + 1) + 2
    bar = progress(total=total, desc="study", leave=True)

    def step(owner: str, stage: str, key, fn) -> StageResult:
        bar.set_postfix_str(f"{owner}/{stage}")
        res = run_stage(out, owner, stage, key, fn, log, announce=info, resumable=stage in RESUMABLE_STAGES)
        bar.update(1)
        return res

    with _workspace(out / "workspace"):
        relate = S.walk(ctx, step)  # every stage, in order (nothing is skipped)
    bar.close()
    S.publish(relate, out)
    summary = {"out": str(out), "runs": str(out / "runs.csv"), "summary": str(out / "summary.csv"),
               "comparisons": str(out / "comparisons.csv"), "correlations": str(out / "correlations.csv"),
               "primary": relate.result.get("primary"),
               "report": str(out / "report.html") if (out / "report.html").is_file() else None,
               "figures": sorted(str(p) for p in (out / "figures").glob("*.png")),
               "ran": log.ran(), "reused": log.reused(), "seconds": round(time.perf_counter() - t0, 1)}
    save_json({"log": log.entries, **summary}, out / "run_log.json")
    return summary
