"""Tokenizer benchmarks: tiny preset on mnist5k (2 CPU threads), extraction throughput, B preset on GPU.

Prints figures only; asserts nothing about time. Each kind trains in its own subprocess.

    python benchmarks/bench_tokenizers.py                  # ae, vae, vavae, maetok: tiny, default steps
    python benchmarks/bench_tokenizers.py --quick          # 60 steps each (+20 fine-tune), for a smoke test
    python benchmarks/bench_tokenizers.py --kinds ae maetok --steps 500
    python benchmarks/bench_tokenizers.py --threads 1      # on a loaded machine (2 threads spin against other jobs)
    python benchmarks/bench_tokenizers.py --gpu            # also the B preset step time at 256 px in bf16 (needs CUDA)

MAETok also gets a row "maetok+ft": stage 1 plus `--finetune-steps` of the decoder fine-tune stage
(encoder frozen, masking off), with both times added, as the paper trains it.

Goals (issue 3): each kind trains in <= 180 s to a held-out PSNR >= 18 dB; the table shows the ratios
time / 180 s and PSNR / 18 dB next to the figures. Extraction throughput is images/s of
`latentlab.extract` (posterior mode, batch 256) against a bare `model.encode` loop over the same
images: the ratio is the overhead of the store (sharding, statistics, atomic writes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

THREADS = 2
GOAL_S, GOAL_DB = 180.0, 18.0


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    os.environ["LATENTLAB_PROGRESS"] = "0"
    if args.child == "train":
        from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer

        train = {"device": "cpu"}
        if args.steps:
            train["steps"] = args.steps
        t0 = time.perf_counter()
        cfg = TokenizerRunConfig(arch=args.kind, size="tiny", dataset="mnist5k", train=train)
        if args.init:
            cfg.stage, cfg.init = "decoder-finetune", args.init
        s = train_tokenizer(cfg, args.out)
        print(json.dumps({"kind": args.kind + ("+ft" if args.init else ""), "steps": s["steps"], "train_s": time.perf_counter() - t0,
                          "loop_s": s["time_s"], "psnr": s["psnr"], "teacher": s["teacher"], "params": s["params"],
                          "latent_shape": s["latent_shape"]}))
    elif args.child == "extract":
        import numpy as np

        from latentlab.data import get_dataset
        from latentlab.extract import extract
        from latentlab.tokenizers.training import load_tokenizer

        ds = get_dataset("mnist5k", "train")
        t0 = time.perf_counter()
        store = extract(args.out, "mnist5k", "train", os.path.join(args.tmp, "store"), batch_size=256, device="cpu")
        t_store = time.perf_counter() - t0
        model, _ = load_tokenizer(args.out)
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(ds), 256):
                model.encode(ds.get_batch(np.arange(i, min(i + 256, len(ds))))[0]).mode()
        t_bare = time.perf_counter() - t0
        print(json.dumps({"images": len(store), "extract_img_s": len(store) / t_store, "bare_img_s": len(ds) / t_bare}))
    elif args.child == "gpu":
        from latentlab.tokenizers.models import build_tokenizer
        from latentlab.trainer import TrainConfig, make_optimizer, update_ema

        import copy

        out = []
        for kind in args.kinds:
            torch.manual_seed(0)
            m = build_tokenizer({"arch": kind, "size": "B", "image_size": 256, "channels": 3}).cuda()
            ema = copy.deepcopy(m).requires_grad_(False)
            opt = make_optimizer(m, TrainConfig())
            x = torch.rand(args.gpu_batch, 3, 256, 256, device="cuda") * 2 - 1
            g = torch.Generator(device="cuda").manual_seed(0)
            times = []
            for i in range(13):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = m(x, generator=g)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                update_ema(ema, m, 0.999)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            step = sorted(times[3:])[len(times[3:]) // 2]
            out.append({"kind": kind, "batch": args.gpu_batch, "step_s": step, "img_s": args.gpu_batch / step,
                        "params_M": sum(p.numel() for p in m.parameters()) / 1e6,
                        "mem_GiB": torch.cuda.max_memory_allocated() / 2**30})
            del m, ema, opt
            torch.cuda.empty_cache()
        print(json.dumps(out))


def _run(argv: list[str]) -> dict:
    threads = argv[argv.index("--threads") + 1]
    env = {**os.environ, "OMP_NUM_THREADS": threads, "LATENTLAB_PROGRESS": "0"}
    r = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"child {argv} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=["ae", "vae", "vavae", "maetok"])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the tokenizer default)")
    p.add_argument("--quick", action="store_true", help="60 steps per kind")
    p.add_argument("--gpu", action="store_true", help="B preset step time at 256 px in bf16 (needs CUDA)")
    p.add_argument("--gpu-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=THREADS, help="CPU threads (2 = the goal's 2 cores)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--kind", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--init", default=None, help=argparse.SUPPRESS)
    p.add_argument("--finetune-steps", type=int, default=250,
                   help="MAETok decoder fine-tune steps after stage 1 (the paper's second stage); 0 = skip")
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args)
    steps = 60 if args.quick else args.steps
    ft_steps = 20 if args.quick else args.finetune_steps
    results = {"threads": args.threads, "train": [], "extract": None, "gpu": None}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'kind':9s} {'teacher':8s} {'steps':>6s} {'train s':>8s} {'/180s':>6s} {'PSNR dB':>8s} {'/18dB':>6s}")
        for kind in args.kinds:
            argv = ["--child", "train", "--kind", kind, "--out", os.path.join(tmp, kind), "--threads", str(args.threads)]
            rows = [_run(argv + (["--steps", str(steps)] if steps else []))]
            if kind == "maetok" and ft_steps:
                ft = _run(["--child", "train", "--kind", kind, "--out", os.path.join(tmp, kind + "-ft"), "--threads",
                           str(args.threads), "--init", os.path.join(tmp, kind), "--steps", str(ft_steps)])
                ft.update(steps=rows[0]["steps"] + ft["steps"], train_s=rows[0]["train_s"] + ft["train_s"])
                rows.append(ft)  # stage 1 + decoder fine-tune, times added
            for r in rows:
                results["train"].append(r)
                print(f"{r['kind']:9s} {r['teacher']:8s} {r['steps']:6d} {r['train_s']:8.1f} {r['train_s'] / GOAL_S:6.2f} "
                      f"{r['psnr']:8.2f} {r['psnr'] / GOAL_DB:6.2f}", flush=True)
        r = _run(["--child", "extract", "--out", os.path.join(tmp, args.kinds[0]), "--tmp", tmp,
                  "--threads", str(args.threads)])
        results["extract"] = r
        print(f"extraction ({args.kinds[0]}, {r['images']} images): {r['extract_img_s']:.0f} img/s "
              f"(bare encode loop {r['bare_img_s']:.0f} img/s, ratio {r['extract_img_s'] / r['bare_img_s']:.2f})")
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("GPU part skipped: CUDA is not available")
        else:
            results["gpu"] = _run(["--child", "gpu", "--kinds", *args.kinds, "--gpu-batch", str(args.gpu_batch),
                                   "--threads", str(args.threads)])
            for g in results["gpu"]:
                print(f"B preset {g['kind']:7s} 256px bf16 batch {g['batch']}: {g['step_s'] * 1e3:.0f} ms/step, "
                      f"{g['img_s']:.0f} img/s, {g['params_M']:.0f}M params, {g['mem_GiB']:.1f} GiB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
