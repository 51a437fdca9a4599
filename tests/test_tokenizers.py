"""Tokenizers: interface for every kind, MAETok masking and auxiliary loss, HOG, RoPE, sin-cos tables, VA-VAE loss,
training stages."""

import json

import numpy as np
import pytest
import torch

from latentlab.io import load_safetensors
from latentlab.tokenizers.blocks import apply_rope, rope_2d, sincos_1d, sincos_2d
from latentlab.tokenizers.losses import masked_mse, vf_loss
from latentlab.tokenizers.models import random_mask
from latentlab.tokenizers.targets import HOGTarget, hog_cells, sobel
from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer
from latentlab.tokenizers.models import TOKENIZERS, build_tokenizer

SMALL = dict(image_size=8, channels=1, width=32, depth=1, dec_width=32, dec_depth=1, heads=2, num_tokens=4, token_dim=4)


def _run_cfg(arch="ae", steps=4, **train):
    return TokenizerRunConfig(arch=arch, dataset="digits", eval_images=32, model={k: v for k, v in SMALL.items()
                                                                              if k not in ("image_size", "channels")},
                              train=dict(steps=steps, batch_size=8, lr=3e-3, warmup_steps=2, device="cpu",
                                         log_every=1, eval_every=1000, ckpt_every=1000, **train))


@pytest.mark.parametrize("arch", sorted(TOKENIZERS))
def test_interface_shapes_for_every_kind(arch):
    torch.manual_seed(0)
    m = build_tokenizer({"arch": arch, **SMALL})
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    post = m.encode(x)
    g = torch.Generator().manual_seed(0)
    assert post.mode().shape == (3, 4, 4) and post.sample(g).shape == (3, 4, 4)
    assert (arch in ("vae", "vavae")) == (not torch.equal(post.sample(g), post.mode()))
    y = m.decode(post.mode())
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    terms = m.losses(x, generator=g)
    assert {"loss", "rec"} <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    keys = m.state_dict().keys()
    assert any(k.startswith("encoder.") for k in keys) and any(k.startswith("decoder.") for k in keys)
    assert all(k.split(".")[0] in ("encoder", "decoder", "projector", "aux_decoders") for k in keys)


def test_mask_ratio_range_and_mask_token_replacement():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        mask, r = random_mask(4, 64, 0.4, 0.6, g)
        assert 0.4 <= r <= 0.6
        assert (mask.sum(1) == round(r * 64)).all()
    m = build_tokenizer({"arch": "maetok", **SMALL})
    with torch.no_grad():
        m.encoder.mask_token.normal_()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    mask, _ = random_mask(2, 16, 0.4, 0.6, g)
    emb = m.encoder.embed(x, mask)  # (B, N, D)
    plain = m.encoder.patch_embed(x)
    assert torch.equal(emb[mask], m.encoder.mask_token[0, 0].expand(int(mask.sum()), -1))
    assert torch.equal(emb[~mask], plain[~mask])


def test_auxiliary_loss_ignores_unmasked_positions():
    g = torch.Generator().manual_seed(2)
    pred, tgt = torch.randn(2, 10, 3, generator=g), torch.randn(2, 10, 3, generator=g)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, :4] = True
    ref = (pred[mask] - tgt[mask]).pow(2).mean()
    assert torch.allclose(masked_mse(pred, tgt, mask), ref)
    pred2 = pred.clone()
    pred2[~mask] += 100.0
    assert torch.equal(masked_mse(pred2, tgt, mask), masked_mse(pred, tgt, mask))
    pred3 = pred.clone()
    pred3[mask] += 1.0
    assert masked_mse(pred3, tgt, mask) != masked_mse(pred, tgt, mask)


def test_hog_constant_image_zero_and_unit_norm_cells():
    const = torch.full((2, 3, 16, 16), 0.3)
    gx, gy = sobel(const)
    assert torch.equal(gx, torch.zeros_like(gx)) and torch.equal(gy, torch.zeros_like(gy))
    assert torch.equal(hog_cells(const, 8), torch.zeros(2, 9, 2, 2))
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    cells = hog_cells(x, 4)
    assert torch.allclose(cells.norm(dim=1), torch.ones(2, 4, 4), atol=1e-5)
    # a vertical edge has a horizontal gradient: orientation 0 -> bins 0 and 8 (centred at 10 and 170 degrees)
    edge = -torch.ones(1, 1, 16, 16)
    edge[..., 8:] = 1.0
    h = hog_cells(edge, 8)[0, :, 0, 0]
    assert h[[0, 8]].sum() > 0.99 * h.sum() and torch.allclose(h[0], h[8])
    t = HOGTarget(patch=4, channels=1)
    assert t(x).shape == (2, 16, 9) and t.dim == 9 and HOGTarget(16, 1)(torch.zeros(1, 1, 32, 32)).shape == (1, 4, 36)


