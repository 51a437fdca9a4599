"""Metrics: Fréchet distances with pluggable feature extractors, PSNR/SSIM, rFID and gFID.

    fid.py         streamed float64 statistics, `frechet_distance`, `inception_score`
    extractors.py  registry: inception (FID), dinov2 (FD-DINOv2), lenet (FD-lenet), torchscript:PATH
    lenet.py       the offline lenet classifier, trained once per dataset and cached in the workspace
    stats.py       feature statistics of image streams; cached real-data statistics
    images.py      PNG folders and images.npz as checked, streamed image sets
    recon.py       PSNR and Gaussian-window SSIM in torch (skimage conventions)
    evaluate.py    pipelines behind `latentlab fid`, `eval-tokenizer` and `eval-sit`
    config.py      their settings (`MetricsConfig`), torch-free for the CLI

A distance is called FID only when the extractor is Inception-v3; everything else is
labelled by its extractor ("fd_lenet", "rfd_lenet", "gfd_lenet", "fd_dinov2", ...).
Import the submodules directly (this package imports nothing, so `metrics.config` stays torch-free).
"""
