"""Tie latent structure to generation: rank correlations between latent metrics and SiT loss / gFD across tokenizers.

The MAETok paper's claim is that fewer GMM modes (lower NLL at a fixed number of components) and
more discriminative latents (higher linear-probe accuracy) go with lower diffusion loss and better
gFID. `correlations` measures that on a study's tokenizers (one row each) and says how far to trust it:

- baseline rows (raw pixels: not a tokenizer) are shown elsewhere but never counted; `n` is the number
  of non-baseline tokenizers with both values;
- `spearman` has an interval from per-tokenizer bootstrap draws (`spearman_lo`, `spearman_hi`), which
  resample each tokenizer's seeds (and within-run values), so it shows training noise;
- `p_exact` is a permutation p-value (exact over all n! pairings for n <= 9, else a stated number of
  draws; `p_method` says which), `p_holm` is Holm-adjusted over the exploratory family (every row that
  is not the declared primary hypothesis; the primary row is a family of one and keeps its p);
- `spearman_partial` controls for reconstruction quality (the paper's claim holds only among decoders
  of similar quality).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from latentlab.analysis.inference import (EXACT_MAX_N, N_PERMUTATIONS, holm, kendall, partial_spearman, spearman,
                                          spearman_interval, spearman_test)
from latentlab.utils import derive_seed

COLUMNS = ["predictor", "target", "n", "spearman", "spearman_lo", "spearman_hi", "kendall", "p_exact", "p_method",
           "p_holm", "primary", "spearman_partial", "partial_control"]


def _counted(table: pd.DataFrame, baseline) -> np.ndarray:
    """Boolean mask of the rows that count (not baselines)."""
    if baseline is None:
        return np.ones(len(table), dtype=bool)
    if isinstance(baseline, str):
        baseline = table[baseline]
    return ~np.asarray(pd.Series(baseline).fillna(False).astype(bool))


def predictor_columns(table: pd.DataFrame, candidates: list[str], baseline=None) -> tuple[list[str], list[str]]:
    """(kept, dropped): candidates that vary across the counted rows; constant (or all-missing) ones are dropped."""
    rows = table[_counted(table, baseline)]
    kept, dropped = [], []
    for c in candidates:
        if c not in table:
            continue
        v = pd.to_numeric(rows[c], errors="coerce")
        v = v[np.isfinite(v)]
        (kept if len(v) >= 2 and v.nunique() > 1 else dropped).append(c)
    return kept, dropped


def correlations(table: pd.DataFrame, predictors: list[str], targets: list[str], draws: dict | None = None,
                 baseline=None, primary: tuple[str, str] | None = None, control: str | None = None,
                 n_permutations: int = N_PERMUTATIONS, exact_max_n: int = EXACT_MAX_N, seed: int = 0) -> pd.DataFrame:
    """One row per (predictor, target) with the columns of `COLUMNS`.

    `table` has one row per tokenizer (point estimates); `draws` maps a column to its (rows, n_boot)
    bootstrap draws, aligned with `table` (omit it and the interval is NaN); `baseline` is a column
    name or a boolean mask of rows never counted; `primary` is the declared (predictor, target);
    `control` the column that `spearman_partial` holds fixed. Rows with a missing value in either
    column are dropped pairwise.
    """
    counted = _counted(table, baseline)
    draws = draws or {}
    rows = []
    for target in targets:
        if target not in table:
            continue
        for pred in predictors:
            if pred not in table or pred == target:
                continue
            x = pd.to_numeric(table[pred], errors="coerce").to_numpy(np.float64)
            y = pd.to_numeric(table[target], errors="coerce").to_numpy(np.float64)
            ok = counted & np.isfinite(x) & np.isfinite(y)
            n = int(ok.sum())
            row = {"predictor": pred, "target": target, "n": n, "spearman": spearman(x[ok], y[ok]),
                   "kendall": kendall(x[ok], y[ok]), "primary": primary is not None and (pred, target) == tuple(primary),
                   "partial_control": control}
            row["spearman_lo"], row["spearman_hi"] = (
                spearman_interval(draws[pred][ok], draws[target][ok]) if pred in draws and target in draws
                else (math.nan, math.nan))
            row["p_exact"], row["p_method"] = spearman_test(x[ok], y[ok], n_permutations, exact_max_n,
                                                           derive_seed(seed, pred, target, "permutation"))
            row["spearman_partial"] = math.nan
            if control is not None and control in table and control not in (pred, target):
                z = pd.to_numeric(table[control], errors="coerce").to_numpy(np.float64)
                okz = ok & np.isfinite(z)
                row["spearman_partial"] = partial_spearman(x[okz], y[okz], z[okz])
            rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    if len(df):
        explore = ~df["primary"].astype(bool)
        df.loc[explore, "p_holm"] = holm(df.loc[explore, "p_exact"].to_numpy(np.float64))
        df.loc[~explore, "p_holm"] = df.loc[~explore, "p_exact"]
    return df
