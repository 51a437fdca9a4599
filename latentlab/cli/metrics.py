"""`latentlab fid`, `latentlab eval-tokenizer` and `latentlab eval-sit`."""

from __future__ import annotations

import click

from latentlab.cli import cli
from latentlab.cli.common import COUNT, GUIDANCE, NATURAL, emit, given, json_option
from latentlab.datasets import SPLITS
from latentlab.io import WEIGHTS
from latentlab.metrics.config import EVAL_SPLIT, GFID_SAMPLES, GFID_SAMPLES_EMBEDDED, MetricsConfig
from latentlab.sit.config import Sampler

D = MetricsConfig()  # defaults shown in --help come from the dataclass

extractor_option = click.option(
    "--extractor", default=None, metavar="NAME",
    help=f"lenet (FD-lenet, offline), inception (FID; needs latentlab[fid]), inception:WEIGHTS, "
         f"dinov2[:vit-s-14|..], torchscript:PATH [{D.extractor}].")
batch_option = click.option("--batch-size", type=COUNT, default=None, help=f"Images per forward pass [{D.batch_size}].")
device_option = click.option("--device", default=None, help=f"cpu, cuda, cuda:N or auto [{D.device}].")
weights_option = click.option("--weights", type=click.Choice(WEIGHTS), default=None, help=f"Which weights of the run [{D.weights}].")
bootstrap_option = click.option("--bootstrap", type=click.IntRange(min=0), default=None,
                                help=f"Bootstrap resamples of the generated features for the FD's 95% interval; "
                                     f"0: none [{D.bootstrap}].")


def _config(**kw) -> MetricsConfig:
    from latentlab.config import merge

    return merge(D, given(**kw), "metric options")


def _extractor_line(e: dict) -> str:
    if "test_accuracy" in e:
        return f"{e['name']} (trained on {e['dataset']}, test accuracy {100 * e['test_accuracy']:.1f}%)"
    return e["name"]


def _fd_text(s: dict) -> str:
    m = s["metric"]
    line = f"{m} = {s[m]:.4f}"
    if f"{m}_lo" in s:
        line += f" (95% interval {s[m + '_lo']:.4f} to {s[m + '_hi']:.4f}, {s['bootstrap']['n']} bootstrap resamples)"
    line += f"  [extractor {_extractor_line(s['extractor'])}"
    line += "]" if m.endswith("fid") and not m.startswith("fd_") else "; not FID]"
    kid = next((k for k in s if "kid_" in k and "floor" not in k and k.endswith(s["extractor"]["name"])), None)
    if kid:
        line += f"\n{kid} = {s[kid]:.4g} ± {s[kid + '_std']:.2g} (std over {s[kid + '_subset_size']}-sample subsets)"
    floor = next((k for k in s if "fd_floor_" in k and k.endswith(s["extractor"]["name"])), None)
    if floor:
        line += f"\n{floor} = {s[floor]:.4f}  [real vs real: {s[floor + '_n']} {s[floor + '_split']} images]"
    isn = s["extractor"].get("is_metric")
    if isn and isn in s:
        line += f"\n{isn} = {s[isn]:.3f} ± {s[isn + '_std']:.3f}"
    acc = next((k for k in s if k.startswith("cond_acc_") and k.count("_") == 2 and k != "cond_acc_chance"), None)
    if acc:
        line += (f"\n{acc} = {s[acc]:.3f} [{s[acc + '_lo']:.3f}, {s[acc + '_hi']:.3f}] (95% exact; chance "
                 f"{s['cond_acc_chance']:.3f})")
    return line


@cli.command("fid")
@click.option("--real", required=True, metavar="DATASET[:SPLIT]|DIR|NPZ",
              help="Reference images: a dataset split (statistics cached), a PNG folder or an images.npz.")
@click.option("--fake", required=True, type=click.Path(), metavar="DIR|NPZ",
              help="A folder of PNG/JPEG images or an images.npz (uint8 N x H x W x C under 'images').")
