"""`latentlab probe` (linear probe + structure metrics) and `latentlab umap`."""

from __future__ import annotations

import click

from latentlab.analysis.config import (ADAMW_LR, OPTIMIZERS, POOLS, SGD_LR_PER_256, DiscriminabilityConfig, ProbeConfig,
                                       UmapConfig)
from latentlab.cli import cli
from latentlab.cli.common import COUNT, LEARNING_RATE, NATURAL, Int, emit, given, json_option, tokenizer_option

P, D, U = ProbeConfig(), DiscriminabilityConfig(), UmapConfig()  # defaults shown in --help come from the dataclasses


@cli.command("probe", help=f"""Linear probe (MAE protocol) and structure metrics of each tokenizer's latents.

    Trains BatchNorm1d(affine=False) + Linear on frozen train latents, evaluates every tokenizer
    on the same held-out images: the test stores when every tokenizer has one, else the same
    seeded, stratified {D.holdout_fraction:.0%} holdout of the train rows for all (column eval_split), and
    measures DINO weighted kNN accuracy
    (k={D.knn_k}, T={D.knn_temperature}), silhouette / Calinski-Harabasz / Davies-Bouldin, the Fisher ratio
    tr(S_B)/tr(S_W) and RankMe effective rank. Writes OUT/probe.csv and OUT/probe.png.

    \b
    latentlab probe --tokenizer ae=workspace/stores/ae --tokenizer maetok=RUN --out out/probe
    """)
@tokenizer_option
@click.option("--out", required=True, type=click.Path(), help="Directory for probe.csv and probe.png.")
@click.option("--pool", type=click.Choice(POOLS), default=None,
              help=f"Features: the flattened latent (T*C) or its mean over tokens (C) [{D.pool}].")
@click.option("--epochs", type=COUNT, default=None, help=f"Probe training passes [{P.epochs}].")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help=f"Probe optimizer [{P.optimizer}].")
@click.option("--lr", type=LEARNING_RATE, default=None,
              help=f"Peak learning rate of the cosine schedule [{SGD_LR_PER_256} x batch / 256 for sgd, {ADAMW_LR} for adamw].")
@click.option("--batch-size", type=COUNT, default=None, help=f"Probe mini-batch size [{P.batch_size}].")
@click.option("--device", default=None, help=f"cpu, cuda, cuda:N or auto [{P.device}].")
@click.option("--seed", type=NATURAL, default=None,
              help=f"Seed of the probe, the holdout split and metric subsamples [{P.seed}].")
@click.option("--gmm", "gmm_csv", type=click.Path(), default=None,
              help="A gmm.csv from `latentlab fit-gmm` to join in.")
@click.option("--gmm-k", type=COUNT, default=None, help="The number of GMM components whose held-out NLL to report.")
@click.option("--dataset", default=None,
              help="Images to encode when --tokenizer is a tokenizer run, diffusers: or python: spec (default: the run's own).")
@json_option
def probe_cmd(tokenizers, out, pool, epochs, optimizer, lr, batch_size, device, seed, gmm_csv, gmm_k, dataset, as_json):
    """Linear probe (MAE protocol) and structure metrics of each tokenizer's latents."""
    from latentlab.analysis.probe import run_probe, summary_text
    from latentlab.config import merge
    from latentlab.extract import resolve_tokenizers

    probe = given(epochs=epochs, optimizer=optimizer, lr=lr, batch_size=batch_size, device=device, seed=seed)
    cfg = merge(D, {**given(pool=pool, gmm_csv=gmm_csv, gmm_k=gmm_k), "probe": probe}, "probe options")
    summary = run_probe(resolve_tokenizers(tokenizers, dataset), out, cfg)
    emit(summary, as_json, summary_text)


@cli.command("umap")
@tokenizer_option
@click.option("--out", required=True, type=click.Path(), help="Directory for umap.csv and umap.png.")
@click.option("--n", type=Int(min=2), default=None, help=f"Class-balanced subsample size per tokenizer [{U.n}].")
@click.option("--seed", type=NATURAL, default=None,
              help=f"Seed of the subsample and UMAP [{U.seed}]. A seed makes umap-learn single-threaded.")
@click.option("--pca-dim", type=Int(min=0), default=None, help=f"PCA dimensions before UMAP; 0 skips PCA [{U.pca_dim}].")
@click.option("--pool", type=click.Choice(POOLS), default=None, help=f"Flattened latents or token means [{U.pool}].")
@click.option("--dataset", default=None,
              help="Images to encode when --tokenizer is a tokenizer run, diffusers: or python: spec (default: the run's own).")
@json_option
def umap_cmd(tokenizers, out, n, seed, pca_dim, pool, dataset, as_json):
    """2-D UMAP of each tokenizer's latents, coloured by class (MAETok Figure 4).

    A class-balanced subsample of the train latents, PCA to --pca-dim dimensions, then umap-learn
    with random_state=NATURAL, so the same seed gives the same umap.csv (umap-learn is then
    single-threaded). Writes OUT/umap.csv (tokenizer, index, label, x, y) and OUT/umap.png.
    """
    from latentlab.analysis.umap import run_umap
    from latentlab.config import merge
    from latentlab.extract import resolve_tokenizers

    cfg = merge(U, given(n=n, seed=seed, pca_dim=pca_dim, pool=pool), "umap options")
    summary = run_umap(resolve_tokenizers(tokenizers, dataset), out, cfg)
    emit(summary, as_json, lambda s: "\n".join(
        [f"{k}: {v['n']} points, {v['classes']} classes" for k, v in s["tokenizers"].items()]
        + [f"wrote {s['csv']} and {s['png']}"]))
