"""Training SiT on a tokenizer's latents with the shared loop, and its held-out "SiT loss".

`train_sit(tokenizer, out, cfg)` resolves the latents, normalises them with the train
store's statistics, and drives `latentlab.trainer.train` with a `SiTTask`:

- the loss is the velocity-matching loss of `latentlab.sit.transport` (t = 1 is data), with
  label dropout to the null class for classifier-free guidance;
- every `eval_every` steps the EMA model and the raw model are scored on a FIXED held-out set
  (`HeldOut`): `heldout_loss` (EMA) and `heldout_loss_raw`, each also per t, next to the
  linear-Gaussian reference `sit_loss_linear` of these latents (`latentlab.sit.reference`) and
  `sit_loss_gap = heldout_loss - sit_loss_linear`;
- `until: plateau` (in `train`) stops when the EMA's held-out loss stalls; the summary adds
  `sit_loss_auc`, the mean held-out loss over all evaluations, and `steps_done`.
- at the end, the final EMA model's loss on each held-out image goes to heldout_images.csv.

What "the same held-out set for every tokenizer of a dataset" means here:
  * the same images: `HELDOUT_SIZE` indices chosen by a seed that depends only on
    (heldout_seed, dataset name, n) among the rows of the test split (stores of one dataset
    list the images in the dataset's order), or, for a store set without a test split, among
    the train rows, which are then excluded from training;
  * the same times: t_k = (k + 0.5) / n_t, k = 0..n_t-1 (8 by default), every image at every t;
  * the same noise seed: the noise for t_k is drawn from a generator seeded by
    (heldout_seed, dataset name, n, k). Its shape follows each tokenizer's latent shape, so two
    tokenizers with the same shape get bit-identical noise; otherwise the same seed stream.
The held-out loss is measured on normalised latents (the space SiT is trained in), with the
true labels (no dropout, no guidance), as the per-sample mean over all latent dimensions.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from latentlab.errors import LatentlabError
from latentlab.extract import TokenizerLatents, check_finite, resolve_tokenizer
from latentlab.io import load_json, load_run_weights, obj_hash, save_csv
from latentlab.latents import LatentStore
from latentlab.plots.sit import plot_heldout
from latentlab.sit.config import SiTTrainConfig
from latentlab.schedules import ema_max_decay
from latentlab.sit.model import SiT, sit_config, token_patch_for
from latentlab.sit.reference import latent_spectrum, reference_losses
from latentlab.sit.transport import TimeSampling, drop_labels, flow_loss, parse_enum, sample_t
from latentlab.trainer import TrainConfig, TrainTask, check_run_dir, index_batch, train, unwrap
from latentlab.utils import derive_seed, is_main, torch_seeded

# ---------------------------------------------------------------- normalisation

def normalization_params(store: LatentStore, mode: str) -> dict:
    """{"mode", "mean", "std", "layout"} from the store's manifest stats; std 0 becomes 1."""
    if mode == "none":
        return {"mode": "none", "mean": 0.0, "std": 1.0, "layout": store.layout}
    st = store.stats
    if not st:
        raise LatentlabError(f"store {store.path} has no normalisation stats; recreate it, or use normalization: none")
    if mode == "global":
        mean, std = float(st["global_mean"]), float(st["global_std"])
        return {"mode": mode, "mean": mean, "std": std if std > 0 else 1.0, "layout": store.layout}
    std = [s if s > 0 else 1.0 for s in st["channel_std"]]
    return {"mode": mode, "mean": list(st["channel_mean"]), "std": std, "layout": store.layout}