@extractor_option
@click.option("--lenet-dataset", default=None, help="Dataset the lenet is trained on when --real is not a dataset.")
@click.option("--real-limit", type=COUNT, default=None, help="Use a fixed random subset of N real images [all].")
@batch_option
@device_option
@bootstrap_option
@click.option("--out", type=click.Path(), default=None, help="Also write fid.csv, fid.json and samples.png here.")
@json_option
def fid_cmd(real, fake, extractor, lenet_dataset, real_limit, batch_size, device, bootstrap, out, as_json):
    """Fréchet distance (and Inception score for classifiers) between reference and generated images.

    Named after the extractor: FID only with inception; FD-lenet, FD-DINOv2 ... otherwise.

    \b
    latentlab fid --real mnist5k:train --fake samples/images.npz --extractor lenet
    """
    from latentlab.metrics.evaluate import fid

    cfg = _config(extractor=extractor, lenet_dataset=lenet_dataset, real_limit=real_limit, batch_size=batch_size,
                  device=device, bootstrap=bootstrap)
    s = fid(real, fake, cfg, out)
    emit(s, as_json, lambda s: f"{_fd_text(s)}\nreal {real} ({s['real']['n']} images"
                               f"{', cached statistics' if s['real']['stats_cached'] else ''}), "
                               f"fake {fake} ({s['n_fake']} images)")


@cli.command("eval-tokenizer")
@click.option("--tokenizer", "run", required=True, metavar="RUN_OR_SPEC",
              help="A tokenizer run directory, diffusers:PATH or python:MODULE:CALLABLE[:ARG=VALUE,...] (with decode).")
@extractor_option
@click.option("--dataset", default=None, help="Dataset to evaluate on [the one the run was trained on].")
@click.option("--split", type=click.Choice(SPLITS), default=None, help=f"Split to reconstruct [{EVAL_SPLIT}].")
@weights_option
@batch_option
@device_option
@click.option("--out", type=click.Path(), default=None, help="Output directory [RUN/eval].")
@json_option
def eval_tokenizer_cmd(run, extractor, dataset, split, weights, batch_size, device, out, as_json):
    """PSNR, SSIM and rFID of a tokenizer's reconstructions of the held-out split.

    Writes recon.csv, recon_images.csv, recon.json and recon_grid.png (originals over reconstructions).

    \b
    latentlab eval-tokenizer --tokenizer runs/ae --extractor lenet
    """
    from latentlab.metrics.evaluate import eval_tokenizer

    cfg = _config(extractor=extractor, weights=weights, batch_size=batch_size, device=device)
    s = eval_tokenizer(run, cfg, out, dataset=dataset, **given(split=split))
    emit(s, as_json, lambda s: f"{s['tokenizer']} on {s['dataset']}:{s['split']} ({s['n']} images): "
                               f"PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.4f}\n{_fd_text(s)}\n"
                               f"wrote {s['files']['csv']} and {s['files']['figure']}")


@cli.command("eval-sit")
@click.option("--sit", "run", required=True, type=click.Path(), help="A SiT run directory (from train-sit).")
@click.option("--n", type=COUNT, default=None,
              help=f"Samples [{GFID_SAMPLES_EMBEDDED:,} on the embedded datasets, {GFID_SAMPLES:,} otherwise].")
@extractor_option
@click.option("--cfg", "cfg_scale", type=GUIDANCE, default=None, help=f"Classifier-free guidance scale, 1 = none [{D.cfg}].")
@click.option("--steps", type=COUNT, default=None, help=f"Integration steps [{D.steps}].")
@click.option("--sampler", type=click.Choice([m.value for m in Sampler]), default=None, help=f"Integrator [{D.sampler}].")
@click.option("--seed", type=NATURAL, default=None, help=f"Seed of the samples [{D.seed}].")
@weights_option
@batch_option
@device_option
@bootstrap_option
@click.option("--out", type=click.Path(), default=None, help="Output directory [RUN/eval].")
@json_option
def eval_sit_cmd(run, n, extractor, cfg_scale, steps, sampler, seed, weights, batch_size, device, bootstrap, out,
                 as_json):
    """gFID of a SiT run: sample N images, decode them, FD against the train split's statistics.

    \b
    latentlab eval-sit --sit runs/sit-ae --n 10000 --extractor lenet
    """
    from latentlab.metrics.evaluate import eval_sit

    cfg = _config(n=n, extractor=extractor, cfg=cfg_scale, steps=steps, sampler=sampler, seed=seed, weights=weights,
                  batch_size=batch_size, device=device, bootstrap=bootstrap)
    s = eval_sit(run, cfg, out)
    emit(s, as_json, lambda s: f"{s['run']}: {s['n']} samples vs {s['dataset']}:train\n{_fd_text(s)}\n"
                               f"wrote {s['files']['csv']} and {s['files']['figure']}")
