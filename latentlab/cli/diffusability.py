"""`latentlab diffusability`: spectrum, decoder response, scale equivariance, corruption robustness, intrinsic dimension."""

from __future__ import annotations

import click

from latentlab.analysis.config import DiffusabilityConfig
from latentlab.cli import cli
from latentlab.cli.common import NATURAL, Float, FloatList, Int, emit, given, json_option, tokenizer_option

D = DiffusabilityConfig()  # defaults shown in --help come from the dataclass


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None or v != v else format(v, spec)


def _text(s: dict) -> str:
    m = s["metric"]
    lines = [f"{'tokenizer':16s} {'hf_energy':>9s} {'resp_hf':>8s} {'scale_dB':>8s} {'noise_dB':>8s} {'mask_dB':>8s} "
             f"{'twonn':>6s} {'seconds':>7s}"]
    for r in s["rows"]:
        lines.append(f"{r['tokenizer'][:16]:16s} {_fmt(r.get('hf_energy')):>9s} {_fmt(r.get('response_hf')):>8s} "
                     f"{_fmt(r.get('scale_psnr'), '.2f'):>8s} {_fmt(r.get('noise_robustness'), '.2f'):>8s} "
                     f"{_fmt(r.get('mask_robustness'), '.2f'):>8s} {_fmt(r.get('twonn'), '.1f'):>6s} "
                     f"{_fmt(r.get('seconds'), '.1f'):>7s}")
    lines.append(f"FD in {m} features; wrote {s['files']['csv']}, robustness.csv, spectra.csv and {s['files']['png']}")
    return "\n".join(lines)


@cli.command("diffusability")
@tokenizer_option
@click.option("--out", required=True, type=click.Path(), help="Directory for diffusability.csv and the figure.")
@click.option("--dataset", default=None,
              help="Images to encode when --tokenizer is a tokenizer run or diffusers:PATH (default: the run's own).")
@click.option("--n-images", type=Int(min=2), default=None,
              help=f"Test images for the decoder-side measures [{D.n_images}].")
@click.option("--taus", type=FloatList(min=0, min_open=True, max=1), default=None, metavar="T1,T2,..",
              help=f"Noise levels tau of decode((1-tau) z + tau eps), in (0, 1] [{','.join(map(str, D.taus))}].")
@click.option("--mask-ratios", type=FloatList(min=0, min_open=True, max=1, max_open=True), default=None,
              metavar="R1,R2,..",
              help=f"Shares of tokens / positions zeroed, in (0, 1) [{','.join(map(str, D.mask_ratios))}].")
@click.option("--response-scale", type=Float(min=0, min_open=True, max=1), default=None,
              help=f"Std of the decoder-response perturbation in normalised units [{D.response_scale}].")
@click.option("--id-samples", type=Int(min=2), default=None,
              help=f"Train latents for TwoNN and RankMe [{D.id_samples}].")
@click.option("--extractor", default=None, help=f"FD features: lenet (fd_lenet), inception, dinov2, torchscript:PATH [{D.extractor}].")
@click.option("--no-fd", "no_fd", is_flag=True, help="Skip the FD of the corrupted decodes (PSNR only).")
@click.option("--seed", type=NATURAL, default=None, help=f"Seed of the images, noise, masks and resamples [{D.seed}].")
@click.option("--device", default=None, help=f"cpu, cuda, cuda:N or auto [{D.device}].")
@json_option
def diffusability_cmd(tokenizers, out, dataset, n_images, taus, mask_ratios, response_scale, id_samples, extractor,
                      no_fd, seed, device, as_json):
    """The field's other hypotheses, per tokenizer: latent spectrum (grid layouts), decoder response,
    scale equivariance, robustness to interpolated noise and masking, intrinsic dimension (TwoNN, RankMe).

    Writes OUT/diffusability.csv (one row per tokenizer, each estimate with _lo/_hi), robustness.csv,
    spectra.csv, diffusability.json and diffusability.png.

    \b
    latentlab diffusability --tokenizer pixels=workspace/stores/pixels --tokenizer ae=RUN --out out/diff
    """
    from latentlab.config import merge
    from latentlab.extract import resolve_tokenizers
    from latentlab.metrics.diffusability import run_diffusability

    overrides = given(n_images=n_images, response_scale=response_scale, id_samples=id_samples, extractor=extractor,
                      seed=seed, device=device, taus=taus, mask_ratios=mask_ratios)
    if no_fd:
        overrides["fd"] = False
    cfg = merge(DiffusabilityConfig(), overrides, "diffusability options")
    emit(run_diffusability(resolve_tokenizers(tokenizers, dataset), out, cfg), as_json, _text)
