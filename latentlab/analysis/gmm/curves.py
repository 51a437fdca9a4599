"""GMM NLL against the number of components (MAETok Fig. 2a): the `latentlab fit-gmm` pipeline.

For each tokenizer: check the latents are finite, hold out a seeded random part of the
train store, fit a PCA on the rest, keep one common dimension for all tokenizers (the
smallest that gives each of them >= `pca_variance` explained variance, or `pca_dim`),
z-score every kept dimension with the training part's statistics, then fit a Gaussian
mixture for each K and record the negative mean log-likelihood (nats per sample) of the
training and held-out parts. `nll_per_dim` divides the held-out NLL (the train NLL when
nothing is held out) by the PCA dimension.

`protocol="official"` swaps in the MAETok authors' released procedure (see
`latentlab.analysis.gmm.official`). Outputs, written only when everything succeeded:
gmm.csv (one row per tokenizer x K, columns `COLUMNS`), gmm.json (config, rows, PCA
info) and nll_vs_components.png/.pdf.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

import latentlab.analysis.gmm.official as official
from latentlab.analysis.config import PROTOCOL_NAMES, FitGMMConfig, check_config
from latentlab.analysis.gmm.config import COLUMNS, GMMFeatures, check_sizes, split_rows
from latentlab.analysis.gmm.mixture import ConvergenceWarning, GaussianMixture
from latentlab.analysis.pca import PCA, common_dim
from latentlab.extract import TokenizerLatents, check_finite, resolve_tokenizers
from latentlab.io import save_csv, save_json
from latentlab.outputs import check_output, output_dir
from latentlab.plots.gmm import plot_nll_vs_components
from latentlab.utils import is_main, progress, progress_enabled, warn

@dataclass
class GMMCurves:
    """The result of `fit_gmm_curves`: the table, per-tokenizer reduction info and the config."""

    table: "pandas.DataFrame"  # noqa: F821
    reduction: dict
    config: dict
    curves: dict
    out: str | None = None

    def summary(self) -> dict:
        """JSON-able summary: files, dimension, and per tokenizer the K with the lowest held-out NLL."""
        best = {}
        for name, g in self.table.groupby("tokenizer", sort=False):
            col = "heldout_nll" if g["heldout_nll"].notna().any() else "train_nll"
            row = g.loc[g[col].idxmin()]
            best[name] = {"best_k": int(row["n_components"]), f"best_{col}": float(row[col]),
                          "explained_variance": float(row["explained_variance"])}
        files = [str(Path(self.out) / f) for f in OUTPUT_FILES] if self.out else []
        return {"out": self.out, "protocol": self.config["protocol"], "pca_dim": int(self.table["pca_dim"].iloc[0]),
                "tokenizers": best, "files": files, "rows": self.table.to_dict("records")}


OUTPUT_FILES = ("gmm.csv", "gmm.json", "nll_vs_components.png", "nll_vs_components.pdf")
GMM_KIND = "fit-gmm output"  # the `.latentlab` marker kind of its output folder


def em_features(toks: Sequence[TokenizerLatents], cfg: FitGMMConfig) -> tuple[list[GMMFeatures], dict]:
    """Split, fit a PCA on each training part, pick the common dimension and z-score both parts."""
    bs = cfg.batch_size or 8192
    splits, pcas = {}, {}
    for t in progress(toks, desc="PCA"):
        tr, ho = split_rows(len(t.train), cfg.heldout, cfg.seed)
        check_sizes(t.name, len(tr), cfg)
        splits[t.name] = (tr, ho)
        pcas[t.name] = PCA(None, device=cfg.device, batch_size=bs).fit(t.train, indices=tr)
    cd = common_dim(pcas, cfg.pca_variance, cfg.pca_dim)
    feats = []
    for t in toks:
        p, (tr, ho) = pcas[t.name].select(cd.dim), splits[t.name]
        z = lambda idx: p.transform(t.train, indices=idx, zscore=True).astype(np.float32)  # noqa: E731
        info = {**p.info(), "own_dim": cd.own_dims[t.name], "n_train": len(tr), "n_heldout": len(ho),
                "store": str(t.train.path), "source": t.source}
        feats.append(GMMFeatures(t.name, z(tr), z(ho) if len(ho) else np.zeros((0, cd.dim), np.float32),
                              cd.explained_variance[t.name], info))
    return feats, {"pca_dim": cd.dim, "rule": cd.rule, "own_dims": cd.own_dims,
                   "explained_variance": cd.explained_variance}


# ---------------------------------------------------------------- fitting

def _em_row(f: GMMFeatures, k: int, cfg: FitGMMConfig, show: bool) -> tuple[dict, dict]:
    """Fit latentlab's EM GaussianMixture with K components; NLLs in nats per sample."""
    n, d = f.train.shape
    if cfg.covariance == "full" and n / k < d + 1:
        warn(f"{f.name!r} K={k}: about {n // k} training rows per component in {d} dimensions, so full covariances "
             f"are singular up to reg_covar; expect the held-out NLL to show over-fitting (or use --covariance diag)")
    gmm = GaussianMixture(k, covariance_type=cfg.covariance, tol=cfg.tol, reg_covar=cfg.reg_covar,
                          max_iter=cfg.max_iter, n_init=cfg.n_init, init_params=cfg.init_params,
                          random_state=cfg.seed, device=cfg.device, batch_size=cfg.batch_size, progress=show)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gmm.fit(f.train)
    for msg in dict.fromkeys(str(w.message) for w in caught if not issubclass(w.category, ConvergenceWarning)):
        warn(f"{f.name!r}: {msg}")  # one line each; non-convergence is the `converged` column
    row = {"train_nll": -gmm.score(f.train),
           "heldout_nll": -gmm.score(f.heldout) if len(f.heldout) else float("nan"),
           "bic": gmm.bic(f.train), "aic": gmm.aic(f.train), "n_iter": int(gmm.n_iter_),
           "converged": bool(gmm.converged_)}
    return row, {"reg_covar": float(gmm.reg_covar_), "lower_bounds": [float(v) for v in gmm.lower_bounds_]}


