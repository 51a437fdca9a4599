"""Extraction into LatentStores, the run cache, the CLI, bad checkpoints and the diffusers adapter."""

import json
import shutil

import numpy as np
import pytest
import torch

from latentlab.data import get_dataset
from latentlab.errors import LatentlabError
from latentlab.io import file_hash
from latentlab.extract import cached_latents, extract
from latentlab.latents import LatentStore
from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer
from latentlab.tokenizers.training import load_tokenizer, reconstruct
from conftest import run_cli

SMALL = dict(width=32, depth=1, dec_width=32, dec_depth=1, heads=2, num_tokens=4, token_dim=4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "run"
    cfg = TokenizerRunConfig(arch="vae", dataset="digits", eval_images=16, model=SMALL,
                             train=dict(steps=3, batch_size=8, device="cpu", warmup_steps=1))
    train_tokenizer(cfg, out)
    return out


def test_extract_is_deterministic_and_equals_the_posterior_mode(run_dir, tmp_path):
    a = extract(run_dir, "digits", "test", tmp_path / "a", batch_size=50)
    b = extract(run_dir, "digits", "test", tmp_path / "b", batch_size=7)
    assert np.array_equal(a.load()[0], b.load()[0])
    model, cfg = load_tokenizer(run_dir)
    ds = get_dataset("digits", "test")
    x, y = ds.get_batch(np.arange(len(ds)))
    with torch.no_grad():
        ref = model.encode(x).mode().numpy()
    assert np.allclose(a.load()[0], ref, atol=1e-5)
    m = a.manifest
    assert m["sample_shape"] == [4, 4] and m["count"] == len(ds) and m["layout"] == "tokens"
    assert m["tokenizer"]["arch"] == "vae" and len(m["checkpoint_hash"]) == 16
    flat = ref.reshape(-1, 4)
    assert np.allclose(m["stats"]["channel_mean"], flat.mean(0), atol=1e-4)
    assert np.allclose(m["stats"]["channel_std"], flat.std(0), atol=1e-4)
    assert np.isclose(m["stats"]["global_std"], ref.std(), atol=1e-4)
    assert np.array_equal(np.asarray(a.labels), y.numpy())
    rec = reconstruct(model, x[:5])
    assert rec.shape == (5, 1, 8, 8) and rec.abs().max() <= 1


def test_cached_latents_reuse_and_refresh(run_dir):
    s1 = cached_latents(run_dir, split="test")
    assert s1.path == run_dir / "latents" / "digits" / "test"
    t1 = (s1.path / "manifest.json").stat().st_mtime_ns
    s2 = cached_latents(run_dir, split="test")
    assert (s2.path / "manifest.json").stat().st_mtime_ns == t1
    manifest = json.loads((s1.path / "manifest.json").read_text())
    manifest["checkpoint_hash"] = "stale"
    (s1.path / "manifest.json").write_text(json.dumps(manifest))
    s3 = cached_latents(run_dir, split="test")
    assert s3.manifest["checkpoint_hash"] != "stale"


def test_extract_cli_and_one_line_errors(run_dir, tmp_path):
    code, out, err = run_cli("extract", "--tokenizer", str(run_dir), "--split", "test", "--out", str(tmp_path / "s"), "--json")
    assert code == 0, err
    assert json.loads(out)["count"] == len(get_dataset("digits", "test"))
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad, ignore=shutil.ignore_patterns("latents"))
    (bad / "ema.safetensors").write_bytes(b"not a checkpoint")
    code, out, err = run_cli("extract", "--tokenizer", str(bad), "--out", str(tmp_path / "s2"))
    assert code == 2 and err.count("\n") == 1 and "corrupt" in err and not (tmp_path / "s2").exists()
    wrong = tmp_path / "wrong"
    shutil.copytree(run_dir, wrong, ignore=shutil.ignore_patterns("latents"))
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["model"]["arch"] = "maetok"
    (wrong / "config.json").write_text(json.dumps(cfg))
    code, out, err = run_cli("extract", "--tokenizer", str(wrong), "--out", str(tmp_path / "s3"))
    assert code == 2 and err.count("\n") == 1 and "does not match" in err


