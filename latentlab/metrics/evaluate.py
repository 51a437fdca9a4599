"""The metric pipelines: FD/FID of an image set, a tokenizer's reconstruction metrics, a SiT run's gFID.

    fid(real, fake)              FD between a dataset split (cached statistics) or an image set and images
    eval_tokenizer(run)          PSNR, SSIM and rFID on the held-out split; recon.csv + a grid figure
    eval_sit(run)                gFID: sample N images from a SiT run, decode, FD against the train split

Every result names its metric after the extractor: "fid" only for Inception-v3; "fd_lenet",
"fd_dinov2", "fd_torchscript" otherwise (rFID becomes "rfd_lenet", gFID "gfd_lenet"), with the
extractor's description (for lenet its test accuracy) next to it. Every distance comes with
its unbiased partner KID (`kid_lenet`, `gkid_lenet`, `rkid_inception`, ... with `_std` over
subsets) and the real-vs-real floor at the same n (`fd_floor_lenet`, `gfd_floor_lenet`,
`rfd_floor_lenet` and `*kid_floor_*`): the distance between the reference split and as many
images of the dataset's other split. Class-conditional samples also get `cond_acc_lenet`, the
share the extractor's classifier assigns to the class asked for, with its exact 95% interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from latentlab.data import SPLITS, get_dataset, to_tensor, to_uint8
from latentlab.errors import LatentlabError
from latentlab.extract import open_tokenizer
from latentlab.io import save_csv, save_json
from latentlab.latents import count_nonfinite_rows
from latentlab.metrics.accuracy import conditional_accuracy
from latentlab.metrics.config import EVAL_SPLIT, MetricsConfig, default_n_samples
from latentlab.metrics.extractors import FeatureExtractor, get_extractor
from latentlab.metrics.fid import fd_between, fd_bootstrap, fd_interval, inception_score
from latentlab.metrics.images import ImageSet, open_images
from latentlab.metrics.kid import kid
from latentlab.metrics.recon import recon_metrics, ssim_sigma
from latentlab.metrics.stats import KID_POOL, FeatureSummary, compute_features, kid_pool, real_summary
from latentlab.outputs import check_output, output_dir
from latentlab.plots.recon import plot_recon_grid, plot_samples
from latentlab.sit.sample import SampleConfig, balanced_labels, decode_latents, decoder_for, load_sit, sample_latents
from latentlab.tokenizers.training import reconstruct
from latentlab.utils import derive_seed, get_device

FID_KIND, RECON_KIND, GFID_KIND = "fid output", "eval-tokenizer output", "eval-sit output"  # `.latentlab` kinds


def parse_real(spec: str) -> tuple[str, str]:
    """'mnist5k:train' -> ('mnist5k', 'train'); 'cifar10:/data/x:test' -> ('cifar10:/data/x', 'test')."""
    head, _, tail = spec.rpartition(":")
    if head and tail in SPLITS:
        return head, tail
    return spec, "train"


def metric_names(ext: FeatureExtractor, prefix: str = "") -> tuple[str, str | None]:
    """(distance name, Inception-score name) with an optional prefix: ('rfid', ...) or ('gfd_lenet', ...)."""
    name = ext.metric
    if prefix:
        name = f"{prefix}fid" if name == "fid" else f"{prefix}{name}"
    return name, ext.is_metric


def kid_names(ext: FeatureExtractor, prefix: str = "") -> tuple[str, str]:
    """(KID name, real-vs-real FD floor name): ('kid_lenet', 'fd_floor_lenet'), ('gkid_inception', 'gfd_floor_inception')."""
    return f"{prefix}kid_{ext.name}", f"{prefix}fd_floor_{ext.name}"


def _is_entry(ext: FeatureExtractor, summary: FeatureSummary, splits: int) -> dict:
    if summary.logits is None or ext.is_metric is None:
        return {}
    mean, std = inception_score(summary.logits, splits)
    return {ext.is_metric: mean, f"{ext.is_metric}_std": std}


def _extractor_for(cfg: MetricsConfig, dataset: str | None) -> FeatureExtractor:
    lenet_data = cfg.lenet_dataset or dataset
    if cfg.extractor.partition(":")[0] == "lenet" and lenet_data is None:
        raise LatentlabError("the lenet extractor is trained on a dataset: give --real as a dataset "
                             "(e.g. mnist5k:train) or name one with --lenet-dataset")
    return get_extractor(cfg.extractor, dataset=lenet_data or "mnist5k", device=cfg.device)


def _reference(real: str, ext: FeatureExtractor, cfg: MetricsConfig, image_size: int | None = None
               ) -> tuple[FeatureSummary, dict]:
    """Statistics (and KID features) of the real side: a dataset split (cached) at `image_size`, or a folder / npz."""
    p = Path(real).expanduser()
    if p.exists():
        imgs = open_images(p)
        n = min(imgs.n, cfg.real_limit or imgs.n)
        s = compute_features(ext, imgs.batches(cfg.batch_size, cfg.real_limit), total=n, desc="real features",
                             keep_logits=False, keep_features=KID_POOL)
        return s, {**imgs.describe(), "n": s.stats.n, "stats_cached": False}
    dataset, split = parse_real(real)
    s, cached = real_summary(dataset, split, ext, image_size=image_size, batch_size=cfg.batch_size,
                             limit=cfg.real_limit)
    return s, {"dataset": dataset, "split": split, "n": s.stats.n, "stats_cached": cached}


def _kid_entry(ref: FeatureSummary, other: FeatureSummary, name: str, cfg: MetricsConfig) -> dict:
    mean, std, size = kid(ref.features, other.features, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
    return {name: mean, f"{name}_std": std, f"{name}_subset_size": size}


def distances(ref: FeatureSummary, fake: FeatureSummary, ext: FeatureExtractor, cfg: MetricsConfig,
              prefix: str = "") -> dict:
    """FD and KID (mean, std over subsets) between two feature summaries, named after the extractor."""
    name, _ = metric_names(ext, prefix)
    return {name: fd_between(ref.stats, fake.stats), **_kid_entry(ref, fake, kid_names(ext, prefix)[0], cfg)}


def floor_against(real: str, ref: FeatureSummary, n: int, ext: FeatureExtractor, cfg: MetricsConfig,
                  prefix: str = "", image_size: int | None = None) -> dict:
    """The real-vs-real floor: FD and KID between `real` (a DATASET:SPLIT) and n images of the dataset's other split.

    Real images are what a perfect generator (or tokenizer) would produce, so this is the
    distance that sample noise alone gives at this n; fewer other-split images than n are all
    used (`*_floor_n` says how many). A folder or npz reference has no other split: no floor.
    """
    kname, fname = kid_names(ext, prefix)
    if Path(real).expanduser().exists():
        return {f"{fname}_note": "the reference is an image folder: no other split for a real-vs-real floor"}
    dataset, split = parse_real(real)
    other = "test" if split == "train" else "train"
    s, _ = real_summary(dataset, other, ext, image_size=image_size, batch_size=cfg.batch_size, limit=n)
    kid_entry = _kid_entry(ref, s, kname.replace("kid_", "kid_floor_", 1), cfg)
    return {fname: fd_between(ref.stats, s.stats), f"{fname}_n": s.stats.n, f"{fname}_split": other, **kid_entry}


def _cond_entry(ext: FeatureExtractor, fake: FeatureSummary, labels: np.ndarray | None) -> dict:
    """Conditional accuracy of generated images by the extractor's classifier, when it classifies the dataset."""
    if labels is None or fake.logits is None or not ext.dataset_classes or not (np.asarray(labels) >= 0).any():
        return {}
    c = conditional_accuracy(fake.logits, labels)
    name = f"cond_acc_{ext.name}"
    return {name: c["acc"], f"{name}_lo": c["lo"], f"{name}_hi": c["hi"], "cond_acc_chance": c["chance"]}


