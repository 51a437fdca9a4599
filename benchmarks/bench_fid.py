"""Benchmark of the metrics: lenet feature throughput, FD against scipy, Inception features on a GPU.

    .venv/bin/python benchmarks/bench_fid.py             # CPU parts
    .venv/bin/python benchmarks/bench_fid.py --quick     # smaller sizes (smoke test)
    .venv/bin/python benchmarks/bench_fid.py --gpu       # + Inception features of 50,000 images at 256 px

Parts (figures are printed, nothing about time is asserted):
  lenet    images/s through the whole pipeline (fit_images + network + float64 streamed statistics)
           and the ratio to a bare forward pass of the same network in the same run (the overhead)
  fd       frechet_distance (eigenvalues of S1 S2) against the textbook scipy.linalg.sqrtm formula at
           D = 2048 (Inception width): seconds of each, their ratio, and the relative difference
  stats    FeatureStats.update over 50,000 x 2048 features against numpy.cov on the same matrix
  gpu      seconds for Inception (torch-fidelity) features of 50,000 random 256 px images on CUDA;
           skipped with the reason when there is no CUDA or no torch-fidelity
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch


def _time(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_lenet(n: int, batch: int) -> dict:
    from latentlab.data import get_dataset
    from latentlab.metrics.extractors import LeNetExtractor
    from latentlab.metrics.stats import compute_features

    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        ext = LeNetExtractor("cpu", dataset="mnist5k", cache_root=root)
        train_s = time.perf_counter() - t0
    x = get_dataset("mnist5k", "train").get_batch(np.arange(4000))[0]
    x = x.repeat((n + 3999) // 4000, 1, 1, 1)[:n]                          # (n, 1, 32, 32)

    def pipeline():
        compute_features(ext, (x[i:i + batch] for i in range(0, n, batch)))

    @torch.no_grad()
    def bare():
        for i in range(0, n, batch):
            ext.net(x[i:i + batch])

    tp, tb = _time(pipeline), _time(bare)
    return {"images": n, "batch": batch, "threads": torch.get_num_threads(), "train_s": round(train_s, 2),
            "test_accuracy": ext.record["test_accuracy"], "pipeline_img_per_s": round(n / tp),
            "bare_forward_img_per_s": round(n / tb), "pipeline_over_bare": round(tp / tb, 3)}


def bench_fd(d: int) -> dict:
    import scipy.linalg

    from latentlab.metrics.fid import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3 * d, d)), rng.normal(size=(3 * d, d)) * 1.1 + 0.1
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    m1, m2 = a.mean(0), b.mean(0)

    def ref():
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        return float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)

    ours_v, ref_v = frechet_distance(m1, s1, m2, s2), ref()
    t_ours, t_ref = _time(lambda: frechet_distance(m1, s1, m2, s2), 2), _time(ref, 2)
    return {"dim": d, "latentlab_s": round(t_ours, 3), "scipy_sqrtm_s": round(t_ref, 3),
            "scipy_over_latentlab": round(t_ref / t_ours, 2), "rel_diff": abs(ours_v - ref_v) / abs(ref_v)}


def bench_stats(n: int, d: int, batch: int = 1000) -> dict:
    from latentlab.metrics.fid import FeatureStats

    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)

    def ours():
        acc = FeatureStats()
        for i in range(0, n, batch):
            acc.update(x[i:i + batch])
        return acc.cov

    def ref():
        return np.cov(x.astype(np.float64), rowvar=False)

    diff = float(np.max(np.abs(ours() - ref())))
    t_ours, t_ref = _time(ours, 1), _time(ref, 1)
    return {"n": n, "dim": d, "streamed_s": round(t_ours, 2), "numpy_cov_s": round(t_ref, 2),
            "numpy_over_streamed": round(t_ref / t_ours, 2), "max_abs_diff": diff}


def bench_gpu(n: int = 50_000, size: int = 256, batch: int = 250) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    from latentlab.errors import LatentlabError
    from latentlab.metrics.extractors import get_extractor
    from latentlab.metrics.stats import compute_features

    try:
        ext = get_extractor("inception", device="cuda")
    except LatentlabError as e:
        return {"skipped": str(e)}
    g = torch.Generator(device="cuda").manual_seed(0)

    def batches():
        for i in range(0, n, batch):
            yield torch.rand(min(batch, n - i), 3, size, size, device="cuda", generator=g) * 2 - 1

    compute_features(ext, (torch.rand(8, 3, size, size, device="cuda") for _ in range(2)))   # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    compute_features(ext, batches(), keep_logits=True)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t
    return {"images": n, "size": size, "batch": batch, "seconds": round(secs, 1), "img_per_s": round(n / secs),
            "device": torch.cuda.get_device_name()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--gpu", action="store_true", help="add Inception features of 50,000 images at 256 px")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    os.environ.setdefault("LATENTLAB_PROGRESS", "0")
    torch.set_num_threads(a.threads)
    out = {"lenet": bench_lenet(4000 if a.quick else 20_000, 250),
           "fd": bench_fd(256 if a.quick else 2048),
           "stats": bench_stats(5000 if a.quick else 50_000, 256 if a.quick else 2048)}
    out["gpu"] = bench_gpu(2000 if a.quick else 50_000) if a.gpu else {"skipped": "pass --gpu"}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    for part, r in out.items():
        print(f"{part:6s} " + ", ".join(f"{k}={v}" for k, v in r.items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
