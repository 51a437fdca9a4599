"""A whole study from one YAML: `latentlab run study.yaml --out STUDY_DIR`.

For each tokenizer of the config, in order::

    tokenizer  train it (or: pixels / a pretrained tokenizer / an existing store: nothing to train)
    eval       PSNR, SSIM and rFD/rFID on the test split                 (latentlab.metrics)
    extract    train and test latent stores                              (latentlab.extract)
    probe      linear probe, kNN and structure metrics                   (latentlab.analysis.probe)
    sit        SiT trained on the latents, with its held-out loss        (latentlab.sit.training)
    sample     SiT samples decoded through the tokenizer                 (latentlab.sit.sample)
    gfid       FD of the samples against the train split                 (latentlab.metrics)

and for the study as a whole (owner ``_study``): ``gmm`` (NLL against components in one
common PCA dimension, so it needs every tokenizer), ``umap`` (one panel per tokenizer) and
``relate`` (summary.csv, correlations.csv, figures, report.html). Every stage is cached in
``STUDY_DIR/<owner>/<stage>/`` and skipped while the hash of its config and inputs is unchanged
(`latentlab.study.cache`); a killed run, started again, redoes only what did not finish.
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
    total = len(entries) * len(TOKENIZER_STAGES) + 3
    bar = progress(total=total, desc="study", leave=True)

    def step(owner: str, stage: str, key, fn) -> StageResult:
        bar.set_postfix_str(f"{owner}/{stage}")
        res = run_stage(out, owner, stage, key, fn, log, announce=info, resumable=stage in RESUMABLE_STAGES)
        bar.update(1)
        return res

    with _workspace(out / "workspace"):
        done: dict[str, dict[str, StageResult]] = {}
        for name, entry in entries.items():
            done[name] = S.tokenizer_stages(ctx, name, entry, step)
        gmm = S.gmm_stage(ctx, done, step)
        umap = S.umap_stage(ctx, done, step)
        relate = S.relate_stage(ctx, done, gmm, umap, step)
    bar.close()
    S.publish(relate, out)
    summary = {"out": str(out), "summary": str(out / "summary.csv"), "correlations": str(out / "correlations.csv"),
               "report": str(out / "report.html") if (out / "report.html").is_file() else None,
               "figures": sorted(str(p) for p in (out / "figures").glob("*.png")),
               "ran": log.ran(), "reused": log.reused(), "seconds": round(time.perf_counter() - t0, 1)}
    save_json({"log": log.entries, **summary}, out / "run_log.json")
    return summary
