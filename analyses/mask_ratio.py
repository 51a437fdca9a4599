"""MAETok's mask-ratio sweep: reconstruction, generation and probing against the masking ratio.

    python analyses/mask_ratio.py --scale cpu --out mask-cpu --ratios 0.25,0.5,0.75

Each ratio r trains MAETok with a fixed ratio (a `sweep` over model.mask_ratio: variants maetok@mask_ratio=r;
the default study draws r in [0.4, 0.6] per batch). Writes OUT/mask_ratio.csv and OUT/mask_ratio.png
(95% error bars).
"""

import argparse

import pandas as pd

from latentlab.plots.study import plot_metrics_vs_target
from latentlab.study.config import base_config, with_tokenizers
from latentlab.study.runner import run_study

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--scale", choices=["cpu", "imagenet"], default="cpu")
p.add_argument("--data", default=None, help="dataset spec overriding the scale's default")
p.add_argument("--out", required=True)
p.add_argument("--ratios", default="0.25,0.4,0.5,0.6,0.75")
p.add_argument("--steps", type=int, default=None, help="cap every training length (quick checks only)")
args = p.parse_args()

base = base_config(args.scale, args.data)
maetok = base["tokenizers"]["maetok"]
ratios = [float(r) for r in args.ratios.split(",")]
grid = {"maetok": {**maetok, "sweep": {"model.mask_ratio": ratios}}}
res = run_study(with_tokenizers(base, grid, args.steps), args.out)
summary = pd.read_csv(res["summary"])
summary.insert(1, "mask_ratio", ratios)
names = [c for c in summary.columns if c.startswith(("rfd", "rfid", "gfd", "gfid")) and not c.endswith(("_lo", "_hi"))]
names += ["psnr", "lp_top1", "sit_loss"]
cols = ["tokenizer", "mask_ratio"] + [c for n in names for c in (n, f"{n}_lo", f"{n}_hi") if c in summary]
summary[cols].to_csv(f"{args.out}/mask_ratio.csv", index=False)
print(summary[cols].to_string(index=False))
metrics = [n for n in names if n in summary]
print("wrote", plot_metrics_vs_target(summary, metrics, "mask_ratio", f"{args.out}/mask_ratio.png"))
