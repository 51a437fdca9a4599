"""`latentlab fit-gmm`: GMM NLL against the number of components (MAETok Fig. 2a)."""

from __future__ import annotations

import click

from latentlab.analysis.config import COVARIANCES, DEFAULT_COVARIANCE, PROTOCOL_NAMES, REDUCERS, FitGMMConfig
from latentlab.cli import cli
from latentlab.cli.common import COUNT, FRACTION, NATURAL, PROPORTION, IntList, emit, given, json_option, tokenizer_option

D = FitGMMConfig()  # defaults shown in --help come from the dataclass


def _text(s: dict) -> str:
    lines = [f"protocol {s['protocol']}, PCA dimension {s['pca_dim']}; wrote {s['out']}"]
    for name, b in s["tokenizers"].items():
        key = next(k for k in b if k.startswith("best_") and k != "best_k")
        gains = [k for k in b if k.startswith("gain_k")]
        flag = " (below --pca-variance)" if b.get("below_pca_variance") else ""
        lines.append(f"  {name}: explained variance {b['explained_variance']:.3f}{flag}, lowest "
                     f"{key[5:].replace('_', ' ')} {b[key]:.4f} at K={b['best_k']}; modes by BIC "
                     f"{b.get('modes_bic')}" + (f", {gains[-1]} = {b[gains[-1]]:.3f}" if gains else ""))
    return "\n".join(lines)


@cli.command("fit-gmm")
@tokenizer_option
@click.option("--components", type=IntList(min=1), default=None, metavar="K1,K2,..",
              help=f"Component counts to fit [{','.join(map(str, D.components))}].")
@click.option("--pca-variance", type=PROPORTION, default=None,
              help=f"Explained variance every tokenizer keeps, in (0, 1] [{D.pca_variance}]: the paper's rule, under "
                   "which each tokenizer's NLL depends on the other tokenizers given. With --pca-dim: flag those below.")
@click.option("--pca-dim", type=COUNT, default=None,
              help="A fixed PCA dimension instead of --pca-variance (results independent of the tokenizer set).")
@click.option("--pca-dims", type=IntList(min=1), default=None, metavar="D1,D2,..",
              help="Also fit these PCA dimensions (a sweep).")
@click.option("--covariance", type=click.Choice(COVARIANCES), default=None,
              help="Covariance type [" + "; ".join(f"{p}: {c}" for p, c in DEFAULT_COVARIANCE.items()) + "].")
@click.option("--heldout", type=FRACTION, default=None, help=f"Held-out fraction of the train store, in [0, 1) [{D.heldout}].")
@click.option("--out", required=True, type=click.Path(), help="Directory for gmm.csv, gmm.json and the figure.")
@click.option("--protocol", type=click.Choice(PROTOCOL_NAMES), default=None,
              help=f"em: latentlab's EM; official: the MAETok release (Adam, softmax weights) [{D.protocol}].")
@click.option("--reducer", type=click.Choice(REDUCERS), default=None,
              help=f"Reduction for --protocol official [{D.reducer}; the authors' script defaults to umap].")
@click.option("--max-iter", type=COUNT, default=None, help=f"EM iterations per fit [{D.max_iter}].")
@click.option("--n-init", type=COUNT, default=None, help=f"EM restarts per fit [{D.n_init}].")
@click.option("--epochs", "official_epochs", type=COUNT, default=None,
              help=f"Adam epochs for --protocol official [{D.official_epochs}; the authors' README runs 500].")
@click.option("--seed", type=NATURAL, default=None,
              help=f"Seed of the held-out split and the GMM init [{D.seed}]; with --protocol official only of the "
                   f"init and batch order (its 80/20 split is fixed at seed {D.official_split_seed}).")
@click.option("--device", default=None, help=f"cpu, cuda, cuda:N or auto [{D.device}].")
@click.option("--batch-size", type=COUNT, default=None, help="Rows per streamed chunk [automatic].")
@click.option("--dataset", default=None, help="Dataset whose latents a tokenizer run extracts.")
@json_option
def fit_gmm_cmd(tokenizers, out, dataset, as_json, **opts):
    """Fit Gaussian mixtures to PCA-reduced latents and plot NLL against the number of components.

    \b
    latentlab fit-gmm --tokenizer workspace/stores/pixels --components 1,2,5,10,20,50 --out gmm-out
    """
    from latentlab.analysis.gmm.curves import fit_gmm_curves
    from latentlab.config import merge

    cfg = merge(D, given(**opts), "fit-gmm options")
    emit(fit_gmm_curves(list(tokenizers), cfg, out, dataset).summary(), as_json, _text)
