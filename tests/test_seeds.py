"""No global seeding in the library: models are built under utils.torch_seeded, whose draws equal a
manual_seed's and which hands the caller's generator state back untouched."""

import numpy as np
import torch

from latentlab.analysis.probe import ProbeConfig, train_probe
from latentlab.analysis.stream import Rows
from latentlab.extract import import_pixels
from latentlab.sit.training import SiTTrainConfig, build_sit_task
from latentlab.tokenizers.training import TokenizerRunConfig, build_run
from latentlab.utils import torch_seeded


def test_torch_seeded_draws_equal_manual_seed_and_restore_the_state():
    torch.manual_seed(7)
    ref = torch.randn(5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with torch_seeded(7):
        got = torch.randn(5)
    assert torch.equal(got, ref)
    assert torch.equal(torch.get_rng_state(), before)


def _untouched(build):
    """The two results of `build()` from two different global states, and whether the state was kept."""
    out, kept = [], True
    for s in (1, 2):
        torch.manual_seed(s)
        state = torch.get_rng_state()
        out.append(build())
        kept &= torch.equal(torch.get_rng_state(), state)
    return out, kept


def _same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_builders_depend_on_their_seed_only_and_leave_the_global_generator(tmp_path):
    tok = TokenizerRunConfig(arch="ae", dataset="digits", model={"width": 32, "depth": 1, "dec_width": 32,
                                                                 "dec_depth": 1, "heads": 2, "num_tokens": 4,
                                                                 "token_dim": 4}, train={"seed": 3})
    (a, b), kept = _untouched(lambda: build_run(tok)[0])
    assert kept and _same_weights(a, b)
    import_pixels("digits", tmp_path / "px")
    sit = SiTTrainConfig(model_overrides={"depth": 1, "hidden_size": 32, "num_heads": 2}, heldout_size=16,
                         train={"seed": 3})
    (a, b), kept = _untouched(lambda: build_sit_task(str(tmp_path / "px"), sit)[0].model)
    assert kept and _same_weights(a, b)
    rng = np.random.default_rng(0)
    feats = Rows(rng.normal(size=(64, 4)).astype(np.float32), labels=rng.integers(0, 2, 64))
    (a, b), kept = _untouched(lambda: train_probe(feats, 2, ProbeConfig(epochs=1, device="cpu", seed=3)))
    assert kept and _same_weights(a, b)
