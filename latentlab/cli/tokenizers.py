"""`latentlab train-tokenizer` and `latentlab extract`."""

from __future__ import annotations

import click

from latentlab.cli import cli
from latentlab.cli.common import emit, json_option


@cli.command("train-tokenizer")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="YAML/JSON with TokenizerRunConfig keys (model: and train: sub-maps); unknown keys are errors.")
@click.option("--arch", default=None, help="Tokenizer kind: ae, vae, vavae, maetok.")
@click.option("--size", default=None, help="Size preset: tiny, small, S, B.")
@click.option("--dataset", default=None, help="Dataset spec (mnist5k, digits, shapes, cifar10:PATH, imagefolder:PATH).")
@click.option("--image-size", type=int, default=None, help="Resize images to this size (default: the dataset's).")
@click.option("--stage", type=click.Choice(["full", "decoder-finetune"]), default=None,
              help="decoder-finetune: freeze the encoder of --init, masking off, train the pixel decoder.")
@click.option("--init", default=None, help="Tokenizer run to start the decoder fine-tune from.")
@click.option("--teacher", default=None, help="vavae alignment target: hog (default), pixels, dinov2:PATH, torchscript:PATH.")
@click.option("--steps", type=int, default=None, help="Training steps.")
@click.option("--batch-size", type=int, default=None, help="Global batch size (split over torchrun ranks).")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option("--seed", type=int, default=None, help="Seed for initialisation, data order and noise.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto.")
@click.option("--out", required=True, type=click.Path(), help="Run directory to write.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@json_option
def train_tokenizer_cmd(config_path, arch, size, dataset, image_size, stage, init, teacher, steps, batch_size, lr,
                        seed, device, out, resume, as_json):
    """Train an AE, KL-VAE, VA-VAE or MAETok tokenizer into a run directory.

    \b
    latentlab train-tokenizer --arch maetok --size tiny --dataset mnist5k --steps 1000 --out RUN
    latentlab train-tokenizer --stage decoder-finetune --init RUN --out RUN2
    latentlab train-tokenizer --config tok.yaml --out RUN
    torchrun --nproc-per-node 2 $(which latentlab) train-tokenizer ...
    """
    from latentlab.config import from_dict, load_mapping
    from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer
    from latentlab.utils import init_distributed_from_env

    data = load_mapping(config_path) if config_path else {}
    cfg = from_dict(TokenizerRunConfig, data, f"config {config_path}" if config_path else "config")
    top = {"arch": arch, "size": size, "dataset": dataset, "image_size": image_size, "stage": stage, "init": init}
    for k, v in top.items():
        if v is not None:
            setattr(cfg, k, v)
    if teacher is not None:
        cfg.model = {**cfg.model, "teacher": teacher}
    train_over = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device}
    cfg.train = {**cfg.train, **{k: v for k, v in train_over.items() if v is not None}}
    cfg = from_dict(TokenizerRunConfig, {**cfg.__dict__}, "config")
    init_distributed_from_env()
    summary = train_tokenizer(cfg, out, resume=resume)
    emit(summary, as_json, lambda s: (
        f"trained {s['arch']}-{s['size']} ({s['stage']}, teacher {s['teacher']}) on {s['dataset']} for {s['steps']} steps "
        f"in {s['time_s']:.0f}s: held-out PSNR {s['psnr']:.2f} dB, latents {tuple(s['latent_shape'])} -> {s['out']}"))


@cli.command("extract")
@click.option("--tokenizer", required=True,
              help="Tokenizer run directory, diffusers:PATH_OR_NAME or python:MODULE:CALLABLE[:ARG=VALUE,...].")
@click.option("--dataset", default=None, help="Dataset spec (default: the one the tokenizer was trained on).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True, help="Dataset split.")
@click.option("--out", required=True, type=click.Path(), help="LatentStore directory to write (replaced atomically).")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per encoder batch.")
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True, help="Which weights of a run.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@json_option
def extract_cmd(tokenizer, dataset, split, out, batch_size, weights, device, as_json):
    """Encode a dataset split with a tokenizer (posterior mode) into a LatentStore.

    \b
    latentlab extract --tokenizer RUN --dataset mnist5k --split train --out STORE
    torchrun --nproc-per-node 2 $(which latentlab) extract --tokenizer RUN --out STORE
    """
    from latentlab.extract import extract
    from latentlab.utils import init_distributed_from_env

    init_distributed_from_env()
    store = extract(tokenizer, dataset, split, out, batch_size=batch_size, weights=weights, device=device)
    m = store.manifest
    summary = {"out": str(store.path), "count": m["count"], "sample_shape": m["sample_shape"], "layout": m["layout"],
               "checkpoint_hash": m["checkpoint_hash"], "dataset": m["dataset"], "split": m["split"],
               "stats": {k: m["stats"].get(k) for k in ("global_mean", "global_std")}}
    emit(summary, as_json, lambda s: f"wrote {s['out']}: {s['count']} latents of shape {tuple(s['sample_shape'])} "
                                     f"({s['layout']}), checkpoint {s['checkpoint_hash']}")


@cli.command("tokenizers")
@json_option
def tokenizers_cmd(as_json):
    """List the tokenizers latentlab can analyse: built-in, registered plug-ins and diffusers.

    \b
    Any --tokenizer option also takes your own code:
      --tokenizer [LABEL=]python:MODULE:CALLABLE[:ARG=VALUE,...]
    and packages register factories under the entry-point group latentlab.tokenizers.
    """
    from latentlab.tokenizers.catalog import catalog_text, list_tokenizers

    emit(list_tokenizers(), as_json, catalog_text)
