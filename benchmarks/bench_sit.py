"""SiT benchmarks: training throughput (samples/s) against a stock PyTorch transformer of the same size.

Prints figures only; asserts nothing about time.

    python benchmarks/bench_sit.py            # SiT-tiny on 2 CPU threads (tokens of the tiny tokenizer and 128x32)
    python benchmarks/bench_sit.py --quick    # fewer steps, for a smoke test
    python benchmarks/bench_sit.py --gpu      # also SiT-B and SiT-L at 128 tokens x 32 channels in bf16 (needs CUDA)

The reference is `torch.nn.TransformerEncoder` (pre-norm, GELU, SDPA fast path off in training)
with the same depth, width, heads and MLP ratio, a linear in/out map and the same optimizer and
EMA, so the ratio shows the cost of SiT's conditioning (timestep/label embedders, adaLN-Zero)
over a plain transformer. A training step is forward + backward + AdamW + EMA update.
FLOPs are counted analytically: 12*L*D^2 + 2*L^2*D multiply-adds per layer and sample (DiT's
"GFLOPs" convention); the DiT paper's 118.6 "GFLOPs" for DiT-XL/2 at 256 tokens is printed as a
check of the count. Training FLOPs = 3 x forward FLOPs x 2 (multiply + add).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn

from latentlab.sit.model import SiT, sit_config
from latentlab.trainer import update_ema
from latentlab.sit.transport import interpolate, per_sample_mse, sample_t, target_velocity

THREADS = 2


class Reference(nn.Module):
    """Stock PyTorch encoder of SiT's size on (N, T, C) tokens (no conditioning)."""

    def __init__(self, tokens: int, channels: int, depth: int, width: int, heads: int, ratio: float = 4.0):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, int(width * ratio), dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.inp, self.out = nn.Linear(channels, width), nn.Linear(width, channels)
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))
        self.enc = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, x, t, y):
        return self.out(self.enc(self.inp(x) + self.pos))


def macs_per_sample(depth: int, width: int, tokens: int) -> float:
    """Forward multiply-adds of the transformer trunk per sample."""
    return depth * (12 * tokens * width**2 + 2 * tokens**2 * width)


def time_training(model: nn.Module, shape: tuple[int, int], batch: int, steps: int, device: str,
                  bf16: bool) -> float:
    """Seconds per training step (median over `steps` after 3 warm-up steps)."""
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for i in range(steps + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        t = sample_t(batch, "uniform", g, device=device)
        eps = torch.randn(x.shape, generator=g, device=device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = per_sample_mse(model(interpolate(x, eps, t), t, y), target_velocity(x, eps)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, model, 0.9999)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench(name: str, shape: tuple[int, int], batch: int, steps: int, device: str, bf16: bool) -> dict:
    """One row: SiT and reference step time, samples/s, ratio, achieved TFLOP/s."""
    torch.manual_seed(0)
    cfg = sit_config(name, shape, "tokens", 10)
    sit = SiT(cfg)
    ref = Reference(shape[0], shape[1], cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio)
    s_sit = time_training(sit, shape, batch, steps, device, bf16)
    s_ref = time_training(ref, shape, batch, steps, device, bf16)
    flops = 6 * macs_per_sample(cfg.depth, cfg.hidden_size, shape[0]) * batch
    return {"model": name, "device": device, "dtype": "bf16" if bf16 else "fp32", "tokens": shape[0],
            "channels": shape[1], "batch": batch, "params_M": round(sum(p.numel() for p in sit.parameters()) / 1e6, 2),
            "sit_step_s": round(s_sit, 4), "sit_samples_per_s": round(batch / s_sit, 1),
            "ref_step_s": round(s_ref, 4), "ref_samples_per_s": round(batch / s_ref, 1),
            "ratio_sit_over_ref": round(s_ref / s_sit, 3), "sit_tflops": round(flops / s_sit / 1e12, 3)}


def main() -> None:
    """Run the CPU rows, and the GPU rows with --gpu when CUDA is available."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="also SiT-B/L at 128x32 in bf16 (skipped without CUDA)")
    ap.add_argument("--quick", action="store_true", help="fewer timed steps")
    ap.add_argument("--json", action="store_true", help="print rows as JSON lines")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    steps = 5 if args.quick else 20
    print(f"DiT-XL/2 check: {macs_per_sample(28, 1152, 256) / 1e9:.1f} G multiply-adds per forward at 256 tokens "
          "(DiT paper: 118.6 'GFLOPs')")
    rows = [bench("SiT-tiny", (16, 8), 64, steps, "cpu", False),
            bench("SiT-tiny", (128, 32), 64, max(3, steps // 2), "cpu", False)]
    if args.gpu:
        if torch.cuda.is_available():
            for name in ("SiT-B", "SiT-L"):
                rows.append(bench(name, (128, 32), 256, steps, "cuda", True))
        else:
            print("--gpu: skipped, CUDA is not available")
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['model']:9s} {r['device']} {r['dtype']} {r['tokens']}x{r['channels']} batch {r['batch']}: "
                  f"SiT {r['sit_samples_per_s']:8.1f} samples/s ({r['sit_step_s'] * 1e3:.1f} ms/step, "
                  f"{r['sit_tflops']} TFLOP/s), stock transformer {r['ref_samples_per_s']:8.1f} samples/s, "
                  f"ratio {r['ratio_sit_over_ref']}")


if __name__ == "__main__":
    main()