def test_rope_scores_depend_only_on_relative_offsets():
    gh = gw = 5
    hd = 16
    cos, sin = rope_2d(gh, gw, hd, base=10.0)
    g = torch.Generator().manual_seed(4)
    q0, k0 = torch.randn(hd, generator=g), torch.randn(hd, generator=g)
    q = apply_rope(q0.expand(1, 1, gh * gw, hd), cos, sin)[0, 0]  # (L, hd)
    k = apply_rope(k0.expand(1, 1, gh * gw, hd), cos, sin)[0, 0]
    s = q @ k.T  # (L, L)
    pos = [(i, j) for i in range(gh) for j in range(gw)]
    idx = {p: n for n, p in enumerate(pos)}
    for (a, b) in [((0, 0), (1, 2)), ((2, 1), (4, 0)), ((1, 3), (1, 1))]:
        d = (b[0] - a[0], b[1] - a[1])
        vals = [s[idx[p], idx[(p[0] + d[0], p[1] + d[1])]] for p in pos
                if (p[0] + d[0], p[1] + d[1]) in idx]
        assert len(vals) > 1 and torch.allclose(torch.stack(vals), vals[0].expand(len(vals)), atol=1e-5)
    assert not torch.allclose(s[idx[(0, 0)], idx[(0, 1)]], s[idx[(0, 0)], idx[(1, 0)]])  # rows != columns
    assert torch.allclose(apply_rope(q0.expand(1, 1, 1, hd), *rope_2d(1, 1, hd, n_extra=0))[0, 0, 0], q0)


def test_vavae_loss_zero_within_margins():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(2, 9, 12, generator=g)
    mcos, mdms = vf_loss(f, f, 0.5, 0.25)
    assert mcos == 0 and mdms == 0
    near = f + 0.05 * torch.randn(2, 9, 12, generator=g)  # cos ~ 0.999, distance-matrix gap << 0.25
    assert sum(vf_loss(near, f, 0.5, 0.25)) == 0
    mcos, mdms = vf_loss(-f, f, 0.5, 0.25)
    assert torch.allclose(mcos, torch.tensor(1.5)) and mdms == 0  # anti-aligned: ReLU(1 - 0.5 + 1); same Gram matrix
    mcos, mdms = vf_loss(torch.randn(2, 9, 12, generator=g), f, 0.0, 0.0)
    assert mcos > 0 and mdms > 0


