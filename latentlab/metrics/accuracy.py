"""Conditional accuracy of class-conditional samples: does the classifier see the class that was asked for?

The share of generated images that the feature network's own classifier (the LeNet trained on
the dataset) assigns to the class they were conditioned on, with an exact (Clopper-Pearson)
95% interval over the samples, next to chance (1 / number of classes). A generator whose
conditional accuracy is near chance has not learned the classes, and its generation FD says
little about the latent space.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from latentlab.errors import LatentlabError


def conditional_accuracy(logits: np.ndarray, labels: np.ndarray, confidence: float = 0.95) -> dict:
    """{"acc", "lo", "hi", "n", "chance"} of argmax(logits) == labels; rows with label < 0 are skipped."""
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise LatentlabError(f"conditional accuracy needs logits (N, K) and N labels; got {logits.shape} and "
                             f"{labels.shape}")
    keep = labels >= 0
    n = int(keep.sum())
    if n == 0:
        raise LatentlabError("conditional accuracy needs class-conditional samples; every label is unconditional")
    if labels.max() >= logits.shape[1]:
        raise LatentlabError(f"label {int(labels.max())} is outside the classifier's {logits.shape[1]} classes")
    hits = int((logits[keep].argmax(1) == labels[keep]).sum())
    ci = binomtest(hits, n).proportion_ci(confidence, method="exact")
    return {"acc": hits / n, "lo": float(ci.low), "hi": float(ci.high), "n": n, "chance": 1.0 / logits.shape[1]}
