"""The two training-only switches of every tokenizer: l-DeTok latent corruption and scale equivariance."""

import json

import pytest
import torch

from latentlab.errors import LatentlabError
from latentlab.config import from_dict
from latentlab.tokenizers.models import TOKENIZERS, TokenizerConfig, build_tokenizer
from latentlab.tokenizers.regularizers import corrupt_latents, downsample_images, downsample_tokens
from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer

SMALL = dict(image_size=8, channels=1, width=32, depth=1, dec_width=32, dec_depth=1, heads=2, num_tokens=4, token_dim=4,
             aux_targets=["pixels"], teacher="pixels")


def _x(n=4, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("arch", sorted(TOKENIZERS))
def test_off_by_default_and_unchanged(arch):
    """Defaults: no corruption, no extra term, no extra random draws: the loss is the plain objective."""
    cfg = TokenizerConfig(arch=arch, **SMALL)
    assert cfg.latent_noise is None and cfg.scale_equivariance == 0.0
    torch.manual_seed(0)
    m = build_tokenizer(cfg)
    x = _x()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    terms = m.losses(x, generator=g1)
    assert "scale_eq" not in terms
    # the objective as it was before the switches existed: decode the latents as they are
    if arch == "maetok":
        from latentlab.tokenizers.models import random_mask
        mask, _ = random_mask(4, cfg.grid ** 2, cfg.mask_min, cfg.mask_max, g2)
        z = m.encoder(x, mask)
    else:
        z = m.encode(x).sample(g2)
    rec = (m.decode_raw(z) - x).pow(2).mean()
    assert torch.allclose(terms["rec"], rec, rtol=0, atol=1e-7)
    assert torch.equal(g1.get_state(), g2.get_state())  # nothing else drawn from the generator


@pytest.mark.parametrize("arch", sorted(TOKENIZERS))
def test_forward_backward_with_each_switch(arch):
    for extra in ({"latent_noise": {"max_tau": 0.8, "mask_ratio": 0.5}}, {"scale_equivariance": 0.5},
                  {"latent_noise": {"max_tau": 0.3}, "scale_equivariance": 1.0}):
        torch.manual_seed(0)
        m = build_tokenizer({"arch": arch, **SMALL, **extra})
        terms = m.losses(_x(), generator=torch.Generator().manual_seed(1))
        assert all(torch.isfinite(v) for v in terms.values())
        assert ("scale_eq" in terms) == ("scale_equivariance" in extra)
        terms["loss"].backward()
        enc = [p.grad for n, p in m.named_parameters() if n.startswith("encoder.out")]
        dec = [p.grad for n, p in m.named_parameters() if n.startswith("decoder.out")]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in enc + dec)


def test_scale_equivariance_term_is_the_half_resolution_reconstruction():
    torch.manual_seed(0)
    m = build_tokenizer({"arch": "ae", **SMALL, "scale_equivariance": 2.0})
    x = _x()
    terms = m.losses(x)
    z = m.encode(x).mode()
    half = m.decode_raw(m.downsample_latents(z), half=True)
    assert half.shape == (4, 1, 4, 4)
    want = (half - downsample_images(x)).pow(2).mean()
    assert torch.allclose(terms["scale_eq"], want, atol=1e-7)
    assert torch.allclose(terms["loss"], terms["rec"] + 2.0 * want, atol=1e-6)


def test_downsampling_operators():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(downsample_images(x)[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    z = torch.randn(2, 8, 4)
    d = downsample_tokens(z)
    assert torch.allclose(d[:, 1], z[:, 4:8].mean(1))
    # pooling commutes with the decoder's affine token embedding, so the pooled tokens the coarse
    # decoder reads are the pooled fine-decoder inputs
    m = build_tokenizer({"arch": "ae", **SMALL, "num_tokens": 8})
    dec = m.decoder
    fine = dec.embed(z) + dec.token_pos
    coarse = dec.embed(d) + downsample_tokens(dec.token_pos[None])[0]
    assert torch.allclose(downsample_tokens(fine), coarse, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        downsample_tokens(torch.randn(1, 6, 2))


def test_corrupt_latents_in_normalised_units():
    g = torch.Generator().manual_seed(0)
    z = 3.0 + 5.0 * torch.randn(64, 16, 4, generator=g)
    assert torch.allclose(corrupt_latents(z, 0.0, 0.0, g), z, atol=1e-5)  # both off: the identity
    out = corrupt_latents(z, 0.0, 0.9, g)  # masking only: masked tokens sit at the batch mean of their channel
    masked = (out - z).abs().sum(-1) > 1e-4  # (B, T)
    counts = masked.sum(1)
    assert (counts == counts[0]).all() and 0 < counts[0] <= round(0.9 * 16)
    mean = z.mean((0, 1))
    assert torch.allclose(out[masked], mean.expand(int(masked.sum()), -1), atol=1e-4)
    # noise only: per sample (1 - tau) z_n + tau eps with tau <= max_tau, so the residual is bounded
    noisy = corrupt_latents(z, 0.25, 0.0, g)
    std = z.std((0, 1))
    zn, nn_ = (z - mean) / std, (noisy - mean) / std
    resid = (nn_ - zn).flatten(1)
    assert resid.std(1).max() < 0.25 * 1.6 and resid.std(1).min() < resid.std(1).max()


@pytest.mark.parametrize("bad, msg", [({"latent_noise": {"tau": 0.5}}, "unknown key 'tau'"),
                                      ({"latent_noise": {"max_tau": 1.5}}, "max_tau must be in"),
                                      ({"latent_noise": {"mask_ratio": 1.0}}, "mask_ratio must be in"),
                                      ({"latent_noise": 0.3}, "must be a mapping"),
                                      ({"scale_equivariance": -1}, ">= 0"),
                                      ({"scale_equivariance": 1.0, "num_tokens": 6}, "multiple of 4")])
def test_invalid_switches_are_one_line_errors(bad, msg):
    with pytest.raises(LatentlabError, match=msg):
        from_dict(TokenizerConfig, {"arch": "ae", **{**SMALL, **bad}}, "model config")


def test_recorded_in_the_run_config(tmp_path):
    model = {k: v for k, v in SMALL.items() if k not in ("image_size", "channels", "aux_targets", "teacher")}  # not an ae's
    model.update(latent_noise={"max_tau": 0.5}, scale_equivariance=0.25)
    cfg = TokenizerRunConfig(arch="ae", dataset="digits", eval_images=16, model=model,
                             train=dict(steps=2, batch_size=8, warmup_steps=1, device="cpu", log_every=1,
                                        eval_every=1000, ckpt_every=1000))
    train_tokenizer(cfg, tmp_path / "run")
    rc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert rc["model"]["latent_noise"] == {"max_tau": 0.5, "mask_ratio": 0.0}
    assert rc["model"]["scale_equivariance"] == 0.25
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("scale_eq" in rec for rec in logged)
