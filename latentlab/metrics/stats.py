"""Feature statistics of image sets, and the cache of real-data statistics.

Real statistics are cached per (dataset, split, image size, extractor identity incl. weights
hash, image limit) in WORKSPACE/fid_stats/<dataset>-<split>-<size>px-<hash>.npz; the identity
is stored inside and checked on load, so a retrained or replaced extractor never reuses
statistics of its predecessor.
"""

from __future__ import annotations

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

CACHE_VERSION = 1


@dataclass
class FeatureSummary:
    """Statistics of one image set's features, plus the classifier logits (N, K) when there are any."""

    stats: GaussianStats
    logits: np.ndarray | None = None


def compute_features(extractor: FeatureExtractor, batches: Iterable[torch.Tensor], total: int | None = None,
                     desc: str = "features", keep_logits: bool = True) -> FeatureSummary:
    """Stream image batches (B, C, H, W) in [-1, 1] through `extractor` into float64 statistics."""
    acc, logits = FeatureStats(), []
    bar = progress(total=total, desc=desc, unit="img")
    for images in batches:
        feats, lg = extractor.extract(images)          # (B, D), (B, K) | None
        acc.update(feats)
        if keep_logits and lg is not None:
            logits.append(lg.cpu().numpy())
        bar.update(len(images))
    bar.close()
    if acc.n < 2:
        raise LatentlabError(f"the Fréchet distance needs at least 2 images, got {acc.n}")
    return FeatureSummary(GaussianStats.from_stats(acc), np.concatenate(logits) if logits else None)


def _dataset_batches(ds, batch_size: int, limit: int | None) -> Iterable[torch.Tensor]:
    for images, _ in ds.batches(batch_size, indices=limit_indices(len(ds), limit)):
        yield images


def stats_cache_path(dataset: str, split: str, image_size: int, extractor: FeatureExtractor,
                     limit: int | None = None) -> Path:
    """The cache file of real statistics for this (dataset, split, size, extractor, limit)."""
    key = obj_hash({"v": CACHE_VERSION, "extractor": extractor.identity(), "limit": limit})
    return workspace_root() / "fid_stats" / f"{_slug(dataset)}-{split}-{image_size}px-{key}.npz"


def _load_cached(path: Path, identity: dict) -> GaussianStats | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["identity"])) != identity:
                return None
            return GaussianStats(z["mu"], z["sigma"], int(z["n"]))
    except (ValueError, OSError, KeyError, json.JSONDecodeError):
        return None                                    # unreadable cache: recompute it


def real_statistics(dataset: str, split: str, extractor: FeatureExtractor, image_size: int | None = None,
                    batch_size: int = 250, limit: int | None = None) -> tuple[GaussianStats, bool]:
    """Statistics of a dataset split's features, from the cache when valid; returns (stats, was_cached)."""
    ds = get_dataset(dataset, split, image_size=image_size)
    path = stats_cache_path(dataset, split, ds.image_size, extractor, limit)
    identity = {"extractor": extractor.identity(), "dataset": dataset, "split": split,
                "image_size": ds.image_size, "limit": limit}
    cached = _load_cached(path, identity)
    if cached is not None:
        return cached, True
    n = len(ds) if limit is None else min(limit, len(ds))
    summary = compute_features(extractor, _dataset_batches(ds, batch_size, limit), total=n,
                               desc=f"{dataset}:{split} features", keep_logits=False)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, mu=summary.stats.mu, sigma=summary.stats.sigma, n=summary.stats.n,
                     identity=np.array(json.dumps(identity, sort_keys=True)))
    return summary.stats, False
