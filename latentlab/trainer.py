"""The training loop shared by every tokenizer and by SiT.

How to use it (the whole interface)::

    from latentlab.trainer import TrainConfig, TrainTask, train, index_batch

    class MyTask(TrainTask):
        def __init__(self, model, data, seed):
            self.model, self.data, self.seed = model, data, seed
        def batch(self, step, rank, world_size, per_rank):
            # deterministic in (seed, step, rank): resume and DDP depend on it
            idx = index_batch(len(self.data), per_rank, step, self.seed, rank, world_size)
            return self.data.get_batch(idx)
        def loss(self, model, batch, step, generator):
            x, y = batch                       # already on the training device
            out = model(x, generator=generator)  # call forward (DDP syncs gradients there)
            return {"loss": out["rec"] + out["kl"], **out}
        def evaluate(self, ema_model, step):     # optional, rank 0, under no_grad
            return {"psnr": ...}
        def visualize(self, ema_model, step, out_dir):  # optional, rank 0
            ...
        def run_config(self):                   # goes into config.json
            return {"kind": "tokenizer", "model": {...}}

    summary = train(MyTask(...), TrainConfig(steps=1000), "RUN", resume=False)

`TrainTask` (duck-typed; subclass it for the defaults):
  - `model`: the `nn.Module` to train (parameters with `requires_grad=False` stay frozen);
  - `batch(step, rank, world_size, per_rank)`: the batch of this rank at `step`, a function of
    (seed, step, rank) only, so that `--resume` and DDP are exact (`index_batch` helps);
  - `loss(model, batch, step, generator) -> dict[str, Tensor]`: scalar terms with the total under
    "loss"; `model` may be a DDP wrapper, so call its forward (`unwrap(model)` gives the module);
    `generator` is a `torch.Generator` on the device seeded from (seed, step, rank);
  - `evaluate(ema_model, step) -> dict` and `visualize(ema_model, step, out_dir)`: optional hooks
    run on rank 0 every `eval_every` steps and at the end, with the EMA model in eval mode;
  - `run_config() -> dict`: what the run needs to rebuild itself; stored in `config.json`;
  - `monitor`: the `evaluate()` key (lower is better) that `until: plateau` watches: training stops
    at the first evaluation where the last `plateau_evals` values improved the best before them by
    less than `plateau_tol` (relative), `steps` being the cap; the summary gives `steps_done`.

The loop: AdamW (weight decay on matrices only) with linear warm-up and a cosine (or constant)
schedule, gradient-norm clipping, an EMA copy (`update_ema` with `schedules.ema_decay_at`: diffusers' EMAModel warm-up
1 - (1 + step)^-ema_power, capped at `ema_decay` and, unless the user set the decay (`config.train_config`), at a
half-life of `ema_half_life * steps`), bf16 autocast on CUDA, DDP under
torchrun (gloo on CPU; `batch_size` is the global batch, split over ranks). A run directory holds
`config.json`, `model.safetensors`, `ema.safetensors`, `state.pt` (optimizer, step, RNG states;
loadable with `weights_only=True`), `metrics.jsonl` (one JSON line per log/eval) and `samples/`.
`resume=True` continues from the last checkpoint bit-identically to an uninterrupted run (with a larger
`steps` only when nothing depends on `steps`: a constant lr and `ema_half_life: null`).
A non-finite loss term stops the run with a LatentlabError naming the step and the term.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latentlab.config import TrainConfig, to_dict
from latentlab.errors import LatentlabError
from latentlab.io import (load_json, load_torch_state, load_weights_into, save_json, save_safetensors, save_torch_state,
                          tmp_name, to_json)
from latentlab.outputs import check_output, claim_dir
from latentlab.schedules import ema_decay_at, get_lr, plateau_reached
from latentlab.utils import dist_ready, get_device, info, is_main, progress, rank, world_size

class TrainTask:
    """Base class of what `train` drives; see the module docstring."""

    model: nn.Module
    monitor: str | None = None   # the evaluate() key that `until: plateau` watches (lower is better)

    def batch(self, step: int, rank: int, world_size: int, per_rank: int) -> Any:
        """This rank's batch at `step` (deterministic in seed, step, rank)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Scalar loss terms; the total is under "loss"."""
        raise NotImplementedError

    def evaluate(self, ema_model: nn.Module, step: int) -> dict:
        """Held-out metrics (rank 0, EMA model)."""
        return {}

    def visualize(self, ema_model: nn.Module, step: int, out_dir: Path) -> None:
        """Write figures under out_dir/samples (rank 0, EMA model)."""

    def run_config(self) -> dict:
        """JSON-able description stored in config.json."""
        return {}


