"""GMM NLL against the number of components (MAETok Fig. 2a): the `latentlab fit-gmm` pipeline.

For each tokenizer: check the latents are finite, hold out a seeded random part of the
train store, fit a PCA on the rest, keep one common dimension for all tokenizers (a fixed
`pca_dim`, or the smallest that gives each of them >= `pca_variance` explained variance: the
paper's rule, which makes every tokenizer's result depend on which tokenizers are in the
set), z-score every kept dimension with the training part's statistics, then fit a Gaussian
mixture for each K (K = 1 always included) and record the negative mean log-likelihood
(nats per sample) of the training and held-out parts. With `n_init` > 1 every start is fitted
separately, the best training fit is kept and `heldout_nll_spread` is the range of the
held-out NLL across the starts. `pca_dims` adds a sweep over several dimensions.
`nll_per_dim` divides the held-out NLL (the train NLL when nothing is held out) by the PCA
dimension; `below_pca_variance` flags a tokenizer below `pca_variance` at that dimension.

`protocol="official"` swaps in the MAETok authors' released procedure (see
`latentlab.analysis.gmm.official`). Outputs, written only when everything succeeded:
gmm.csv (one row per tokenizer x dimension x K, columns `COLUMNS`), modes.csv (the mode
counts and gains, `latentlab.analysis.gmm.modes`), gmm.json (config, rows, PCA info),
nll_vs_components.png/.pdf (the main dimension) and gain_vs_components.png/.pdf.
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
from latentlab.analysis.gmm.modes import MODES_FILE, modes_table
from latentlab.analysis.pca import PCA, common_dim
from latentlab.extract import TokenizerLatents, check_finite, resolve_tokenizers
from latentlab.io import save_csv, save_json
from latentlab.outputs import check_output, output_dir
from latentlab.plots.gmm import plot_gains, plot_nll_vs_components
from latentlab.utils import derive_seed, is_main, progress, progress_enabled, warn

@dataclass
class GMMCurves:
    """The result of `fit_gmm_curves`: the tables, per-tokenizer reduction info and the config."""

    table: "pandas.DataFrame"  # noqa: F821
    reduction: dict
    config: dict
    curves: dict
    out: str | None = None
    modes: "pandas.DataFrame | None" = None  # noqa: F821

    def summary(self) -> dict:
        """JSON-able summary: files, dimension, and per tokenizer the K with the lowest held-out NLL and the modes."""
        dim = int(self.reduction["pca_dim"])
        main = self.table[self.table["pca_dim"] == dim]
        modes = self.modes[self.modes["pca_dim"] == dim].set_index("tokenizer") if self.modes is not None else None
        best = {}
        for name, g in main.groupby("tokenizer", sort=False):
            col = "heldout_nll" if g["heldout_nll"].notna().any() else "train_nll"
            row = g.loc[g[col].idxmin()]
            best[name] = {"best_k": int(row["n_components"]), f"best_{col}": float(row[col]),
                          "explained_variance": float(row["explained_variance"]),
                          **({k: v for k, v in modes.loc[name].items() if k.startswith(("modes_", "gain_", "below"))}
                             if modes is not None else {})}
        files = [str(Path(self.out) / f) for f in OUTPUT_FILES] if self.out else []
        return {"out": self.out, "protocol": self.config["protocol"], "pca_dim": dim,
                "pca_dims": sorted(int(d) for d in self.table["pca_dim"].unique()), "tokenizers": best,
                "files": files, "rows": self.table.to_dict("records"),
                "modes": self.modes.to_dict("records") if self.modes is not None else []}


OUTPUT_FILES = ("gmm.csv", MODES_FILE, "gmm.json", "nll_vs_components.png", "nll_vs_components.pdf",
                "gain_vs_components.png", "gain_vs_components.pdf")
GMM_KIND = "fit-gmm output"  # the `.latentlab` marker kind of its output folder


def fitted_dims(main: int, cfg: FitGMMConfig) -> list[int]:
    """The main dimension and the sweep `pca_dims`, sorted."""
    return sorted({int(main), *(cfg.pca_dims or ())})


def em_features(toks: Sequence[TokenizerLatents], cfg: FitGMMConfig) -> tuple[dict[int, list[GMMFeatures]], dict]:
    """Split, fit a PCA on each training part, pick the common dimension(s) and z-score both parts."""
    bs = cfg.batch_size or 8192
    splits, pcas = {}, {}
    for t in progress(toks, desc="PCA", status=lambda t: t.name):
        tr, ho = split_rows(len(t.train), cfg.heldout, cfg.seed)
        check_sizes(t.name, len(tr), cfg)
        splits[t.name] = (tr, ho)
        pcas[t.name] = PCA(None, device=cfg.device, batch_size=bs).fit(t.train, indices=tr)
    cd = common_dim(pcas, cfg.pca_variance, cfg.pca_dim)
    feats, sweep = {}, {}
    for dim in fitted_dims(cd.dim, cfg):
        cdd = common_dim(pcas, cfg.pca_variance, dim)  # checks the dimension is in range for every tokenizer
        sweep[dim] = cdd.explained_variance
        feats[dim] = []
        for t in toks:
            p, (tr, ho) = pcas[t.name].select(dim), splits[t.name]
            z = lambda idx: p.transform(t.train, indices=idx, zscore=True).astype(np.float32)  # noqa: E731
            info = {**p.info(), "own_dim": cd.own_dims[t.name], "n_train": len(tr), "n_heldout": len(ho),
                    "store": str(t.train.path), "source": t.source}
            feats[dim].append(GMMFeatures(t.name, z(tr), z(ho) if len(ho) else np.zeros((0, dim), np.float32),
                                          cdd.explained_variance[t.name], info))
    return feats, {"pca_dim": cd.dim, "rule": cd.rule, "own_dims": cd.own_dims,
                   "explained_variance": cd.explained_variance, "sweep": sweep}


def official_features_by_dim(toks: Sequence[TokenizerLatents], cfg: FitGMMConfig
                             ) -> tuple[dict[int, list[GMMFeatures]], dict]:
    """The official protocol's features at its dimension and at every `pca_dims` entry."""
    main = int(cfg.pca_dim or cfg.official_dim)
    feats, reduction = {}, {}
    for dim in fitted_dims(main, cfg):
        f, red = official.official_features(toks, dataclasses.replace(cfg, pca_dim=dim))
        feats[red["pca_dim"]] = f
        reduction = red if dim == main else reduction
        reduction.setdefault("sweep", {})[red["pca_dim"]] = red["explained_variance"]
    return feats, reduction


