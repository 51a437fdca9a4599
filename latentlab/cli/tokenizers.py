"""`latentlab train-tokenizer` and `latentlab extract`."""

from __future__ import annotations

import click

from latentlab.cli import cli
from latentlab.cli.common import COUNT, LEARNING_RATE, NATURAL, emit, given, json_option
from latentlab.config import ExtractConfig
from latentlab.datasets import SPLITS
from latentlab.io import WEIGHTS
from latentlab.tokenizers.config import (ARCHS, DEFAULT_DATASET, SIZES, STAGES, TRAIN_DEFAULTS, TokenizerConfig,
                                        TokenizerRunConfig)

R, M, X = TokenizerRunConfig(), TokenizerConfig(), ExtractConfig()  # defaults shown in --help come from the dataclasses


@cli.command("train-tokenizer")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="YAML/JSON with TokenizerRunConfig keys (model: and train: sub-maps); unknown keys are errors.")
@click.option("--arch", type=click.Choice(ARCHS), default=None, help=f"Tokenizer kind [{R.arch}].")
@click.option("--size", type=click.Choice(list(SIZES)), default=None, help=f"Size preset [{R.size}].")
@click.option("--dataset", default=None,
              help=f"Dataset spec (mnist5k, digits, shapes, cifar10:PATH, imagefolder:PATH) [{DEFAULT_DATASET}; "
                   "with --stage decoder-finetune the --init run's dataset and image size].")
@click.option("--image-size", type=COUNT, default=None, help="Resize images to this size [the dataset's].")
@click.option("--stage", type=click.Choice(STAGES), default=None,
              help=f"decoder-finetune: freeze the encoder of --init, masking off, train the pixel decoder [{R.stage}].")
@click.option("--init", default=None, help="Tokenizer run to start the decoder fine-tune from.")
@click.option("--teacher", default=None,
              help=f"vavae alignment target: hog, pixels, dinov2:PATH, torchscript:PATH [{M.teacher}].")
@click.option("--steps", type=COUNT, default=None, help=f"Training steps [{TRAIN_DEFAULTS.steps}].")
@click.option("--batch-size", type=COUNT, default=None,
              help=f"Global batch size, split over torchrun ranks [{TRAIN_DEFAULTS.batch_size}].")
@click.option("--lr", type=LEARNING_RATE, default=None, help=f"Peak learning rate [{TRAIN_DEFAULTS.lr:g}].")
@click.option("--seed", type=NATURAL, default=None,
              help=f"Seed for initialisation, data order and noise [{TRAIN_DEFAULTS.seed}].")
@click.option("--device", default=None, help=f"cpu, cuda, cuda:N or auto [{TRAIN_DEFAULTS.device}].")
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
    from latentlab.config import from_dict, load_mapping, merge
    from latentlab.tokenizers.training import train_tokenizer
    from latentlab.utils import init_distributed_from_env

    where = f"config {config_path}" if config_path else "config"
    cfg = from_dict(TokenizerRunConfig, load_mapping(config_path) if config_path else {}, where)
    over = given(arch=arch, size=size, dataset=dataset, image_size=image_size, stage=stage, init=init)
    if teacher is not None:
        over["model"] = {"teacher": teacher}
    over["train"] = given(steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device)
    cfg = merge(cfg, over, "train-tokenizer options")
    init_distributed_from_env()
    summary = train_tokenizer(cfg, out, resume=resume)
    emit(summary, as_json, lambda s: (
        f"trained {s['arch']}-{s['size']} ({s['stage']}, teacher {s['teacher']}) on {s['dataset']} for {s['steps']} steps "
        f"in {s['time_s']:.0f}s: held-out PSNR {s['psnr']:.2f} dB, latents {tuple(s['latent_shape'])} -> {s['out']}"))


@cli.command("extract")
@click.option("--tokenizer", required=True,
              help="Tokenizer run directory, diffusers:PATH_OR_NAME or python:MODULE:CALLABLE[:ARG=VALUE,...].")
@click.option("--dataset", default=None, help="Dataset spec [the one the tokenizer was trained on].")
@click.option("--split", type=click.Choice([*SPLITS, ",".join(SPLITS)]), default=None,
              help=f"Dataset split; {','.join(SPLITS)} writes a store set (OUT/train and OUT/test) [{X.split}].")
@click.option("--out", required=True, type=click.Path(), help="LatentStore (or store set) directory to write.")
@click.option("--batch-size", type=COUNT, default=None, help=f"Images per encoder batch [{X.batch_size}].")
@click.option("--weights", type=click.Choice(WEIGHTS), default=None, help=f"Which weights of a run [{X.weights}].")
@click.option("--device", default=None, help=f"cpu, cuda, cuda:N or auto [{X.device}].")
@json_option
def extract_cmd(tokenizer, dataset, split, out, batch_size, weights, device, as_json):
    """Encode a dataset split with a tokenizer (posterior mode) into a LatentStore, or both splits into a store set.

    \b
    latentlab extract --tokenizer RUN --dataset mnist5k --split train --out STORE
    latentlab extract --tokenizer RUN --split train,test --out SET      # SET/train and SET/test
    torchrun --nproc-per-node 2 $(which latentlab) extract --tokenizer RUN --out STORE
    """
    from latentlab.extract import extract_set
    from latentlab.utils import init_distributed_from_env

    init_distributed_from_env()
    splits = (split or X.split).split(",")
    stores = extract_set(tokenizer, dataset, splits, out, as_set=len(splits) > 1,
                         **given(batch_size=batch_size, weights=weights, device=device))

    def one(store) -> dict:
        m = store.manifest
        return {"out": str(store.path), "count": m["count"], "sample_shape": m["sample_shape"], "layout": m["layout"],
                "checkpoint_hash": m["checkpoint_hash"], "dataset": m["dataset"], "split": m["split"],
                "stats": {k: m["stats"].get(k) for k in ("global_mean", "global_std")}}

    summary = one(stores[splits[0]]) if len(splits) == 1 else {"out": str(out), "stores": {s: one(v) for s, v in stores.items()}}
    emit(summary, as_json, lambda s: "\n".join(
        f"wrote {v['out']}: {v['count']} latents of shape {tuple(v['sample_shape'])} ({v['layout']}), "
        f"checkpoint {v['checkpoint_hash']}" for v in s.get("stores", {"": s}).values()))


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
