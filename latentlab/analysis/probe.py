"""Linear probing of frozen latents, the MAE protocol (He et al., "Masked Autoencoders Are
Scalable Vision Learners", CVPR 2022, main_linprobe.py): a frozen feature feeds
`BatchNorm1d(affine=False)` then a `Linear` layer, trained with cross-entropy, AdamW or SGD
and the trainer's cosine learning-rate schedule (`schedules.get_lr`, counted in rows seen) over
full passes (epochs), in mini-batches, on CPU or CUDA.

Features come through the stream adapter `latentlab.analysis.stream.Rows`, so a 1.28M x 4096 ImageNet
store is streamed from its memory-mapped shards (chunks in a shuffled order, rows shuffled within a chunk).

The `latentlab probe` pipeline (`run_probe`): linear probe + structure metrics per tokenizer -> probe.csv and probe.png.

probe.csv has one row per tokenizer with the columns of `COLUMNS`, and probe_images.csv one row per
evaluated image (tokenizer, index: its row in the evaluated store, label, and 0/1 columns lp_top1,
lp_top5, knn_top1: whether that image was classified correctly), the per-image values behind the means.

probe.csv's columns:
tokenizer, top1, top5 (NaN with <= 5 classes), knn_top1, silhouette, calinski_harabasz,
davies_bouldin, fisher_ratio, rankme, gmm_heldout_nll (only with a gmm.csv), n_train,
n_test, feature_dim, pool, eval_split ("test" or "holdout-20%", the same for every row: the test split
when every tokenizer has one, else the same seeded holdout for all) and seconds.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from latentlab.analysis.config import (ADAMW_LR, OPTIMIZERS, POOLS, SGD_LR_PER_256, DiscriminabilityConfig,
                                       ProbeConfig)
from latentlab.analysis.stream import Rows, check_labels
from latentlab.analysis.structure import cluster_scores, fisher_ratio, knn_accuracy, rankme
from latentlab.data import stratified_split
from latentlab.errors import LatentlabError
from latentlab.extract import TokenizerLatents, check_finite
from latentlab.io import save_csv
from latentlab.outputs import check_output, output_dir
from latentlab.plots.probe import plot_probe
from latentlab.schedules import get_lr
from latentlab.trainer import TrainConfig
from latentlab.utils import get_device, info, progress, torch_seeded, warn

class LinearProbe(nn.Module):
    """MAE's linear-probe head: BatchNorm1d(affine=False) then Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D) -> logits (B, num_classes)."""
        return self.head(self.norm(x))


