"""Bring your own tokenizer: python: specs, the worked example, entry points, provenance and a plug-in study."""

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from conftest import run_cli
from latentlab.data import get_dataset
from latentlab.errors import LatentlabError
from latentlab.extract import open_tokenizer, resolve_tokenizer
from latentlab.io import file_hash
from latentlab.tokenizers.plugins import format_args, parse_args, parse_plugin

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_tokenizer.py"

PLUGINS = '''
import torch

class Tokens:
    """Not an nn.Module, no decode: pixels as (B, H*W, C) tokens times `scale`."""
    channels = 1

    def __init__(self, scale):
        self.scale = scale

    def encode(self, x):
        return x.flatten(2).transpose(1, 2) * self.scale

class Gaussian:
    """An object with .mode() (the mean) and .sample(generator)."""
    def __init__(self, mean):
        self.mean = mean
    def mode(self):
        return self.mean
    def sample(self, generator=None):
        return self.mean + torch.randn(self.mean.shape, generator=generator)

class WithPosterior(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(1, 3, 2, stride=2)
    def encode(self, x):
        return Gaussian(self.proj(x))
    def decode(self, z):
        return torch.nn.functional.interpolate(z[:, :1], scale_factor=2)

class BadShape:
    def encode(self, x):
        return x[:, 0, 0]

def tokens(scale=1.0):
    return Tokens(scale)

def posterior():
    return WithPosterior()

def bad_shape():
    return BadShape()

def no_encode():
    return object()
'''


@pytest.fixture
def plugins(tmp_path):
    path = tmp_path / "myplugins.py"
    path.write_text(textwrap.dedent(PLUGINS))
    return path


