"""Feature extractors: the lenet (deterministic, accurate, cached), TorchScript networks, clear errors."""

import sys

import numpy as np
import pytest
import torch

from latentlab.errors import LatentlabError
from latentlab.metrics.extractors import get_extractor
from latentlab.metrics.images import fit_images
from latentlab.metrics.lenet import LeNetConfig, load_or_train_lenet, train_lenet


@pytest.fixture(scope="module")
def lenet_root(tmp_path_factory):
    """The session's lenet cache (shared by the metric test modules, so it is trained once)."""
    root = tmp_path_factory.getbasetemp() / "lenet-cache"
    load_or_train_lenet("mnist5k", root)
    return root


def test_lenet_is_deterministic_under_its_seed():
    cfg = LeNetConfig(max_train=600, epochs=2, min_steps=0)
    a, ra = train_lenet("digits", config=cfg)
    b, rb = train_lenet("digits", config=cfg)
    c, _ = train_lenet("digits", config=LeNetConfig(max_train=600, epochs=2, min_steps=0, seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert ra["test_accuracy"] == rb["test_accuracy"]


def test_lenet_reaches_95_percent_and_records_it_honestly(lenet_root):
    from latentlab.data import get_dataset

    ext = get_extractor("lenet", dataset="mnist5k", device="cpu", cache_root=lenet_root)
    test = get_dataset("mnist5k", "test")
    x, y = test.get_batch(np.arange(len(test)))
    feats, logits = ext.extract(x)
    acc = float((logits.argmax(1) == y).float().mean())
    assert acc >= 0.95
    assert ext.describe()["test_accuracy"] == pytest.approx(acc)            # the recorded number is the real one
    assert ext.metric == "fd_lenet" and ext.is_metric == "is_lenet"
    assert feats.shape == (len(test), 128) and torch.equal(ext.extract(x[:50])[0], feats[:50])


def test_lenet_cache_is_reused_and_checked(lenet_root, monkeypatch, tmp_path):
    import latentlab.metrics.lenet as lenet

    monkeypatch.setattr(lenet, "train_lenet", lambda *a, **k: pytest.fail("retrained a cached lenet"))
    a = get_extractor("lenet", dataset="mnist5k", device="cpu", cache_root=lenet_root)
    b = get_extractor("lenet", dataset="mnist5k", device="cpu", cache_root=lenet_root)
    assert a.identity() == b.identity() and a.identity()["weights"] == a.record["weights_hash"]
    # a damaged cache is refused with a one-line fix
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(lenet_root, bad)
    (w,) = bad.glob("lenet-mnist5k-*/model.safetensors")
    from latentlab.io import load_safetensors, save_safetensors
    state = load_safetensors(w)
    state["fc2.bias"] += 1
    save_safetensors(state, w)
    with pytest.raises(LatentlabError, match="remove the folder to retrain"):
        get_extractor("lenet", dataset="mnist5k", device="cpu", cache_root=bad)


def test_lenet_lives_in_the_workspace_by_default():
    from latentlab.metrics.extractors import LeNetExtractor
    from latentlab.io import workspace_root

    ext = LeNetExtractor("cpu", dataset="digits", config=LeNetConfig(epochs=1, min_steps=0))
    assert str(workspace_root() / "extractors") in ext.record["path"]
    assert ext.image_size == 16 and ext.record["data_image_size"] == 8       # 8x8 digits are upsampled
    assert ext.extract(torch.zeros(3, 1, 8, 8))[0].shape == (3, 128)


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Linear(64, 5)
        self.g = torch.nn.Linear(5, 3)

    def forward(self, x):
        h = self.f(x.flatten(1))
        return h, self.g(h)


def test_torchscript_extractor_features_and_logits(tmp_path):
    net = TwoHeads().eval()
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    ext = get_extractor(f"torchscript:{path}", device="cpu")
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    feats, logits = ext.extract(x)
    with torch.no_grad():
        ref_f, ref_l = net(x)
    assert torch.allclose(feats, ref_f) and torch.allclose(logits, ref_l)
    assert ext.metric == "fd_torchscript" and ext.identity()["weights"]


def test_fit_images():
    g = torch.rand(2, 1, 8, 8)
    assert torch.equal(fit_images(g, 3, None)[:, 2], g[:, 0])
    rgb = torch.rand(2, 3, 8, 8)
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    assert torch.allclose(fit_images(rgb, 1, None)[:, 0], luma)
    assert fit_images(rgb, None, 16).shape == (2, 3, 16, 16)
    flat = torch.full((1, 1, 8, 8), 0.3)
    assert torch.allclose(fit_images(flat, 1, 32), torch.full((1, 1, 32, 32), 0.3))


def test_missing_extractors_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(LatentlabError, match="unknown extractor 'incepton'"):
        get_extractor("incepton")
    with pytest.raises(LatentlabError, match="TorchScript extractor not found"):
        get_extractor(f"torchscript:{tmp_path / 'nope.pt'}")
    (tmp_path / "junk.pt").write_bytes(b"not a network")
    with pytest.raises(LatentlabError, match="is not a TorchScript file"):
        get_extractor(f"torchscript:{tmp_path / 'junk.pt'}")
    with pytest.raises(LatentlabError, match="takes no argument"):
        get_extractor("lenet:x")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)      # as if torch-fidelity were not installed
    for name, where in (("inception", "hub/checkpoints"), ("dinov2", "torch.hub")):
        with pytest.raises(LatentlabError) as e:
            get_extractor(name)
        msg = str(e.value)
        assert "pip install 'latentlab[fid]'" in msg and where in msg and "\n" not in msg
    with pytest.raises(LatentlabError, match="unknown DINOv2 variant"):
        get_extractor("dinov2:vit-x-99")


def test_inception_glue_with_a_stand_in_torch_fidelity(monkeypatch, tmp_path):
    """The wrapper's side of the torch-fidelity contract: uint8 RGB in, (2048 features, logits) out, named FID."""
    import types

    seen = {}

    class StandIn(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            seen.update(name=name, features=features_list, weights=feature_extractor_weights_path)

        def forward(self, x):
            seen["input"] = x
            f = x.float().mean((2, 3))                                     # (N, 3)
            return f.repeat(1, 4), f[:, :2]

    pkg = types.ModuleType("torch_fidelity")
    sub = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    sub.FeatureExtractorInceptionV3 = StandIn
    monkeypatch.setitem(sys.modules, "torch_fidelity", pkg)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", sub)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    ext = get_extractor(f"inception:{weights}", device="cpu")
    x = torch.linspace(-1, 1, 2 * 64).view(2, 1, 8, 8)                      # gray, [-1, 1]
    feats, logits = ext.extract(x)
    inp = seen["input"]
    assert inp.dtype == torch.uint8 and inp.shape == (2, 3, 8, 8) and torch.equal(inp[:, 0], inp[:, 2])
    assert int(inp.min()) == 0 and int(inp.max()) == 255
    assert seen["features"] == ["2048", "logits_unbiased"] and seen["weights"] == str(weights)
    assert feats.shape == (2, 12) and logits.shape == (2, 2)
    assert ext.metric == "fid" and ext.is_metric == "isc" and len(ext.identity()["weights"]) == 16
    with pytest.raises(LatentlabError, match="Inception weights not found"):
        get_extractor(f"inception:{tmp_path / 'missing.pth'}")
