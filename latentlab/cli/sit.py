"""`latentlab train-sit` and `latentlab sample`."""

from __future__ import annotations

import click

from latentlab.cli import cli
from latentlab.cli.common import emit, json_option
from latentlab.sit.config import SIT_MODELS, SampleConfig, SiTTrainConfig


def _overrides(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


@cli.command("train-sit")
@click.option("--tokenizer", required=True, metavar="[LABEL=]SPEC",
              help="A latent store, store set, tokenizer run, workspace name, diffusers:PATH or python:MODULE:CALLABLE.")
@click.option("--model", type=click.Choice(list(SIT_MODELS)), default=None, help="SiT size preset (default SiT-tiny).")
@click.option("--steps", type=int, default=None, help="Training steps.")
@click.option("--out", required=True, type=click.Path(), help="Run directory to write.")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="YAML/JSON with SiTTrainConfig keys (train: holds TrainConfig keys); unknown keys are errors.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--ema-decay", type=float, default=None)
@click.option("--eval-every", type=int, default=None, help="Held-out loss of the EMA model every N steps.")
@click.option("--normalization", type=click.Choice(["channel", "global", "none"]), default=None)
@click.option("--time-sampling", type=click.Choice(["uniform", "logit-normal"]), default=None)
@click.option("--dataset", default=None, help="Dataset to extract from when --tokenizer is a tokenizer run or an external spec.")
@click.option("--seed", type=int, default=None)
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto.")
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
    base.update(_overrides(model=model, normalization=normalization, time_sampling=time_sampling))
    base["train"] = {**base.get("train", {}), **_overrides(steps=steps, batch_size=batch_size, lr=lr,
                                                            ema_decay=ema_decay, eval_every=eval_every,
                                                            seed=seed, device=device)}
    cfg = from_dict(SiTTrainConfig, base, "train-sit config")
    cfg.train_config()  # validate the train overrides before any work
    s = train_sit(tokenizer, out, cfg, resume=resume, dataset=dataset)
    emit(s, as_json, lambda s: (f"trained {s['model']} on {s['latents']} {tuple(s['sample_shape'])} for "
                                f"{s['steps']} steps in {s['time_s']:.0f}s: held-out loss {s['heldout_loss']:.4f} "
                                f"(train {s['final'].get('loss_avg', float('nan')):.4f}); wrote {s['out']}"))


@cli.command("sample")
@click.option("--sit", "run", required=True, type=click.Path(), help="A SiT run directory (from train-sit).")
@click.option("--n", type=int, default=None, help="Number of samples (default 1000).")
@click.option("--cfg", "cfg_scale", type=float, default=None, help="Classifier-free guidance scale (1 = none).")
@click.option("--guidance-interval", nargs=2, type=float, default=None, metavar="LO HI",
              help="Apply guidance only for t in [LO, HI] (t = 0 noise, 1 data).")
@click.option("--steps", type=int, default=None, help="Integration steps (default 50).")
@click.option("--sampler", type=click.Choice(["heun", "euler", "sde"]), default=None)
@click.option("--class", "class_label", type=int, default=None, help="Sample only class K (default: balanced).")
@click.option("--seed", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--weights", type=click.Choice(["ema", "model"]), default=None)
@click.option("--no-decode", is_flag=True, help="Write latents only, even when a tokenizer run is known.")
@click.option("--device", default=None)
@click.option("--out", required=True, type=click.Path(), help="Output directory (replaced atomically).")
@json_option
def sample_cmd(run, n, cfg_scale, guidance_interval, steps, sampler, class_label, seed, batch_size, weights,
               no_decode, device, out, as_json):
    """Sample latents from a SiT run, and decode them when they came from a tokenizer run.

    \b
    latentlab sample --sit runs/sit-pixels --n 1000 --cfg 1.0 --steps 50 --sampler heun --out samples/
    """
    from latentlab.config import from_dict
    from latentlab.sit.sample import sample

    over = _overrides(n=n, cfg=cfg_scale, guidance_interval=guidance_interval or None, steps=steps,
                      sampler=sampler, class_label=class_label, seed=seed, batch_size=batch_size,
                      weights=weights, device=device)
    if no_decode:
        over["decode"] = False
    s = sample(run, out, from_dict(SampleConfig, over, "sample options"))
    emit(s, as_json, lambda s: (f"sampled {s['n']} latents {tuple(s['sample_shape'])} with {s['sampler']} "
                                f"({s['steps']} steps, cfg {s['cfg']}) into {s['out']}"
                                + ("; decoded images" if s["decoded"] else f"; skipped decoding ({s['skipped_decoding']})")))
