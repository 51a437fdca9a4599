"""Which hypothesis predicts generation: every hypothesis's predictors against every target, and whether the data
can tell two predictors apart (a paired bootstrap of the difference in |rho|).

    hypotheses_table      hypotheses.csv: correlations.csv's rows of the predictors that measure a hypothesis, with
                          their hypothesis, the representative flag and Holm within the family
    pairs_table           hypotheses_pairs.csv: |rho_a| - |rho_b| for every two predictors against each target, on
                          the same tokenizers and the same bootstrap draws (so the difference is paired)
    hypotheses_paragraph  the honest reading of both tables, generated from them

The family. Each hypothesis is represented by ONE predictor declared before the study ran
(`latentlab.study.columns.MetricColumn.representative`); taking each hypothesis's best-|rho| column instead
would favour the hypotheses that happen to have more columns. `p_holm` is Holm-adjusted within the
"representatives" family (one test per hypothesis and target: the headline) and, separately, within the
"exploratory" family (every other predictor of a hypothesis). Quality columns and baselines never count.

Two intervals for a difference. `diff_lo, diff_hi` reuse correlations.csv's draws (each tokenizer's replicates
resampled within it; draw b of every column comes from the same seed choice), so they show training noise on
these tokenizers (with one seed, only the within-run spread of the metrics that have one). `diff_lo_tokenizers, diff_hi_tokenizers` also resample the tokenizers themselves (the same
resample for a and b), which is what "can this many tokenizers tell the hypotheses apart?" asks; with small n
it is the wider one, and the paragraph reads it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from latentlab.analysis.inference import CONFIDENCE, holm, percentile_interval, spearman, spearman_draws
from latentlab.analysis.relate import _counted
from latentlab.utils import derive_seed

COLUMNS = ["hypothesis", "predictor", "representative", "target", "n", "spearman", "spearman_lo", "spearman_hi",
           "abs_spearman", "p_exact", "p_method", "p_holm", "family"]
PAIR_COLUMNS = ["target", "predictor_a", "predictor_b", "hypothesis_a", "hypothesis_b", "representatives", "n",
                "diff_abs_rho", "diff_lo", "diff_hi", "share_a_beats_b", "diff_lo_tokenizers", "diff_hi_tokenizers"]


def hypotheses_table(corr: pd.DataFrame, hypothesis_of: dict[str, str], representative_of: dict[str, str],
                     targets: list[str]) -> pd.DataFrame:
    """hypotheses.csv from correlations.csv: rows of the predictors in `hypothesis_of`, targets in `targets` order.

    Within a target the representatives come first, by |rho| (largest first), then the other predictors.
    """
    rows = corr[corr.predictor.isin(list(hypothesis_of)) & corr.target.isin(targets)].copy()
    rows["hypothesis"] = rows.predictor.map(hypothesis_of)
    rows["representative"] = [representative_of.get(h) == p for h, p in zip(rows.hypothesis, rows.predictor)]
    rows["abs_spearman"] = rows.spearman.abs()
    rows["family"] = np.where(rows.representative, "representatives", "exploratory")
    rows["p_holm"] = np.nan
    for fam in ("representatives", "exploratory"):
        sel = rows.family == fam
        rows.loc[sel, "p_holm"] = holm(rows.loc[sel, "p_exact"].to_numpy(np.float64))
    rows["_t"] = rows.target.map({t: i for i, t in enumerate(targets)})
    rows = rows.sort_values(["_t", "representative", "abs_spearman"], ascending=[True, False, False],
                            na_position="last", kind="stable")
    return rows.reindex(columns=COLUMNS).reset_index(drop=True)


def _rho_draws(x_draws: np.ndarray, y_draws: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """Per-draw rho (n_boot,) from (n, n_boot) draws; with idx (n_boot, n) the tokenizers of draw b are idx[b]."""
    if idx is not None:
        cols = np.arange(x_draws.shape[1])
        x_draws, y_draws = x_draws[idx.T, cols], y_draws[idx.T, cols]
    return spearman_draws(x_draws, y_draws)


def _difference(ra: np.ndarray, rb: np.ndarray, confidence: float) -> tuple[np.ndarray, float, float]:
    d = np.abs(ra) - np.abs(rb)
    d = d[np.isfinite(d)]
    if len(d) < len(ra) / 2:
        return d, math.nan, math.nan
    return (d, *percentile_interval(d, confidence))


def pairs_table(table: pd.DataFrame, hypothesis_of: dict[str, str], representative_of: dict[str, str],
                targets: list[str], draws: dict | None = None, baseline=None, seed: int = 0,
                confidence: float = CONFIDENCE) -> pd.DataFrame:
    """hypotheses_pairs.csv: for every target and every two predictors a, b of `hypothesis_of` (in that order).

    `table` has one row per tokenizer and `draws[c]` the (rows, n_boot) bootstrap draws of column c aligned with
    it (summary.csv and its draws). Counted are the non-baseline tokenizers where a, b and the target are all
    known (`n`). a is the predictor with the larger |rho| (the first one on a tie), so `diff_abs_rho` >= 0;
    `share_a_beats_b` is the share of replicate draws with |rho_a| > |rho_b|, ties counted half (two identical
    predictors give exactly 0 and 0.5). Without draws for a column its intervals are NaN.
    """
    counted = _counted(table, baseline)
    draws = draws or {}
    preds = [p for p in hypothesis_of if p in table]
    reps = set(representative_of.values())
    col = {c: pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for c in preds + targets if c in table}
    cache: dict = {}

    def rho_draws(p: str, t: str, ok: np.ndarray, idx: np.ndarray | None):
        key = (p, t, ok.tobytes(), idx is None)
        if key not in cache:
            cache[key] = _rho_draws(draws[p][ok], draws[t][ok], idx)
        return cache[key]

    rows = []
    for t in targets:
        if t not in col:
            continue
        for a, b in itertools.combinations(preds, 2):
            ok = counted & np.isfinite(col[a]) & np.isfinite(col[b]) & np.isfinite(col[t])
            n = int(ok.sum())
            ra, rb = spearman(col[a][ok], col[t][ok]), spearman(col[b][ok], col[t][ok])
            if abs(rb) > abs(ra):
                a, b, ra, rb = b, a, rb, ra
            row = {"target": t, "predictor_a": a, "predictor_b": b, "hypothesis_a": hypothesis_of[a],
                   "hypothesis_b": hypothesis_of[b], "representatives": a in reps and b in reps, "n": n,
                   "diff_abs_rho": abs(ra) - abs(rb), "diff_lo": math.nan, "diff_hi": math.nan,
                   "share_a_beats_b": math.nan, "diff_lo_tokenizers": math.nan, "diff_hi_tokenizers": math.nan}
            if n >= 3 and all(c in draws for c in (a, b, t)):
                d, row["diff_lo"], row["diff_hi"] = _difference(rho_draws(a, t, ok, None), rho_draws(b, t, ok, None),
                                                                confidence)
                if len(d):
                    row["share_a_beats_b"] = float(np.mean(d > 0) + 0.5 * np.mean(d == 0))
                rng = np.random.default_rng(derive_seed(seed, t, ok.tobytes().hex(), "tokenizers"))
                idx = rng.integers(0, n, (draws[t].shape[1], n))
                _, row["diff_lo_tokenizers"], row["diff_hi_tokenizers"] = _difference(
                    rho_draws(a, t, ok, idx), rho_draws(b, t, ok, idx), confidence)
            rows.append(row)
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _f(v, spec: str = "+.2f") -> str:
    return format(v, spec) if isinstance(v, (int, float, np.floating)) and math.isfinite(v) else "n/a"


def _excludes_zero(lo, hi) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def _against(pairs: pd.DataFrame, predictor: str) -> pd.DataFrame:
    """The pairs that hold `predictor`, each turned so that it is predictor_a (a tie can list it second)."""
    a = pairs[pairs.predictor_a == predictor]
    b = pairs[pairs.predictor_b == predictor].copy()
    for x, y in (("predictor_a", "predictor_b"), ("hypothesis_a", "hypothesis_b")):
        b[x], b[y] = b[y].to_numpy(), b[x].to_numpy()
    b["diff_abs_rho"] = -b.diff_abs_rho
    b["share_a_beats_b"] = 1 - b.share_a_beats_b
    for lo, hi in (("diff_lo", "diff_hi"), ("diff_lo_tokenizers", "diff_hi_tokenizers")):
        b[lo], b[hi] = -b[hi].to_numpy(), -b[lo].to_numpy()
    return pd.concat([a, b]) if len(b) else a


def hypotheses_paragraph(hyp: pd.DataFrame, pairs: pd.DataFrame, target: str, alpha: float = 0.05,
                         hypotheses: list[str] | None = None) -> str:
    """One paragraph, generated from hypotheses.csv and hypotheses_pairs.csv: which hypothesis's representative
    has the largest |rho| with `target`, its interval and p, and whether the data tell it apart from the others.
    `hypotheses` (all the field's) lets it name those this study does not measure."""
    reps = hyp[(hyp.target == target) & hyp.representative.astype(bool)].dropna(subset=["spearman"])
    if reps.empty:
        return f"No hypothesis's representative has a rank correlation with {target} in this study."
    reps = reps.sort_values("abs_spearman", ascending=False, kind="stable")
    top = reps.iloc[0]
    n = int(top.n)
    text = [f"Against {target}, {len(reps)} hypotheses are measured here "
            f"({', '.join(f'{r.hypothesis}: {r.predictor}' for r in reps.itertuples())}). "
            f"The largest |rho| is that of {top.hypothesis} ({top.predictor}): rho = {_f(top.spearman)} "
            f"[95% interval {_f(top.spearman_lo)}, {_f(top.spearman_hi)}], p = {_f(top.p_exact, '.3g')}, "
            f"Holm-adjusted over the {len(hyp[hyp.family == 'representatives'])} headline tests "
            f"p = {_f(top.p_holm, '.3g')}, n = {n} tokenizers."]
    missing = [h for h in (hypotheses or []) if h not in set(reps.hypothesis)]
    if missing:
        text.insert(1, f"Not measured here (no predictor that varies across the tokenizers): {', '.join(missing)}.")
    smallest = 2 / math.factorial(n) if n <= 20 else 0.0  # the exact test's smallest p without ties
    if smallest >= alpha:
        text.append(f"With n = {n} no rank correlation can reach p < {alpha:g} (the smallest exact p is "
                    f"2/{n}! = {smallest:.3g}): this study is too small to test any hypothesis.")
    elif n < 10:
        text.append(f"With n = {n} the sample is small: only a nearly perfect ranking reaches p < {alpha:g}, and "
                    f"one tokenizer can change the order.")
    told, untold = [], []
    if len(reps) >= 2:
        mine = _against(pairs[(pairs.target == target) & pairs.representatives.astype(bool)], top.predictor) \
            if len(pairs) else pairs
        for r in mine.itertuples():
            (told if _excludes_zero(r.diff_lo_tokenizers, r.diff_hi_tokenizers) else untold).append(r)
        parts = [f"{r.hypothesis_b} ({r.predictor_b}) {_f(r.diff_abs_rho)} [replicates resampled {_f(r.diff_lo)}, "
                 f"{_f(r.diff_hi)}; tokenizers resampled too {_f(r.diff_lo_tokenizers)}, "
                 f"{_f(r.diff_hi_tokenizers)}]" for r in mine.itertuples()]
        if parts:
            text.append(f"Its |rho| minus each other hypothesis's (paired bootstrap, 95%): {'; '.join(parts)}.")
        if untold:
            text.append(f"At n = {n} the data cannot tell {top.hypothesis} apart from "
                        f"{', '.join(r.hypothesis_b for r in untold)}: those intervals include 0.")
        elif told:
            text.append(f"Every one of these intervals excludes 0: the data rank {top.hypothesis} first.")
    significant = math.isfinite(top.p_holm) and top.p_holm < alpha
    reasons = ([] if significant else [f"its correlation is not significant after Holm (p = {_f(top.p_holm, '.3g')})"])
    if len(reps) < 2 or untold or not told:
        reasons.append("the other hypotheses are not ruled out" if len(reps) >= 2 else "no other hypothesis is measured")
    text.append(f"This study supports the {top.hypothesis} hypothesis over the others measured (rho "
                f"{_f(top.spearman)})." if not reasons else
                f"This study does not single out one hypothesis: {' and '.join(reasons)}.")
    return " ".join(text)
