"""GaussianMixture benchmarks: ratio against sklearn (same init), streaming from a store, GPU fits.

Prints figures only; asserts nothing about time. Each measurement runs in its own subprocess, so
sklearn's and torch's thread pools never share a process (in one process they slow each other).

    python benchmarks/bench_gmm.py                 # sklearn ratio + streaming (full sizes)
    python benchmarks/bench_gmm.py --quick         # smaller sizes, for a smoke test
    python benchmarks/bench_gmm.py --only sklearn  # one part: sklearn | stream | gpu
    python benchmarks/bench_gmm.py --gpu           # also the ImageNet-size GPU fits (skipped without CUDA)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THREADS = 2


def planted(rng: np.random.Generator, n: int, d: int, k: int) -> np.ndarray:
    """n points from k anisotropic Gaussians in d dimensions (float32)."""
    centres = rng.normal(size=(k, d)) * 3.0
    mix = rng.normal(size=(k, d, d)) / np.sqrt(d) + np.eye(d)
    labels = rng.integers(k, size=n)
    x = np.einsum("nd,nde->ne", rng.normal(size=(n, d)), mix[labels], optimize=True) + centres[labels]
    return x.astype(np.float32)


def initial_params(x: np.ndarray, k: int, seed: int = 0) -> dict:
    """sklearn's own start (k-means, then one M-step), given to both implementations."""
    import warnings

    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = GaussianMixture(k, covariance_type="full", max_iter=0, random_state=seed).fit(x.astype(np.float64))
    return dict(weights_init=g.weights_ / g.weights_.sum(), means_init=g.means_, precisions_init=g.precisions_)


