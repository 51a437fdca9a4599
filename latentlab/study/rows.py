"""A stage's result, as the study tables read it: the row, per-image and replicate files of the newer measures.

    diffusability_result(summary)     the diffusability stage's result from `run_diffusability`'s summary
    generation_row(summary, ...)      the gfid stage's result: gFD, gKID, the real-vs-real floor, conditional
                                      accuracy (with replicates.csv for the within-run bootstrap)
    with_row(stage, extra)            a finished stage with values read back from its own files added to its row
    sit_reference_row(stage)          those values for a sit stage: sit_loss_linear, _gap, _raw, _auc

`with_row` lets the study report what a cached stage's files already hold without changing the stage
(its key and stage.json), so a long study reuses its sit stages.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from latentlab.io import save_csv
from latentlab.study.cache import StageResult
from latentlab.study.columns import extractor_name

DIFFUSABILITY_COLUMNS = ("hf_energy", "spectral_slope", "image_hf_energy", "image_spectral_slope", "response_hf",
                         "response_slope", "scale_psnr", "scale_psnr_ref", "noise_robustness", "mask_robustness",
                         "twonn")
DIFFUSABILITY_IMAGES = ("scale_psnr", "noise_robustness", "mask_robustness")  # diffusability_images.csv columns


def diffusability_result(s: dict) -> dict:
    """The diffusability stage's result from `run_diffusability`'s summary (one tokenizer): its row, the
    per-image values of diffusability_images.csv, and a note saying what was not measured and why."""
    raw = s["rows"][0]
    row = {c: float(raw[c]) for c in DIFFUSABILITY_COLUMNS if isinstance(raw.get(c), (int, float))}
    exact = {c: "inf" for c, v in row.items() if v == math.inf}  # raw pixels' identity decoder: exact, as eval's psnr
    notes = [str(raw[k]) for k in ("spectrum_note", "scale_note", "decoder_note") if raw.get(k)]
    out = {"row": {**row, **exact}, "csv": "diffusability.csv", "curves": "robustness.csv",
           "figure": "diffusability.png", "seconds": raw.get("seconds"),
           "per_image": {"file": "diffusability_images.csv",
                         "columns": {c: c for c in DIFFUSABILITY_IMAGES if c in row and math.isfinite(row[c])}}}
    if notes:
        out["note"] = "diffusability: " + "; ".join(dict.fromkeys(notes))
    return out


N_COND_BOOT = 2000  # bootstrap replicates of the conditional accuracy


def generation_row(s: dict, work: Path, images: Path, seed: int) -> dict:
    """The gfid stage's result from `metrics.evaluate.fid`'s summary `s`: gFD, gKID, the real-vs-real floor,
    conditional accuracy and IS, with the within-run replicates in replicates.csv.

    The exact (Clopper-Pearson) interval of one run's accuracy is in runs.csv as cond_acc_*_exact_lo/_hi.
    Replicates: the gFD bootstrap over the generated features (fd_bootstrap.csv) and, for the conditional
    accuracy, Binomial(n, acc) / n draws: exactly the bootstrap distribution of the mean of the n samples'
    0/1 correctness (resampling them with replacement), without their logits.
    """
    metric, gname = s["metric"], "g" + s["metric"]
    ext = extractor_name(gname)
    row = {gname: s[metric]}
    for src, dst in ((f"kid_{ext}", f"gkid_{ext}"), (f"kid_{ext}_std", f"gkid_{ext}_std"),
                     (f"fd_floor_{ext}", f"gfd_floor_{ext}"), (f"kid_floor_{ext}", f"gkid_floor_{ext}"),
                     (f"cond_acc_{ext}", f"cond_acc_{ext}"), (f"cond_acc_{ext}_lo", f"cond_acc_{ext}_exact_lo"),
                     (f"cond_acc_{ext}_hi", f"cond_acc_{ext}_exact_hi"), ("cond_acc_chance", "cond_acc_chance")):
        if isinstance(s.get(src), (int, float)):
            row[dst] = float(s[src])
    is_name = s["extractor"].get("is_metric")
    row.update({k: v for k, v in s.items() if is_name and k.startswith(is_name) and isinstance(v, float)})
    reps: dict[str, pd.Series] = {}
    if (work / "fd_bootstrap.csv").is_file():
        reps[gname] = pd.read_csv(work / "fd_bootstrap.csv")[metric]
    acc = row.get(f"cond_acc_{ext}")
    if acc is not None:
        with np.load(images) as z:
            n = int((np.asarray(z["labels"]) >= 0).sum())
        draws = np.random.default_rng(seed).binomial(n, acc, N_COND_BOOT) / n
        reps[f"cond_acc_{ext}"] = pd.Series(draws)
    out = {"row": row}
    if reps:
        save_csv(pd.DataFrame(reps).rename_axis("replicate").reset_index(), work / "replicates.csv")
        out["replicates"] = {"file": "replicates.csv", "columns": {c: c for c in reps}}
    return out


def with_row(stage: StageResult, extra: Callable[[StageResult], dict]) -> StageResult:
    """`stage` with `extra(stage)` added to its row: values read back from its files when the study collects rows.

    The stage itself (its key, its stage.json, its files) is unchanged, so a cached stage is reused as is.
    """
    return dataclasses.replace(stage, result={**stage.result, "row": {**stage.result.get("row", {}), **extra(stage)}})


def sit_reference_row(stage: StageResult) -> dict:
    """sit_loss_linear, sit_loss_gap, sit_loss_raw and sit_loss_auc from a sit stage's run/heldout_loss.csv.

    At the last evaluation (t = "mean"): the linear-Gaussian reference of the latents, the EMA model's gap
    to it and the raw model's held-out loss; sit_loss_auc is the mean held-out loss over every evaluation
    (`sit.training.train_sit`'s own definition). Columns an older run did not record are left out.
    """
    path = stage.file(stage.result.get("curve") or "run/heldout_loss.csv")
    if not path.is_file():
        return {}
    curve = pd.read_csv(path)
    mean = curve[curve["t"].astype(str) == "mean"].sort_values("step", kind="stable")
    if mean.empty:
        return {}
    last = mean.iloc[-1]
    row = {"sit_loss_auc": float(mean["loss"].mean())}
    for col, src in (("sit_loss_linear", "loss_linear"), ("sit_loss_gap", "gap"), ("sit_loss_raw", "loss_raw")):
        if src in mean and np.isfinite(float(last[src])):
            row[col] = float(last[src])
    return row
