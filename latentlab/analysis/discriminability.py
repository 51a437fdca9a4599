"""`latentlab probe`: linear probe + structure metrics per tokenizer -> probe.csv and probe.png.

probe.csv has one row per tokenizer with the columns of `COLUMNS`:
tokenizer, top1, top5 (NaN with <= 5 classes), knn_top1, silhouette, calinski_harabasz,
davies_bouldin, fisher_ratio, rankme, gmm_heldout_nll (only with a gmm.csv), n_train,
n_test, feature_dim, pool, eval_split ("test" or "holdout-20%") and seconds.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from latentlab.analysis.features import DEFAULT_MAX_BYTES, POOLS, Features, check_labels
from latentlab.analysis.probe import ProbeConfig, linear_probe
from latentlab.analysis.structure import cluster_scores, fisher_ratio, knn_accuracy, rankme
from latentlab.errors import LatentlabError
from latentlab.io import save_csv
from latentlab.utils import info, progress
from latentlab.workspace import TokenizerLatents

COLUMNS = ["tokenizer", "top1", "top5", "knn_top1", "silhouette", "calinski_harabasz", "davies_bouldin",
           "fisher_ratio", "rankme", "gmm_heldout_nll", "n_train", "n_test", "feature_dim", "pool",
           "eval_split", "seconds"]
GMM_COLUMNS = ("tokenizer", "n_components", "heldout_nll")


@dataclass
class DiscriminabilityConfig:
    """Settings of `latentlab probe` (the probe's own seed and device serve every metric)."""

    pool: str = "flatten"
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    holdout_fraction: float = 0.2  # used only when a tokenizer has no test store
    knn_k: int = 20
    knn_temperature: float = 0.07
    cluster_samples: int = 5000
    rankme_samples: int = 25600
    gmm_csv: str | None = None
    gmm_k: int | None = None
    max_memory_gb: float = DEFAULT_MAX_BYTES / 2**30  # per feature set; larger sets are streamed


def _check_config(cfg: DiscriminabilityConfig) -> None:
    if cfg.pool not in POOLS:
        raise LatentlabError(f"unknown pool {cfg.pool!r}; use one of {', '.join(POOLS)}")
    if not 0 < cfg.holdout_fraction < 1:
        raise LatentlabError(f"holdout_fraction must be in (0, 1), got {cfg.holdout_fraction}")
    if (cfg.gmm_csv is None) != (cfg.gmm_k is None):
        raise LatentlabError("give --gmm CSV and --gmm-k K together (K: the number of GMM components to report)")


def gmm_nll_lookup(path: str | os.PathLike, k: int) -> dict[str, float]:
    """tokenizer -> heldout_nll at n_components == k, from a `fit-gmm` gmm.csv (the largest pca_dim wins)."""
    path = Path(path)
    if not path.is_file():
        raise LatentlabError(f"GMM table not found: {path}; run `latentlab fit-gmm` first or fix --gmm")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise LatentlabError(f"GMM table {path} is not a readable CSV ({type(e).__name__}); rerun fit-gmm") from None
    missing = [c for c in GMM_COLUMNS if c not in df.columns]
    if missing:
        raise LatentlabError(f"GMM table {path} lacks column(s) {', '.join(missing)}; "
                             f"give the gmm.csv written by fit-gmm")
    at_k = df[df["n_components"] == k]
    if at_k.empty:
        ks = ", ".join(str(int(v)) for v in sorted(df["n_components"].unique()))
        raise LatentlabError(f"GMM table {path} has no rows with n_components={k}; choose --gmm-k from {ks}")
    if "pca_dim" in at_k.columns:
        at_k = at_k.sort_values("pca_dim")
    return {str(t): float(v) for t, v in zip(at_k["tokenizer"], at_k["heldout_nll"])}


def split_features(tok: TokenizerLatents, cfg: DiscriminabilityConfig) -> tuple[Features, Features, str]:
    """(train, eval, eval_split): the test store when there is one, else a seeded stratified holdout."""
    from latentlab.data import stratified_split

    max_bytes = int(cfg.max_memory_gb * 2**30)
    labels = check_labels(tok.train, f"tokenizer {tok.name!r} ({tok.train.path})")
    if tok.test is not None:
        check_labels(tok.test, f"tokenizer {tok.name!r} test store ({tok.test.path})")
        if tok.test.sample_shape != tok.train.sample_shape:
            raise LatentlabError(f"tokenizer {tok.name!r}: train latents are {tok.train.sample_shape} but test latents "
                                 f"are {tok.test.sample_shape}; extract both with the same tokenizer")
        return (Features(tok.train, pool=cfg.pool, max_bytes=max_bytes),
                Features(tok.test, pool=cfg.pool, max_bytes=max_bytes), "test")
    tr, te = stratified_split(labels, cfg.holdout_fraction, cfg.probe.seed)
    if len(te) == 0 or len(tr) == 0:
        raise LatentlabError(f"tokenizer {tok.name!r} has too few samples ({len(labels)}) for a "
                             f"{cfg.holdout_fraction:.0%} holdout; add a test store")
    return (Features(tok.train, tr, cfg.pool, max_bytes), Features(tok.train, te, cfg.pool, max_bytes),
            f"holdout-{round(cfg.holdout_fraction * 100)}%")


def discriminability_row(tok: TokenizerLatents, cfg: DiscriminabilityConfig,
                         gmm_nll: dict[str, float] | None = None) -> dict:
    """Every metric of one tokenizer, as one probe.csv row."""
    t0 = time.perf_counter()
    train, test, eval_split = split_features(tok, cfg)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    res = linear_probe(train, test, num_classes, cfg.probe)
    knn = knn_accuracy(train, test, num_classes, cfg.knn_k, cfg.knn_temperature, cfg.probe.device)
    row = {"tokenizer": tok.name, "top1": res["top1"], "top5": res["top5"], "knn_top1": knn["top1"],
           **cluster_scores(train, cfg.cluster_samples, cfg.probe.seed),
           "fisher_ratio": fisher_ratio(train),
           "rankme": rankme(train, cfg.rankme_samples, cfg.probe.seed, cfg.probe.device)}
    if gmm_nll is not None:
        if tok.name not in gmm_nll:
            raise LatentlabError(f"the GMM table has no row for tokenizer {tok.name!r} at K={cfg.gmm_k} "
                                 f"(it has {', '.join(sorted(gmm_nll)) or 'none'}); label it to match with "
                                 f"--tokenizer LABEL=SPEC")
        row["gmm_heldout_nll"] = gmm_nll[tok.name]
    row.update(n_train=train.n, n_test=test.n, feature_dim=train.dim, pool=cfg.pool, eval_split=eval_split,
               seconds=round(time.perf_counter() - t0, 3))
    return row


def run_probe(tokenizers: list[TokenizerLatents], out: str | os.PathLike,
              cfg: DiscriminabilityConfig | None = None) -> dict:
    """Probe and measure every tokenizer; write OUT/probe.csv and OUT/probe.png; return the summary."""
    from latentlab.plots.probe import plot_probe

    cfg = cfg or DiscriminabilityConfig()
    _check_config(cfg)
    gmm_nll = gmm_nll_lookup(cfg.gmm_csv, int(cfg.gmm_k)) if cfg.gmm_csv is not None else None
    for tok in tokenizers:  # fail on bad labels before any work
        check_labels(tok.train, f"tokenizer {tok.name!r} ({tok.train.path})")
        if tok.test is not None:
            check_labels(tok.test, f"tokenizer {tok.name!r} test store ({tok.test.path})")
    rows = []
    for tok in progress(tokenizers, desc="tokenizers", total=len(tokenizers), leave=True):
        rows.append(discriminability_row(tok, cfg, gmm_nll))
        r = rows[-1]
        info(f"{tok.name}: probe top1 {r['top1']:.4f}, kNN top1 {r['knn_top1']:.4f} "
             f"({r['eval_split']}, {r['seconds']:.1f} s)")
    columns = [c for c in COLUMNS if c != "gmm_heldout_nll" or gmm_nll is not None]
    df = pd.DataFrame(rows, columns=columns)
    out = Path(out)
    csv = save_csv(df, out / "probe.csv")
    png = plot_probe(df, out / "probe.png")
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    return {"out": str(out), "csv": str(csv), "png": str(png), "rows": clean}


def summary_text(summary: dict) -> str:
    """A short text table of a `run_probe` summary."""
    def f(v, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [f"{'tokenizer':20s} {'top1':>7s} {'top5':>7s} {'kNN':>7s} {'fisher':>8s} {'rankme':>8s}  split"]
    for r in summary["rows"]:
        lines.append(f"{r['tokenizer'][:20]:20s} {f(r['top1']):>7s} {f(r['top5']):>7s} {f(r['knn_top1']):>7s} "
                     f"{f(r['fisher_ratio']):>8s} {f(r['rankme'], '.2f'):>8s}  {r['eval_split']}")
    lines.append(f"wrote {summary['csv']} and {summary['png']}")
    return "\n".join(lines)


__all__ = ["COLUMNS", "DiscriminabilityConfig", "run_probe", "discriminability_row", "split_features",
           "gmm_nll_lookup", "summary_text"]
