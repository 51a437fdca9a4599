"""Analyse your own tokenizer with latentlab: a factory that wraps your nn.Module, nothing reimplemented.

    latentlab probe --tokenizer mine=python:examples/own_tokenizer.py:build:checkpoint=ae.safetensors \
        --dataset digits --out probe-mine
    latentlab eval-tokenizer --tokenizer python:examples/own_tokenizer.py:build:checkpoint=ae.safetensors \
        --dataset digits --out eval-mine

In a study config:  mine: {arch: python, factory: examples/own_tokenizer.py:build,
                           kwargs: {checkpoint: ae.safetensors}}

`TinyConvAE` stands for your model (the MAETok authors' release, a VA-VAE, a TiTok: any module
with an encoder and a decoder). The wrapper below is all latentlab needs.
"""

import torch.nn as nn
from safetensors.torch import load_file


class TinyConvAE(nn.Module):
    """Your model: a small convolutional autoencoder, (B, C, H, W) -> (B, L, H/2, W/2) -> (B, C, H, W)."""

    def __init__(self, channels: int = 1, latent_channels: int = 4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(channels, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, latent_channels, 3, 1, 1))
        self.decoder = nn.Sequential(nn.ConvTranspose2d(latent_channels, 16, 4, 2, 1), nn.SiLU(),
                                     nn.Conv2d(16, channels, 3, 1, 1), nn.Tanh())


# ---------------------------------------------------------------- the wrapper latentlab calls

class Wrapped(nn.Module):
    """encode: images (B, C, H, W) in [-1, 1] -> latents (B, L, h, w); decode: the way back."""

    def __init__(self, model: nn.Module, channels: int):
        super().__init__()
        self.model, self.channels = model, channels   # `channels`: the images it expects (checked)

    def encode(self, images):
        return self.model.encoder(images)              # a tensor, or an object with .mode()

    def decode(self, latents):                         # optional: without it, no reconstruction or gFD
        return self.model.decoder(latents)


def build(checkpoint: str | None = None, channels: int = 1, latent_channels: int = 4) -> Wrapped:
    """latentlab calls this with the spec's ARG=VALUE pairs as keyword arguments."""
    model = TinyConvAE(channels, latent_channels)
    if checkpoint:
        model.load_state_dict(load_file(checkpoint))
    return Wrapped(model.eval(), channels)
