"""The study's metric columns: the ONE list of what a study measures, where it comes from and how it is counted.

To add a metric to every study: have its stage return the value in ``result["row"]`` (and, for a per-image
metric, name its per-image CSV column in ``result["per_image"]``; for a set-level one with within-run
bootstrap replicates, in ``result["replicates"]``), then add one `MetricColumn` to `METRICS`. It then
appears in runs.csv (every run), summary.csv (mean with M_lo, M_hi), comparisons.csv (per-image ones, as
paired differences against the reference) and, as a predictor or target, in correlations.csv.

kind
    "per-image": the run's value is the mean of one value per held-out image; its interval resamples seeds,
    then images within each seed, and two tokenizers are compared image by image.
    "set": one value per run (gFD, GMM NLL, RankMe, ...); its interval resamples seeds, and within a run
    the stage's bootstrap replicates when it has them (gFD: the generated samples' features).
role
    "predictor": a property of the latent space, correlated with every target.
    "target": what the latent space should make easy (SiT loss, generation quality).
    "quality": reconstruction quality; correlated like a predictor, and `CONTROL` is the partial control.
    "derived": reported but never correlated (a copy of another column, e.g. NLL per dimension).
hypothesis
    which of the field's hypotheses about diffusion-friendly latents a predictor measures (`HYPOTHESES`):
    "modes" (fewer Gaussian modes, MAETok), "discriminability" (linear probe / kNN, MAETok and VA-VAE),
    "spectrum" (less high-frequency latent energy, scale equivariance: Diffusability of Autoencoders,
    EQ-VAE), "robustness" (decoding survives latent noise and masking: l-DeTok), "dimension" (intrinsic
    or effective dimension). None for targets, quality and derived columns. hypotheses.csv groups by it.
representative
    True for the ONE predictor that stands for its hypothesis in the headline ranking of hypotheses.csv,
    declared here before any data is seen (picking each hypothesis's best-|rho| column after the fact would
    favour hypotheses with more columns). A "{K}" template is representative at its largest K only. A
    hypothesis whose representative is absent from a study (or constant across its tokenizers) falls back
    to its first predictor in `METRICS` order that the study has: a rule fixed in advance too
    (`representatives`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

KINDS = ("per-image", "set")
ROLES = ("predictor", "target", "quality", "derived")
HYPOTHESES = ("modes", "discriminability", "spectrum", "robustness", "dimension")
MODES, DISC, SPECTRUM, ROBUST, DIM = HYPOTHESES


@dataclass(frozen=True)
class MetricColumn:
    """One metric column of runs.csv / summary.csv."""

    name: str      # the column; "{rfd}" / "{gfd}" become the extractor's FD names, "{ext}" its name, "{K}" each
                   # GMM component count ("{K>1}": each count above 1)
    stage: str     # the stage whose result holds it (a per-tokenizer stage, or "gmm")
    kind: str      # "per-image" | "set"
    role: str      # "predictor" | "target" | "quality" | "derived"
    doc: str
    hypothesis: str | None = None  # one of HYPOTHESES for a predictor
    representative: bool = False   # the predictor that stands for its hypothesis in hypotheses.csv's ranking


METRICS: tuple[MetricColumn, ...] = (
    MetricColumn("psnr", "eval", "per-image", "quality", "PSNR of the test reconstructions (dB)"),
    MetricColumn("ssim", "eval", "per-image", "quality", "SSIM of the test reconstructions"),
    MetricColumn("{rfd}", "eval", "set", "quality", "FD between test reconstructions and originals"),
    MetricColumn("lp_top1", "probe", "per-image", "predictor", "linear-probe top-1 accuracy on the test split", DISC,
                 representative=True),
    MetricColumn("lp_top5", "probe", "per-image", "predictor", "linear-probe top-5 accuracy (NaN, <= 5 classes)", DISC),
    MetricColumn("knn_top1", "probe", "per-image", "predictor", "weighted kNN top-1 accuracy on the test split", DISC),
    MetricColumn("silhouette", "probe", "set", "predictor", "silhouette score of the class labels", DISC),
    MetricColumn("calinski_harabasz", "probe", "set", "predictor", "Calinski-Harabasz score of the class labels", DISC),
    MetricColumn("davies_bouldin", "probe", "set", "predictor", "Davies-Bouldin score of the class labels", DISC),
    MetricColumn("fisher_ratio", "probe", "set", "predictor", "Fisher ratio tr(S_B) / tr(S_W)", DISC),
    MetricColumn("rankme", "probe", "set", "predictor", "RankMe effective rank", DIM, representative=True),
    MetricColumn("explained_variance", "gmm", "set", "predictor", "variance explained at the common PCA dim", DIM),
    MetricColumn("modes_heldout", "gmm", "set", "predictor", "the K with the lowest held-out GMM NLL", MODES),
    MetricColumn("modes_bic", "gmm", "set", "predictor", "the K with the lowest BIC on the GMM's training part", MODES),
    MetricColumn("gain_k{K>1}", "gmm", "set", "predictor",
                 "held-out NLL(1) - NLL({K}): structure a {K}-mode mixture finds beyond one Gaussian (nats)", MODES,
                 representative=True),
    MetricColumn("below_pca_variance", "gmm", "set", "derived",
                 "1 when the tokenizer explains less than gmm.pca_variance at the common PCA dim (a flag)"),
    MetricColumn("heldout_nll_spread", "gmm", "set", "derived",
                 "largest range over K of the held-out NLL across the n_init EM starts (EM's start sensitivity)"),
    MetricColumn("gmm_nll_k{K}", "gmm", "set", "derived",
                 "held-out GMM NLL, K={K} (nats/sample); not a mode count: see modes_* and gain_k*"),
    MetricColumn("gmm_nll_per_dim_k{K}", "gmm", "set", "derived", "gmm_nll_k{K} / pca_dim: the same test again"),
    MetricColumn("hf_energy", "diffusability", "set", "predictor",
                 "share of the latents' non-DC DCT power above min(H, W)/2 (grid layouts; empty for tokens)", SPECTRUM),
    MetricColumn("spectral_slope", "diffusability", "set", "predictor",
                 "log-log slope of the latents' radial DCT power spectrum (grid layouts; empty for tokens)", SPECTRUM),
    MetricColumn("image_hf_energy", "diffusability", "set", "derived", "hf_energy of the images at the latent grid"),
    MetricColumn("image_spectral_slope", "diffusability", "set", "derived",
                 "spectral_slope of the images at the latent grid, to compare with the latents'"),
    MetricColumn("response_hf", "diffusability", "set", "predictor",
                 "share of decode(z + delta) - decode(z)'s power at high image frequencies (any layout)", SPECTRUM,
                 representative=True),  # hf_energy is empty for token layouts
    MetricColumn("response_slope", "diffusability", "set", "derived", "slope of the decoder response spectrum"),
    MetricColumn("scale_psnr", "diffusability", "per-image", "predictor",
                 "PSNR of decode(down2 z) against down2 x: scale equivariance (dB)", SPECTRUM),
    MetricColumn("scale_psnr_ref", "diffusability", "set", "derived",
                 "PSNR of down2 decode(z) against down2 x: what an equivariant decoder reaches"),
    MetricColumn("noise_robustness", "diffusability", "per-image", "predictor",
                 "area under PSNR of decode((1 - tau) z + tau eps) over the taus (dB)", ROBUST, representative=True),
    MetricColumn("mask_robustness", "diffusability", "per-image", "predictor",
                 "area under PSNR of decode with a share of tokens / positions zeroed (dB)", ROBUST),
    MetricColumn("twonn", "diffusability", "set", "predictor", "TwoNN intrinsic dimension of the train latents", DIM),
    MetricColumn("sit_loss", "sit", "per-image", "target", "SiT held-out loss of the final EMA model"),
    MetricColumn("sit_loss_linear", "sit", "set", "derived",
                 "held-out loss of the best linear (Gaussian) denoiser of these latents: sit_loss's floor"),
    MetricColumn("sit_loss_gap", "sit", "set", "target",
                 "sit_loss - sit_loss_linear: below 0 when SiT uses structure beyond second order"),
    MetricColumn("sit_loss_raw", "sit", "set", "derived",
                 "held-out loss of the final raw (non-EMA) SiT weights: the EMA's lag, not a new question"),
    MetricColumn("sit_loss_auc", "sit", "set", "target", "mean EMA held-out loss over every evaluation of the run"),
    MetricColumn("{gfd}", "gfid", "set", "target", "FD of decoded SiT samples against the train split"),
    MetricColumn("gkid_{ext}", "gfid", "set", "target",
                 "KID (unbiased MMD^2, cubic kernel) of the decoded SiT samples against the train split"),
    MetricColumn("gkid_{ext}_std", "gfid", "set", "derived", "std of gkid over its random subsets"),
    MetricColumn("gfd_floor_{ext}", "gfid", "set", "derived",
                 "FD between the train split and as many test images: the gFD of a perfect generator at this n"),
    MetricColumn("gkid_floor_{ext}", "gfid", "set", "derived", "KID between the train split and as many test images"),
    MetricColumn("cond_acc_{ext}", "gfid", "set", "target",
                 "share of class-conditional samples the extractor's classifier assigns to the class asked for"),
)
CONTROL = "{rfd}"  # correlations.csv's spearman_partial controls for reconstruction quality


def study_metrics(components: list[int], rfd: str, gfd: str) -> list[MetricColumn]:
    """METRICS with the templates filled in for one study (its GMM components and FD names), in order.

    A representative "{K}" (or "{K>1}") template stays representative at the largest K only.
    """
    out = []
    ext = extractor_name(gfd)
    for m in METRICS:
        name = m.name.replace("{rfd}", rfd).replace("{gfd}", gfd).replace("{ext}", ext)
        if "{K>1}" in name:
            name, ks = name.replace("{K>1}", "{K}"), [k for k in components if int(k) > 1]
        else:
            ks = components if "{K}" in name else [None]
        out += [replace(m, name=name.replace("{K}", str(k)), doc=m.doc.replace("{K}", str(k)),
                        representative=m.representative and k == max(ks))
                if k is not None else replace(m, name=name) for k in ks]
    return out


def representatives(metrics: list[MetricColumn], available: list[str]) -> dict[str, str]:
    """hypothesis -> the predictor that stands for it, among the `available` columns (see `representative`).

    The declared representative when available, else the hypothesis's first available predictor in
    `metrics` order; hypotheses with no available predictor are left out.
    """
    out: dict[str, str] = {}
    preds = [m for m in metrics if m.role == "predictor" and m.hypothesis and m.name in available]
    for h in HYPOTHESES:
        mine = [m for m in preds if m.hypothesis == h]
        if mine:
            out[h] = next((m.name for m in mine if m.representative), mine[0].name)
    return out


def extractor_name(gfd: str) -> str:
    """The extractor named by a generation FD column: "gfid" -> "inception", "gfd_lenet" -> "lenet"."""
    return "inception" if gfd == "gfid" else gfd.removeprefix("gfd_")


def fd_column_names(metrics_cfg) -> tuple[str, str]:
    """(reconstruction, generation) FD column names for the study's extractor: rfid/gfid only for Inception."""
    name = metrics_cfg.extractor.split(":")[0]
    base = "fid" if name == "inception" else f"fd_{name}"
    return "r" + base, "g" + base


def control_column(rfd: str) -> str:
    """The column that spearman_partial controls for."""
    return CONTROL.replace("{rfd}", rfd)

