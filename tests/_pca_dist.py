"""Worker for the 2-process gloo PCA test (a light module: spawned children import only this)."""

import os

import torch

from latentlab.analysis.pca import PCA


def fit_worker(r, world, port, x, out):
    """Fit a PCA on rank `r` of `world` gloo processes; rank 0 puts (spectrum, mean) on `out`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=r, world_size=world)
    try:
        p = PCA(None, batch_size=17).fit(x)
        if r == 0:
            out.put((p.all_explained_variance_, p.mean_))
    finally:
        torch.distributed.destroy_process_group()
