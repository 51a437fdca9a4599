"""`latentlab diffusability`: spectrum, decoder response, scale equivariance, corruption robustness, intrinsic dimension.

For each tokenizer (one row of OUT/diffusability.csv), on `n_images` test images chosen by a seed of
(seed, dataset, split, n) alone, so every tokenizer of a dataset is measured on the same images:

- **latent spectrum** (grid layouts (C, H, W); raw pixels, whose tokens are the image grid, too):
  `hf_energy` and `spectral_slope` of the latents in normalised units, and `image_hf_energy`,
  `image_spectral_slope` of the images averaged down to the latent grid (`analysis.diffusability`).
  Token layouts (T, C) have no spatial axes: the columns are empty and `spectrum_note` says so.
- **decoder response** (every tokenizer with a decoder): the DCT power spectrum of
  decode(z + delta) - decode(z), delta ~ N(0, response_scale^2) in normalised units, decoded
  without the final clamp; `response_hf` is its share of non-DC power above min(H, W) / 2 of the
  image, next to the images' own share `image_hf_full`.
- **scale equivariance**: `scale_psnr` = PSNR(decode(down2(z)), down2(x)), images downsampled by
  2x2 average pooling; for grid latents down2 is the same pooling, for latentlab's token tokenizers
  the mean of runs of 4 tokens decoded on the half-resolution grid (`tokenizers.regularizers`);
  `scale_psnr_ref` = PSNR(down2(decode(z)), down2(x)) is what a perfectly equivariant decoder reaches.
- **corruption robustness**: PSNR against the images and FD (in the extractor's features; the
  LeNet stand-in is `fd_lenet`, never FID) of decode((1 - tau) z + tau eps) for tau in `taus`, and
  of decode with a share of tokens (token layouts) or positions (grid layouts) set to zero in
  normalised units; `noise_robustness` / `mask_robustness` are the areas under the PSNR curves over
  the level range (their mean height, dB). The curves are in OUT/robustness.csv, and the per-image
  values behind psnr_clean, scale_psnr and both areas (by store row, "index") in diffusability_images.csv.
- **intrinsic dimension** of `id_samples` flattened train latents: TwoNN (scikit-dimension) and
  RankMe (`analysis.structure.rankme`, named `id_rankme` here).

Normalised units are the train store's per-channel mean and std, as SiT sees them. Intervals:
bootstrap over images (percentile), subsampling for TwoNN (see `analysis.diffusability`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from latentlab.analysis.config import DiffusabilityConfig
from latentlab.analysis.diffusability import (area_pool, curve_area,
                                             mean_interval, normalise_channels, spectrum, twonn_interval)
from latentlab.analysis.stream import Rows
from latentlab.analysis.structure import rankme
from latentlab.data import get_dataset
from latentlab.errors import LatentlabError
from latentlab.extract import TokenizerLatents, check_finite
from latentlab.io import save_csv, save_json
from latentlab.outputs import check_output, output_dir
from latentlab.metrics.extractors import FeatureExtractor, get_extractor
from latentlab.metrics.fid import fd_between, fd_bootstrap, fd_interval, feature_statistics
from latentlab.metrics.recon import psnr, to_unit
from latentlab.metrics.stats import real_statistics
from latentlab.plots.diffusability import plot_diffusability
from latentlab.sit.sample import decoder_for
from latentlab.sit.training import denormalize, latent_provenance, normalization_params, normalize
from latentlab.tokenizers.regularizers import downsample_images, random_mask
from latentlab.utils import derive_seed, get_device, info, progress


# ---------------------------------------------------------------- one tokenizer's inputs

@dataclass
class Subject:
    """One tokenizer as the measures see it: latents of chosen test rows, their images, decoder and normalisation.

    `Subject.open` builds it from resolved latents; tests build it directly from planted arrays.
    """

    name: str
    z: torch.Tensor                       # (n, *shape) raw latents of the measured rows
    images: torch.Tensor | None           # (n, C, H, W) in [-1, 1], the images those latents encode
    norm: dict                            # the train store's per-channel normalisation (sit.training)
    layout: str = "tokens"
    decoder: object | None = None         # anything with .decode (and optionally .decode_raw, .downsample_latents)
    decoder_note: str = ""
    pixels: bool = False                  # raw pixels: the tokens are the image grid, the decoder the identity
    dataset: str | None = None
    id_latents: object | None = None      # (m, D) rows for the intrinsic dimension: an array or a (store, rows) pair
    images_note: str = ""
    device: torch.device = torch.device("cpu")
    rows: np.ndarray | None = None        # the measured rows of the store (the "index" of diffusability_images.csv)
    per_image: dict = field(default_factory=dict)  # filled by the measures: column -> (n,) values per image

    @classmethod
    def open(cls, tl: TokenizerLatents, cfg: DiffusabilityConfig, device: torch.device) -> "Subject":
        """The test rows (a seed of (seed, dataset, split, n) alone picks them), images, decoder and norm of `tl`."""
        store = tl.test if tl.test is not None else tl.train
        prov = latent_provenance(tl)
        decoder, decoder_note = decoder_for(prov, device)
        dataset, split = store.dataset, store.split or "train"
        n = min(cfg.n_images, len(store))
        rng = np.random.default_rng(derive_seed("diffusability-images", cfg.seed, dataset, split, n))
        rows = np.sort(rng.choice(len(store), n, replace=False))
        images, images_note = None, ""
        if dataset is None:
            images_note = "the store records no dataset, so its images are unknown"
        else:
            ds = get_dataset(dataset, split, image_size=prov.get("image_size"))
            if len(ds) != len(store):
                images_note = f"the store has {len(store)} rows but {dataset}:{split} has {len(ds)} images"
            else:
                images = ds.get_batch(rows)[0]                                             # (n, C, H, W)
        k = min(cfg.id_samples, len(tl.train))
        id_rng = np.random.default_rng(derive_seed("diffusability-id", cfg.seed, dataset, k))
        id_rows = np.sort(id_rng.choice(len(tl.train), k, replace=False))
        return cls(name=tl.name, z=torch.from_numpy(store.take(rows)), images=images,
                   norm=normalization_params(tl.train, "channel"), layout=store.layout, decoder=decoder,
                   decoder_note=decoder_note, pixels=prov.get("tokenizer") == "pixels", dataset=dataset,
                   id_latents=(tl.train, id_rows), images_note=images_note, device=device, rows=rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.z.shape[1:])

    def grid(self, z: torch.Tensor) -> torch.Tensor | None:
        """Latents as a spatial grid (n, C, H, W): grid layouts as they are, raw pixels reshaped; else None."""
        if self.layout == "grid":
            return z
        if self.pixels:
            return self.decoder.decode(z)
        return None

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int, raw: bool = False, half: bool = False) -> torch.Tensor:
        """Images (n, C, H, W) on the CPU: decoded in batches, clamped to [-1, 1] unless `raw`."""
        dec = self.decoder
        out = []
        for i in range(0, len(z), batch_size):
            zb = z[i:i + batch_size].to(self.device)
            if half and hasattr(dec, "downsample_latents"):  # latentlab tokens: pooled runs of tokens, half grid
                y = dec.decode_raw(dec.downsample_latents(zb), half=True)
            elif half:
                y = _decode_raw(dec, downsample_images(zb))
            else:
                y = _decode_raw(dec, zb) if raw else dec.decode(zb)
            out.append(y.float().cpu() if raw else y.float().clamp(-1, 1).cpu())
        return torch.cat(out)


def _decode_raw(decoder, z: torch.Tensor) -> torch.Tensor:
    """decode without the final clamp when the decoder has one (`decode_raw`), else `decode`."""
    return decoder.decode_raw(z) if hasattr(decoder, "decode_raw") else decoder.decode(z)


def _noise(shape: tuple[int, ...], *parts) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(*parts)))


# ---------------------------------------------------------------- the measures

def _interval_cols(prefix: str, est: float, lo: float, hi: float) -> dict:
    return {prefix: est, f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def spectrum_columns(s: Subject, cfg: DiffusabilityConfig) -> tuple[dict, dict]:
    """Latent and image spectra at the latent grid: (row columns, {kind: radial profile})."""
    zg = s.grid(normalize(s.z, s.norm))
    if zg is None:
        return {"spectrum_note": f"token layout {s.shape}: no spatial axes"}, {}
    if zg.shape[-1] < 2 or zg.shape[-2] < 2:
        return {"spectrum_note": f"latent grid {tuple(zg.shape[1:])} is too small for a spectrum"}, {}
    lat = spectrum(zg.numpy(), cfg.n_boot, cfg.level, cfg.seed)
    row = {**_interval_cols("hf_energy", lat["hf_energy"], lat["hf_energy_lo"], lat["hf_energy_hi"]),
           **_interval_cols("spectral_slope", lat["spectral_slope"], lat["spectral_slope_lo"], lat["spectral_slope_hi"])}
    profiles = {"latent": lat["profile"]}
    note = "raw pixels: the tokens are the image grid" if s.pixels else ""
    if s.images is not None:
        h, w = zg.shape[-2:]
        img = spectrum(normalise_channels(area_pool(s.images.numpy(), h, w)), cfg.n_boot, cfg.level, cfg.seed)
        row.update(_interval_cols("image_hf_energy", img["hf_energy"], img["hf_energy_lo"], img["hf_energy_hi"]))
        row.update(_interval_cols("image_spectral_slope", img["spectral_slope"], img["spectral_slope_lo"],
                                  img["spectral_slope_hi"]))
        profiles["image"] = img["profile"]
    row["spectrum_note"] = note
    return row, profiles


def response_columns(s: Subject, cfg: DiffusabilityConfig) -> tuple[dict, dict]:
    """Decoder response spectrum: (row columns, {kind: radial profile})."""
    zn = normalize(s.z, s.norm)
    delta = cfg.response_scale * _noise(tuple(zn.shape), "diffusability-response", cfg.seed, s.dataset)
    d = s.decode(denormalize(zn + delta, s.norm), cfg.batch_size, raw=True) - s.decode(s.z, cfg.batch_size, raw=True)
    r = spectrum(d.numpy(), cfg.n_boot, cfg.level, cfg.seed)
    row = {**_interval_cols("response_hf", r["hf_energy"], r["hf_energy_lo"], r["hf_energy_hi"]),
           **_interval_cols("response_slope", r["spectral_slope"], r["spectral_slope_lo"], r["spectral_slope_hi"])}
    profiles = {"response": r["profile"]}
    if s.images is not None:
        full = spectrum(normalise_channels(s.images.numpy()), cfg.n_boot, cfg.level, cfg.seed)
        row.update(_interval_cols("image_hf_full", full["hf_energy"], full["hf_energy_lo"], full["hf_energy_hi"]))
        profiles["image_full"] = full["profile"]
    return row, profiles


def _psnr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return psnr(to_unit(a), to_unit(b)).numpy()


def scale_columns(s: Subject, cfg: DiffusabilityConfig, clean: torch.Tensor) -> dict:
    """PSNR(decode(down2 z), down2 x) and the equivariant reference PSNR(down2 decode(z), down2 x)."""
    target = downsample_images(s.images)
    if s.pixels:  # the identity decoder commutes with downsampling
        half = downsample_images(s.grid(s.z))
        note = "raw pixels: identity decoder"
    elif s.layout == "grid" or hasattr(s.decoder, "downsample_latents"):
        half = s.decode(s.z, cfg.batch_size, half=True)
        note = "grid: 2x2 average pool" if s.layout == "grid" else "tokens: mean of runs of 4 tokens, half-resolution grid"
    else:
        return {"scale_note": "this decoder has no half-resolution decode for token latents"}
    if half.shape != target.shape:
        return {"scale_note": f"decode(down2(z)) has shape {tuple(half.shape[1:])}, down2(x) {tuple(target.shape[1:])}"}
    s.per_image["scale_psnr"] = _psnr(half.clamp(-1, 1), target)
    row = _interval_cols("scale_psnr", *mean_interval(s.per_image["scale_psnr"], cfg.n_boot, cfg.level, cfg.seed))
    row.update(_interval_cols("scale_psnr_ref", *mean_interval(_psnr(downsample_images(clean), target), cfg.n_boot,
                                                               cfg.level, cfg.seed)))
    row["scale_note"] = note
    return row


def corrupt(zn: torch.Tensor, kind: str, level: float, layout: str, seed_parts: tuple) -> torch.Tensor:
    """Normalised latents (n, *shape) interpolated with noise ("noise", tau) or with a share of tokens/positions zeroed."""
    if kind == "noise":
        return (1 - level) * zn + level * _noise(tuple(zn.shape), *seed_parts)
    g = torch.Generator().manual_seed(derive_seed(*seed_parts))
    if layout == "grid":  # positions (H, W), all channels
        n, _, h, w = zn.shape
        mask, _ = random_mask(n, h * w, level, level, g)
        return zn.masked_fill(mask.reshape(n, 1, h, w), 0.0)
    mask, _ = random_mask(zn.shape[0], zn.shape[1], level, level, g)                    # (n, T)
    return zn.masked_fill(mask[..., None], 0.0)


def _fd(ext: FeatureExtractor | None, ref, images: torch.Tensor, cfg: DiffusabilityConfig, seed: int
        ) -> tuple[float, float, float]:
    """FD of images against `ref` with a bootstrap interval over the images (`fd_interval`); NaNs without `ext`."""
    if ext is None:
        return math.nan, math.nan, math.nan
    feats = torch.cat([ext.extract(images[i:i + cfg.batch_size])[0].double().cpu()
                       for i in range(0, len(images), cfg.batch_size)])                  # (n, D)
    est = fd_between(ref, feature_statistics(feats))
    return (est, *fd_interval(est, fd_bootstrap(ref, feats, cfg.fd_boot, seed), cfg.level))


def robustness_curves(s: Subject, cfg: DiffusabilityConfig, ext: FeatureExtractor | None, ref, metric: str
                      ) -> tuple[dict, list[dict], torch.Tensor]:
    """PSNR and FD under noise and masking: (row columns, curve rows, the clean decode)."""
    clean = s.decode(s.z, cfg.batch_size)
    clean_psnr = s.per_image["psnr_clean"] = _psnr(clean, s.images)
    row = {"psnr_clean": float(clean_psnr.mean())}
    row.update(dict(zip((f"{metric}_clean", f"{metric}_clean_lo", f"{metric}_clean_hi"),
                        _fd(ext, ref, clean, cfg, derive_seed("fd", cfg.seed, 0)))))
    zn = normalize(s.z, s.norm)
    curves = []
    for kind, levels, col in (("noise", cfg.taus, "noise_robustness"), ("mask", cfg.mask_ratios, "mask_robustness")):
        per_image = []
        for j, level in enumerate(levels):
            zc = denormalize(corrupt(zn, kind, level, s.layout, ("diffusability", kind, cfg.seed, s.dataset, j)), s.norm)
            out = s.decode(zc, cfg.batch_size)
            p = _psnr(out, s.images)
            per_image.append(p)
            fd = _fd(ext, ref, out, cfg, derive_seed("fd", cfg.seed, kind, j))
            curves.append({"tokenizer": s.name, "corruption": kind, "level": level,
                           **_interval_cols("psnr", *mean_interval(p, cfg.n_boot, cfg.level, cfg.seed)),
                           **dict(zip((metric, f"{metric}_lo", f"{metric}_hi"), fd))})
        area = s.per_image[col] = curve_area(levels, np.stack(per_image, 1))               # (n,)
        row.update(_interval_cols(col, *mean_interval(area, cfg.n_boot, cfg.level, cfg.seed)))
    return row, curves, clean


def intrinsic_dimension(s: Subject, cfg: DiffusabilityConfig) -> dict:
    """TwoNN (bootstrap of the neighbour ratios) and RankMe (bootstrap of the rows) of flattened train latents."""
    if isinstance(s.id_latents, tuple):
        store, rows = s.id_latents
        x = store.take(rows, flatten=True).astype(np.float64)                              # (m, D)
    else:
        x = np.asarray(s.id_latents, np.float64).reshape(len(s.id_latents), -1)
    row = {"id_n": len(x), **_interval_cols("twonn", *twonn_interval(x, cfg.n_boot, cfg.level,
                                                                    derive_seed("twonn", cfg.seed)))}
    est = rankme(Rows(x), max_samples=len(x))
    rng = np.random.default_rng(derive_seed("rankme", cfg.seed))
    draws = np.array([rankme(Rows(x[rng.integers(0, len(x), len(x))]), max_samples=len(x))
                      for _ in range(cfg.id_boot)])
    row.update(_interval_cols("id_rankme", est, *fd_interval(est, draws, cfg.level)))  # spread about the estimate
    return row


def measure(s: Subject, cfg: DiffusabilityConfig, ext: FeatureExtractor | None = None, ref=None, metric: str = "fd"
            ) -> tuple[dict, list[dict], dict]:
    """Every measure of one tokenizer: (row, robustness curve rows, {kind: radial profile}); FD needs `ext` and `ref`."""
    t0 = time.perf_counter()
    row = {"tokenizer": s.name, "layout": s.layout, "latent_shape": "x".join(map(str, s.shape)), "n_images": len(s.z)}
    spec, profiles = spectrum_columns(s, cfg)
    row.update(spec)
    curves: list[dict] = []
    if s.decoder is None or s.images is None:
        row["decoder_note"] = s.decoder_note if s.decoder is None else s.images_note
    else:
        resp, rprof = response_columns(s, cfg)
        rob, curves, clean = robustness_curves(s, cfg, ext, ref, metric)
        row.update(resp, **rob, **scale_columns(s, cfg, clean))
        profiles.update(rprof)
        row["decoder_note"] = ""
    row.update(intrinsic_dimension(s, cfg))
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row, curves, profiles


# ---------------------------------------------------------------- the command's pipeline

DIFFUSABILITY_KIND = "diffusability output"  # the `.latentlab` marker kind of its output folder
FILES = {"csv": "diffusability.csv", "robustness": "robustness.csv", "spectra": "spectra.csv",
         "images": "diffusability_images.csv",
         "json": "diffusability.json", "png": "diffusability.png", "pdf": "diffusability.pdf"}

def _reference(tokenizers: list[TokenizerLatents], cfg: DiffusabilityConfig, device):
    """(extractor, real statistics, FD column name) of the first dataset, or (None, None, name) without FD."""
    if not cfg.fd:
        return None, None, "fd"
    store = tokenizers[0].test if tokenizers[0].test is not None else tokenizers[0].train
    dataset = store.dataset
    datasets = {(t.test or t.train).dataset for t in tokenizers}
    if dataset is None or len(datasets) > 1:
        raise LatentlabError("FD needs every tokenizer's latents to come from one recorded dataset "
                             f"(got {sorted(map(str, datasets))}); pass --no-fd or measure each dataset separately")
    split = store.split or "train"
    ext = get_extractor(cfg.extractor, dataset=dataset, device=device)
    image_size = (store.manifest.get("meta") or {}).get("image_size")
    ref, _ = real_statistics(dataset, split, ext, image_size=image_size, batch_size=cfg.batch_size)
    return ext, ref, ext.metric


def run_diffusability(tokenizers: list[TokenizerLatents], out: str | Path, cfg: DiffusabilityConfig | None = None
                      ) -> dict:
    """Measure every tokenizer; write OUT/diffusability.csv, robustness.csv, spectra.csv, .json and the figure."""
    cfg = cfg or DiffusabilityConfig()
    if not tokenizers:
        raise LatentlabError("give at least one --tokenizer")
    check_output(out, DIFFUSABILITY_KIND)  # before any work
    check_finite(tokenizers)
    device = get_device(cfg.device)
    ext, ref, metric = _reference(tokenizers, cfg, device)
    rows, curves, spectra, images = [], [], [], []
    for tl in progress(tokenizers, desc="diffusability", total=len(tokenizers), leave=True):
        t0 = time.perf_counter()
        subject = Subject.open(tl, cfg, device)
        row, cur, prof = measure(subject, cfg, ext, ref, metric)
        if subject.per_image:
            images.append(pd.DataFrame({"tokenizer": tl.name, "index": subject.rows, **subject.per_image}))
        row["seconds"] = round(time.perf_counter() - t0, 3)  # with opening the tokenizer and its images
        rows.append(row)
        curves += cur
        spectra += [{"tokenizer": tl.name, "kind": k, "radius": i, "power": float(v)}
                    for k, p in prof.items() for i, v in enumerate(p)]
        info(f"{tl.name}: {row['seconds']:.1f} s")
    out = Path(out)
    table = pd.DataFrame(rows)
    curves = pd.DataFrame(curves, columns=["tokenizer", "corruption", "level", "psnr", "psnr_lo", "psnr_hi", metric,
                                           f"{metric}_lo", f"{metric}_hi"])
    spectra = pd.DataFrame(spectra, columns=["tokenizer", "kind", "radius", "power"])
    summary = {"out": str(out), "metric": metric, "extractor": ext.describe() if ext is not None else None,
               "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "rows": rows,
               "files": {k: str(out / f) for k, f in FILES.items()}}
    with output_dir(out, DIFFUSABILITY_KIND) as tmp:
        save_csv(table, tmp / FILES["csv"])
        save_csv(curves, tmp / FILES["robustness"])
        save_csv(spectra, tmp / FILES["spectra"])
        save_csv(pd.concat(images, ignore_index=True) if images else pd.DataFrame(columns=["tokenizer", "index"]),
                 tmp / FILES["images"])
        plot_diffusability(table, curves, spectra, metric, tmp / FILES["png"])
        save_json(summary, tmp / FILES["json"])
    return summary