def test_short_training_lowers_the_loss(tmp_path):
    arch = "maetok"
    s = train_tokenizer(_run_cfg(arch, steps=20), tmp_path / "run")
    rec = [json.loads(l)["rec"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"rec"' in l]
    assert np.mean(rec[-4:]) < 0.8 * np.mean(rec[:4])
    assert s["teacher"] == "hog" and s["psnr"] > 0
    assert (tmp_path / "run" / "samples" / "recon-000020.png").is_file()


def test_maetok_resume_equals_uninterrupted(tmp_path):
    # steps-dependent schedules (cosine lr, the EMA half-life cap) are off: only then may `steps` grow on resume
    fixed = dict(schedule="constant", ema_half_life=None)
    cfg = _run_cfg("maetok", steps=6, **fixed)
    train_tokenizer(cfg, tmp_path / "full")
    train_tokenizer(_run_cfg("maetok", steps=3, **fixed), tmp_path / "cut")
    train_tokenizer(cfg, tmp_path / "cut", resume=True)
    a, b = load_safetensors(tmp_path / "full" / "ema.safetensors"), load_safetensors(tmp_path / "cut" / "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_decoder_finetune_freezes_encoder_bit_identically(tmp_path):
    train_tokenizer(_run_cfg("maetok", steps=3), tmp_path / "stage1")
    cfg = _run_cfg(steps=3)
    cfg.stage, cfg.init = "decoder-finetune", str(tmp_path / "stage1")
    s = train_tokenizer(cfg, tmp_path / "stage2")
    assert s["stage"] == "decoder-finetune" and s["arch"] == "maetok"
    conf = json.loads((tmp_path / "stage2" / "config.json").read_text())
    assert conf["model"]["mask"] is False and conf["init"]["run"] == str(tmp_path / "stage1")
    init = load_safetensors(tmp_path / "stage1" / "ema.safetensors")
    for f in ("model.safetensors", "ema.safetensors"):
        new = load_safetensors(tmp_path / "stage2" / f)
        enc = [k for k in new if k.startswith("encoder.")]
        assert enc and all(torch.equal(new[k], init[k]) for k in enc)
        assert any(not torch.equal(new[k], init[k]) for k in new if k.startswith("decoder."))


def test_gan_and_perceptual_terms(tmp_path):
    from latentlab.tokenizers.losses import hinge_d_loss, hinge_g_loss

    class L1Net(torch.nn.Module):
        def forward(self, a, b):
            return (a - b).abs().flatten(1).mean(1)

    torch.jit.save(torch.jit.script(L1Net()), str(tmp_path / "perc.pt"))
    m = build_tokenizer({"arch": "ae", **SMALL, "gan_weight": 0.5, "perceptual": str(tmp_path / "perc.pt")})
    assert not any(k.startswith("_perceptual") for k in m.state_dict())
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    terms = m(x)
    assert {"gan", "disc", "gan_weight", "perceptual"} <= set(terms) and terms["gan_weight"] > 0
    with torch.no_grad():
        assert torch.allclose(terms["perceptual"], (m.decode_raw(m.encode(x).mode()) - x).abs().mean(), atol=1e-5)
    d = m.discriminator
    fake = torch.zeros(4, 1, 8, 8, requires_grad=True)
    hinge_g_loss(d, fake).backward()
    assert all(p.grad is None for p in d.parameters()) and fake.grad.abs().sum() > 0  # G loss never trains D
    hinge_d_loss(d, x, fake).backward()
    assert all(p.grad is not None for p in d.parameters())
    assert fake.grad.abs().sum() > 0  # unchanged from the G step: D loss sees a detached fake
    with pytest.raises(Exception, match="perceptual network not found"):
        build_tokenizer({"arch": "ae", **SMALL, "perceptual": str(tmp_path / "missing.pt")})


def test_torchscript_teacher_and_absent_teachers(tmp_path):
    from latentlab.errors import LatentlabError
    from latentlab.tokenizers.targets import make_target

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 16, stride=16)  # 224 px -> a 14 x 14 map of 5 features

        def forward(self, x):
            return self.conv(x)

    torch.jit.save(torch.jit.script(Net()), str(tmp_path / "t.pt"))
    t = make_target(f"torchscript:{tmp_path / 't.pt'}", patch=2, channels=1, image_size=8)
    assert t.dim == 5 and t(torch.zeros(3, 1, 8, 8)).shape == (3, 16, 5)
    m = build_tokenizer({"arch": "vavae", **SMALL, "teacher": f"torchscript:{tmp_path / 't.pt'}"})
    assert torch.isfinite(m(torch.rand(2, 1, 8, 8))["vf_mcos"])
    with pytest.raises(LatentlabError, match="torch.jit.save"):
        make_target(f"torchscript:{tmp_path / 'none.pt'}", 2, 1, 8)
    for spec in ("dinov2", "clip", "siglip:/nowhere/weights.bin"):
        with pytest.raises(LatentlabError, match="pip install|weights"):
            make_target(spec, 2, 1, 8)


def test_sincos_tables_against_formula():
    pos = np.arange(5)
    tab = sincos_1d(8, pos).numpy()
    for i in range(4):
        w = 1.0 / 10000 ** (i / 4)
        assert np.allclose(tab[:, i], np.sin(pos * w)) and np.allclose(tab[:, 4 + i], np.cos(pos * w))
    t2 = sincos_2d(8, 3, 4).numpy()
    assert t2.shape == (12, 8)
    # row half depends only on the row, column half only on the column
    assert np.allclose(t2[0, :4], t2[3, :4]) and np.allclose(t2[0, 4:], t2[4, 4:])
    assert len({tuple(r) for r in np.round(t2, 6)}) == 12
