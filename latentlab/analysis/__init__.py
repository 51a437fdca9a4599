"""Latent-space analyses (PCA, Gaussian mixtures, ...); import the submodules directly."""