def _stat_view(v, norm: dict, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        return t
    return t.reshape(-1, 1, 1) if norm["layout"] == "grid" else t  # channel axis: (C,1,1) or last


def normalize(x: torch.Tensor, norm: dict) -> torch.Tensor:
    """(N, *sample_shape) raw latents -> (x - mean) / std on the channel axis (or globally)."""
    return (x - _stat_view(norm["mean"], norm, x)) / _stat_view(norm["std"], norm, x)


def denormalize(x: torch.Tensor, norm: dict) -> torch.Tensor:
    """The inverse of `normalize` (applied before decoding)."""
    return x * _stat_view(norm["std"], norm, x) + _stat_view(norm["mean"], norm, x)


# ---------------------------------------------------------------- held-out set

@dataclass
class HeldOut:
    """A fixed set of (latent, label) rows with a t grid and seeded noise; see the module docstring."""

    store: LatentStore
    indices: np.ndarray        # (n,) rows of `store`
    t_grid: np.ndarray         # (n_t,)
    dataset_key: str
    seed: int
    source: str                # "test" or "train-holdout"

    @property
    def n(self) -> int:
        """Number of held-out latents."""
        return len(self.indices)

    def noise(self, k: int) -> torch.Tensor:
        """(n, *sample_shape) noise for t_grid[k], from a seed independent of the tokenizer."""
        g = torch.Generator().manual_seed(derive_seed("sit-heldout-noise", self.seed, self.dataset_key, self.n, k))
        return torch.randn((self.n, *self.store.sample_shape), generator=g)

    def describe(self) -> dict:
        """What identifies the set (goes into config.json)."""
        return {"source": self.source, "dataset": self.dataset_key, "n": self.n, "seed": self.seed,
                "t_grid": self.t_grid.tolist(), "indices_hash": obj_hash(self.indices.tolist())}


def heldout_indices(n_rows: int, n: int, dataset_key: str, seed: int = 0) -> np.ndarray:
    """n sorted rows of range(n_rows), chosen by a seed of (seed, dataset_key, n) only."""
    n = min(n, n_rows)
    rng = np.random.default_rng(derive_seed("sit-heldout-rows", seed, dataset_key, n))
    return np.sort(rng.permutation(n_rows)[:n])


def make_heldout(train: LatentStore, test: LatentStore | None, size: int = 256, n_t: int = 8,
                 seed: int = 0) -> HeldOut:
    """The held-out set from the test store when present, else a fixed subset of train."""
    source_store, source = (test, "test") if test is not None else (train, "train-holdout")
    if source == "train-holdout" and len(train) < 2:
        raise LatentlabError(f"store {train.path} has {len(train)} latent(s); SiT needs at least 2 to hold one out")
    if source == "train-holdout":
        size = min(size, max(1, len(train) // 5))  # never hold out more than a fifth of train
    key = source_store.dataset or f"unnamed-{len(source_store)}"
    idx = heldout_indices(len(source_store), size, key, seed)
    t_grid = (np.arange(n_t) + 0.5) / n_t
    return HeldOut(source_store, idx, t_grid, key, seed, source)


@torch.no_grad()
def heldout_losses(model: torch.nn.Module, heldout: HeldOut, norm: dict, batch_size: int = 256,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """(n, n_t) float64: the loss of `model` on every held-out image at every t of the grid."""
    model.eval()
    x_all = torch.from_numpy(heldout.store.take(heldout.indices))                # (n, *shape)
    y_all = torch.from_numpy(heldout.store.labels[heldout.indices])                # (n,)
    null = unwrap(model).null_class
    y_all = torch.where(y_all < 0, torch.full_like(y_all, null), y_all)
    x_all = normalize(x_all, norm)
    out = np.zeros((heldout.n, len(heldout.t_grid)))
    for k, tv in enumerate(heldout.t_grid):
        eps_all = heldout.noise(k)                                                # (n, *shape)
        for i in range(0, heldout.n, batch_size):
            x, eps = x_all[i:i + batch_size].to(device), eps_all[i:i + batch_size].to(device)
            y = y_all[i:i + batch_size].to(device)
            t = torch.full((x.shape[0],), float(tv), device=device)
            out[i:i + x.shape[0], k] = flow_loss(lambda xt, tt: model(xt, tt, y), x, eps, t).double().cpu().numpy()
    return out


def heldout_loss(model: torch.nn.Module, heldout: HeldOut, norm: dict, batch_size: int = 256,
                 device: torch.device | str = "cpu") -> dict:
    """{"heldout_loss": mean over t, "heldout_loss@t=0.0625": ..., ...} of `model` on the held-out set."""
    per = heldout_losses(model, heldout, norm, batch_size, device)
    out = {f"heldout_loss@t={tv:.4f}": float(per[:, k].mean()) for k, tv in enumerate(heldout.t_grid)}
    return {"heldout_loss": float(np.mean(list(out.values()))), **out}


def heldout_image_table(model: torch.nn.Module, heldout: HeldOut, norm: dict, batch_size: int = 256,
                        device: torch.device | str = "cpu"):
    """One row per held-out image: index (its row in the held-out store), label, loss (mean over t), loss@t=...

    Every tokenizer of a dataset has the same images, t grid and noise seed here, so two tables pair
    image by image (the study's paired comparisons rest on that).
    """
    import pandas as pd

    per = heldout_losses(model, heldout, norm, batch_size, device)
    table = pd.DataFrame({"index": heldout.indices, "label": heldout.store.labels[heldout.indices],
                          "loss": per.mean(1)})
    for k, tv in enumerate(heldout.t_grid):
        table[f"loss@t={tv:.4f}"] = per[:, k]
    return table


# ---------------------------------------------------------------- the task

class SiTTask(TrainTask):
    """Velocity matching on normalised latents; held-out loss of the EMA and raw models, and the linear reference."""

    monitor = "heldout_loss"

    def __init__(self, model: SiT, train_store: LatentStore, train_rows: np.ndarray, norm: dict,
                 heldout: HeldOut, cfg: SiTTrainConfig, tcfg: TrainConfig, provenance: dict):
        self.model, self.store, self.rows, self.norm = model, train_store, train_rows, norm
        self.heldout, self.cfg, self.tcfg, self.provenance = heldout, cfg, tcfg, provenance
        self.time_sampling = parse_enum(TimeSampling, cfg.time_sampling, "time sampling")
        self._labels = train_store.labels
        self._sum, self._count = 0.0, 0
        self._reference: dict | None = None

    def reference(self) -> dict:
        """`sit_loss_linear` (mean and per t) from the covariance of the training rows as the model sees them."""
        if self._reference is None:
            lam = latent_spectrum(self.store, self.rows, lambda x: normalize(x, self.norm))
            self._reference = reference_losses(lam, self.heldout.t_grid, self.store.dim)
        return self._reference

    def batch(self, step: int, rank: int, world_size: int, per_rank: int):
        """Normalised latents, labels (unlabelled -> null class) and (offset, global size) of this rank's slice."""
        idx = self.rows[index_batch(len(self.rows), per_rank, step, self.tcfg.seed, rank, world_size)]
        x = normalize(torch.from_numpy(self.store.take(idx)), self.norm)            # (B, *shape)
        y = torch.from_numpy(self._labels[idx])                                     # (B,)
        y = torch.where(y < 0, torch.full_like(y, self.model.null_class), y)
        return x, y, torch.tensor([rank * per_rank, per_rank * world_size])

    def loss(self, model, batch, step, generator):
        """Mean velocity loss; `loss_avg` is its running mean since the last log line.

        t, noise and label dropout are drawn for the whole global batch from (seed, step) and
        sliced for this rank, so a DDP run sees the same randomness as one process (the
        loop's per-rank `generator` is not used).
        """
        x, y, (lo, total) = batch
        lo, total, n = int(lo), int(total), x.shape[0]
        g = torch.Generator(device=x.device).manual_seed(derive_seed("sit-train", self.tcfg.seed, step))
        t = sample_t(total, self.time_sampling, g, self.cfg.logit_mean, self.cfg.logit_std, x.device)[lo:lo + n]
        eps = torch.randn((total, *x.shape[1:]), generator=g, device=x.device)[lo:lo + n]        # (B, *shape)
        y = drop_labels(torch.cat([y.new_zeros(lo), y, y.new_zeros(total - lo - n)]), self.cfg.label_dropout,
                        self.model.null_class, g)[lo:lo + n]                                        # (B,)
        loss = flow_loss(lambda xt, tt: model(xt, tt, y), x, eps, t).mean()  # as the held-out loss, batch-averaged
        if step % self.tcfg.log_every == 0:
            self._sum, self._count = 0.0, 0
        self._sum += float(loss.detach())
        self._count += 1
        return {"loss": loss, "loss_avg": torch.tensor(self._sum / self._count, device=x.device)}

    def evaluate(self, ema_model, step):
        """Held-out loss (mean and per t) of the EMA model and of the raw model, the linear reference and the gap."""
        dev = next(ema_model.parameters()).device
        ema = heldout_loss(ema_model, self.heldout, self.norm, self.cfg.eval_batch_size, dev)
        raw = heldout_loss(self.model, self.heldout, self.norm, self.cfg.eval_batch_size, dev)
        ref = self.reference()
        return {**ema, **{k.replace("heldout_loss", "heldout_loss_raw", 1): v for k, v in raw.items()}, **ref,
                "sit_loss_gap": ema["heldout_loss"] - ref["sit_loss_linear"],
                "sit_loss_gap_raw": raw["heldout_loss"] - ref["sit_loss_linear"]}

    def run_config(self) -> dict:
        """Model, normalisation, held-out set and latent provenance: all `sample` needs."""
        sit = {k: v for k, v in asdict(self.cfg).items() if k != "train"}
        return {"kind": "sit", "model": asdict(self.model.cfg), "sit": sit, "normalization": self.norm,
                "heldout": self.heldout.describe(), "latents": self.provenance}


# ---------------------------------------------------------------- the entry point

def _tokenizer_spec(source: Path, store: LatentStore) -> tuple[str | None, str]:
    """(spec for `extract.open_tokenizer`, weights) of the tokenizer that produced `store`, or (None, "")."""
    tok = store.manifest.get("tokenizer")
    if isinstance(tok, dict) and tok.get("run"):
        return str(Path(tok["run"]).resolve()), tok.get("weights", "ema")
    if isinstance(tok, dict) and tok.get("external") and tok.get("spec"):  # diffusers or a python plug-in
        return tok["spec"], "ema"
    if isinstance(tok, dict) and tok.get("external") == "diffusers.AutoencoderKL" and tok.get("source"):
        return f"diffusers:{tok['source']}", "ema"  # stores written before specs were recorded
    if (source / "config.json").is_file() and (source / "model.safetensors").is_file():
        return str(source.resolve()), "ema"
    return None, ""


def latent_provenance(tl: TokenizerLatents) -> dict:
    """Where a tokenizer's latents came from; `tokenizer_spec` lets `sample` decode through the tokenizer."""
    train, test = tl.train, tl.test
    src = Path(tl.source)
    spec, weights = _tokenizer_spec(src, train)
    meta = train.manifest.get("meta", {})
    tok = train.manifest.get("tokenizer")
    return {"name": tl.name, "source": str(src.resolve()), "train_store": str(train.path.resolve()),
            "test_store": str(test.path.resolve()) if test is not None else None,
            "dataset": train.dataset, "tokenizer": tok if isinstance(tok, (str, type(None))) else dict(tok),
            "checkpoint_hash": train.manifest.get("checkpoint_hash"), "tokenizer_spec": spec,
            "tokenizer_weights": weights, "image_size": meta.get("image_size"), "channels": meta.get("channels"),
            "sample_shape": list(train.sample_shape), "layout": train.layout}


def _check_resume_shape(out: Path, train: LatentStore) -> None:
    old = load_json(out / "config.json", "SiT run config").get("model", {})
    shape, layout = tuple(old.get("sample_shape", ())), old.get("layout", "tokens")
    if shape and (shape != train.sample_shape or layout != train.layout):
        raise LatentlabError(f"latents in {train.path} have shape {train.sample_shape} ({train.layout}) but the SiT in "
                             f"{out} was built for {shape} ({layout}); train a new SiT on them (another --out)")


def build_sit_task(tokenizer, cfg: SiTTrainConfig, dataset: str | None = None) -> tuple[SiTTask, TrainConfig]:
    """Resolve the latents and build the model, normalisation, held-out set and task."""
    tl = tokenizer if isinstance(tokenizer, TokenizerLatents) else resolve_tokenizer(str(tokenizer), dataset)
    check_finite([tl])
    train_store, test_store = tl.train, tl.test
    tcfg = cfg.train_config()
    heldout = make_heldout(train_store, test_store, cfg.heldout_size, cfg.heldout_t, cfg.heldout_seed)
    rows = np.arange(len(train_store))
    if heldout.source == "train-holdout":
        rows = np.setdiff1d(rows, heldout.indices)
    num_classes = int(train_store.manifest.get("num_classes", 0))
    overrides = dict(cfg.model_overrides)
    if train_store.layout == "tokens" and "token_patch" not in overrides:
        overrides["token_patch"] = token_patch_for(train_store.sample_shape[0], cfg.max_tokens)
    with torch_seeded(tcfg.seed):  # the initial weights depend on the seed only
        model = SiT(sit_config(cfg.model, train_store.sample_shape, train_store.layout, num_classes, overrides))
    model.check_shape(train_store.sample_shape, train_store.layout, f"latents in {train_store.path}")
    if test_store is not None:
        model.check_shape(test_store.sample_shape, test_store.layout, f"latents in {test_store.path}")
    norm = normalization_params(train_store, cfg.normalization)
    task = SiTTask(model, train_store, rows, norm, heldout, cfg, tcfg, latent_provenance(tl))
    return task, tcfg


def train_sit(tokenizer, out: str | Path, cfg: SiTTrainConfig | None = None, resume: bool = False,
              dataset: str | None = None) -> dict:
    """Train SiT on a tokenizer's latents into run directory `out`; returns a summary with the held-out loss."""
    cfg = cfg or SiTTrainConfig()
    out = Path(out)
    check_run_dir(out, "sit run", resume)  # before any work
    task, tcfg = build_sit_task(tokenizer, cfg, dataset)
    if resume and (out / "config.json").is_file():
        _check_resume_shape(out, task.store)
    summary = train(task, tcfg, out, resume=resume)
    table = heldout_table(out)
    files = {}
    if table is not None and is_main():
        files["csv"] = str(save_csv(table, out / "heldout_loss.csv"))
        files["png"] = str(plot_heldout({task.provenance["name"]: table}, out / "heldout_loss"))
    if is_main():  # the final EMA model's loss on each held-out image (its mean is the last heldout_loss)
        ema = load_run_weights(out, copy.deepcopy(task.model), "ema")
        images = heldout_image_table(ema, task.heldout, task.norm, cfg.eval_batch_size,
                                     next(task.model.parameters()).device)
        files["per_image"] = str(save_csv(images, out / "heldout_images.csv"))
    final = summary.get("eval", {})
    means = table[table.t == "mean"]["loss"] if table is not None else []
    return {**summary, "model": cfg.model, "latents": task.provenance["name"],
            "sample_shape": list(task.store.sample_shape), "heldout": task.heldout.describe(),
            **{k: final.get(k) for k in SUMMARY_KEYS},
            "sit_loss_auc": float(np.mean(means)) if len(means) else None,
            "ema_max_decay": ema_max_decay(tcfg), "files": files}


SUMMARY_KEYS = ("heldout_loss", "heldout_loss_raw", "sit_loss_linear", "sit_loss_gap", "sit_loss_gap_raw")
TABLE_COLUMNS = ["step", "t", "loss", "loss_raw", "loss_linear", "gap"]


def heldout_table(run: str | Path):
    """DataFrame of the held-out evaluations in RUN/metrics.jsonl, one row per (step, t); t = "mean" for the mean.

    Columns: step, t, loss (EMA model), loss_raw (raw model), loss_linear (the linear-Gaussian
    reference, `latentlab.sit.reference`), gap = loss - loss_linear.
    """
    import json

    import pandas as pd

    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        ev, step = rec.get("eval", {}), rec.get("step")
        for k, v in ev.items():
            if k != "heldout_loss" and not k.startswith("heldout_loss@t="):
                continue
            tail = k[len("heldout_loss"):]                               # "" or "@t=0.0625"
            lin = ev.get("sit_loss_linear" + tail, float("nan"))
            rows.append({"step": step, "t": tail.split("=", 1)[1] if tail else "mean", "loss": v,
                         "loss_raw": ev.get("heldout_loss_raw" + tail, float("nan")), "loss_linear": lin,
                         "gap": v - lin})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS) if rows else None
