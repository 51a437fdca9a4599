"""Training a tokenizer run: `TokenizerRunConfig`, the `TokenizerTask` for `latentlab.trainer`, and `train_tokenizer`.

A config file (YAML/JSON) for `latentlab train-tokenizer --config FILE` has the keys of
`TokenizerRunConfig`; `model:` holds `TokenizerConfig` overrides and `train:` holds `TrainConfig`
overrides. Unknown keys are errors at every level.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from latentlab.config import from_dict, to_dict
from latentlab.data import ImageDataset, get_dataset, psnr, to_uint8, to_unit
from latentlab.errors import LatentlabError
from latentlab.io import atomic_path, file_hash, load_json, load_run_weights
from latentlab.tokenizers.config import (DEFAULT_DATASET, TokenizerConfig, TokenizerRunConfig, check_applicable,
                                         model_record, unused_fields)
from latentlab.tokenizers.models import AETokenizer, build_tokenizer
from latentlab.trainer import TrainTask, check_run_dir, index_batch, train
from latentlab.utils import torch_seeded


def save_grid(rows: list[torch.Tensor], path: Path, min_side: int = 64) -> None:
    """Save rows of images (each (n, C, H, W) in [-1, 1]) as one PNG grid, upscaled to >= min_side px."""
    from PIL import Image

    arr = np.concatenate([np.concatenate(list(to_uint8(r)), axis=1) for r in rows], axis=0)  # (rows*H, n*W, C)
    img = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    scale = max(1, math.ceil(min_side / rows[0].shape[-1]))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


class TokenizerTask(TrainTask):
    """Drives `latentlab.trainer.train` for a tokenizer on an image dataset."""

    def __init__(self, model: nn.Module, train_ds: ImageDataset, test_ds: ImageDataset, run_cfg: dict, seed: int,
                 eval_images: int = 256, sample_images: int = 8):
        self.model, self.train_ds, self.test_ds = model, train_ds, test_ds
        self.seed, self._run_cfg = seed, run_cfg
        n_eval = min(eval_images, len(test_ds))
        self.eval_x = test_ds.get_batch(np.arange(n_eval))[0]  # (n, C, H, W)
        self.sample_images = min(sample_images, n_eval)

    def batch(self, step, rank, world_size, per_rank):
        idx = index_batch(len(self.train_ds), per_rank, step, self.seed, rank, world_size)
        return self.train_ds.get_batch(idx)[0]  # (B, C, H, W)

    def loss(self, model, batch, step, generator):
        return model(batch, generator=generator, step=step)

    def evaluate(self, ema_model, step):
        rec = reconstruct(ema_model, self.eval_x)
        return {"psnr": float(psnr(to_unit(rec), to_unit(self.eval_x)).mean()), "mse": float((rec - self.eval_x).pow(2).mean())}

    def visualize(self, ema_model, step, out_dir):
        x = self.eval_x[: self.sample_images]
        save_grid([x, reconstruct(ema_model, x)], Path(out_dir) / "samples" / f"recon-{step:06d}.png")

    def run_config(self):
        return self._run_cfg


def _init_config(cfg: TokenizerRunConfig) -> dict | None:
    """The --init run's config.json for a decoder fine-tune (None for a full run)."""
    if cfg.stage != "decoder-finetune":
        if cfg.init:
            raise LatentlabError("--init is only used with --stage decoder-finetune")
        return None
    if not cfg.init:
        raise LatentlabError("--stage decoder-finetune needs --init RUN (the trained tokenizer to fine-tune)")
    init_cfg = load_json(Path(cfg.init) / "config.json", "run config of --init")
    if init_cfg.get("kind") != "tokenizer" or "model" not in init_cfg:
        raise LatentlabError(f"--init {cfg.init} is not a tokenizer run")
    return init_cfg


