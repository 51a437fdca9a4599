"""1D-token ViT tokenizers: AE, KL-VAE, VA-VAE-style aligned VAE and MAETok (at the bottom).

All kinds share one design, so the comparison is fair:
  encoder  patches (2D RoPE + fixed sin-cos positions) + T learnable latent tokens -> transformer -> the latent tokens -> (B, T, C)
  decoder  latents -> width D, plus a learnable mask token at every patch position (2D RoPE)
           -> transformer -> the patch positions -> pixels (B, C, H, W)
Interface: `encode(x) -> posterior` with `.mode()` / `.sample(generator)` of shape (B, T, C);
`decode(z) -> images` in [-1, 1]; `losses(x, generator, step) -> dict` (also `forward`), with the
total under "loss". The encoder's parameters sit under `encoder.`, the pixel decoder's under `decoder.`.

Size presets (`SIZES`) go from "tiny" (CPU, 32 px) to "B" (ViT-B, patch 16, 128 tokens x 32 channels
at 256 px). The patch size follows the dataset: the preset's patch grid is kept (patch = image / grid,
at least 2), unless `patch_size` is given. `training.load_tokenizer(run)` rebuilds a trained model from its run.
Every kind has two training-only switches, off by default: `latent_noise` and `scale_equivariance` (`regularizers`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentlab.config import from_dict
from latentlab.tokenizers.blocks import PatchEmbed, Transformer, rope_2d, sincos_2d, unpatchify
from latentlab.tokenizers.losses import (DeterministicPosterior, DiagonalGaussian, PatchDiscriminator, adaptive_weight,
                                         hinge_d_loss, hinge_g_loss, load_perceptual, masked_mse,
                                         reconstruction_loss, vf_loss)
from latentlab.tokenizers.config import TokenizerConfig
from latentlab.tokenizers.regularizers import corrupt_latents, downsample_images, downsample_tokens, random_mask
from latentlab.tokenizers.targets import make_target

class Encoder(nn.Module):
    """Patch tokens (+ optional mask token) and latent tokens through a transformer -> (B, T, out_dim)."""

    def __init__(self, cfg: TokenizerConfig, out_dim: int, use_mask_token: bool = False):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.channels, cfg.width, cfg.patch_size)
        self.latent_tokens = nn.Parameter(0.02 * torch.randn(cfg.num_tokens, cfg.width)) if cfg.learnable_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.width)) if use_mask_token else None
        self.transformer = Transformer(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio)
        self.register_buffer("pos", sincos_2d(cfg.width, cfg.grid, cfg.grid), persistent=False)  # (N, D)
        self.out = nn.Linear(cfg.width, out_dim)  # the encoder's last layer (adaptive weights use it)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embeddings (B, N, D); where mask (B, N) is True they are replaced by the mask token."""
        tokens = self.patch_embed(x)  # (B, N, D)
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        return tokens

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        tokens = self.embed(x, mask) + self.pos.to(x.dtype)  # (B, N, D), positions also on mask tokens
        b, n, _ = tokens.shape
        if self.latent_tokens is not None:
            seq = torch.cat([tokens, self.latent_tokens.expand(b, -1, -1).to(tokens.dtype)], 1)  # (B, N+T, D)
            rope = rope_2d(cfg.grid, cfg.grid, cfg.width // cfg.heads, cfg.rope_base, cfg.num_tokens, x.device)
            h = self.transformer(seq, rope)[:, n:]  # (B, T, D)
        else:  # image tokens: pool the patch tokens down to T latents
            rope = rope_2d(cfg.grid, cfg.grid, cfg.width // cfg.heads, cfg.rope_base, 0, x.device)
            h = self.transformer(tokens, rope)  # (B, N, D)
            h = F.adaptive_avg_pool1d(h.transpose(1, 2), cfg.num_tokens).transpose(1, 2)  # (B, T, D)
        return self.out(h)  # (B, T, out_dim)


class Decoder(nn.Module):
    """Latent tokens + a learnable mask token at each patch position -> per-patch outputs (B, N, out_dim)."""

    def __init__(self, cfg: TokenizerConfig, out_dim: int, width: int, depth: int):
        super().__init__()
        self.cfg, self.width = cfg, width
        self.embed = nn.Linear(cfg.token_dim, width)
        self.token_pos = nn.Parameter(0.02 * torch.randn(cfg.num_tokens, width))
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.transformer = Transformer(width, depth, cfg.heads, cfg.mlp_ratio)
        self.register_buffer("pos", sincos_2d(width, cfg.grid, cfg.grid), persistent=False)  # (N, W)
        self.out = nn.Linear(width, out_dim)  # the decoder's last layer

    def forward(self, z: torch.Tensor, half: bool = False) -> torch.Tensor:
        """Latents (B, T, C) -> (B, N, out_dim); `half`: pooled latents (B, T/4, C) -> the half-resolution grid."""
        cfg = self.cfg
        g, token_pos, pos = cfg.grid, self.token_pos, self.pos
        step, offset = 1.0, 0.0
        if half:  # coarse cells at the centres of 2x2 fine cells; token positions pooled like the tokens
            g, step, offset = cfg.grid // 2, 2.0, 0.5
            token_pos = downsample_tokens(self.token_pos[None])[0]  # (T/4, W)
            pos = sincos_2d(self.width, g, g, step, offset).to(z.device)  # (N/4, W)
        b, n = z.shape[0], g * g
        lat = self.embed(z) + token_pos.to(z.dtype)  # (B, T, W)
        queries = (self.mask_token + pos).expand(b, n, -1).to(lat.dtype)  # (B, N, W)
        seq = torch.cat([queries, lat], 1)  # (B, N+T, W)
        rope = rope_2d(g, g, self.width // cfg.heads, cfg.rope_base, z.shape[1], z.device, step, offset)
        return self.out(self.transformer(seq, rope)[:, :n])  # (B, N, out_dim)


class AETokenizer(nn.Module):
    """Plain autoencoder with deterministic latents; base class of every kind."""

    arch = "ae"
    posterior_channels = 1  # latent values per channel the encoder emits (2 for mean + logvar)
    uses_mask_token = False

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, cfg.token_dim * self.posterior_channels, self.uses_mask_token)
        self.decoder = Decoder(cfg, cfg.patch_size**2 * cfg.channels, cfg.dec_width, cfg.dec_depth)
        self.discriminator = PatchDiscriminator(cfg.channels) if cfg.gan_weight > 0 else None
        self._perceptual = [load_perceptual(cfg.perceptual)] if cfg.perceptual else []  # not in the state dict
        if cfg.stage == "decoder-finetune":
            self.freeze_encoder()

    def freeze_encoder(self) -> None:
        """Freeze everything but the pixel decoder (and the discriminator): the decoder fine-tune stage."""
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("decoder.") or name.startswith("discriminator."))

    # ------------------------------------------------------------ interface
    def posterior(self, h: torch.Tensor):
        """Encoder output (B, T, C * posterior_channels) -> posterior."""
        return DeterministicPosterior(h)

    def encode(self, x: torch.Tensor):
        """Images (B, C, H, W) in [-1, 1] -> posterior over latents (B, T, C)."""
        return self.posterior(self.encoder(x))

    def decode_raw(self, z: torch.Tensor, half: bool = False) -> torch.Tensor:
        """Latents (B, T, C) -> unclamped images (B, C, H, W); `half`: `downsample_latents(z)` -> (B, C, H/2, W/2)."""
        cfg = self.cfg
        size = cfg.image_size // 2 if half else cfg.image_size
        return unpatchify(self.decoder(z, half), cfg.patch_size, cfg.channels, size, size)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, T, C) -> images (B, C, H, W) clamped to [-1, 1]."""
        return self.decode_raw(z).clamp(-1.0, 1.0)

    def downsample_latents(self, z: torch.Tensor) -> torch.Tensor:
        """down2 of token latents (B, T, C) -> (B, T/4, C), which `decode_raw(., half=True)` reads."""
        return downsample_tokens(z)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.cfg.num_tokens, self.cfg.token_dim)

    # ------------------------------------------------------------ losses
    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, step: int = 0) -> dict:
        """Loss terms for a batch of images (B, C, H, W); the total is under "loss"."""
        if self.cfg.stage == "decoder-finetune":
            with torch.no_grad():
                z = self.encode(x).sample(generator)
            return self.decoder_terms(x, z, generator, step)
        return self.train_terms(x, generator, step)

    losses = forward

    def train_terms(self, x: torch.Tensor, generator: torch.Generator | None, step: int) -> dict:
        """The kind's full objective (subclasses extend it)."""
        post = self.encode(x)
        return self.decoder_terms(x, post.sample(generator), generator, step)

    def decoder_terms(self, x: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None, step: int) -> dict:
        """Pixel terms of decode(z), with the latent corruption and the scale-equivariance term when switched on."""
        cfg = self.cfg
        z_in = corrupt_latents(z, **cfg.latent_noise, generator=generator) if cfg.latent_noise else z
        terms = self.pixel_terms(x, self.decode_raw(z_in), step)
        if cfg.scale_equivariance > 0:
            x_half = self.decode_raw(self.downsample_latents(z), half=True)  # (B, C, H/2, W/2)
            se = reconstruction_loss(x_half.float(), downsample_images(x).float(), cfg.rec_loss)
            terms["scale_eq"] = se
            terms["loss"] = terms["loss"] + cfg.scale_equivariance * se
        return terms

    def pixel_terms(self, x: torch.Tensor, x_hat: torch.Tensor, step: int) -> dict:
        """Reconstruction (+ perceptual, + hinge GAN with adaptive weight) terms."""
        cfg = self.cfg
        rec = reconstruction_loss(x_hat.float(), x.float(), cfg.rec_loss)
        terms = {"rec": rec}
        total = rec
        if self._perceptual:
            net = self._perceptual[0].to(x.device)
            terms["perceptual"] = net(x_hat.float(), x.float()).mean()
            total = total + cfg.perceptual_weight * terms["perceptual"]
        if self.discriminator is not None:
            g = hinge_g_loss(self.discriminator, x_hat)
            w = adaptive_weight(total, g, self.decoder.out.weight) * cfg.gan_weight * float(step >= cfg.gan_start)
            d = hinge_d_loss(self.discriminator, x, x_hat)
            terms.update(gan=g, gan_weight=w, disc=d)
            total = total + w * g + d
        return {"loss": total, **terms}


