"""`latentlab import-latents` and `latentlab datasets`."""

from __future__ import annotations

import click

from latentlab.cli import cli
from latentlab.cli.common import emit, json_option
from latentlab.datasets import DATASETS, SPLITS
from latentlab.errors import LatentlabError


@cli.command("import-latents")
@click.option("--dataset", default=None, help="Store a dataset's raw pixels as the 'pixels' baseline (train/ and test/).")
@click.option("--latents", "latents_path", type=click.Path(), default=None, help="X.npy of shape (N, T, C), (N, D) or (N, C, H, W).")
@click.option("--labels", "labels_path", type=click.Path(), default=None, help="y.npy of int class labels (N,).")
@click.option("--out", required=True, type=click.Path(), help="Store directory to write (replaced atomically).")
@click.option("--name", default=None, help="Tokenizer label recorded in the store (default: the directory name).")
@click.option("--split", type=click.Choice(SPLITS), default=None, help="Split recorded for --latents.")
@click.option("--planted", default=None, metavar="modes=M,dim=D,n=N,seed=S",
              help="Planted modes: a whitened mixture of M Gaussians (label = mode), train/ and test/ "
                   "(optional test=ROWS, sep=SPREAD).")
@json_option
def import_latents_cmd(dataset, latents_path, labels_path, out, name, split, planted, as_json):
    """Store latents as a LatentStore: a dataset's pixels, latents extracted elsewhere, or planted modes.

    \b
    latentlab import-latents --dataset mnist5k --out workspace/stores/pixels
    latentlab import-latents --latents X.npy --labels y.npy --out STORE --name sdvae
    latentlab import-latents --planted modes=8,dim=16,n=4000,seed=0 --out workspace/stores/planted8
    """
    from latentlab.extract import import_arrays, import_pixels
    from latentlab.planted import write_planted

    if sum(x is not None for x in (dataset, latents_path, planted)) != 1:
        raise LatentlabError("give exactly one of --dataset, --latents or --planted")
    if labels_path is not None and latents_path is None:
        raise LatentlabError("--labels goes with --latents; --dataset and --planted store their own labels")
    if planted is not None:
        stores = write_planted(planted, out, name=name)
    elif dataset is not None:
        stores = import_pixels(dataset, out, name=name or "pixels")
    else:
        stores = {split or "train": import_arrays(latents_path, labels_path, out, name=name, split=split)}
    summary = {"out": out, "stores": {s: {"path": str(st.path), "count": len(st), "sample_shape": st.sample_shape,
                                          "name": st.name} for s, st in stores.items()}}
    emit(summary, as_json, lambda s: "\n".join(
        f"wrote {v['path']}: {v['count']} latents of shape {tuple(v['sample_shape'])}" for v in s["stores"].values()))


@cli.command("datasets")
@json_option
def datasets_cmd(as_json):
    """List the registered datasets."""
    summary = {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in sorted(DATASETS.items())}
    emit(summary, as_json, lambda s: "\n".join(f"{k:12s} {v}" for k, v in s.items()))
