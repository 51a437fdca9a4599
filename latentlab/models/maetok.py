"""MAETok: a masked-autoencoder tokenizer with learnable latent tokens and auxiliary decoders.

Training (stage "full"): a mask ratio r ~ U[mask_min, mask_max] is drawn per batch; round(r * N)
random patch embeddings per image are replaced by a learnable mask token in the encoder. The pixel
decoder reconstructs the whole image from the latent tokens only. Shallow auxiliary decoders (one
per target: HOG by default, pixels, or a teacher) predict their targets from the latent tokens,
with the loss on masked positions only. Stage "decoder-finetune" freezes the encoder, turns
masking off and trains the pixel decoder alone.

Ablation switches (TokenizerConfig): `mask` (on/off), `learnable_tokens` (learnable latent tokens
vs latents pooled from the image tokens), `aux_targets` (which auxiliary decoders, possibly none).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from latentlab.models.losses import masked_mse
from latentlab.models.targets import make_target
from latentlab.models.tokenizers import TOKENIZERS, AETokenizer, Decoder, TokenizerConfig


def random_mask(b: int, n: int, lo: float, hi: float, generator: torch.Generator | None = None,
                device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """A (B, N) bool mask with round(r * N) True per row, r ~ U[lo, hi] drawn once per batch; returns (mask, r)."""
    r = lo + (hi - lo) * float(torch.rand((), generator=generator, device=device))
    k = int(round(r * n))
    noise = torch.rand(b, n, generator=generator, device=device)  # (B, N)
    ranks = noise.argsort(1).argsort(1)  # rank of each position within its row
    return ranks < k, r


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
        terms = self.pixel_terms(x, self.decode_raw(z), step)
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


TOKENIZERS["maetok"] = MAETokTokenizer