def fd_against(real: str, fake_batches: Iterable[torch.Tensor], n_fake: int, cfg: MetricsConfig,
               ext: FeatureExtractor, prefix: str = "", image_size: int | None = None,
               labels: np.ndarray | None = None) -> dict:
    """FD, KID and their real-vs-real floor (+ IS and, given the conditioning `labels`, conditional accuracy
    when the extractor classifies) between `real` and streamed fake batches (B, C, H, W) in [-1, 1]."""
    ref, real_info = _reference(real, ext, cfg, image_size)
    # the FD bootstrap resamples every generated row; KID keeps its fixed pool of them
    fake = compute_features(ext, fake_batches, total=n_fake, desc="generated features",
                            keep_features=None if cfg.bootstrap > 0 else KID_POOL)
    name, _ = metric_names(ext, prefix)
    out = {"metric": name, **distances(ref, kid_pool(fake), ext, cfg, prefix)}
    if cfg.bootstrap > 0:  # the generated set's sampling noise: resample its features, the real side fixed
        reps = fd_bootstrap(ref.stats, fake.features, cfg.bootstrap, derive_seed("fd-bootstrap", cfg.seed))
        out[f"{name}_lo"], out[f"{name}_hi"] = fd_interval(out[name], reps)
        out["bootstrap"] = {"n": len(reps), "replicates": [float(v) for v in reps]}
    return {**out, **floor_against(real, ref, fake.stats.n, ext, cfg, prefix, image_size),
            **_is_entry(ext, fake, cfg.is_splits), **_cond_entry(ext, fake, labels),
            "extractor": ext.describe(), "real": real_info, "n_fake": fake.stats.n}


