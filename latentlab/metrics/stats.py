"""Feature statistics of image sets, and the cache of real-data statistics.

Real statistics are cached per (dataset, split, image size, extractor identity incl. weights
hash, image limit) in WORKSPACE/fid_stats/<dataset>-<split>-<size>px-<hash>.npz, with a seeded
random subset of at most KID_POOL feature rows for KID; the identity is stored inside and checked
on load, so a retrained or replaced extractor never reuses statistics of its predecessor.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from latentlab.data import get_dataset
from latentlab.errors import LatentlabError
from latentlab.io import atomic_path, obj_hash, workspace_root
from latentlab.metrics.extractors import FeatureExtractor
from latentlab.metrics.fid import FeatureStats, GaussianStats
from latentlab.metrics.images import limit_indices
from latentlab.metrics.lenet import _slug
from latentlab.utils import progress

CACHE_VERSION = 2   # 2: the cache also holds a seeded subset of the features themselves (for KID)
KID_POOL = 10_000   # feature rows kept per image set for KID (a fixed random subset of larger sets)


@dataclass
class FeatureSummary:
    """Statistics of one image set's features, plus the classifier logits (N, K) and kept feature rows when asked."""

    stats: GaussianStats
    logits: np.ndarray | None = None
    features: np.ndarray | None = None   # (min(N, keep), D) float32: every row, or a seeded random subset


def keep_positions(total: int | None, keep: int | None) -> np.ndarray | None:
    """Sorted stream positions whose features are kept: all (None) or a seeded random `keep` of `total`."""
    if keep is None or total is None or total <= keep:
        return None
    return np.sort(np.random.default_rng(0).permutation(total)[:keep])


def kid_pool(summary: FeatureSummary) -> FeatureSummary:
    """`summary` with its kept rows cut to the KID pool: the rows `keep_features=KID_POOL` would have kept."""
    if summary.features is None:
        return summary
    pos = keep_positions(len(summary.features), KID_POOL)
    return summary if pos is None else dataclasses.replace(summary, features=summary.features[pos])


def compute_features(extractor: FeatureExtractor, batches: Iterable[torch.Tensor], total: int | None = None,
                     desc: str = "features", keep_logits: bool = True, keep_features: int | None = 0
                     ) -> FeatureSummary:
    """Stream image batches (B, C, H, W) in [-1, 1] through `extractor` into float64 statistics.

    keep_features: 0 keeps no rows; None keeps all; k keeps a seeded random k of `total` rows
    (the first k when `total` is unknown).
    """
    acc, logits, kept = FeatureStats(), [], []
    pos = keep_positions(total, keep_features) if keep_features else None
    bar = progress(total=total, desc=desc, unit="img")
    seen = 0
    for images in batches:
        feats, lg = extractor.extract(images)          # (B, D), (B, K) | None
        acc.update(feats)
        if keep_features:
            kept.append(feats.detach().float())
        if keep_logits and lg is not None:
            logits.append(lg.cpu().numpy())
        if keep_features != 0:
            rows = np.arange(seen, seen + len(feats))
            sel = np.isin(rows, pos) if pos is not None else rows < (keep_features or np.inf)
            kept.append(feats[torch.from_numpy(np.flatnonzero(sel)).to(feats.device)].float().cpu().numpy())
        seen += len(feats)
        bar.update(len(images))
    bar.close()
    if acc.n < 2:
        raise LatentlabError(f"the Fréchet distance needs at least 2 images, got {acc.n}")
    return FeatureSummary(GaussianStats.from_stats(acc), np.concatenate(logits) if logits else None,
                          np.concatenate(kept) if kept else None)


def _dataset_batches(ds, batch_size: int, limit: int | None) -> Iterable[torch.Tensor]:
    for images, _ in ds.batches(batch_size, indices=limit_indices(len(ds), limit)):
        yield images


def stats_cache_path(dataset: str, split: str, image_size: int, extractor: FeatureExtractor,
                     limit: int | None = None) -> Path:
    """The cache file of real statistics for this (dataset, split, size, extractor, limit)."""
    key = obj_hash({"v": CACHE_VERSION, "extractor": extractor.identity(), "limit": limit})
    return workspace_root() / "fid_stats" / f"{_slug(dataset)}-{split}-{image_size}px-{key}.npz"


def _load_cached(path: Path, identity: dict) -> FeatureSummary | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["identity"])) != identity:
                return None
            return FeatureSummary(GaussianStats(z["mu"], z["sigma"], int(z["n"])), features=z["features"])
    except (ValueError, OSError, KeyError, json.JSONDecodeError):
        return None                                    # unreadable cache: recompute it


def real_summary(dataset: str, split: str, extractor: FeatureExtractor, image_size: int | None = None,
                 batch_size: int = 250, limit: int | None = None) -> tuple[FeatureSummary, bool]:
    """Statistics and up to KID_POOL feature rows of a dataset split, from the cache when valid; (summary, was_cached)."""
    ds = get_dataset(dataset, split, image_size=image_size)
    path = stats_cache_path(dataset, split, ds.image_size, extractor, limit)
    identity = {"extractor": extractor.identity(), "dataset": dataset, "split": split,
                "image_size": ds.image_size, "limit": limit, "kid_pool": KID_POOL}
    cached = _load_cached(path, identity)
    if cached is not None:
        return cached, True
    n = len(ds) if limit is None else min(limit, len(ds))
    summary = compute_features(extractor, _dataset_batches(ds, batch_size, limit), total=n,
                               desc=f"{dataset}:{split} features", keep_logits=False, keep_features=KID_POOL)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, mu=summary.stats.mu, sigma=summary.stats.sigma, n=summary.stats.n, features=summary.features,
                     identity=np.array(json.dumps(identity, sort_keys=True)))
    return summary, False


def real_statistics(dataset: str, split: str, extractor: FeatureExtractor, image_size: int | None = None,
                    batch_size: int = 250, limit: int | None = None) -> tuple[GaussianStats, bool]:
    """Statistics of a dataset split's features, from the cache when valid; returns (stats, was_cached)."""
    summary, cached = real_summary(dataset, split, extractor, image_size, batch_size, limit)
    return summary.stats, cached
