"""Sensible defaults a new user relies on: decoder fine-tune data, store sets, one probe table, recorded
configs holding only what applies, and progress bars that show they are alive."""

import json
import re
import time

import numpy as np
import pytest
from conftest import run_cli

from latentlab.utils import progress


def _frames(err: str) -> list[str]:
    return [f.strip() for f in err.replace("\r", "\n").splitlines() if f.strip()]


# ---------------------------------------------------------------- progress

def test_a_bar_shows_it_is_alive_before_its_first_step(monkeypatch, capsys):
    monkeypatch.setenv("LATENTLAB_PROGRESS", "1")
    bar = progress(["ae", "maetok"], desc="umap", status=lambda t: f"{t}: embedding", heartbeat=0.05)
    for i, _ in enumerate(bar):
        assert bar.n == i  # the count is current at every step, not only when tqdm last printed
        time.sleep(0.4)
    assert bar.n == 2
    frames = _frames(capsys.readouterr().err)
    waiting = [f for f in frames if "0/2" in f and "ae: embedding" in f]
    assert len(waiting) >= 2, frames  # redrawn while the first (slow) step runs, naming what it works on
    assert any("1/2" in f and "maetok: embedding" in f for f in frames)


def test_a_bar_stops_its_heartbeat_when_closed(monkeypatch, capsys):
    monkeypatch.setenv("LATENTLAB_PROGRESS", "1")
    bar = progress(total=3, desc="work", heartbeat=0.02)
    time.sleep(0.1)
    bar.update(3)
    bar.close()
    capsys.readouterr()
    time.sleep(0.1)
    assert capsys.readouterr().err == ""


def test_em_bars_advance_with_every_iteration(monkeypatch, capsys, rng):
    from latentlab.analysis.gmm.mixture import GaussianMixture

    monkeypatch.setenv("LATENTLAB_PROGRESS", "1")
    x = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 6])
    gmm = GaussianMixture(2, max_iter=40, tol=1e-8, random_state=0, device="cpu", progress=True).fit(x)
    frames = [f for f in _frames(capsys.readouterr().err) if f.startswith("EM K=2")]
    shown = {int(m.group(1)) for f in frames if (m := re.search(r"(\d+)/40", f)) and "lower_bound" in f}
    assert gmm.n_iter_ > 2 and shown == set(range(1, gmm.n_iter_ + 1)), (gmm.n_iter_, sorted(shown))
    assert any("kmeans initialisation" in f for f in frames)


def test_official_protocol_bars_advance_with_every_epoch(monkeypatch, capsys, rng):
    from latentlab.analysis.gmm.config import FitGMMConfig
    from latentlab.analysis.gmm.official import fit_adam

    monkeypatch.setenv("LATENTLAB_PROGRESS", "1")
    x = rng.normal(size=(128, 3)).astype(np.float32)
    fit_adam(x, x[:16], 2, FitGMMConfig(official_epochs=5, official_batch_size=32, device="cpu"), show=True)
    frames = [f for f in _frames(capsys.readouterr().err) if f.startswith("Adam K=2") and "loss=" in f]
    assert {int(re.search(r"(\d+)/5", f).group(1)) for f in frames} == {1, 2, 3, 4, 5}


# ---------------------------------------------------------------- tokenizer runs

SMALL = dict(width=32, depth=1, dec_width=32, dec_depth=1, heads=2, num_tokens=4, token_dim=4)


def _tiny_run(tmp_path, name="tok", arch="ae", dataset="digits", **model):
    from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer

    out = tmp_path / name
    train_tokenizer(TokenizerRunConfig(arch=arch, dataset=dataset, eval_images=8, sample_images=2,
                                       model={**SMALL, **model},
                                       train=dict(steps=1, batch_size=8, device="cpu", warmup_steps=0)), out)
    return out


def test_decoder_finetune_takes_the_dataset_and_image_size_of_its_init_run(tmp_path):
    run = _tiny_run(tmp_path, arch="maetok", dataset="digits")  # digits: 8 x 8 px, not the mnist5k default
    base = ["train-tokenizer", "--stage", "decoder-finetune", "--init", str(run), "--steps", "1", "--batch-size", "8",
            "--device", "cpu"]
    code, out, err = run_cli(*base, "--out", str(tmp_path / "ft"), "--json")
    assert code == 0, err
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert json.loads(out)["dataset"] == cfg["dataset"] == "digits"
    assert cfg["run"]["image_size"] == cfg["model"]["image_size"] == 8
    assert cfg["model"]["mask"] is False and cfg["init"]["run"] == str(run)
    # an explicit --dataset wins; its images are resized to the size the encoder was trained at
    code, out, err = run_cli(*base, "--dataset", "mnist5k", "--out", str(tmp_path / "ft2"), "--json")
    assert code == 0, err
    cfg = json.loads((tmp_path / "ft2" / "config.json").read_text())
    assert cfg["dataset"] == "mnist5k" and cfg["run"]["image_size"] == 8
    # a full run without --dataset still defaults to mnist5k
    from latentlab.tokenizers.config import DEFAULT_DATASET
    assert DEFAULT_DATASET == "mnist5k"