class VAETokenizer(AETokenizer):
    """KL-VAE: a diagonal-Gaussian posterior and a KL term weighted by `kl_weight`."""

    arch = "vae"
    posterior_channels = 2

    def posterior(self, h: torch.Tensor):
        mean, logvar = h.float().chunk(2, dim=-1)  # (B, T, C) each
        return DiagonalGaussian(mean, logvar)

    def train_terms(self, x, generator, step):
        post = self.encode(x)
        terms = self.decoder_terms(x, post.sample(generator), generator, step)
        kl = post.kl()
        terms["loss"] = terms["loss"] + self.cfg.kl_weight * kl
        terms["kl"] = kl
        return terms


class VAVAETokenizer(VAETokenizer):
    """KL-VAE + VA-VAE alignment of projected latents to teacher features (HOG by default)."""

    arch = "vavae"

    def __init__(self, cfg: TokenizerConfig):
        super().__init__(cfg)
        target = make_target(cfg.teacher, cfg.patch_size, cfg.channels, cfg.image_size)
        self._target = [target]  # frozen teacher: not in the state dict
        self.projector = Decoder(cfg, target.dim, cfg.dec_width, 1)  # latents -> teacher features per patch
        if cfg.stage == "decoder-finetune":
            self.freeze_encoder()

    def train_terms(self, x, generator, step):
        cfg = self.cfg
        post = self.encode(x)
        z = post.sample(generator)
        terms = self.decoder_terms(x, z, generator, step)
        kl = post.kl()
        with torch.no_grad():
            f = self._target[0].to(x.device)(x)  # (B, N, Dt)
        mcos, mdms = vf_loss(self.projector(z), f, cfg.align_m1, cfg.align_m2)
        vf = mcos + mdms
        w = adaptive_weight(terms["rec"], vf, self.encoder.out.weight) if cfg.align_adaptive else vf.new_ones(())
        terms["loss"] = terms["loss"] + cfg.kl_weight * kl + cfg.align_weight * w * vf
        terms.update(kl=kl, vf_mcos=mcos, vf_mdms=mdms, vf_weight=w)
        return terms