# ---------------------------------------------------------------- small pure helpers

def index_batch(n: int, per_rank: int, step: int, seed: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Indices of this rank's batch at `step`: epochs are seeded permutations of range(n).

    The global batch of `per_rank * world_size` items is cut in contiguous rank slices, so the
    union over ranks equals the single-process batch of the same global size.
    """
    g = per_rank * world_size
    start = step * g + rank * per_rank
    pos = np.arange(start, start + per_rank)
    epochs, offs = pos // n, pos % n
    out = np.empty(per_rank, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n)
        out[epochs == e] = perm[offs[epochs == e]]
    return out


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """A torch.Generator on `device` seeded from (seed, step, rank)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1))
    return g


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().to(pe.dtype), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors inside nested tuples/lists/dicts to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weight decay only on tensors with >= 2 dims."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LatentlabError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)


def _autocast(device: torch.device, precision: str):
    use = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(out: Path, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    """Write model/ema safetensors and state.pt, all three under temporary names first, then renamed (state.pt last)."""
    names = ("model.safetensors", "ema.safetensors", "state.pt")
    tmps = [tmp_name(out / n) for n in names]
    try:
        save_safetensors(model.state_dict(), tmps[0], {"step": step})
        save_safetensors(ema.state_dict(), tmps[1], {"step": step})
        save_torch_state({"step": step, "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state()}, tmps[2])
        for tmp, name in zip(tmps, names):
            os.replace(tmp, out / name)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def _append_metrics(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(to_json(rec, indent=None) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(k + "\n" for k in keep))


def _checkpoint_step(out: Path) -> int | None:
    """The step of the last checkpoint in run `out` (from model.safetensors' metadata), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            return int((f.metadata() or {})["step"])
    except Exception:  # no checkpoint yet, or an unreadable one
        return None


def check_run_dir(out: str | Path, kind: str, resume: bool) -> None:
    """Refuse `out` for a new `kind` run unless it is absent or empty, and for `resume` unless it holds one."""
    out = Path(out)
    existed = check_output(out, kind)
    if existed and not resume:
        step = _checkpoint_step(out)
        where = f"checkpoint at step {step}" if step is not None else "no checkpoint yet"
        raise LatentlabError(f"{out} already holds a run ({kind}, {where}); pass --resume to continue it, "
                             "or give a fresh --out for a new run")
    if resume and not existed:
        raise LatentlabError(f"nothing to resume in {out} (no {kind} there); drop --resume to start a new run")


def _eval_history(path: Path, key: str | None) -> list[float]:
    """The values of `key` in the eval records of metrics.jsonl, in order."""
    if key is None or not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if key in rec.get("eval", {}):
            out.append(float(rec["eval"][key]))
    return out


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("steps", "device", "log_every", "eval_every", "ckpt_every")}


# ---------------------------------------------------------------- the loop

def train(task: TrainTask, cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Train `task.model` under `cfg`, writing the run directory `out_dir`; returns a summary dict."""
    out = Path(out_dir)
    device = get_device(cfg.device)
    if device.type == "cuda" and device.index is None:  # under torchrun: this rank's GPU (set from LOCAL_RANK)
        device = torch.device("cuda", torch.cuda.current_device())
    r, ws = rank(), world_size()
    if cfg.batch_size % ws:
        raise LatentlabError(f"batch_size {cfg.batch_size} is not divisible by the {ws} ranks; change --batch-size")
    per_rank = cfg.batch_size // ws
    run_cfg = {**task.run_config(), "train": to_dict(cfg)}
    start = 0
    model = task.model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = make_optimizer(model, cfg)

    monitor = getattr(task, "monitor", None)
    if cfg.until == "plateau" and monitor is None:
        raise LatentlabError("until: plateau needs a task that reports a held-out metric to watch; use until: steps")
    kind = f"{run_cfg.get('kind', 'training')} run"
    check_run_dir(out, kind, resume)  # every rank, before anyone writes
    if dist_ready():
        torch.distributed.barrier()
    if resume and (out / "config.json").is_file():
        old = load_json(out / "config.json", "run config")
        old_train, new_train = _comparable(old.get("train", {})), _comparable(json.loads(json.dumps(to_dict(cfg))))
        old_rest = {k: v for k, v in old.items() if k != "train"}
        new_rest = json.loads(json.dumps({k: v for k, v in run_cfg.items() if k != "train"}))
        if old_train != new_train or old_rest != new_rest:
            raise LatentlabError(f"{out} was trained with a different configuration; resume with the same "
                                 "settings (only steps may change) or choose another --out")
    if resume and (out / "state.pt").is_file():
        load_weights_into(model, out / "model.safetensors")
        load_weights_into(ema, out / "ema.safetensors")
        state = load_torch_state(out / "state.pt")
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        if _checkpoint_step(out) != start:
            raise LatentlabError(f"the checkpoint in {out} was cut off while being written (weights and state.pt "
                                 "disagree on the step); it cannot be resumed exactly: give a fresh --out")
        if start > cfg.steps:
            raise LatentlabError(f"{out} already reached step {start}; pass --steps {start} or more to continue")
    elif resume:
        info(f"{out} has no checkpoint yet; starting it from step 0")
    if is_main():
        claim_dir(out, kind)
        save_json(run_cfg, out / "config.json")
        (out / "samples").mkdir(exist_ok=True)
        if resume:
            _truncate_metrics(out / "metrics.jsonl", start)
    dmodel = model
    if dist_ready():
        dmodel = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    metrics_path = out / "metrics.jsonl"
    last: dict = {}
    last_eval: dict = {}
    t0 = time.time()
    history = _eval_history(metrics_path, monitor) if resume else []
    stopped = cfg.until == "plateau" and plateau_reached(history, cfg)  # resumed after it had stopped early
    done = start
    bar = progress(range(start, cfg.steps if not stopped else start), desc="train", total=cfg.steps - start)
    for step in bar:
        lr = get_lr(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        batch = to_device(task.batch(step, r, ws, per_rank), device)
        gen = step_generator(cfg.seed, step, r, device)
        with _autocast(device, cfg.precision):
            terms = task.loss(dmodel, batch, step, gen)
        if "loss" not in terms:
            raise LatentlabError("the task's loss() must return the total under 'loss'")
        vals = torch.stack([terms[k].detach().float().reshape(()) for k in terms])  # (n_terms,)
        if dist_ready():
            torch.distributed.all_reduce(vals)
            vals /= ws
        bad = [k for k, v in zip(terms, vals.tolist()) if not math.isfinite(v)]
        if bad:
            raise LatentlabError(f"non-finite loss at step {step}: term {bad[0]!r} is {vals[list(terms).index(bad[0])].item()}; "
                                 "lower the learning rate or check the data")
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                               cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        opt.step()
        decay = ema_decay_at(step, cfg)
        update_ema(ema, model, decay)
        done = step + 1
        last = {k: float(v) for k, v in zip(terms, vals.tolist())}
        if done % cfg.log_every == 0 or done == cfg.steps:
            rec = {"step": done, "lr": lr, "ema_decay": decay, "grad_norm": float(gnorm),
                   "time_s": round(time.time() - t0, 3), **last}
            if is_main():
                _append_metrics(metrics_path, rec)
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()}, refresh=False)
        stop = False
        if done % cfg.eval_every == 0 or done == cfg.steps:
            if is_main():
                ema.eval()
                with torch.no_grad():
                    last_eval = {k: float(v) for k, v in task.evaluate(ema, done).items()}
                    task.visualize(ema, done, out)
                if last_eval:
                    _append_metrics(metrics_path, {"step": done, "eval": last_eval})
                if monitor in last_eval:
                    history.append(last_eval[monitor])
                stop = cfg.until == "plateau" and done < cfg.steps and plateau_reached(history, cfg)
            stop = _broadcast_flag(stop, device)
        if done % cfg.ckpt_every == 0 or done == cfg.steps or stop:
            if is_main():
                save_checkpoint(out, model, ema, opt, done)
            if dist_ready():
                torch.distributed.barrier()
        if stop:
            stopped = True
            break
    if done == start and is_main():  # resumed a finished (or stopped) run: nothing to train, report its evaluation
        info(f"{out} already {'stopped on a plateau at' if stopped else 'reached'} step {start}; nothing to train"
             + ("" if stopped else " (pass a larger --steps to continue)"))
        with torch.no_grad():
            last_eval = {k: float(v) for k, v in task.evaluate(ema.eval(), start).items()}
    return {"out": str(out), "steps": cfg.steps, "start_step": start, "steps_done": done,
            "stopped": "plateau" if stopped else "steps", "world_size": ws,
            "time_s": round(time.time() - t0, 3), "final": last, "eval": last_eval, "device": str(device)}


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's `flag` on every rank (a collective, so it also synchronises); the flag itself outside torch.distributed."""
    if not dist_ready():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.broadcast(t, 0)
    return bool(t.item())

