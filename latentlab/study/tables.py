"""The study's numbers: every run's metrics collected from its stages, then runs.csv, summary.csv and comparisons.csv.

    collect_runs(done, gmms, metrics)      stage results -> RunValues (a row per run, per-image values, replicates)
    summary_table(values, ...)             one row per tokenizer: M, M_lo, M_hi for every metric, and the
                                           bootstrap draws behind them (correlations.csv reuses them)
    comparisons_table(values, reference)   every tokenizer against the reference, per-image metric by metric

Which columns exist, and whether they are per-image or set-level, is `latentlab.study.columns.METRICS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from latentlab.analysis.inference import (N_BOOT, MetricRuns, hierarchical_draws, paired_difference,
                                          percentile_interval, seed_choice)
from latentlab.study.cache import StageResult
from latentlab.study.columns import MetricColumn
from latentlab.utils import derive_seed

INFO_COLUMNS = ["tokenizer", "arch", "baseline", "seeds", "interval", "teacher", "pca_dim"]


@dataclass
class RunValues:
    """Every run of a study: the runs.csv rows, and per tokenizer and metric the values the intervals resample."""

    runs: pd.DataFrame
    metrics: dict[str, dict[str, MetricRuns]] = field(default_factory=dict)       # tokenizer -> column -> runs
    images: dict[str, dict[str, list[pd.Series]]] = field(default_factory=dict)   # tokenizer -> column -> per seed


def _number(v):
    if v == "inf":
        return math.inf
    return v


def _stage_table(stage: StageResult, spec: dict | None) -> pd.DataFrame | None:
    if not spec:
        return None
    path = stage.file(spec["file"])
    return pd.read_csv(path) if path.is_file() else None


def collect_runs(done: dict[str, list[dict[str, StageResult]]], gmms: list[StageResult], metrics: list[MetricColumn],
                 info: dict[str, dict]) -> RunValues:
    """Gather every run's row, per-image values and within-run replicates from its stage results.

    `info[name]` holds the tokenizer's descriptive columns (arch, baseline); a registered per-image
    metric whose stage wrote no per-image file (raw pixels' PSNR) falls back to its set-level value.
    """
    rows, values = [], RunValues(pd.DataFrame())
    names = [m.name for m in metrics]
    for name, reps in done.items():
        per_rep = []
        for r, res in enumerate(reps):
            row: dict = {"tokenizer": name, "replicate": r, **info.get(name, {})}
            images, replicates = {}, {}
            for stage in res.values():
                row.update({k: _number(v) for k, v in stage.result.get("row", {}).items()})
                pi = _stage_table(stage, stage.result.get("per_image"))
                if pi is not None:
                    for col, src in stage.result["per_image"]["columns"].items():
                        images[col] = pd.Series(pi[src].to_numpy(np.float64), index=pi["index"].to_numpy())
                rp = _stage_table(stage, stage.result.get("replicates"))
                if rp is not None:
                    for col, src in stage.result["replicates"]["columns"].items():
                        replicates[col] = rp[src].to_numpy(np.float64)
            if r < len(gmms):
                row.update(gmms[r].result.get("rows", {}).get(name, {}))
            rows.append(row)
            per_rep.append((row, images, replicates))
        values.metrics[name], values.images[name] = {}, {}
        for m in metrics:
            if not all(m.name in row or m.name in im for row, im, _ in per_rep):
                continue
            if m.kind == "per-image" and all(m.name in im for _, im, _ in per_rep):
                values.images[name][m.name] = [im[m.name] for _, im, _ in per_rep]
                values.metrics[name][m.name] = MetricRuns.per_image([im[m.name].to_numpy() for _, im, _ in per_rep])
            else:
                values.metrics[name][m.name] = MetricRuns.set_level(
                    [pd.to_numeric(row.get(m.name), errors="coerce") for row, _, _ in per_rep],
                    [rp.get(m.name) for _, _, rp in per_rep])
    runs = pd.DataFrame(rows)
    lead = ["tokenizer", "replicate"] + [c for c in INFO_COLUMNS[1:] if c in runs] + [n for n in names if n in runs]
    values.runs = runs.reindex(columns=lead + [c for c in runs.columns if c not in lead])
    return values


def summary_table(values: RunValues, metrics: list[MetricColumn], info: dict[str, dict], seed: int = 0,
                  n_boot: int = N_BOOT) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(summary, draws): a row per tokenizer with M, M_lo, M_hi; draws[M] is (tokenizers, n_boot).

    M is the mean over seeds; the interval is the 95% percentile interval of the hierarchical bootstrap
    (seeds, then held-out images for per-image metrics, or the run's own bootstrap replicates for
    set-level ones). One tokenizer's metrics share their seed draws, so their draws stay paired.
    `interval` says "within-run" (one seed: images / replicates only) or "across-seeds"; `pca_dim` is the
    common GMM dimension (NaN when it differs between replicates: see runs.csv).
    """
    names = list(values.metrics)
    draws = {m.name: np.full((len(names), n_boot), np.nan) for m in metrics}
    rows = []
    for i, name in enumerate(names):
        runs = values.metrics[name]
        n_seeds = max((r.n_seeds for r in runs.values()), default=0)
        rng = np.random.default_rng(derive_seed(seed, name, "summary"))
        choice = seed_choice(n_seeds, n_boot, rng)
        row = {"tokenizer": name, **info.get(name, {}), "seeds": n_seeds,
               "interval": "within-run" if n_seeds == 1 else "across-seeds"}
        if "pca_dim" in values.runs:  # the common GMM dimension; NaN when the replicates' dimensions differ
            dims = values.runs.loc[values.runs.tokenizer == name, "pca_dim"].dropna().unique()
            row["pca_dim"] = int(dims[0]) if len(dims) == 1 else math.nan
        for m in metrics:
            if m.name not in runs:
                continue
            mr = runs[m.name]
            row[m.name] = mr.estimate
            if mr.has_spread:
                draws[m.name][i] = hierarchical_draws(mr, choice if mr.n_seeds == n_seeds else n_boot, rng)
                row[f"{m.name}_lo"], row[f"{m.name}_hi"] = percentile_interval(draws[m.name][i])
            else:
                draws[m.name][i] = mr.estimate
                row[f"{m.name}_lo"] = row[f"{m.name}_hi"] = math.nan
        rows.append(row)
    cols = INFO_COLUMNS + [c for m in metrics for c in (m.name, f"{m.name}_lo", f"{m.name}_hi")]
    summary = pd.DataFrame(rows)
    summary = summary.reindex(columns=[c for c in cols if c in summary] + [c for c in summary if c not in cols])
    return summary, {k: v for k, v in draws.items() if k in summary}


COMPARISON_COLUMNS = ["tokenizer", "reference", "metric", "n_images", "seeds", "reference_seeds", "diff", "diff_lo",
                      "diff_hi", "p", "p_method", "interval", "baseline"]


def comparisons_table(values: RunValues, reference: str, metrics: list[MetricColumn], info: dict[str, dict],
                      seed: int = 0, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Every tokenizer minus `reference` on each per-image metric, on the images both were measured on.

    diff = mean(tokenizer) - mean(reference) over the shared held-out images (the same noise and t for
    the SiT loss); its interval resamples each side's seeds and the images jointly; p is the sign-flip
    permutation test of the per-image differences (`latentlab.analysis.inference.paired_difference`).
    """
    rows = []
    ref_images = values.images.get(reference, {})
    for name, images in values.images.items():
        if name == reference:
            continue
        for m in metrics:
            if m.kind != "per-image" or m.name not in images or m.name not in ref_images:
                continue
            a, r = images[m.name], ref_images[m.name]
            common = a[0].index
            for s in a[1:] + r:
                common = common.intersection(s.index)
            res = paired_difference(np.stack([s.loc[common].to_numpy() for s in a]),
                                    np.stack([s.loc[common].to_numpy() for s in r]), n_boot,
                                    derive_seed(seed, name, reference, m.name, "compare"))
            rows.append({"tokenizer": name, "reference": reference, "metric": m.name, "seeds": len(a),
                         "reference_seeds": len(r), **res,
                         "interval": "within-run" if len(a) == len(r) == 1 else "across-seeds",
                         "baseline": bool(info.get(name, {}).get("baseline", False))})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