def test_recorded_model_config_holds_only_the_fields_that_apply(tmp_path):
    import dataclasses

    import torch

    from latentlab.config import to_dict
    from latentlab.tokenizers.config import KIND_FIELDS, TokenizerConfig
    from latentlab.tokenizers.models import TOKENIZERS, build_tokenizer
    from latentlab.tokenizers.training import load_tokenizer

    assert set(KIND_FIELDS) == set(TOKENIZERS)
    names = {f.name for f in dataclasses.fields(TokenizerConfig)}
    assert all(set(v) <= names for v in KIND_FIELDS.values())
    maetok_only = {"mask", "mask_min", "mask_max", "aux_targets", "aux_depth", "aux_weight"}
    vavae_only = {"teacher", "align_weight", "align_m1", "align_m2", "align_adaptive"}
    expect_absent = {"ae": maetok_only | vavae_only | {"kl_weight"}, "vae": maetok_only | vavae_only,
                     "vavae": maetok_only, "maetok": vavae_only | {"kl_weight"}}
    for arch in sorted(TOKENIZERS):
        run = _tiny_run(tmp_path, f"run-{arch}", arch=arch)
        rec = json.loads((run / "config.json").read_text())["model"]
        assert not expect_absent[arch] & set(rec), (arch, expect_absent[arch] & set(rec))
        assert "perceptual_weight" not in rec and "gan_start" not in rec  # both off by default
        assert {"width", "num_tokens", "token_dim", "rec_loss", "stage"} <= set(rec)
        if arch == "vavae":
            assert rec["teacher"] == "hog"
        if arch == "maetok":
            assert rec["mask"] is True and rec["aux_targets"] == ["hog"]
        # the record rebuilds the same model as the full config: the dropped fields do not matter to it
        full = to_dict(TokenizerConfig(**rec))
        model, _ = load_tokenizer(run)
        torch.manual_seed(0)
        a = build_tokenizer(full)
        a.load_state_dict(model.state_dict())
        x = torch.rand(2, 1, 8, 8) * 2 - 1
        with torch.no_grad():
            assert torch.equal(a.decode(a.encode(x).mode()), model.decode(model.encode(x).mode()))
    # a run written before this change (every field recorded, e.g. teacher and mask for a plain ae) still loads
    old = tmp_path / "run-ae" / "config.json"
    cfg = json.loads(old.read_text())
    cfg["model"] = to_dict(TokenizerConfig(**cfg["model"]))
    assert {"teacher", "mask", "aux_targets"} <= set(cfg["model"])
    old.write_text(json.dumps(cfg))
    model, loaded = load_tokenizer(tmp_path / "run-ae")
    assert loaded["model"]["teacher"] == "hog" and model.latent_shape == (4, 4)