def run_child(args: list[str]) -> dict:
    """Run this script in a fresh process with THREADS threads; it prints one JSON line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS),
               OPENBLAS_NUM_THREADS=str(THREADS), LATENTLAB_PROGRESS="0")
    out = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- children
def child_fit(which: str, data: str, iters: int) -> dict:
    """Fit from the saved data and init with sklearn or latentlab; report seconds and the score."""
    import warnings

    warnings.simplefilter("ignore")
    z = np.load(data)
    x = z["x"].astype(np.float64)
    inits = dict(weights_init=z["weights_init"], means_init=z["means_init"], precisions_init=z["precisions_init"])
    k = len(inits["weights_init"])
    if which == "sklearn":
        from sklearn.mixture import GaussianMixture
        from threadpoolctl import threadpool_limits

        make = lambda m: GaussianMixture(k, covariance_type="full", tol=0, max_iter=m, **inits)  # noqa: E731
        with threadpool_limits(THREADS):
            make(1).fit(x[:2000])  # warm-up
            t = time.perf_counter()
            g = make(iters).fit(x)
            sec = time.perf_counter() - t
    else:
        import torch

        from latentlab.analysis.gmm import GaussianMixture

        torch.set_num_threads(THREADS)
        make = lambda m: GaussianMixture(k, covariance_type="full", tol=0, max_iter=m, device="cpu", **inits)  # noqa: E731
        make(1).fit(x[:2000])  # warm-up
        t = time.perf_counter()
        g = make(iters).fit(x)
        sec = time.perf_counter() - t
    return {"seconds": sec, "score": float(g.score(x)), "n_iter": int(g.n_iter_)}


def child_stream(store: str, k: int, iters: int) -> dict:
    """Fit from a float16 store on disk; report seconds per EM iteration and the peak RSS."""
    import resource
    import warnings

    import torch

    from latentlab.analysis.gmm import GaussianMixture
    from latentlab.latents import LatentStore

    warnings.simplefilter("ignore")
    torch.set_num_threads(THREADS)
    s = LatentStore.open(store)
    x0 = s.get(0, 20000, flatten=True, dtype=np.float64)
    inits = initial_params(x0, k)  # k-means on the first 20,000 rows
    g = GaussianMixture(k, covariance_type="full", tol=0, max_iter=iters, device="cpu", **inits)
    batch = g._batch(g._source(s))
    t = time.perf_counter()
    g.fit(s)
    sec = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    return {"sec_per_iter": sec / g.n_iter_, "peak_rss_gb": rss, "n_iter": int(g.n_iter_),
            "lower_bound": float(g.lower_bound_), "batch_size": batch}


def child_gpu(n: int, d: int, ks: list[int]) -> dict:
    """Fit full-covariance mixtures to an ImageNet-sized planted set on CUDA; seconds per fit."""
    import warnings

    import torch

    from latentlab.analysis.gmm import GaussianMixture

    warnings.simplefilter("ignore")
    if not torch.cuda.is_available():
        return {"skipped": "CUDA is not available"}
    g = torch.Generator(device="cuda").manual_seed(0)
    centres = torch.randn(256, d, device="cuda", generator=g) * 3
    labels = torch.randint(256, (n,), device="cuda", generator=g)
    x = torch.randn(n, d, device="cuda", generator=g) + centres[labels]  # (N, D)
    out = {"device": torch.cuda.get_device_name(), "n": n, "d": d, "fits": []}
    for k in ks:
        gm = GaussianMixture(k, covariance_type="full", random_state=0, device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        gm.fit(x)
        torch.cuda.synchronize()
        sec = time.perf_counter() - t
        out["fits"].append({"k": k, "seconds": sec, "n_iter": int(gm.n_iter_), "converged": bool(gm.converged_),
                            "sec_per_iter": sec / max(1, gm.n_iter_), "nll": -float(gm.lower_bound_)})
    return out


# ---------------------------------------------------------------- parts
def bench_sklearn(tmp: Path, quick: bool) -> None:
    n, d, k, iters = (4000, 16, 20, 10) if quick else (20000, 32, 50, 20)
    rng = np.random.default_rng(0)
    x = planted(rng, n, d, k)
    data = tmp / "sklearn.npz"
    np.savez(data, x=x, **initial_params(x, k))
    sk = run_child(["fit", "sklearn", str(data), str(iters)])
    ours = run_child(["fit", "latentlab", str(data), str(iters)])
    rel = abs(ours["score"] - sk["score"]) / abs(sk["score"])
    print(f"[sklearn] full covariance, N={n} D={d} K={k}, {iters} EM iterations, same init, {THREADS} threads")
    print(f"  sklearn   {sk['seconds']:.3f} s ({sk['seconds'] / iters:.4f} s/iter)  NLL {-sk['score']:.8f}")
    print(f"  latentlab {ours['seconds']:.3f} s ({ours['seconds'] / iters:.4f} s/iter)  NLL {-ours['score']:.8f}")
    print(f"  ratio sklearn/latentlab = {sk['seconds'] / ours['seconds']:.2f}x (goal >= 5), "
          f"relative NLL difference = {rel:.2e} (goal <= 1e-5)")


def bench_stream(tmp: Path, quick: bool, iters: int | None = None) -> None:
    n, d, k, default_iters = (200_000, 64, 50, 2) if quick else (1_000_000, 64, 50, 3)
    iters = iters or default_iters
    from latentlab.latents import LatentStore

    path = tmp / "stream-store"
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, d)) * 3.0
    with LatentStore.writer(path, (1, d), {"name": "bench"}, dtype="float16") as w:
        for i in range(0, n, 65536):
            m = min(65536, n - i)
            w.append((rng.normal(size=(m, d)) + centres[rng.integers(k, size=m)]).astype(np.float16)[:, None])
    r = run_child(["stream", str(path), str(k), str(iters)])
    print(f"[stream] float16 LatentStore on disk, N={n} D={d} K={k}, full covariance, {iters} EM iterations")
    print(f"  {r['sec_per_iter']:.2f} s per EM iteration, peak RSS {r['peak_rss_gb']:.2f} GB (goal < 2 GB), "
          f"batch_size {r['batch_size']}")


def bench_gpu(quick: bool) -> None:
    n, d, ks = (200_000, 64, [50]) if quick else (1_281_167, 128, [50, 100, 200])
    r = run_child(["gpu", str(n), str(d), ",".join(map(str, ks))])
    if "skipped" in r:
        print(f"[gpu] skipped: {r['skipped']}")
        return
    print(f"[gpu] {r['device']}, N={r['n']} D={r['d']}, full covariance, tol=1e-3, max_iter=100, kmeans init")
    for f in r["fits"]:
        print(f"  K={f['k']:4d}: {f['seconds']:.1f} s per fit ({f['n_iter']} iterations, {f['sec_per_iter']:.3f} s/iter, "
              f"converged={f['converged']}, NLL {f['nll']:.4f})")
    print("  (MAETok paper: about 3 h, 8 h and 11 h for K = 50, 100, 200 on one GPU)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--gpu", action="store_true", help="also run the GPU fits")
    ap.add_argument("--only", choices=["sklearn", "stream", "gpu"], help="run one part")
    ap.add_argument("--stream-iters", type=int, help="EM iterations of the streaming part (default 3)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "fit":
            r = child_fit(rest[0], rest[1], int(rest[2]))
        elif kind == "stream":
            r = child_stream(rest[0], int(rest[1]), int(rest[2]))
        else:
            r = child_gpu(int(rest[0]), int(rest[1]), [int(k) for k in rest[2].split(",")])
        print(json.dumps(r))
        return
    parts = [a.only] if a.only else ["sklearn", "stream"] + (["gpu"] if a.gpu else [])
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-gmm-") as tmp:
        for part in parts:
            if part == "sklearn":
                bench_sklearn(Path(tmp), a.quick)
            elif part == "stream":
                bench_stream(Path(tmp), a.quick, a.stream_iters)
            else:
                bench_gpu(a.quick)


if __name__ == "__main__":
    main()