# ---------------------------------------------------------------- fitting

def _em_fit(f: GMMFeatures, k: int, cfg: FitGMMConfig, seed: int, show: bool) -> GaussianMixture:
    gmm = GaussianMixture(k, covariance_type=cfg.covariance, tol=cfg.tol, reg_covar=cfg.reg_covar,
                          max_iter=cfg.max_iter, n_init=1, init_params=cfg.init_params,
                          random_state=seed, device=cfg.device, batch_size=cfg.batch_size, progress=show)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gmm.fit(f.train)
    for msg in dict.fromkeys(str(w.message) for w in caught if not issubclass(w.category, ConvergenceWarning)):
        warn(f"{f.name!r}: {msg}")  # one line each; non-convergence is the `converged` column
    return gmm


def _em_row(f: GMMFeatures, k: int, cfg: FitGMMConfig, show: bool) -> tuple[dict, dict]:
    """Fit latentlab's EM GaussianMixture with K components from each of `n_init` starts; NLLs in nats per sample.

    Start 0 uses `seed`, start i > 0 `derive_seed(seed, "gmm-init", i)`; the start with the highest
    training log-likelihood is kept (an earlier one on ties), and the held-out NLL of every start
    is recorded, its range as `heldout_nll_spread`.
    """
    n, d = f.train.shape
    if cfg.covariance == "full" and n / k < d + 1:
        warn(f"{f.name!r} K={k}: about {n // k} training rows per component in {d} dimensions, so full covariances "
             f"are singular up to reg_covar; expect the held-out NLL to show over-fitting (or use --covariance diag)")
    best, starts = None, []
    for i in range(cfg.n_init):
        gmm = _em_fit(f, k, cfg, cfg.seed if i == 0 else derive_seed(cfg.seed, "gmm-init", i), show)
        train_ll = gmm.score(f.train)
        starts.append({"train_nll": -train_ll,
                       "heldout_nll": -gmm.score(f.heldout) if len(f.heldout) else float("nan")})
        if best is None or train_ll > best[1] + 1e-9 * abs(best[1]):
            best = (gmm, train_ll, i)
    gmm, _, i = best
    held = [s["heldout_nll"] for s in starts]
    row = {"train_nll": starts[i]["train_nll"], "heldout_nll": starts[i]["heldout_nll"],
           "bic": gmm.bic(f.train), "aic": gmm.aic(f.train), "n_iter": int(gmm.n_iter_),
           "converged": bool(gmm.converged_), "n_init": cfg.n_init,
           "heldout_nll_spread": float(np.max(held) - np.min(held)) if len(f.heldout) else float("nan")}
    return row, {"reg_covar": float(gmm.reg_covar_), "lower_bounds": [float(v) for v in gmm.lower_bounds_],
                 "starts": starts, "kept_start": i}


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
    bar = progress(total=sum(len(f) for f in feats.values()) * len(cfg.components), desc="GMM", leave=True)
    for dim, dim_feats in feats.items():
        for f in dim_feats:
            for k in cfg.components:
                bar.set_postfix(tokenizer=f.name, dim=dim, K=k)
                t0 = time.perf_counter()
                row, extra = fit_row(f, k, cfg, show=progress_enabled())
                nll = row["heldout_nll"] if len(f.heldout) else row["train_nll"]
                ev = f.explained_variance
                rows.append({"tokenizer": f.name, "n_components": k, "pca_dim": dim, "explained_variance": ev,
                             "below_pca_variance": bool(np.isfinite(ev) and ev < cfg.pca_variance), **row,
                             "nll_per_dim": nll / dim, "seconds": time.perf_counter() - t0, "protocol": cfg.protocol})
                curves.setdefault(f.name, {})[str(k) if dim == reduction["pca_dim"] else f"{k}@d{dim}"] = extra
                bar.update(1)
    bar.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    if cfg.protocol == "official":
        official.warn_unconverged(table, curves, cfg, reduction["pca_dim"])
    reduction["tokenizers"] = {f.name: f.info for f in feats[reduction["pca_dim"]]}
    result = GMMCurves(table, reduction, {**dataclasses.asdict(cfg), "components": list(cfg.components),
                                          **official.protocol_notes(cfg)}, curves,
                       str(out) if out is not None else None, modes_table(table, cfg.pca_variance))
    if out is not None and is_main():  # under torchrun every rank holds the same result
        write_outputs(result, out)
    return result


# protocol name -> (features for every tokenizer, one table row per K)
PROTOCOLS = {"em": (em_features, _em_row), "official": (official_features_by_dim, official.official_row)}
assert tuple(PROTOCOLS) == PROTOCOL_NAMES


def write_outputs(result: GMMCurves, out: str | os.PathLike) -> None:
    """gmm.csv, gmm.json and nll_vs_components.png/.pdf; `out` appears (or is replaced) whole or not at all."""
    with output_dir(out, GMM_KIND) as d:
        save_csv(result.table, d / "gmm.csv")
        save_csv(result.modes, d / MODES_FILE)
        save_json({"config": result.config, "reduction": result.reduction, "rows": result.table.to_dict("records"),
                   "modes": result.modes.to_dict("records"), "curves": result.curves}, d / "gmm.json")
        plot_nll_vs_components(result.table[result.table["pca_dim"] == result.reduction["pca_dim"]],
                               d / "nll_vs_components.png")
        plot_gains(result.modes, d / "gain_vs_components.png")
