"""Tie latent structure to generation: correlations between latent metrics and SiT loss / gFID.

The MAETok paper's claim is that fewer GMM modes (lower NLL at a fixed number of
components) and more discriminative latents (higher linear-probe accuracy) go with
lower diffusion loss and better gFID. `correlations` measures that on a study's
tokenizers with rank correlations (Spearman's rho and Kendall's tau, with n and p-values),
which make no assumption about the scale of any metric.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

NON_METRICS = {"tokenizer", "arch", "teacher", "kind", "extractor", "pool", "eval_split", "sit_loss_curve",
               "n_train", "n_test", "feature_dim", "pca_dim"}


def metric_columns(summary: pd.DataFrame, targets: list[str]) -> list[str]:
    """Numeric latent-metric columns of `summary` (everything numeric except targets and bookkeeping)."""
    cols = []
    for c in summary.columns:
        if (c in NON_METRICS or c in targets or c.startswith(("seconds", "is_", "isc", "gfd", "gfid")) or c.endswith("_std")
                or c == "extractor_test_accuracy"):  # bookkeeping and generation-side numbers are not latent metrics
            continue
        if pd.api.types.is_numeric_dtype(summary[c]) and summary[c].notna().sum() >= 2:
            cols.append(c)
    return cols


def correlations(summary: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    """Spearman and Kendall correlation of every latent metric with each target column.

    Rows with a missing value in either column are dropped pairwise; `n` says how many
    tokenizers each correlation rests on (with n < 3 the coefficients are NaN).
    """
    rows = []
    targets = [t for t in targets if t in summary.columns]
    for target in targets:
        for metric in metric_columns(summary, targets):
            pair = summary[[metric, target]].apply(pd.to_numeric, errors="coerce").dropna()
            n = len(pair)
            rho = rp = tau = tp = math.nan
            if n >= 3 and pair[metric].nunique() > 1 and pair[target].nunique() > 1:
                rho, rp = stats.spearmanr(pair[metric], pair[target])
                tau, tp = stats.kendalltau(pair[metric], pair[target])
            rows.append({"metric": metric, "target": target, "n": n, "spearman": rho, "spearman_p": rp,
                         "kendall": tau, "kendall_p": tp})
    return pd.DataFrame(rows, columns=["metric", "target", "n", "spearman", "spearman_p", "kendall", "kendall_p"])