def bootstrap_table(summary: dict) -> dict[str, tuple[str, pd.DataFrame]]:
    """`_write_outputs` tables for the FD bootstrap: {"bootstrap": ("fd_bootstrap.csv", replicates)} or {}.

    The summary then names the file instead of listing the replicates.
    """
    boot = summary.get("bootstrap")
    if not boot or "replicates" not in boot:
        return {}
    df = pd.DataFrame({"replicate": np.arange(boot["n"]), summary["metric"]: boot["replicates"]})
    summary["bootstrap"] = {"n": boot["n"], "file": "fd_bootstrap.csv"}
    return {"bootstrap": ("fd_bootstrap.csv", df)}


def fid(real: str, fake: str | ImageSet, cfg: MetricsConfig | None = None, out: str | Path | None = None) -> dict:
    """FD between `real` (DATASET[:SPLIT] or a folder/npz) and `fake` (a folder of PNGs or an images.npz)."""
    cfg = cfg or MetricsConfig()
    if out is not None:
        check_output(out, FID_KIND)  # before any work
    imgs = fake if isinstance(fake, ImageSet) else open_images(fake)
    dataset = None if Path(real).expanduser().exists() else parse_real(real)[0]
    ext = _extractor_for(cfg, dataset)
    summary = fd_against(real, imgs.batches(cfg.batch_size), imgs.n, cfg, ext, labels=imgs.labels)
    summary["fake"] = imgs.describe()
    if out is not None:
        row = {"real": summary["real"].get("dataset", summary["real"].get("source")), "fake": imgs.source,
               "n_real": summary["real"]["n"], "n_fake": summary["n_fake"], "extractor": summary["extractor"]["name"],
               **_floats(summary)}
        if "test_accuracy" in summary["extractor"]:
            row["extractor_test_accuracy"] = summary["extractor"]["test_accuracy"]
        shown = np.unique(np.linspace(0, imgs.n - 1, min(64, imgs.n)).round().astype(int))  # spread over the set
        _write_outputs(summary, Path(out), FID_KIND, "fid", row,
                      lambda d: plot_samples(imgs.uint8(shown), d / "samples", title=str(imgs.source)),
                      bootstrap_table(summary))
    return summary


def _floats(summary: dict) -> dict:
    """The summary's float entries (the metric and its companions), for a one-row table."""
    return {k: v for k, v in summary.items() if isinstance(v, float)}