def effective_batch_size(cfg: ProbeConfig, n: int) -> int:
    """cfg.batch_size, lowered (not below 32) so that n rows give at least cfg.min_steps_per_epoch steps."""
    return max(2, min(cfg.batch_size, max(32, n // max(1, cfg.min_steps_per_epoch))))


def default_lr(cfg: ProbeConfig, batch_size: int | None = None) -> float:
    """The peak learning rate: cfg.lr, else SGD_LR_PER_256 * batch_size / 256 (SGD) or ADAMW_LR (AdamW)."""
    if cfg.lr is not None:
        return float(cfg.lr)
    return ADAMW_LR if cfg.optimizer == "adamw" else SGD_LR_PER_256 * (batch_size or cfg.batch_size) / 256


def lr_schedule(cfg: ProbeConfig, base: float, n: int) -> TrainConfig:
    """The probe's schedule for `schedules.get_lr`, counted in rows seen: linear warm-up over
    `warmup_epochs` passes of `n` rows, then a half cosine to 0 at the end of the last pass."""
    return TrainConfig(steps=max(1, cfg.epochs * n), lr=base, warmup_steps=cfg.warmup_epochs * n, min_lr_ratio=0.0)


def _check(cfg: ProbeConfig) -> None:
    if cfg.optimizer not in OPTIMIZERS:
        raise LatentlabError(f"unknown optimizer {cfg.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise LatentlabError(f"need epochs >= 1 and batch_size >= 2 (got {cfg.epochs}, {cfg.batch_size})")


def _make_optimizer(model: nn.Module, cfg: ProbeConfig, lr: float) -> torch.optim.Optimizer:
    params = model.head.parameters()
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)


def train_probe(train: Rows, num_classes: int, cfg: ProbeConfig | None = None,
                on_epoch: Callable[[int, float], None] | None = None) -> LinearProbe:
    """Train a LinearProbe on `train` (labels in [0, num_classes)); returns it in eval mode.

    `on_epoch(epoch, mean_loss)` is called after every pass.
    """
    cfg = cfg or ProbeConfig()
    _check(cfg)
    device = get_device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    with torch_seeded(cfg.seed):
        model = LinearProbe(train.dim, num_classes).to(device)
    bs = effective_batch_size(cfg, train.n)
    base = default_lr(cfg, bs)
    opt = _make_optimizer(model, cfg, base)
    schedule = lr_schedule(cfg, base, train.n)
    seen = 0
    bar = progress(range(cfg.epochs), desc="probe epochs", total=cfg.epochs)
    for epoch in bar:
        model.train()
        loss_sum, count = torch.zeros((), device=device), 0
        for x, y in train.batches(rng=rng, labels=True):
            perm = torch.randperm(len(x), generator=gen)
            if x.device != torch.device("cpu"):
                perm = perm.to(x.device)
            for i in range(0, len(x), bs):
                idx = perm[i:i + bs]
                if len(idx) < 2:  # BatchNorm needs two rows
                    continue
                # index_select: a row gather about 2.5x faster than x[idx] (advanced indexing) on CPU
                xb = torch.index_select(x, 0, idx).to(device, torch.float32, non_blocking=True)  # (B, D)
                yb = torch.index_select(y, 0, idx.to(y.device)).to(device, non_blocking=True)  # (B,)
                for g in opt.param_groups:
                    g["lr"] = get_lr(seen, schedule)
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(idx)
                count += len(idx)
                seen += len(idx)
        mean_loss = float(loss_sum) / max(1, count)
        if not math.isfinite(mean_loss):
            raise LatentlabError(f"linear probe loss is {mean_loss} at epoch {epoch + 1}; "
                                 f"lower --lr or check the latents for extreme values")
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
    return model.eval()


@torch.no_grad()
def predict_topk(model: LinearProbe, feats: Rows, k: int = 5, batch_size: int = 8192) -> np.ndarray:
    """The top-k predicted classes of every row, (n, min(k, num_classes)) int64."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for x in feats.batches():
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size].to(device, torch.float32))  # (B, K)
            out.append(logits.topk(min(k, logits.shape[1]), dim=1).indices.cpu())
    return torch.cat(out).numpy()


def topk_accuracy(topk: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the first k columns of `topk` (n, >=k)."""
    return float((topk[:, :k] == np.asarray(labels)[:, None]).any(1).mean())


def linear_probe(train: Rows, test: Rows, num_classes: int, cfg: ProbeConfig | None = None,
                 on_epoch: Callable[[int, float], None] | None = None) -> dict:
    """Train on `train`, evaluate on `test`: {top1, top5 (NaN when <= 5 classes), final_loss, topk}.

    "topk" holds the (n_test, min(5, classes)) predicted classes of every test row, best first.
    """
    losses: list[float] = []

    def _log(epoch: int, loss: float) -> None:
        losses.append(loss)
        if on_epoch is not None:
            on_epoch(epoch, loss)

    model = train_probe(train, num_classes, cfg, _log)
    top = predict_topk(model, test, k=5)
    return {"top1": topk_accuracy(top, test.labels, 1),
            "top5": topk_accuracy(top, test.labels, 5) if num_classes > 5 else float("nan"),
            "final_loss": losses[-1], "topk": top}


# ---------------------------------------------------------------- the probe command


COLUMNS = ["tokenizer", "top1", "top5", "knn_top1", "silhouette", "calinski_harabasz", "davies_bouldin",
           "fisher_ratio", "rankme", "gmm_heldout_nll", "n_train", "n_test", "feature_dim", "pool",
           "eval_split", "seconds"]
GMM_COLUMNS = ("tokenizer", "n_components", "heldout_nll")


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


def split_features(tok: TokenizerLatents, cfg: DiscriminabilityConfig,
                   use_test: bool = True) -> tuple[Rows, Rows, str]:
    """(train, eval, eval_split): the test store when there is one (and `use_test`), else a seeded stratified holdout."""
    max_bytes = int(cfg.max_memory_gb * 2**30)
    labels = check_labels(tok.train, f"tokenizer {tok.name!r} ({tok.train.path})")
    if tok.test is not None and use_test:
        check_labels(tok.test, f"tokenizer {tok.name!r} test store ({tok.test.path})")
        if tok.test.sample_shape != tok.train.sample_shape:
            raise LatentlabError(f"tokenizer {tok.name!r}: train latents are {tok.train.sample_shape} but test latents "
                                 f"are {tok.test.sample_shape}; extract both with the same tokenizer")
        return (Rows(tok.train, pool=cfg.pool, max_bytes=max_bytes),
                Rows(tok.test, pool=cfg.pool, max_bytes=max_bytes), "test")
    tr, te = stratified_split(labels, cfg.holdout_fraction, cfg.probe.seed)
    if len(te) == 0 or len(tr) == 0:
        raise LatentlabError(f"tokenizer {tok.name!r} has too few samples ({len(labels)}) for a "
                             f"{cfg.holdout_fraction:.0%} holdout; add a test store")
    return (Rows(tok.train, tr, pool=cfg.pool, max_bytes=max_bytes),
            Rows(tok.train, te, pool=cfg.pool, max_bytes=max_bytes), f"holdout-{round(cfg.holdout_fraction * 100)}%")


def per_image_hits(topk: np.ndarray, labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """(n,) 0/1: whether each row's label is among its first k predictions (NaN for k > 1 with <= k classes)."""
    if k > 1 and num_classes <= k:
        return np.full(len(labels), np.nan)
    return (topk[:, :k] == np.asarray(labels)[:, None]).any(1).astype(np.float64)


def discriminability_row(tok: TokenizerLatents, cfg: DiscriminabilityConfig,
                         gmm_nll: dict[str, float] | None = None, use_test: bool = True
                         ) -> tuple[dict, pd.DataFrame]:
    """Every metric of one tokenizer (one probe.csv row) and its per-image correctness (probe_images.csv rows)."""
    t0 = time.perf_counter()
    train, test, eval_split = split_features(tok, cfg, use_test)
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
    index = test.rows if test.rows is not None else np.arange(test.n)  # rows of the store the images came from
    images = pd.DataFrame({"tokenizer": tok.name, "index": index, "label": test.labels,
                           "lp_top1": per_image_hits(res["topk"], test.labels, 1, num_classes),
                           "lp_top5": per_image_hits(res["topk"], test.labels, 5, num_classes),
                           "knn_top1": per_image_hits(knn["topk"], test.labels, 1, num_classes)})
    return row, images


def common_eval_split(tokenizers: list[TokenizerLatents], cfg: DiscriminabilityConfig) -> bool:
    """Whether every tokenizer is scored on its test store (all have one) or else all on the same seeded holdout.

    Warns when the evaluated rows cannot be the same images (the tokenizers' labels differ).
    """
    use_test = all(t.test is not None for t in tokenizers)
    if not use_test and any(t.test is not None for t in tokenizers):
        info(f"scoring every tokenizer on the same seeded {cfg.holdout_fraction:.0%} holdout of its train rows: "
             f"{', '.join(repr(t.name) for t in tokenizers if t.test is None)} "
             f"{'has' if sum(t.test is None for t in tokenizers) == 1 else 'have'} no test split")
    stores = [(t.name, t.test if use_test else t.train) for t in tokenizers]
    first_name, first = stores[0]
    for name, store in stores[1:]:
        if len(store) != len(first) or not np.array_equal(store.labels, first.labels):
            warn(f"tokenizers {first_name!r} and {name!r} have different {'test' if use_test else 'train'} labels "
                 f"({len(first)} and {len(store)} rows): their scores are not on the same images")
    return use_test


PROBE_KIND = "probe output"  # the `.latentlab` marker kind of its output folder


def run_probe(tokenizers: list[TokenizerLatents], out: str | os.PathLike,
              cfg: DiscriminabilityConfig | None = None) -> dict:
    """Probe and measure every tokenizer on the same held-out images; write OUT/probe.csv, OUT/probe_images.csv
    and OUT/probe.png.

    All tokenizers are scored on their test stores when every one has a test store, else all on the
    same seeded stratified holdout of their train rows (the `eval_split` column says which).
    """
    cfg = cfg or DiscriminabilityConfig()
    _check_config(cfg)
    check_output(out, PROBE_KIND)  # before any work
    gmm_nll = gmm_nll_lookup(cfg.gmm_csv, int(cfg.gmm_k)) if cfg.gmm_csv is not None else None
    for tok in tokenizers:  # fail on bad labels before any work
        check_labels(tok.train, f"tokenizer {tok.name!r} ({tok.train.path})")
        if tok.test is not None:
            check_labels(tok.test, f"tokenizer {tok.name!r} test store ({tok.test.path})")
    check_finite(tokenizers)
    use_test = common_eval_split(tokenizers, cfg)
    rows, images = [], []
    for tok in progress(tokenizers, desc="tokenizers", total=len(tokenizers), leave=True,
                        status=lambda t: f"{t.name}: probe, kNN, clusters"):
        r, im = discriminability_row(tok, cfg, gmm_nll, use_test)
        rows.append(r)
        images.append(im)
        info(f"{tok.name}: probe top1 {r['top1']:.4f}, kNN top1 {r['knn_top1']:.4f} "
             f"({r['eval_split']}, {r['seconds']:.1f} s)")
    columns = [c for c in COLUMNS if c != "gmm_heldout_nll" or gmm_nll is not None]
    df = pd.DataFrame(rows, columns=columns)
    out = Path(out)
    with output_dir(out, PROBE_KIND) as tmp:
        save_csv(df, tmp / "probe.csv")
        save_csv(pd.concat(images, ignore_index=True), tmp / "probe_images.csv")
        plot_probe(df, tmp / "probe.png")
    csv, per_image, png = out / "probe.csv", out / "probe_images.csv", out / "probe.png"
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    return {"out": str(out), "csv": str(csv), "per_image": str(per_image), "png": str(png),
            "eval_split": rows[0]["eval_split"] if rows else None, "rows": clean}


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
           "gmm_nll_lookup", "per_image_hits", "summary_text"]
