"""Which hypothesis predicts generation: every predictor's rho against each target, ranked by |rho|, with its 95%
interval, coloured by the hypothesis it measures (hypotheses.csv)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from latentlab.plots import new_figure, save_figure


def plot_hypothesis_ranking(hyp: pd.DataFrame, targets: list[str], path: str | os.PathLike,
                            hypotheses: list[str] | None = None) -> Path:
    """One panel per target (the first is the headline): rho with its interval, predictors sorted by |rho|.

    Filled markers are each hypothesis's declared representative, hollow ones its other predictors; the
    colour is the hypothesis, in the order of `hypotheses` (the same colour in every study). The title gives
    n (non-baseline tokenizers).
    """
    targets = [t for t in targets if t in set(hyp.target)] or ["(no target)"]
    order = list(hypotheses or []) + [h for h in dict.fromkeys(hyp.hypothesis) if h not in (hypotheses or [])]
    colour = {h: f"C{i % 10}" for i, h in enumerate(order)}  # by position in the full list: stable across studies
    hypotheses = [h for h in order if h in set(hyp.hypothesis)]
    height = 0.22 * max(4, max((int((hyp.target == t).sum()) for t in targets), default=4)) + 1.3
    fig, axes = new_figure(len(targets), size=(4.2, height))
    for ax, t in zip(axes[0], targets):
        sub = hyp[(hyp.target == t)].dropna(subset=["spearman"])
        sub = sub.reindex(sub.spearman.abs().sort_values(ascending=True, kind="stable").index)
        if sub.empty:
            ax.axis("off")
            continue
        y = np.arange(len(sub))
        rho = sub.spearman.to_numpy(np.float64)
        err = np.nan_to_num(np.stack([rho - sub.spearman_lo.to_numpy(np.float64),
                                      sub.spearman_hi.to_numpy(np.float64) - rho]), nan=0.0).clip(min=0)
        for i, r in enumerate(sub.itertuples()):
            c = colour[r.hypothesis]
            ax.errorbar(rho[i], y[i], xerr=err[:, [i]], fmt="o", ms=5, capsize=2, lw=0.9, color=c,
                        mfc=c if bool(r.representative) else "white")
        ax.set_yticks(y, [f"{p}{' *' if bool(r) else ''}" for p, r in zip(sub.predictor, sub.representative)],
                      fontsize=6)
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_xlim(-1.05, 1.05)
        n = sorted(set(sub.n.astype(int)))
        ax.set_title(f"rho with {t} (n={', '.join(map(str, n))})", fontsize=8)
        ax.set_xlabel("Spearman rho, 95% interval (sorted by |rho|)", fontsize=7)
        ax.tick_params(axis="x", labelsize=6)
        ax.grid(alpha=0.3, axis="x")
    handles = [axes[0][0].plot([], [], "o", color=colour[h], label=h)[0] for h in hypotheses]
    if handles:
        axes[0][-1].legend(handles=handles, fontsize=6, title="hypothesis (* = representative)", title_fontsize=6,
                           loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path)