def _write_outputs(summary: dict, out: Path, kind: str, name: str, row: dict, figure: Callable[[Path], Path],
                  tables: dict[str, tuple[str, pd.DataFrame]] | None = None) -> None:
    """The one writer of the metric commands: OUT/NAME.csv (`row`), further `tables` ({key: (file, frame)}),
    OUT/NAME.json (`summary`) and the figure that `figure(folder)` writes; their paths go into summary["files"].

    OUT (a `kind` output folder) is written under a temporary name and replaces an older one whole."""
    with output_dir(out, kind) as d:
        files = {"csv": save_csv(pd.DataFrame([row]), d / f"{name}.csv")}
        files.update({key: save_csv(df, d / file) for key, (file, df) in (tables or {}).items()})
        files["json"] = save_json(summary, d / f"{name}.json")
        files["figure"] = figure(d)
    summary["files"] = {k: str(Path(out) / Path(v).name) for k, v in files.items()}


# ---------------------------------------------------------------- tokenizers: PSNR, SSIM, rFID

def _default_out(run: str | Path, out: str | Path | None) -> Path:
    if out is not None:
        return Path(out)
    if Path(run).expanduser().is_dir():
        return Path(run).expanduser() / "eval"
    raise LatentlabError(f"{run} is not a run directory; give --out")


def eval_tokenizer(run: str | Path, cfg: MetricsConfig | None = None, out: str | Path | None = None,
                   dataset: str | None = None, split: str = EVAL_SPLIT) -> dict:
    """PSNR, SSIM and rFID (FD between reconstructions and originals) of a tokenizer on the held-out split.

    Writes OUT/recon.csv (one row), OUT/recon_images.csv (per image) and OUT/recon_grid.png
    (originals above reconstructions); OUT defaults to RUN/eval.
    """
    cfg = cfg or MetricsConfig()
    device = get_device(cfg.device)
    model, info = open_tokenizer(run, cfg.weights, device)
    if not info.get("decodes", True):
        raise LatentlabError(f"{run} has no decode(latents): reconstruction needs one")
    out = _default_out(run, out)
    check_output(out, RECON_KIND)  # before any work
    dataset = dataset or info.get("dataset")
    if not dataset:
        raise LatentlabError(f"{run} does not record its dataset; give --dataset")
    ds = get_dataset(dataset, split, image_size=info.get("image_size"))
    ext = _extractor_for(cfg, dataset)
    real = f"{dataset}:{split}"
    ref, _ = _reference(real, ext, cfg, ds.image_size)
    rows = {"psnr": [], "ssim": []}

    def recon_batches():
        for x, _ in ds.batches(cfg.batch_size):
            r = reconstruct(model, x.to(device), cfg.batch_size).cpu()          # (B, C, H, W)
            bad = count_nonfinite_rows(r.numpy())
            if bad:
                raise LatentlabError(f"{bad} of {len(r)} reconstructions by {run} hold NaN or inf; the tokenizer is "
                                     f"unusable, retrain it")
            for k, v in recon_metrics(x, r).items():
                rows[k].append(v.numpy())
            yield r
    rec = compute_features(ext, recon_batches(), total=len(ds), desc="reconstruct", keep_logits=False,
                           keep_features=KID_POOL)
    grid_idx = np.unique(np.linspace(0, len(ds) - 1, min(cfg.grid, len(ds))).round().astype(int))  # spread out
    x = ds.get_batch(grid_idx)[0]
    shown = (to_uint8(x), to_uint8(reconstruct(model, x.to(device), cfg.batch_size).cpu()))
    name, _ = metric_names(ext, "r")
    psnr, ssim = np.concatenate(rows["psnr"]), np.concatenate(rows["ssim"])
    summary = {"tokenizer": info.get("name", str(run)), "run": str(run), "dataset": dataset, "split": split,
               "n": len(ds), "metric": name, **distances(ref, rec, ext, cfg, "r"),
               **floor_against(real, ref, rec.stats.n, ext, cfg, "r", ds.image_size),
               "psnr": float(np.mean(psnr)), "psnr_std": float(np.std(psnr)),
               "ssim": float(np.mean(ssim)), "ssim_std": float(np.std(ssim)),
               "ssim_sigma": ssim_sigma(ds.image_size, ds.image_size),
               "checkpoint_hash": info.get("checkpoint_hash"), "extractor": ext.describe()}
    row = {k: summary[k] for k in ("tokenizer", "dataset", "split", "n", "psnr", "psnr_std", "ssim", "ssim_std",
                                   "ssim_sigma", name)}
    row.update({k: v for k, v in summary.items() if k not in row and isinstance(v, (int, float))})
    row.update(extractor=summary["extractor"]["name"], extractor_test_accuracy=summary["extractor"].get("test_accuracy"),
               checkpoint_hash=summary["checkpoint_hash"])
    per_image = pd.DataFrame({"index": np.arange(len(psnr)), "label": ds.labels[:len(psnr)], "psnr": psnr, "ssim": ssim})
    _write_outputs(summary, out, RECON_KIND, "recon", row,
                  lambda d: plot_recon_grid(*shown, d / "recon_grid", title=f"{summary['tokenizer']} on {dataset}:{split}"),
                  {"per_image": ("recon_images.csv", per_image)})
    return summary


