"""Planted modes: does every measure see a known number of modes? GMM, SiT loss and samples for M planted modes.

    python analyses/planted_modes.py --out planted-cpu                # CPU scale (about 15-20 min on 2 busy cores)
    python analyses/planted_modes.py --out planted-gpu --scale gpu

For each M in --modes, a mixture of M equally weighted Gaussians in --dim dimensions, whitened
so that its total covariance is the identity (`latentlab.planted`: every M has the same
linear-Gaussian SiT reference), gives N train and N/4 test latents labelled by mode. Then:

  - one fit-gmm over all M in the full dimension (a rotation: no information is dropped), full
    covariances, 3 EM starts: modes_bic, modes_heldout and gain_k{K} (`modes.csv`);
  - a class-conditional SiT per M: held-out loss of the EMA and raw weights, sit_loss_linear and
    the gap;
  - samples: class-conditional ones scored by the exact log-density of the planted mixture
    (`logp_generated`, with real test rows as `logp_test`, what a perfect generator scores) and
    by the share landing in the mode asked for (`mode_accuracy`); unconditional ones (the null
    class): `in_mode` (share inside some mode's 99% ellipsoid), `mode_coverage` (share of modes
    holding >= 10% of their expected count of such samples) and `mode_balance` (entropy of their
    mode histogram over log M).

Writes OUT/planted_modes.csv, OUT/planted_modes.png (+ .pdf), OUT/planted_modes.json (the
settings), OUT/gmm/ and OUT/m{M}/ (stores, SiT run, samples). A finished M is reused on rerun.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from latentlab.analysis.gmm.config import FitGMMConfig
from latentlab.analysis.gmm.curves import fit_gmm_curves
from latentlab.io import save_csv, save_json
from latentlab.latents import LatentStore
from latentlab.planted import PlantedMixture, PlantedSpec, score_generated, write_planted
from latentlab.plots.planted import plot_planted
from latentlab.sit.sample import SampleConfig, load_sit, sample_latents
from latentlab.sit.training import SiTTrainConfig, train_sit
from latentlab.utils import info

# Sized for time only (a 2-core CPU shared with other work; a GPU), chosen before any result was seen.
SCALES = {
    "cpu": {"dim": 16, "n": 4000, "sit_steps": 2000, "batch_size": 128, "lr": 1e-3, "samples": 1000,
            "model": {"depth": 2, "hidden_size": 64, "num_heads": 2}, "components": [1, 2, 4, 8, 16, 32, 64]},
    "gpu": {"dim": 64, "n": 50_000, "sit_steps": 20_000, "batch_size": 256, "lr": 3e-4, "samples": 10_000,
            "model": {}, "components": [1, 2, 4, 8, 16, 32, 64, 128]},
}

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--scale", choices=list(SCALES), default="cpu")
p.add_argument("--modes", default="1,2,4,8,16,32")
p.add_argument("--sep", type=float, default=4.0, help="spread of the planted means before whitening")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--device", default="auto")
p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=None, help="cap the SiT steps (quick checks only)")
p.add_argument("--n", type=int, default=None, help="train rows per M instead of the scale's (quick checks only)")
args = p.parse_args()
S = dict(SCALES[args.scale])
S["sit_steps"] = min(S["sit_steps"], args.steps or S["sit_steps"])
S["n"] = args.n or S["n"]
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
modes = [int(m) for m in args.modes.split(",")]
specs = {m: PlantedSpec(modes=m, dim=S["dim"], n=S["n"], seed=args.seed, sep=args.sep) for m in modes}
save_json({"scale": args.scale, **S, "modes": modes, "sep": args.sep, "seed": args.seed,
           "specs": {m: s.key() for m, s in specs.items()}}, out / "planted_modes.json")

for m, spec in specs.items():
    if not (out / f"m{m}" / "latents" / "test" / "manifest.json").is_file():
        (out / f"m{m}").mkdir(exist_ok=True)
        write_planted(spec, out / f"m{m}" / "latents", name=f"m{m}")

# ---- GMM: every M in one fit (the full dimension, so the tokenizer set cannot change a row)
gmm_cfg = FitGMMConfig(components=tuple(S["components"]), pca_dim=S["dim"], covariance="full", n_init=3,
                       seed=args.seed, device=args.device)
gmm = fit_gmm_curves([f"m{m}={out / f'm{m}' / 'latents'}" for m in modes], gmm_cfg, out=out / "gmm")
modes_tab = gmm.modes.set_index("tokenizer")

# ---- SiT and samples, one M at a time (reused when finished)
rows = []
for m, spec in specs.items():
    work = out / f"m{m}"
    res_path = work / "result.json"
    if res_path.is_file():
        rows.append(json.loads(res_path.read_text()))
        continue
    info(f"M = {m}: training SiT for {S['sit_steps']} steps")
    sit_cfg = SiTTrainConfig(model_overrides=S["model"],
                             train={"steps": S["sit_steps"], "batch_size": S["batch_size"], "lr": S["lr"],
                                    "eval_every": max(1, S["sit_steps"] // 10), "seed": args.seed,
                                    "device": args.device})
    run = work / "sit"
    s = train_sit(f"m{m}={work / 'latents'}", run, sit_cfg, resume=(run / "state.pt").is_file())
    model, rc = load_sit(run, "ema", args.device)
    mix = PlantedMixture(spec)
    n = S["samples"]
    scfg = SampleConfig(n=n, steps=50, sampler="heun", seed=args.seed, device=args.device)
    cond_labels = np.arange(n) % m
    cond = sample_latents(model, cond_labels, scfg, rc["normalization"])             # (n, 1, D)
    uncond = sample_latents(model, np.full(n, -1), scfg, rc["normalization"])         # the null class
    real = LatentStore.open(work / "latents" / "test").load()[0]
    g, r = score_generated(mix, cond, cond_labels), score_generated(mix, real)
    cov = mix.coverage(uncond.reshape(n, -1))
    row = {"M": m, "sit_loss": s["heldout_loss"], "sit_loss_raw": s["heldout_loss_raw"],
           "sit_loss_linear": s["sit_loss_linear"], "sit_loss_gap": s["sit_loss_gap"], "sit_loss_auc": s["sit_loss_auc"],
           "logp_generated": g["logp"], "logp_generated_se": g["logp_se"], "logp_test": r["logp"],
           "logp_test_se": r["logp_se"], "logp_uncond": score_generated(mix, uncond)["logp"],
           "mode_accuracy": g["mode_accuracy"], "in_mode": cov["in_mode"], "mode_coverage": cov["mode_coverage"],
           "mode_balance": cov["mode_balance"], "sit_seconds": s["time_s"]}
    save_json(row, res_path)
    rows.append(row)

table = pd.DataFrame(rows)
gain_cols = [c for c in modes_tab.columns if c.startswith("gain_k")]
for col in ["modes_bic", "modes_heldout"] + gain_cols:
    table[col] = [modes_tab.loc[f"m{m}", col] for m in table["M"]]
cols = (["M", "modes_bic", "modes_heldout"] + gain_cols + ["sit_loss", "sit_loss_raw", "sit_loss_linear", "sit_loss_gap",
        "sit_loss_auc", "logp_generated", "logp_generated_se", "logp_test", "logp_test_se", "logp_uncond",
        "mode_accuracy", "in_mode", "mode_coverage", "mode_balance", "sit_seconds"])
table = table[cols]
save_csv(table, out / "planted_modes.csv")
print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
print("wrote", out / "planted_modes.csv", "and", plot_planted(table, out / "planted_modes.png"))
