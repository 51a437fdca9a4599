"""MAETok Fig. 2: GMM NLL against components (a) and SiT loss (b) for AE, VAE, VA-VAE and MAETok.

    python analyses/fig2_gmm_vs_sit.py --scale cpu --out fig2-cpu
    python analyses/fig2_gmm_vs_sit.py --scale imagenet --data imagefolder:/data/imagenet --out fig2-in1k

Runs (or reuses) the study stages, then writes OUT/fig2.png (95% bands across seeds) and OUT/fig2.csv.
"""

import argparse
import re

import pandas as pd

from latentlab.plots.study import plot_gmm_and_sit
from latentlab.study.config import base_config, with_tokenizers
from latentlab.study.runner import run_study

KINDS = ["ae", "vae", "vavae", "maetok"]

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--scale", choices=["cpu", "imagenet"], default="cpu")
p.add_argument("--data", default=None, help="dataset spec overriding the scale's default")
p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=None, help="cap every training length (quick checks only)")
args = p.parse_args()

base = base_config(args.scale, args.data)
cfg = with_tokenizers(base, {k: base["tokenizers"][k] for k in KINDS}, args.steps)
res = run_study(cfg, args.out)
gmm = pd.read_csv(f"{args.out}/tables/gmm.csv")
bands = pd.read_csv(f"{args.out}/tables/sit_curve_bands.csv")
summary = pd.read_csv(res["summary"])
cols = (["tokenizer", "pca_dim"] + [c for c in summary.columns if re.fullmatch(r"gmm_nll_k\d+(_lo|_hi)?", c)]
        + ["sit_loss", "sit_loss_lo", "sit_loss_hi"])
summary[cols].to_csv(f"{args.out}/fig2.csv", index=False)
print(summary[cols].to_string(index=False))
components = sorted(set(gmm.n_components.astype(int)))
print("wrote", plot_gmm_and_sit(summary, bands, components, sorted(set(gmm.pca_dim.astype(int))),
                                f"{args.out}/fig2.png", KINDS))