def fit_gmm_curves(tokenizers: Sequence[str] | Sequence[TokenizerLatents], config: FitGMMConfig | None = None,
                   out: str | os.PathLike | None = None, dataset: str | None = None) -> GMMCurves:
    """NLL of Gaussian mixtures against K for each tokenizer; writes gmm.csv/json and the figure to `out`."""
    import pandas as pd

    cfg = check_config(config or FitGMMConfig())
    if out is not None:
        check_output(out, GMM_KIND)  # before any work
    toks = list(tokenizers)
    if not toks or isinstance(toks[0], str):
        toks = resolve_tokenizers(toks, dataset)
    check_finite(toks)
    make_features, fit_row = PROTOCOLS[cfg.protocol]
    feats, reduction = make_features(toks, cfg)
    rows, curves = [], {}
    bar = progress(total=len(feats) * len(cfg.components), desc="GMM", leave=True)
    for f in feats:
        for k in cfg.components:
            bar.set_postfix(tokenizer=f.name, K=k)
            t0 = time.perf_counter()
            row, extra = fit_row(f, k, cfg, show=progress_enabled())
            d = f.train.shape[1]
            nll = row["heldout_nll"] if len(f.heldout) else row["train_nll"]
            rows.append({"tokenizer": f.name, "n_components": k, "pca_dim": d,
                         "explained_variance": f.explained_variance, **row, "nll_per_dim": nll / d,
                         "seconds": time.perf_counter() - t0, "protocol": cfg.protocol})
            curves.setdefault(f.name, {})[str(k)] = extra
            bar.update(1)
    bar.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    reduction["tokenizers"] = {f.name: f.info for f in feats}
    result = GMMCurves(table, reduction, {**dataclasses.asdict(cfg), "components": list(cfg.components),
                                          **official.protocol_notes(cfg)}, curves,
                       str(out) if out is not None else None)
    if out is not None and is_main():  # under torchrun every rank holds the same result
        write_outputs(result, out)
    return result


# protocol name -> (features for every tokenizer, one table row per K)
PROTOCOLS = {"em": (em_features, _em_row), "official": (official.official_features, official.official_row)}
assert tuple(PROTOCOLS) == PROTOCOL_NAMES


def write_outputs(result: GMMCurves, out: str | os.PathLike) -> None:
    """gmm.csv, gmm.json and nll_vs_components.png/.pdf; `out` appears (or is replaced) whole or not at all."""
    with output_dir(out, GMM_KIND) as d:
        save_csv(result.table, d / "gmm.csv")
        save_json({"config": result.config, "reduction": result.reduction, "rows": result.table.to_dict("records"),
                   "curves": result.curves}, d / "gmm.json")
        plot_nll_vs_components(result.table, d / "nll_vs_components.png")
