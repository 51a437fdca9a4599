"""MAETok Table 1: ablation of mask modelling, learnable tokens and auxiliary decoders (per target).

    python analyses/tab1_ablation.py --scale cpu --out tab1-cpu
    python analyses/tab1_ablation.py --scale imagenet --data imagefolder:/data/imagenet --out tab1-in1k

Each row is a MAETok variant trained, decoder-fine-tuned, probed and generated from like every other
tokenizer of a study; the table reports rFD/rFID, gFD/gFID and linear-probe top-1, each with its 95% interval (OUT/tab1.csv).
Offline, the auxiliary targets are HOG and pixels; with a teacher installed add e.g. "dinov2:/path".
"""

import argparse
import re

import pandas as pd

from latentlab.study.config import base_config, with_tokenizers
from latentlab.study.runner import run_study

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--scale", choices=["cpu", "imagenet"], default="cpu")
p.add_argument("--data", default=None, help="dataset spec overriding the scale's default")
p.add_argument("--out", required=True)
p.add_argument("--targets", default="hog,pixels", help="auxiliary targets to ablate one by one")
p.add_argument("--steps", type=int, default=None, help="cap every training length (quick checks only)")
args = p.parse_args()

base = base_config(args.scale, args.data)
maetok = base["tokenizers"]["maetok"]
targets = args.targets.split(",")


def variant(**model):
    return {**maetok, "model": {**maetok.get("model", {}), **model}}


grid = {
    "ae": base["tokenizers"]["ae"],                                   # no masking, no aux: the plain AE
    "mask-only": variant(aux_targets=[]),                             # + mask modelling (pixel decoder only)
    "mask+image-tokens": variant(learnable_tokens=False, aux_targets=targets),
    "no-mask": variant(mask=False, aux_targets=targets),
    **{f"aux-{t}": variant(aux_targets=[t]) for t in targets},
    "maetok": variant(aux_targets=targets),                           # mask + learnable tokens + every aux target
}
res = run_study(with_tokenizers(base, grid, args.steps), args.out)
summary = pd.read_csv(res["summary"])
cols = (["tokenizer", "interval"] + [c for c in summary.columns if c.startswith(("rfd", "rfid", "gfd", "gfid"))]
        + ["lp_top1", "lp_top1_lo", "lp_top1_hi"])
nll = [c for c in summary.columns if re.fullmatch(r"gmm_nll_k\d+", c)][-1]
table = summary[cols + [nll, f"{nll}_lo", f"{nll}_hi"]]  # the held-out NLL at the largest K as well
table.to_csv(f"{args.out}/tab1.csv", index=False)
print(table.to_string(index=False))
