"""The SiT model: shapes for both layouts, adaLN-Zero init, presets (sin-cos tables: test_tokenizers)."""

import pytest
import torch

from latentlab.errors import LatentlabError
from latentlab.sit.model import SIT_MODELS, SiT, SiTConfig, sit_config, token_patch_for


def test_token_and_grid_shapes_and_zero_init():
    torch.manual_seed(0)
    tok = SiT(SiTConfig(depth=2, hidden_size=32, num_heads=4, sample_shape=(16, 8), num_classes=5))
    grid = SiT(SiTConfig(depth=2, hidden_size=32, num_heads=4, sample_shape=(4, 8, 6), layout="grid",
                         patch_size=2, num_classes=5))
    for m, shape in ((tok, (16, 8)), (grid, (4, 8, 6))):
        x = torch.randn(3, *shape)
        v = m(x, torch.rand(3), torch.tensor([0, 4, 5]))
        assert v.shape == (3, *shape)
        assert torch.equal(v, torch.zeros_like(v))  # adaLN-Zero + zero output layer
        for blk in m.blocks:
            assert not blk.adaLN[-1].weight.any() and not blk.adaLN[-1].bias.any()
        assert not m.final.linear.weight.any() and not m.final.adaLN[-1].weight.any()
        # one step of training makes it non-trivial and every parameter gets a gradient through the loss
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        (m(x, torch.rand(3), torch.tensor([0, 1, 2])) - x).pow(2).mean().backward()
        opt.step()
        assert m(x, torch.rand(3), torch.tensor([0, 1, 2])).abs().sum() > 0


def test_grid_patchify_roundtrip():
    m = SiT(SiTConfig(depth=1, hidden_size=16, num_heads=2, sample_shape=(3, 4, 6), layout="grid", patch_size=2))
    x = torch.randn(2, 3, 4, 6)
    # patch (i, j) holds x[:, :, 2i:2i+2, 2j:2j+2] as (p, p, C); unembed must put it back
    p = 2
    patches = torch.stack([x[:, :, 2 * i:2 * i + p, 2 * j:2 * j + p].permute(0, 2, 3, 1).reshape(2, -1)
                           for i in range(2) for j in range(3)], 1)  # (N, h*w, p*p*C)
    assert torch.equal(m.embed.unembed(patches), x)


def test_presets_match_paper_parameter_counts():
    # DiT/SiT paper (256 px, 32x32x4 latents, patch 2, 1000 classes): S 33M, B 130M, L 458M, XL 675M.
    # Our velocity-only head outputs 4 channels instead of DiT's 8 (learned sigma): <0.1% fewer.
    paper = {"SiT-S": 33e6, "SiT-B": 130e6, "SiT-L": 458e6, "SiT-XL": 675e6}
    for name, ref in paper.items():
        cfg = sit_config(name, (4, 32, 32), "grid", 1000)
        with torch.device("meta"):
            m = SiT(cfg)
        n = sum(p.numel() for p in m.parameters())
        assert abs(n - ref) / ref < 0.01, (name, n)
    assert (SIT_MODELS["SiT-B"]["depth"], SIT_MODELS["SiT-B"]["hidden_size"], SIT_MODELS["SiT-B"]["num_heads"]) == (12, 768, 12)
    assert SIT_MODELS["SiT-L"]["depth"] == 24 and SIT_MODELS["SiT-XL"]["hidden_size"] == 1152


def test_bad_shapes_are_one_line_errors():
    with pytest.raises(LatentlabError, match="not divisible by patch_size"):
        SiT(SiTConfig(sample_shape=(4, 7, 8), layout="grid", patch_size=2))
    with pytest.raises(LatentlabError, match=r"needs sample_shape \(T, C\)"):
        SiT(SiTConfig(sample_shape=(4, 8, 8), layout="tokens"))
    with pytest.raises(LatentlabError, match="unknown SiT model"):
        sit_config("SiT-XXL", (16, 8), "tokens", 10)
    m = SiT(SiTConfig(depth=1, hidden_size=16, num_heads=2, sample_shape=(16, 8)))
    m.check_shape((16, 8), "tokens")
    with pytest.raises(LatentlabError, match=r"built for \(16, 8\)") as e:
        m.check_shape((32, 4), "tokens", "store X")
    assert "\n" not in str(e.value)


def test_token_patch_groups_consecutive_tokens():
    assert token_patch_for(1024, 256) == 4 and token_patch_for(128, 256) == 1 and token_patch_for(1024, 64) == 16
    assert token_patch_for(7, 2) == 7  # a prime length falls back to one group
    m = SiT(SiTConfig(depth=1, hidden_size=16, num_heads=2, sample_shape=(12, 3), token_patch=4))
    x = torch.randn(2, 12, 3)
    assert m.embed.pos.shape == (1, 3, 16) and m.embed.proj.in_features == 12
    # group g holds tokens 4g..4g+3, channels last; unembed is the inverse reshape
    grouped = torch.stack([x[:, 4 * g:4 * g + 4].reshape(2, -1) for g in range(3)], 1)  # (N, 3, 12)
    assert torch.equal(m.embed.unembed(grouped), x)
    assert m(x, torch.rand(2), torch.tensor([0, 1])).shape == (2, 12, 3)
    with pytest.raises(LatentlabError, match="token_patch 5"):
        SiT(SiTConfig(sample_shape=(12, 3), token_patch=5))