def test_train_tokenizer_cli_config_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("arch: ae\nmodel: {widht: 32}\n")
    code, out, err = run_cli("train-tokenizer", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r"))
    assert code == 2 and "widht" in err and not (tmp_path / "r").exists()
    (tmp_path / "ok.yaml").write_text(json.dumps({"arch": "ae", "dataset": "digits", "eval_images": 8, "model": SMALL,
                                                  "train": {"batch_size": 4, "device": "cpu"}}))
    code, out, err = run_cli("train-tokenizer", "--config", str(tmp_path / "ok.yaml"), "--steps", "2",
                             "--out", str(tmp_path / "r"), "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["steps"] == 2 and s["latent_shape"] == [4, 4]
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["batch_size"] == 4


class _FakeDist:
    """The slice of diffusers' DiagonalGaussianDistribution the adapter uses."""

    def __init__(self, mean):
        self.mean = mean

    def mode(self):
        return self.mean

    def sample(self, generator=None):
        return self.mean + torch.randn(self.mean.shape, generator=generator)


class FakeAutoencoderKL(torch.nn.Module):
    """AutoencoderKL's encode(x).latent_dist / decode(z).sample API on a 2x2 average pool."""

    config = {"sample_size": 8, "in_channels": 1, "latent_channels": 1, "scaling_factor": 0.5}

    def encode(self, x):
        return type("Out", (), {"latent_dist": _FakeDist(torch.nn.functional.avg_pool2d(x, 2))})()

    def decode(self, z):
        return type("Out", (), {"sample": 2 * torch.nn.functional.interpolate(z, scale_factor=2)})()


def test_diffusers_adapter_interface_with_a_fake_module():
    from latentlab.tokenizers.external import DiffusersAutoencoder, describe

    m = DiffusersAutoencoder(FakeAutoencoderKL())
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    z = m.encode(x).mode()
    assert torch.allclose(z, torch.nn.functional.avg_pool2d(x, 2)) and z.shape == (2, 1, 4, 4)
    assert m.decode(z).abs().max() <= 1  # clamped
    d = describe(m.vae, "fake", "h")
    assert d["layout"] == "grid" and d["image_size"] == 8 and d["tokenizer"]["scaling_factor"] == 0.5


def test_diffusers_autoencoder_kl_extracts_a_grid_store(tmp_path):
    import diffusers  # the `external` extra; installed with the `test` extra

    from latentlab.extract import resolve_tokenizer

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  layers_per_block=1, latent_channels=2, norm_num_groups=4, sample_size=8)
    vae.save_pretrained(tmp_path / "vae")
    store = extract(f"diffusers:{tmp_path / 'vae'}", "digits", "test", tmp_path / "store", batch_size=64, device="cpu")
    assert store.manifest["layout"] == "grid" and store.sample_shape == (2, 4, 4)
    x = get_dataset("digits", "test").get_batch(np.arange(2))[0]
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode().numpy()
    assert np.allclose(store.get(0, 2), ref, atol=1e-5)
    with pytest.raises(LatentlabError, match="save_pretrained"):
        extract("diffusers:/nonexistent/vae", "digits", "test", tmp_path / "s2")
    # analysis commands take the spec directly: extracted once into the workspace, then reused
    tok = resolve_tokenizer(f"sd=diffusers:{tmp_path / 'vae'}", dataset="digits")
    inode = (tok.train.path / "manifest.json").stat().st_ino
    assert tok.name == "sd" and tok.test.sample_shape == (2, 4, 4) and np.allclose(tok.test.get(0, 2), ref, atol=1e-5)
    again = resolve_tokenizer(f"diffusers:{tmp_path / 'vae'}", dataset="digits")
    assert (again.train.path / "manifest.json").stat().st_ino == inode and again.name == "vae"  # not rewritten
    with pytest.raises(LatentlabError, match="give --dataset"):
        resolve_tokenizer(f"diffusers:{tmp_path / 'vae'}")


def _extract_worker(rank, world, init_file, run, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        extract(run, "digits", "test", out, batch_size=64, device="cpu")
    finally:
        torch.distributed.destroy_process_group()


def test_two_rank_extraction_equals_one_rank(run_dir, tmp_path):
    import torch.multiprocessing as mp

    one = extract(run_dir, "digits", "test", tmp_path / "one", batch_size=64, device="cpu")
    (tmp_path / ".two.part-2.npz").write_bytes(b"left by a killed 3-rank run")
    mp.spawn(_extract_worker, args=(2, str(tmp_path / "init"), str(run_dir), str(tmp_path / "two")), nprocs=2, join=True)
    two = LatentStore.open(tmp_path / "two")
    assert np.allclose(one.load()[0], two.load()[0], atol=1e-6)
    assert np.array_equal(one.labels, two.labels)
    assert not list(tmp_path.glob(".two.part-*"))  # the rank part files are cleaned up, a stale one too


def _to_ldm_layout(state: dict, n_blocks: int) -> dict:
    """A diffusers AutoencoderKL state dict renamed to the original LDM layout (as released VAE files are)."""
    import re

    rules = [(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", lambda m: f"encoder.down.{m[1]}.block.{m[2]}"),
             (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", lambda m: f"encoder.down.{m[1]}.downsample"),
             (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)", lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}"),
             (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample"),
             (r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}")]
    names = {"mid_block.attentions.0": "mid.attn_1", "conv_shortcut": "nin_shortcut", "conv_norm_out": "norm_out",
             "attn_1.group_norm": "attn_1.norm", "attn_1.to_q": "attn_1.q", "attn_1.to_k": "attn_1.k",
             "attn_1.to_v": "attn_1.v", "attn_1.to_out.0": "attn_1.proj_out"}
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        for old, new in names.items():
            key = key.replace(old, new)
        if "attn_1" in key and key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM attention projections are 1x1 convolutions
        out[key] = value.contiguous()
    return out


def _tiny_kl():
    import diffusers

    torch.manual_seed(0)
    return diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                   layers_per_block=1, latent_channels=2, norm_num_groups=4, sample_size=8)


def test_diffusers_single_file_ldm_checkpoint(tmp_path):
    """An original-LDM-layout VAE file loads through from_single_file and encodes as the model it came from."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import save_file

    from latentlab.extract import resolve_tokenizer

    vae = _tiny_kl()
    vae.save_pretrained(tmp_path / "cfg")  # the config folder a single file needs offline
    ldm = _to_ldm_layout(vae.state_dict(), 2)
    assert {"encoder.down.0.block.0.conv1.weight", "decoder.up.1.block.0.conv1.weight", "encoder.mid.attn_1.q.weight",
            "decoder.mid.block_2.conv2.weight"} <= set(ldm)
    back = convert_ldm_vae_checkpoint(dict(ldm), dict(vae.config))  # diffusers' own converter undoes the renaming
    assert all(torch.equal(back[k].reshape(v.shape), v) for k, v in vae.state_dict().items())
    save_file(ldm, str(tmp_path / "vae-ldm.safetensors"))
    spec = f"diffusers:{tmp_path / 'vae-ldm.safetensors'}:config={tmp_path / 'cfg'}"
    store = extract(spec, "digits", "test", tmp_path / "store", device="cpu")
    x = get_dataset("digits", "test").get_batch(np.arange(3))[0]
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode().numpy()
    assert store.manifest["layout"] == "grid" and np.allclose(store.get(0, 3), ref, atol=1e-5)
    prov = store.manifest["tokenizer"]
    assert prov["external"] == "diffusers.AutoencoderKL" and prov["spec"] == spec
    assert store.manifest["checkpoint_hash"] == file_hash(tmp_path / "vae-ldm.safetensors")
    assert resolve_tokenizer(spec, dataset="digits").name == "vae-ldm"
    with pytest.raises(LatentlabError, match="config="):  # no config and an empty Hugging Face cache
        extract(f"diffusers:{tmp_path / 'vae-ldm.safetensors'}", "digits", "test", tmp_path / "s2")
    with pytest.raises(LatentlabError, match="unknown argument 'confg'"):
        extract(f"diffusers:{tmp_path / 'vae-ldm.safetensors'}:confg=x", "digits", "test", tmp_path / "s2")
    assert not (tmp_path / "s2").exists()


def test_diffusers_autoencoder_dc(tmp_path):
    """A (tiny, random) DC-AE folder: deterministic latents equal the model's own, decoding round-trips shapes."""
    import diffusers

    from latentlab.extract import open_tokenizer

    torch.manual_seed(0)
    dc = diffusers.AutoencoderDC(in_channels=1, latent_channels=4, attention_head_dim=4,
                                 encoder_block_types=("ResBlock", "ResBlock"), decoder_block_types=("ResBlock", "ResBlock"),
                                 encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
                                 encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                                 encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()))
    dc.save_pretrained(tmp_path / "dc")
    store = extract(f"diffusers:{tmp_path / 'dc'}", "digits", "test", tmp_path / "store", device="cpu")
    x = get_dataset("digits", "test").get_batch(np.arange(3))[0]
    with torch.no_grad():
        ref = dc.encode(x).latent.numpy()
    assert store.sample_shape == (4, 4, 4) and np.allclose(store.get(0, 3), ref, atol=1e-5)
    assert store.manifest["tokenizer"]["external"] == "diffusers.AutoencoderDC"
    model, info = open_tokenizer(f"diffusers:{tmp_path / 'dc'}")
    with torch.no_grad():
        z = model.encode(x).mode()
        assert torch.equal(model.encode(x).sample(torch.Generator().manual_seed(1)), z)  # deterministic
        rec = model.decode(z)
    assert rec.shape == x.shape and rec.abs().max() <= 1 and info["decodes"]
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(LatentlabError, match="UNet2DModel"):
        open_tokenizer(f"diffusers:{tmp_path / 'unet'}")