def test_model_overrides_that_do_not_apply_are_refused(tmp_path):
    from latentlab.errors import LatentlabError
    from latentlab.study.config import load_study_config

    code, out, err = run_cli("train-tokenizer", "--arch", "ae", "--dataset", "digits", "--teacher", "pixels",
                             "--steps", "1", "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'teacher' does not apply to arch 'ae' (only to vavae)" in err and not (tmp_path / "r").exists()
    with pytest.raises(LatentlabError, match=r"tokenizers.vae.model: 'mask_min' does not apply to arch 'vae' "
                                             r"\(only to maetok\)"):
        load_study_config({"dataset": "digits", "tokenizers": {"vae": {"arch": "vae", "model": {"mask_min": 0.5}}}})


# ---------------------------------------------------------------- store sets

def test_extract_writes_a_store_set_in_one_call(tmp_path):
    from latentlab.data import get_dataset
    from latentlab.extract import resolve_tokenizer
    from latentlab.latents import LatentStore

    run = _tiny_run(tmp_path)
    code, out, err = run_cli("extract", "--tokenizer", str(run), "--split", "train,test", "--out",
                             str(tmp_path / "set"), "--device", "cpu", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert set(summary["stores"]) == {"train", "test"}
    tok = resolve_tokenizer(str(tmp_path / "set"))
    assert tok.train.split == "train" and tok.test.split == "test"
    assert len(tok.train) == len(get_dataset("digits", "train")) and len(tok.test) == len(get_dataset("digits", "test"))
    # the same latents as extracting the test split alone
    code, _, err = run_cli("extract", "--tokenizer", str(run), "--split", "test", "--out", str(tmp_path / "alone"),
                           "--device", "cpu")
    assert code == 0, err
    alone = LatentStore.open(tmp_path / "alone")
    assert np.array_equal(alone.load()[0], tok.test.load()[0]) and np.array_equal(alone.labels, tok.test.labels)
    code, _, err = run_cli("extract", "--tokenizer", str(run), "--split", "val", "--out", str(tmp_path / "v"))
    assert code == 2 and "val" in err


def test_readme_defines_a_store_set():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert re.search(r"\*\*store set\*\* is a directory holding\s+two stores, `train/` and `test/`", text)


# ---------------------------------------------------------------- one probe table, the same held-out images

def _planted(rng, n, classes=4, shape=(3, 4)):
    y = np.arange(n) % classes
    x = (rng.normal(size=(classes, *shape)) * 1.5)[y] + rng.normal(size=(n, *shape))
    return x.astype(np.float32), y


def test_probe_scores_every_tokenizer_on_the_same_heldout_images(tmp_path, rng):
    from latentlab.latents import LatentStore

    x, y = _planted(rng, 400)
    xt, yt = _planted(np.random.default_rng(1), 100)
    LatentStore.create(tmp_path / "a" / "train", x, y, {"split": "train"})
    LatentStore.create(tmp_path / "a" / "test", xt, yt, {"split": "test"})
    # b: the same images as a's train store, scaled by 2 (every probe metric here is scale invariant), no test split
    LatentStore.create(tmp_path / "b", 2 * x, y, {"split": "train"})
    LatentStore.create(tmp_path / "c" / "train", 2 * x, y, {"split": "train"})
    LatentStore.create(tmp_path / "c" / "test", 2 * xt, yt, {"split": "test"})
    base = ["probe", "--epochs", "2", "--device", "cpu", "--json"]
    code, out, err = run_cli(*base, "--tokenizer", f"a={tmp_path / 'a'}", "--tokenizer", f"b={tmp_path / 'b'}",
                             "--out", str(tmp_path / "o1"))
    assert code == 0, err
    rows = {r["tokenizer"]: r for r in json.loads(out)["rows"]}
    assert rows["a"]["eval_split"] == rows["b"]["eval_split"] == "holdout-20%"
    assert rows["a"]["n_test"] == rows["b"]["n_test"] == 80 and "'b' has no test split" in err
    assert "not on the same images" not in err
    for k in ("top1", "knn_top1"):
        assert rows["a"][k] == pytest.approx(rows["b"][k], abs=1 / 80 + 1e-9)
    # when every tokenizer has a test split, all are scored on it
    code, out, err = run_cli(*base, "--tokenizer", f"a={tmp_path / 'a'}", "--tokenizer", f"c={tmp_path / 'c'}",
                             "--out", str(tmp_path / "o2"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["eval_split"] == "test"
    assert {r["eval_split"] for r in summary["rows"]} == {"test"} and {r["n_test"] for r in summary["rows"]} == {100}


def _set_worker(rank, world, init_file, run, out):
    import torch

    from latentlab.extract import extract_set

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        extract_set(run, "digits", ("train", "test"), out, batch_size=64, device="cpu")
    finally:
        torch.distributed.destroy_process_group()


def test_a_store_set_is_whole_or_absent_and_two_ranks_equal_one(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    import latentlab.extract as ex
    from latentlab.errors import LatentlabError
    from latentlab.latents import LatentStore

    run = _tiny_run(tmp_path)
    one = ex.extract_set(run, "digits", ("train", "test"), tmp_path / "one", device="cpu")
    mp.spawn(_set_worker, args=(2, str(tmp_path / "init"), str(run), str(tmp_path / "two")), nprocs=2, join=True)
    for split in ("train", "test"):
        two = LatentStore.open(tmp_path / "two" / split)
        assert np.allclose(one[split].load()[0], two.load()[0], atol=1e-6)
        assert np.array_equal(one[split].labels, two.labels) and two.split == split
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no part files left
    # a failure in the second split leaves no half-written set behind
    real = ex._extract_split

    def fail_on_test(model, info, tokenizer, dataset, split, *rest):
        if split == "test":
            raise LatentlabError("planted failure")
        return real(model, info, tokenizer, dataset, split, *rest)

    monkeypatch.setattr(ex, "_extract_split", fail_on_test)
    with pytest.raises(LatentlabError, match="planted"):
        ex.extract_set(run, "digits", ("train", "test"), tmp_path / "half", device="cpu")
    assert not (tmp_path / "half").exists()