# ---------------------------------------------------------------- MAETok
# MAETok: a masked-autoencoder tokenizer with learnable latent tokens and auxiliary decoders.
#
# Training (stage "full"): a mask ratio r ~ U[mask_min, mask_max] is drawn per batch; round(r * N)
# random patch embeddings per image are replaced by a learnable mask token in the encoder. The pixel
# decoder reconstructs the whole image from the latent tokens only. Shallow auxiliary decoders (one
# per target: HOG by default, pixels, or a teacher) predict their targets from the latent tokens,
# with the loss on masked positions only. Stage "decoder-finetune" freezes the encoder, turns
# masking off and trains the pixel decoder alone.
#
# Ablation switches (TokenizerConfig): `mask` (on/off), `learnable_tokens` (learnable latent tokens
# vs latents pooled from the image tokens), `aux_targets` (which auxiliary decoders, possibly none).


class MAETokTokenizer(AETokenizer):
    """Deterministic 1D-token AE trained with masking and auxiliary target decoders."""

    arch = "maetok"
    uses_mask_token = True

    def __init__(self, cfg: TokenizerConfig):
        super().__init__(cfg)
        targets = [make_target(t, cfg.patch_size, cfg.channels, cfg.image_size) for t in cfg.aux_targets]
        self._targets = targets  # frozen: not in the state dict
        self.aux_decoders = nn.ModuleDict({t.name.replace(":", "_").replace(".", "_"): Decoder(cfg, t.dim, cfg.dec_width, cfg.aux_depth)
                                           for t in targets})
        if not cfg.mask:  # without masking the mask token is never used; keep DDP free of unused parameters
            self.encoder.mask_token.requires_grad_(False)
        if cfg.stage == "decoder-finetune":
            self.freeze_encoder()

    def train_terms(self, x, generator, step):
        cfg = self.cfg
        b, n = x.shape[0], cfg.grid * cfg.grid
        if cfg.mask:
            mask, ratio = random_mask(b, n, cfg.mask_min, cfg.mask_max, generator, x.device)
        else:
            mask, ratio = torch.zeros(b, n, dtype=torch.bool, device=x.device), 0.0
        z = self.encoder(x, mask if cfg.mask else None)  # (B, T, C)
        terms = self.decoder_terms(x, z, generator, step)
        # without masking the auxiliary targets are predicted at every position (MAE degenerates to AE)
        where = mask if cfg.mask else torch.ones_like(mask)
        for (key, dec), target in zip(self.aux_decoders.items(), self._targets):
            with torch.no_grad():
                tgt = target.to(x.device)(x)  # (B, N, Dt)
            aux = masked_mse(dec(z).float(), tgt.float(), where)
            terms[f"aux_{key}"] = aux
            terms["loss"] = terms["loss"] + cfg.aux_weight * aux
        terms["mask_ratio"] = torch.tensor(ratio, device=x.device)
        return terms


def build_tokenizer(cfg: TokenizerConfig | dict) -> AETokenizer:
    """Instantiate the tokenizer described by `cfg` (a TokenizerConfig or its dict)."""
    if isinstance(cfg, dict):
        cfg = from_dict(TokenizerConfig, cfg, "tokenizer config")
    return TOKENIZERS[cfg.arch](cfg)


TOKENIZERS: dict[str, type[AETokenizer]] = {"ae": AETokenizer, "vae": VAETokenizer, "vavae": VAVAETokenizer,
                                          "maetok": MAETokTokenizer}