# ---------------------------------------------------------------- SiT: gFID

def _sit_batches(model, rc: dict, decoder, labels: np.ndarray, cfg: MetricsConfig, device, keep: list
                 ) -> Iterable[torch.Tensor]:
    """Sample and decode chunk by chunk; chunk c uses seed + 1,000,003 c (chunk 0 = `latentlab sample --seed`)."""
    for c, start in enumerate(range(0, len(labels), cfg.chunk)):
        lab = labels[start:start + cfg.chunk]
        scfg = SampleConfig(n=len(lab), cfg=cfg.cfg, steps=cfg.steps, sampler=cfg.sampler,
                            seed=cfg.seed + 1_000_003 * c, batch_size=cfg.batch_size, weights=cfg.weights)
        latents = sample_latents(model, lab, scfg, rc.get("normalization"))
        images = decode_latents(decoder, latents, cfg.batch_size, device)    # (B, H, W, C) uint8
        if not keep:
            keep.append(images[:64])
        for i in range(0, len(images), cfg.batch_size):
            yield to_tensor(images[i:i + cfg.batch_size])                     # (b, C, H, W)


def eval_sit(run: str | Path, cfg: MetricsConfig | None = None, out: str | Path | None = None) -> dict:
    """gFID of a SiT run: sample N images (balanced classes), decode them, FD against the train split.

    Writes OUT/gfid.csv, OUT/gfid.json and OUT/samples.png; OUT defaults to RUN/eval.
    """
    cfg = cfg or MetricsConfig()
    device = get_device(cfg.device)
    model, rc = load_sit(run, cfg.weights, device)
    out = _default_out(run, out)
    check_output(out, GFID_KIND)  # before any work
    prov = rc.get("latents", {})
    dataset = prov.get("dataset")
    if not dataset:
        raise LatentlabError(f"{run} does not record the dataset of its latents; compute FD on `latentlab sample` "
                             "output with `latentlab fid --real DATASET:train --fake OUT/images.npz`")
    decoder, source = decoder_for(prov, device)
    if decoder is None:
        raise LatentlabError(f"cannot decode samples of {run}: {source}; gFID needs images")
    n = cfg.n if cfg.n is not None else default_n_samples(dataset)
    labels = balanced_labels(n, model.cfg.num_classes)
    ext = _extractor_for(cfg, dataset)
    shown: list = []
    summary = fd_against(f"{dataset}:train", _sit_batches(model, rc, decoder, labels, cfg, device, shown), n, cfg,
                         ext, prefix="g", image_size=prov.get("image_size"), labels=labels)
    summary.update(run=str(run), dataset=dataset, decoder=source, n=n,
                   sampling={k: getattr(cfg, k) for k in ("cfg", "steps", "sampler", "seed", "weights")})
    row = {"run": summary["run"], "dataset": dataset, "n": n, **summary["sampling"], **_floats(summary),
           "extractor": summary["extractor"]["name"], "extractor_test_accuracy": summary["extractor"].get("test_accuracy")}
    metric = summary["metric"]
    _write_outputs(summary, out, GFID_KIND, "gfid", row,
                  lambda d: plot_samples(shown[0], d / "samples", title=f"{Path(run).name}: {metric} {summary[metric]:.2f}"),
                  bootstrap_table(summary))
    return summary