def build_run(cfg: TokenizerRunConfig) -> tuple[nn.Module, ImageDataset, ImageDataset, dict]:
    """Datasets, model (initialised from `init` for the decoder fine-tune) and the run's config dict.

    A decoder fine-tune trains on the dataset and image size of its --init run unless they are given.
    """
    init_cfg = _init_config(cfg)
    if init_cfg is not None:
        cfg = dataclasses.replace(cfg, dataset=cfg.dataset or init_cfg.get("dataset") or DEFAULT_DATASET,
                                  image_size=cfg.image_size or init_cfg["model"].get("image_size"))
    else:
        cfg = dataclasses.replace(cfg, dataset=cfg.dataset or DEFAULT_DATASET)
    train_ds = get_dataset(cfg.dataset, "train", cfg.image_size)
    test_ds = get_dataset(cfg.dataset, "test", cfg.image_size)
    init_info = None
    if init_cfg is not None:
        arch = init_cfg["model"].get("arch", "ae")
        check_applicable(arch, cfg.model)
        mdict = {**init_cfg["model"], **cfg.model, "stage": "decoder-finetune"}
        if "mask" not in unused_fields(arch):
            mdict["mask"] = False  # the fine-tune sees whole images
        init_info = {"run": str(cfg.init), "checkpoint_hash": file_hash(Path(cfg.init) / "ema.safetensors")}
    else:
        check_applicable(cfg.arch, cfg.model)
        mdict = {"arch": cfg.arch, "size": cfg.size, **cfg.model, "stage": cfg.stage,
                 "image_size": train_ds.image_size, "channels": train_ds.channels}
    if mdict.get("image_size") != train_ds.image_size or mdict.get("channels") != train_ds.channels:
        raise LatentlabError(f"the tokenizer expects {mdict.get('channels')}x{mdict.get('image_size')}px images but "
                             f"{cfg.dataset} has {train_ds.channels}x{train_ds.image_size}px; set --image-size or pick the dataset it was trained on")
    mcfg = from_dict(TokenizerConfig, mdict, "model config")
    with torch_seeded(cfg.train_config().seed):  # the initial weights depend on the seed only
        model = build_tokenizer(mcfg)
    if init_info:
        load_run_weights(cfg.init, model, "ema")
        model.freeze_encoder()
    run_cfg = {"kind": "tokenizer", "arch": mcfg.arch, "size": mcfg.size, "teacher": mcfg.teacher_label(),
               "dataset": cfg.dataset, "stage": mcfg.stage, "init": init_info, "model": model_record(mcfg),
               "run": {k: v for k, v in to_dict(cfg).items() if k not in ("model", "train", "init")}}
    return model, train_ds, test_ds, run_cfg


def train_tokenizer(cfg: TokenizerRunConfig, out: str | Path, resume: bool = False) -> dict:
    """Train one tokenizer run into `out`; returns the training summary (with held-out PSNR)."""
    tcfg = cfg.train_config()
    check_run_dir(out, "tokenizer run", resume)  # before any work
    model, train_ds, test_ds, run_cfg = build_run(cfg)
    task = TokenizerTask(model, train_ds, test_ds, run_cfg, tcfg.seed, cfg.eval_images, cfg.sample_images)
    summary = train(task, tcfg, out, resume=resume)
    n_params = sum(p.numel() for p in model.parameters())
    return {**summary, "arch": run_cfg["arch"], "size": run_cfg["size"], "teacher": run_cfg["teacher"],
            "stage": run_cfg["stage"], "dataset": run_cfg["dataset"], "params": n_params,
            "latent_shape": list(model.latent_shape), "psnr": summary["eval"].get("psnr")}


def load_tokenizer(run: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> tuple[AETokenizer, dict]:
    """Rebuild a trained tokenizer from its run directory: (model in eval mode, run config dict)."""
    run = Path(run)
    if not run.is_dir():
        raise LatentlabError(f"tokenizer run not found: {run}")
    cfg = load_json(run / "config.json", "run config")
    if cfg.get("kind") != "tokenizer" or "model" not in cfg:
        raise LatentlabError(f"{run} is not a tokenizer run (config.json has kind={cfg.get('kind')!r}); "
                             "train one with `latentlab train-tokenizer`")
    model = build_tokenizer(cfg["model"])
    load_run_weights(run, model, weights)
    return model.to(device).eval(), cfg


@torch.no_grad()
def reconstruct(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Encode with the posterior mode and decode, in batches: images (N, C, H, W) -> (N, C, H, W) in [-1, 1]."""
    model.eval()
    dev = next(itertools.chain(model.parameters(), model.buffers())).device
    out = [model.decode(model.encode(images[i:i + batch_size].to(dev)).mode()).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)