@pytest.fixture(scope="module")
def shared_workspace(tmp_path_factory):
    """One workspace for the tests that need the LeNet extractor, so it is trained once."""
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def example_ckpt(tmp_path_factory):
    import importlib.util

    spec = importlib.util.spec_from_file_location("own_tokenizer_ref", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = mod.TinyConvAE()
    path = tmp_path_factory.mktemp("ckpt") / "ae.safetensors"
    save_file(model.state_dict(), str(path))
    return path, model.eval()


def test_spec_parsing_and_round_trip():
    ps = parse_plugin("python:pkg.mod:make:a=1,b=x,c=[1, 2],d=true,e=/p/with:colon")
    assert (ps.module, ps.callable) == ("pkg.mod", "make")
    assert ps.kwargs == {"a": 1, "b": "x", "c": [1, 2], "d": True, "e": "/p/with:colon"}
    assert parse_plugin(ps.spec) == ps  # the canonical spec parses back to the same thing
    assert parse_args(format_args({"s": "1", "t": "a,b", "u": None, "v": 2.5}), "x") == {"s": "1", "t": "a,b",
                                                                                     "u": None, "v": 2.5}
    assert parse_plugin("python:dir/file.py:build").kwargs == {}
    with pytest.raises(LatentlabError, match="ARG=VALUE"):
        parse_plugin("python:m:f:oops")
    with pytest.raises(LatentlabError, match="no tokenizer 'nosuch' is registered"):
        parse_plugin("python:nosuch:k=1")


def test_worked_example_through_the_cli(example_ckpt, shared_workspace, tmp_path, monkeypatch):
    """The example in examples/ runs through probe and eval-tokenizer; its latents are the module's own encodings."""
    monkeypatch.setenv("LATENTLAB_WORKSPACE", str(shared_workspace))
    ckpt, model = example_ckpt
    spec = f"python:{EXAMPLE}:build:checkpoint={ckpt}"
    code, out, err = run_cli("probe", "--tokenizer", f"mine={spec}", "--dataset", "digits", "--out",
                             str(tmp_path / "probe"), "--epochs", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["rows"][0]["tokenizer"] == "mine"
    tok = resolve_tokenizer(f"mine={spec}", dataset="digits")
    x, y = get_dataset("digits", "test").get_batch(np.arange(10))
    with torch.no_grad():
        ref = model.encoder(x).numpy()  # (10, 4, 4, 4)
    assert tok.test.layout == "grid" and tok.test.sample_shape == (4, 4, 4)
    assert np.allclose(tok.test.get(0, 10), ref, atol=1e-5)
    prov = tok.train.manifest["tokenizer"]
    assert prov["external"] == "python" and prov["callable"] == "build" and prov["kwargs"] == {"checkpoint": str(ckpt)}
    assert prov["module_hash"] == file_hash(EXAMPLE) and prov["kwarg_file_hashes"] == {"checkpoint": file_hash(ckpt)}
    code, out, err = run_cli("eval-tokenizer", "--tokenizer", spec, "--dataset", "digits", "--extractor", "lenet",
                             "--out", str(tmp_path / "eval"), "--json")
    assert code == 0, err
    s = json.loads(out)
    with torch.no_grad():
        rec = model.decoder(model.encoder(x)).clamp(-1, 1)
    mse = ((rec - x) ** 2).mean((1, 2, 3))
    psnr_ref = (10 * torch.log10(4.0 / mse)).numpy()  # images in [-1, 1]: peak-to-peak 2
    per_image = pd.read_csv(tmp_path / "eval" / "recon_images.csv")
    assert np.allclose(per_image.psnr[:10], psnr_ref, atol=1e-3)
    assert s["n"] == len(get_dataset("digits", "test"))


def test_cache_follows_the_module_file(plugins, tmp_path):
    spec = f"python:{plugins}:tokens:scale=2.0"
    a = resolve_tokenizer(spec, dataset="digits")
    assert a.name == "tokens" and a.train.layout == "tokens" and a.train.sample_shape == (64, 1)
    x = get_dataset("digits", "train").get_batch(np.arange(3))[0]
    assert np.allclose(a.train.get(0, 3), 2 * x.flatten(2).transpose(1, 2).numpy(), atol=1e-6)
    inode = (a.train.path / "manifest.json").stat().st_ino
    assert (resolve_tokenizer(spec, dataset="digits").train.path / "manifest.json").stat().st_ino == inode  # reused
    plugins.write_text(plugins.read_text().replace("* self.scale", "* self.scale * 3"))
    b = resolve_tokenizer(spec, dataset="digits")  # the module changed: extracted again
    assert np.allclose(b.train.get(0, 3), 6 * x.flatten(2).transpose(1, 2).numpy(), atol=1e-5)


def test_posterior_objects_no_decode_and_errors(plugins, tmp_path):
    from latentlab.sit.sample import decoder_for

    model, info = open_tokenizer(f"python:{plugins}:posterior")
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    post = model.encode(x)
    with torch.no_grad():
        assert torch.allclose(post.mode(), model.obj.proj(x))
    g = torch.Generator().manual_seed(0)
    assert not torch.allclose(post.sample(g), post.mode()) and info["decodes"]
    assert model.decode(post.mode()).shape == (2, 1, 8, 8)
    _, info = open_tokenizer(f"python:{plugins}:tokens:scale=1")
    assert info["decodes"] is False and info["channels"] == 1
    decoder, why = decoder_for({"tokenizer_spec": f"python:{plugins}:tokens:scale=1"}, torch.device("cpu"))
    assert decoder is None and "no decode" in why
    code, out, err = run_cli("eval-tokenizer", "--tokenizer", f"python:{plugins}:tokens:scale=1", "--dataset", "digits",
                             "--out", str(tmp_path / "e"))
    assert code == 2 and err.count("\n") == 1 and "no decode" in err and not (tmp_path / "e").exists()
    for spec, msg in [(f"python:{plugins}:bad_shape", "expected"), (f"python:{plugins}:no_encode", "without encode"),
                      (f"python:{plugins}:missing", "no callable 'missing'"),
                      (f"python:{plugins}:tokens:scal=1", "rejected its arguments"),
                      ("python:no_such_module_xyz:f", "cannot import"), (f"python:{tmp_path}/nope.py:f", "not found")]:
        code, out, err = run_cli("probe", "--tokenizer", spec, "--dataset", "digits", "--out", str(tmp_path / "p"))
        assert code == 2 and err.count("\n") == 1 and msg in err, (spec, err)
    assert not (tmp_path / "p").exists()


def test_entry_points_and_the_listing(plugins, tmp_path, monkeypatch):
    """A package registering under `latentlab.tokenizers` is listed and usable as python:NAME."""
    site = tmp_path / "site"
    dist = site / "my_tokenizers-1.2.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-tokenizers\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text("[latentlab.tokenizers]\npixtok = myplugins:tokens\n")
    shutil.copy(plugins, site / "myplugins.py")
    monkeypatch.syspath_prepend(str(site))
    code, out, err = run_cli("tokenizers", "--json")
    assert code == 0, err
    cat = json.loads(out)
    assert {"ae", "vae", "vavae", "maetok", "pixels"} <= {t["name"] for t in cat["built_in"]}
    assert {"name": "pixtok", "factory": "myplugins:tokens", "spec": "python:pixtok",
            "distribution": "my-tokenizers==1.2"} in cat["registered"]
    assert cat["diffusers"]["installed"] and "AutoencoderDC" in cat["diffusers"]["classes"]
    code, out, err = run_cli("tokenizers")
    assert code == 0 and "pixtok" in out and "python:MODULE:CALLABLE" in out
    tok = resolve_tokenizer("python:pixtok:scale=0.5", dataset="digits")
    prov = tok.train.manifest["tokenizer"]
    assert tok.name == "pixtok" and prov["entry_point"] == "pixtok" and prov["distribution"] == "my-tokenizers==1.2"
    x = get_dataset("digits", "train").get_batch(np.arange(2))[0]
    assert np.allclose(tok.train.get(0, 2), 0.5 * x.flatten(2).transpose(1, 2).numpy(), atol=1e-6)


def test_study_with_plug_ins(example_ckpt, plugins, shared_workspace, tmp_path, monkeypatch):
    """arch: python in a study: with decode every stage runs (SiT, gFD); without, recon and gFD carry a note."""
    from latentlab.study.runner import run_study

    monkeypatch.setenv("LATENTLAB_WORKSPACE", str(shared_workspace))
    ckpt, _ = example_ckpt
    cfg = {"dataset": "digits", "device": "cpu", "report": False,
           "tokenizers": {"own": {"arch": "python", "factory": f"{EXAMPLE}:build", "kwargs": {"checkpoint": str(ckpt)}},
                          "tok": {"arch": "python", "factory": f"{plugins}:tokens", "kwargs": {"scale": 1.0}}},
           "sit": {"model": "SiT-tiny", "model_overrides": {"depth": 1, "hidden_size": 32},
                   "train": {"steps": 4, "eval_every": 4, "batch_size": 16}, "heldout_size": 16},
           "sample": {"n": 20, "steps": 2, "max_pngs": 2}, "gmm": {"components": [1, 2], "max_iter": 10},
           "probe": {"probe": {"epochs": 1}}, "umap": {"n": 60, "pca_dim": 5}, "metrics": {"extractor": "lenet"},
           "diffusability": {"n_images": 32, "fd_boot": 5, "n_boot": 100, "id_samples": 200, "id_boot": 3}}
    run_study(cfg, tmp_path / "s")
    df = pd.read_csv(tmp_path / "s" / "summary.csv").set_index("tokenizer")
    assert df.loc["own", ["psnr", "gfd_lenet", "sit_loss", "lp_top1"]].notna().all()
    assert df.loc["tok", ["sit_loss", "lp_top1", "gmm_nll_k2"]].notna().all()
    assert pd.isna(df.loc["tok", "psnr"]) and pd.isna(df.loc["tok", "gfd_lenet"])
    assert "no decode" in df.loc["tok", "note"] and "gFD skipped" in df.loc["tok", "note"]
    recon = pd.read_csv(tmp_path / "s" / "tables" / "recon.csv").set_index("tokenizer")
    assert "reconstruction skipped" in recon.loc["tok", "note"]
    assert json.loads((tmp_path / "s" / "tok" / "seed-0" / "tokenizer" / "stage.json").read_text())["result"]["decodes"] is False
    with pytest.raises(LatentlabError, match="factory"):
        run_study({**cfg, "tokenizers": {"x": {"arch": "python"}}}, tmp_path / "t")
    with pytest.raises(LatentlabError, match="no callable"):
        run_study({**cfg, "tokenizers": {"x": {"arch": "python", "factory": f"{plugins}:nothing"}}}, tmp_path / "t")
