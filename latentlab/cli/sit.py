"""`latentlab train-sit` and `latentlab sample`."""

from __future__ import annotations

import click

from latentlab.cli import cli
from latentlab.cli.common import (COUNT, FRACTION, GUIDANCE, LEARNING_RATE, NATURAL, TIME, emit, given, json_option,
                                  ordered_pair)
from latentlab.io import WEIGHTS
from latentlab.sit.config import (NORMALIZATIONS, SIT_MODELS, SIT_TRAIN_DEFAULTS, SampleConfig, Sampler, SiTTrainConfig,
                                  TimeSampling)

M, S = SiTTrainConfig(), SampleConfig()  # defaults shown in --help come from the dataclasses


def _by_preset(field: str) -> str:
    """A training default for --help: one value, or the default preset's and the other presets' values."""
    value = getattr(SIT_TRAIN_DEFAULTS[M.model], field)
    rest = sorted({getattr(c, field) for name, c in SIT_TRAIN_DEFAULTS.items() if name != M.model})
    if rest == [value]:
        return f"{value:g}"
    return f"{M.model}: {value:g}; other presets: {' or '.join(f'{v:g}' for v in rest)}"


@cli.command("train-sit")
@click.option("--tokenizer", required=True, metavar="[LABEL=]SPEC",
              help="A latent store, store set, tokenizer run, workspace name, diffusers:PATH or python:MODULE:CALLABLE.")
@click.option("--model", type=click.Choice(list(SIT_MODELS)), default=None, metavar="PRESET",
              help=f"SiT size preset: {', '.join(k for k in SIT_MODELS if '/' not in k)}, or PRESET/P for "
                   f"P x P patches on grid latents [{M.model}].")
@click.option("--steps", type=COUNT, default=None, help=f"Training steps [{_by_preset('steps')}].")
@click.option("--out", required=True, type=click.Path(), help="Run directory to write.")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="YAML/JSON with SiTTrainConfig keys (train: holds TrainConfig keys); unknown keys are errors.")
@click.option("--batch-size", type=COUNT, default=None, help=f"Global batch size [{_by_preset('batch_size')}].")
@click.option("--lr", type=LEARNING_RATE, default=None, help=f"Learning rate [{_by_preset('lr')}].")
@click.option("--ema-decay", type=FRACTION, default=None, help=f"EMA decay, in [0, 1) [{_by_preset('ema_decay')}].")
@click.option("--eval-every", type=COUNT, default=None,
              help=f"Held-out loss of the EMA model every N steps [{_by_preset('eval_every')}].")
@click.option("--normalization", type=click.Choice(NORMALIZATIONS), default=None,
              help=f"Latent normalisation from the train store's statistics [{M.normalization}].")
@click.option("--time-sampling", type=click.Choice([m.value for m in TimeSampling]), default=None,
              help=f"How training draws t [{M.time_sampling}].")
@click.option("--dataset", default=None, help="Dataset to extract from when --tokenizer is a tokenizer run or an external spec.")
@click.option("--seed", type=NATURAL, default=None, help=f"Seed of initialisation, data order and noise [{_by_preset('seed')}].")
@click.option("--device", default=None, help=f"cpu, cuda, cuda:N or auto [{SIT_TRAIN_DEFAULTS[M.model].device}].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@json_option
def train_sit_cmd(tokenizer, model, steps, out, config_path, batch_size, lr, ema_decay, eval_every,
                  normalization, time_sampling, dataset, seed, device, resume, as_json):
    """Train a SiT on a tokenizer's latents and log its held-out loss.

    \b
    latentlab train-sit --tokenizer workspace/stores/pixels --model SiT-tiny --steps 2000 --out runs/sit-pixels
    """
    from latentlab.config import from_dict, load_mapping
    from latentlab.sit.training import train_sit

    base = load_mapping(config_path) if config_path else {}
    base.update(given(model=model, normalization=normalization, time_sampling=time_sampling))
    base["train"] = {**base.get("train", {}), **given(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
                                                      eval_every=eval_every, seed=seed, device=device)}
    cfg = from_dict(SiTTrainConfig, base, "train-sit config")
    cfg.train_config()  # validate the train overrides before any work
    s = train_sit(tokenizer, out, cfg, resume=resume, dataset=dataset)
    emit(s, as_json, lambda s: (f"trained {s['model']} on {s['latents']} {tuple(s['sample_shape'])} for "
                                f"{s['steps']} steps in {s['time_s']:.0f}s: held-out loss {s['heldout_loss']:.4f} "
                                f"(train {s['final'].get('loss_avg', float('nan')):.4f}); wrote {s['out']}"))


@cli.command("sample")
@click.option("--sit", "run", required=True, type=click.Path(), help="A SiT run directory (from train-sit).")
@click.option("--n", type=COUNT, default=None, help=f"Number of samples [{S.n}].")
@click.option("--cfg", "cfg_scale", type=GUIDANCE, default=None, help=f"Classifier-free guidance scale, 1 = none [{S.cfg}].")
@click.option("--guidance-interval", nargs=2, type=TIME, default=None, metavar="LO HI", callback=ordered_pair,
              help="Apply guidance only for t in [LO, HI] (t = 0 noise, 1 data) [always].")
@click.option("--steps", type=COUNT, default=None, help=f"Integration steps [{S.steps}].")
@click.option("--sampler", type=click.Choice([m.value for m in Sampler]), default=None, help=f"Integrator [{S.sampler}].")
@click.option("--class", "class_label", type=NATURAL, default=None, help="Sample only class K [balanced classes].")
@click.option("--seed", type=NATURAL, default=None, help=f"Seed of the noise [{S.seed}].")
@click.option("--batch-size", type=COUNT, default=None, help=f"Samples per forward pass [{S.batch_size}].")
@click.option("--weights", type=click.Choice(WEIGHTS), default=None, help=f"Which weights of the run [{S.weights}].")
@click.option("--no-decode", is_flag=True, help="Write latents only, even when a tokenizer run is known.")
@click.option("--device", default=None, help=f"cpu, cuda, cuda:N or auto [{S.device}].")
@click.option("--out", required=True, type=click.Path(), help="Output directory (replaced atomically).")
@json_option
def sample_cmd(run, n, cfg_scale, guidance_interval, steps, sampler, class_label, seed, batch_size, weights,
               no_decode, device, out, as_json):
    """Sample latents from a SiT run, and decode them when they came from a tokenizer run.

    \b
    latentlab sample --sit runs/sit-pixels --n 1000 --cfg 1.0 --steps 50 --sampler heun --out samples/
    """
    from latentlab.config import merge
    from latentlab.sit.sample import sample

    over = given(n=n, cfg=cfg_scale, guidance_interval=guidance_interval, steps=steps, sampler=sampler,
                 class_label=class_label, seed=seed, batch_size=batch_size, weights=weights, device=device)
    if no_decode:
        over["decode"] = False
    s = sample(run, out, merge(S, over, "sample options"))
    emit(s, as_json, lambda s: (f"sampled {s['n']} latents {tuple(s['sample_shape'])} with {s['sampler']} "
                                f"({s['steps']} steps, cfg {s['cfg']}) into {s['out']}"
                                + ("; decoded images" if s["decoded"] else f"; skipped decoding ({s['skipped_decoding']})")))
