"""The planted-modes figure: what each measure says against the true number of modes M."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from latentlab.plots import new_figure, save_figure


def plot_planted(table, path: str | os.PathLike) -> Path:
    """Four panels against M: modes found, GMM gains, SiT loss with its linear reference, sample log-density/coverage."""
    fig, axes = new_figure(ncols=4, size=(3.6, 3.2))
    m = table["M"].to_numpy()
    a, b, c, d = axes[0]
    a.plot(m, m, color="0.6", lw=0.8, label="truth")
    a.plot(m, table["modes_bic"], "-o", ms=3.5, label="modes_bic")
    a.plot(m, table["modes_heldout"], "--s", ms=3.5, label="modes_heldout")
    a.set_ylabel("modes found")
    for col in [c_ for c_ in table.columns if c_.startswith("gain_k")]:
        b.plot(m, table[col], "-o", ms=3, label=col)
    b.set_yscale("symlog", linthresh=1.0)                 # an over-fitted K falls by orders of magnitude
    b.set_ylabel("gain NLL(1) - NLL(K) (nats)")
    c.plot(m, table["sit_loss"], "-o", ms=3.5, label="sit_loss (EMA)")
    c.plot(m, table["sit_loss_raw"], ":x", ms=3.5, label="raw weights")
    c.plot(m, table["sit_loss_linear"], "--", color="0.4", label="sit_loss_linear")
    c.set_ylabel("held-out SiT loss")
    d.errorbar(m, table["logp_generated"], yerr=1.96 * table["logp_generated_se"], fmt="-o", ms=3.5,
               label="generated (conditional)")
    d.errorbar(m, table["logp_test"], yerr=1.96 * table["logp_test_se"], fmt="--s", ms=3.5, label="real test rows")
    d.set_ylabel("mean log-density under the truth")
    d2 = d.twinx()
    d2.plot(m, table["mode_coverage"], ":^", color="tab:green", ms=3.5, label="mode coverage (uncond.)")
    d2.plot(m, table["in_mode"], ":v", color="tab:olive", ms=3.5, label="in a mode (uncond.)")
    d2.set_ylim(0, 1.05)
    d2.set_ylabel("unconditional samples: share", color="tab:green")
    d2.legend(fontsize=7, loc="center right")
    for ax in (a, b, c, d):
        ax.set_xscale("log", base=2)
        ax.set_xticks(m, [str(int(v)) for v in m])
        ax.set_xlabel("planted modes M")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is d else "best")
    a.set_yscale("log", base=2)
    a.set_yticks(np.unique(np.r_[m, table["modes_bic"]]), [str(int(v)) for v in np.unique(np.r_[m, table["modes_bic"]])])
    fig.suptitle("Planted modes: a mixture of M Gaussians whitened to identity covariance", fontsize=10)
    return save_figure(fig, path)
