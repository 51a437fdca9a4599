"""Unusable data is refused before work starts: non-finite latents and weights, bad imported arrays."""

import json
import pickle

import numpy as np
import pytest
import torch
from conftest import run_cli

from latentlab.errors import LatentlabError
from latentlab.extract import TokenizerLatents, check_finite, import_arrays
from latentlab.io import load_safetensors, save_safetensors
from latentlab.latents import LatentStore, count_nonfinite_rows

TINY_SIT = {"model_overrides": {"depth": 1, "hidden_size": 32, "num_heads": 2}, "heldout_size": 8,
            "train": {"batch_size": 8, "eval_every": 2}}


def _one_line(code, out, err):
    """The CLI refused: exit 2, one `error:` line, no traceback; returns the line."""
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _store_set(root, n=90, shape=(4, 2), seed=0):
    rng = np.random.default_rng(seed)
    for split, m in (("train", n), ("test", n // 3)):
        y = np.arange(m) % 3
        x = (rng.normal(size=(3, *shape)) * 2)[y] + 0.3 * rng.normal(size=(m, *shape))
        LatentStore.create(root / split, x.astype(np.float32), y, {"dataset": "toy", "split": split})
    return root


def _plant(store_dir, rows, value=np.nan):
    """Overwrite rows of the first shard after the store was written (the writer itself refuses NaN)."""
    shard = sorted(store_dir.glob("latents-*.npy"))[0]
    arr = np.load(shard)
    arr[rows, 0, 0] = value
    np.save(shard, arr)


# ---------------------------------------------------------------- non-finite latents

def test_count_nonfinite_rows_against_a_direct_count(rng):
    x = rng.normal(size=(1000, 3, 2)).astype(np.float32)
    x[[1, 1, 7], [0, 2, 1], 0] = np.nan
    x[500, 2, 1] = -np.inf
    x[999, 0, 0] = np.inf
    expected = int((~np.isfinite(x.reshape(1000, -1))).any(1).sum())
    assert expected == 4
    assert count_nonfinite_rows(x) == count_nonfinite_rows(x, chunk=7) == expected
    assert count_nonfinite_rows(x[:0]) == 0


def test_check_finite_counts_train_and_test_rows(tmp_path):
    root = _store_set(tmp_path / "set")
    _plant(root / "test", [0, 4])
    tok = TokenizerLatents("toy", LatentStore.open(root / "train"), LatentStore.open(root / "test"), str(root))
    with pytest.raises(LatentlabError, match=r"'toy': 2 of 30 latent rows in .*test contain NaN or inf"):
        check_finite([tok])
    tok.test = None
    check_finite([tok])  # the clean train store alone passes


@pytest.mark.parametrize("command", [
    ["probe", "--epochs", "1"],
    ["umap", "--n", "30", "--pca-dim", "0"],
    ["fit-gmm", "--components", "1,2"],
])
def test_analyses_refuse_nonfinite_latents_up_front(tmp_path, command):
    root = _store_set(tmp_path / "set")
    _plant(root / "train", [3, 10, 11])
    _plant(root / "train", [20], np.inf)
    out = tmp_path / "out"
    msg = _one_line(*run_cli(command[0], "--tokenizer", f"toy={root}", "--out", str(out), *command[1:]))
    assert "4 of 90 latent rows" in msg and "NaN or inf" in msg and "'toy'" in msg
    assert not out.exists()


def test_train_sit_refuses_nonfinite_latents_before_training(tmp_path):
    root = _store_set(tmp_path / "set")
    _plant(root / "test", [2])
    cfg = tmp_path / "sit.json"
    cfg.write_text(json.dumps(TINY_SIT))
    out = tmp_path / "run"
    msg = _one_line(*run_cli("train-sit", "--tokenizer", str(root), "--steps", "2", "--config", str(cfg),
                             "--out", str(out)))
    assert "1 of 30 latent rows" in msg and "learning rate" not in msg and "--lr" not in msg
    assert not out.exists()


@pytest.fixture
def sit_run(tmp_path):
    root = _store_set(tmp_path / "set")
    cfg = tmp_path / "sit.json"
    cfg.write_text(json.dumps(TINY_SIT))
    run = tmp_path / "sit"
    code, _, err = run_cli("train-sit", "--tokenizer", str(root), "--steps", "2", "--config", str(cfg),
                           "--out", str(run))
    assert code == 0, err
    return run


def test_sample_and_eval_sit_refuse_nan_weights(tmp_path, sit_run):
    w = load_safetensors(sit_run / "ema.safetensors")
    name = sorted(k for k in w if w[k].is_floating_point() and w[k].numel() >= 3)[0]
    w[name].view(-1)[:3] = torch.tensor([float("nan"), float("inf"), float("nan")])
    save_safetensors(w, sit_run / "ema.safetensors")
    for cmd in (["sample", "--sit", str(sit_run), "--n", "4", "--steps", "2"],
                ["eval-sit", "--sit", str(sit_run), "--n", "4", "--steps", "2"]):
        out = tmp_path / cmd[0]
        msg = _one_line(*run_cli(*cmd, "--out", str(out)))
        assert "3 NaN or inf weights in 1 tensors" in msg and name in msg and "diverged" in msg
        assert not out.exists()


def test_sample_refuses_nonfinite_normalisation_and_samples(tmp_path, sit_run):
    cfg = json.loads((sit_run / "config.json").read_text())
    good = json.dumps(cfg)
    cfg["normalization"]["mean"][1] = None  # how JSON records a NaN statistic
    (sit_run / "config.json").write_text(json.dumps(cfg))
    msg = _one_line(*run_cli("sample", "--sit", str(sit_run), "--n", "4", "--steps", "2", "--out", str(tmp_path / "s")))
    assert "1 NaN or inf normalisation statistics" in msg and not (tmp_path / "s").exists()
    (sit_run / "config.json").write_text(good)
    # finite but enormous output weights: every sampled latent overflows, refused before anything is written
    w = load_safetensors(sit_run / "ema.safetensors")
    w["final.linear.bias"] = torch.full_like(w["final.linear.bias"], 3e38)
    w["final.linear.weight"] = torch.full_like(w["final.linear.weight"], 3e38)
    save_safetensors(w, sit_run / "ema.safetensors")
    msg = _one_line(*run_cli("sample", "--sit", str(sit_run), "--n", "4", "--steps", "2", "--out", str(tmp_path / "s")))
    assert "4 of 4 sampled latents hold NaN or inf" in msg and "--cfg" in msg and not (tmp_path / "s").exists()


def test_tokenizer_with_nan_weights_is_refused_by_extract_and_eval(tmp_path):
    from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer

    tok = tmp_path / "tok"
    small = dict(width=32, depth=1, dec_width=32, dec_depth=1, heads=2, num_tokens=4, token_dim=4)
    train_tokenizer(TokenizerRunConfig(arch="ae", dataset="digits", eval_images=8, model=small,
                                       train=dict(steps=1, batch_size=8, device="cpu", warmup_steps=0)), tok)
    w = load_safetensors(tok / "ema.safetensors")
    w["decoder.out.bias"][0] = float("inf")
    save_safetensors(w, tok / "ema.safetensors")
    for cmd in (["eval-tokenizer", "--tokenizer", str(tok)], ["extract", "--tokenizer", str(tok)]):
        out = tmp_path / cmd[0]
        msg = _one_line(*run_cli(*cmd, "--out", str(out)))
        assert "1 NaN or inf weights" in msg and "decoder.out.bias" in msg
        assert not out.exists()


# ---------------------------------------------------------------- import-latents

def _import(tmp_path, x=None, y=None, latents_name="x.npy", labels_name="y.npy"):
    args = ["import-latents", "--out", str(tmp_path / "store")]
    if x is not None:
        np.save(tmp_path / latents_name, x) if latents_name.endswith(".npy") else None
        args += ["--latents", str(tmp_path / latents_name)]
    if y is not None:
        np.save(tmp_path / labels_name, y)
        args += ["--labels", str(tmp_path / labels_name)]
    return run_cli(*args)


def test_import_refuses_empty_arrays(tmp_path):
    msg = _one_line(*_import(tmp_path, np.zeros((0, 4), np.float32)))
    assert "empty" in msg and "(0, 4)" in msg
    _one_line(*_import(tmp_path, np.zeros((5, 0), np.float32)))
    msg = _one_line(*_import(tmp_path, np.zeros((5, 4), np.float32), np.zeros(0, np.int64)))
    assert "labels" in msg and "empty" in msg
    assert not (tmp_path / "store").exists()


def test_import_refuses_npz_pickles_and_text_without_suggesting_allow_pickle(tmp_path):
    x = np.ones((5, 4), np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    msg = _one_line(*run_cli("import-latents", "--latents", str(tmp_path / "x.npz"), "--out", str(tmp_path / "s")))
    assert ".npz" in msg and ".npy" in msg
    np.savez(tmp_path / "renamed.npz", x=x)
    (tmp_path / "renamed.npz").rename(tmp_path / "renamed.npy")  # a zip under a .npy name
    msg = _one_line(*run_cli("import-latents", "--latents", str(tmp_path / "renamed.npy"), "--out", str(tmp_path / "s")))
    assert ".npz" in msg
    (tmp_path / "x.pkl").write_bytes(pickle.dumps([[1.0, 2.0]]))
    (tmp_path / "x.txt").write_text("1 2 3\n4 5 6\n")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    for name in ("x.pkl", "x.txt", "obj.npy"):
        msg = _one_line(*run_cli("import-latents", "--latents", str(tmp_path / name), "--out", str(tmp_path / "s")))
        text = msg.replace(str(tmp_path), "").lower()
        assert "pickle" not in text and "unsafe" not in text, msg
        assert "numpy.save" in msg
    assert not (tmp_path / "s").exists()


def test_import_refuses_complex_values_and_negative_labels(tmp_path):
    x = (np.ones((6, 4)) + 1j * np.ones((6, 4))).astype(np.complex64)
    msg = _one_line(*_import(tmp_path, x))
    assert "complex" in msg
    real = np.ones((6, 4), np.float32)
    msg = _one_line(*_import(tmp_path, real, np.array([0, 1, -1, 2, -3, 1])))
    assert "2 of 6 labels" in msg and "negative" in msg
    assert not (tmp_path / "store").exists()
    code, out, err = _import(tmp_path, real, np.array([0, 1, 0, 2, 2, 1]))
    assert code == 0, err
    assert LatentStore.open(tmp_path / "store").has_labels


def test_import_message_names_every_accepted_shape(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 2, 2, 2, 2), np.float32))
    with pytest.raises(LatentlabError, match=r"\(N, T, C\), \(N, D\) or \(N, C, H, W\)"):
        import_arrays(tmp_path / "x.npy", None, tmp_path / "s")
    np.save(tmp_path / "g.npy", np.ones((3, 2, 4, 4), np.float32))
    assert import_arrays(tmp_path / "g.npy", None, tmp_path / "s").layout == "grid"


def test_import_labels_belong_to_latents(tmp_path):
    np.save(tmp_path / "y.npy", np.arange(4))
    msg = _one_line(*run_cli("import-latents", "--dataset", "digits", "--labels", str(tmp_path / "y.npy"),
                             "--out", str(tmp_path / "s")))
    assert "--labels goes with --latents" in msg


# ---------------------------------------------------------------- strict study configs

STUDY = {"dataset": "digits", "tokenizers": {"pixels": {"arch": "pixels"},
                                             "ae": {"arch": "ae", "train": {"steps": 5}}}}


def _study(**changes):
    import copy

    cfg = copy.deepcopy(STUDY)
    for path, value in changes.items():
        *head, last = path.split("__")
        d = cfg
        for k in head:
            d = d.setdefault(k, {})
        d[last] = value
    return cfg


@pytest.mark.parametrize("changes, expect", [
    ({"gmm__components": 5}, "gmm: components must be a list of integers, got 5"),
    ({"gmm__components": [1, "two"]}, "gmm: components must be a list of integers"),
    ({"tokenizers__ae__train__steps": "twenty"}, "tokenizers.ae.train: steps must be an integer, got 'twenty'"),
    ({"tokenizers__ae__train__steps": 2.5}, "tokenizers.ae.train: steps must be an integer"),
    ({"tokenizers__ae__decoder_finetune": {"lr": "fast"}}, "tokenizers.ae.decoder_finetune: lr must be a number"),
    ({"tokenizers__ae__model__mask_min": "high"}, "tokenizers.ae.model: mask_min must be a number"),
    ({"tokenizers__ae__model__aux_targets": "hog"}, "tokenizers.ae.model: aux_targets must be a list of strings"),
    ({"tokenizers__ae__size": 3}, "tokenizers.ae: size must be a string"),
    ({"sit__train__steps": "twenty"}, "sit.train: steps must be an integer"),
    ({"sit__train__betas": [0.9]}, "betas must be a list of 2 numbers"),
    ({"sample__n": "all"}, "sample: n must be an integer"),
    ({"sample__decode": "yes"}, "sample: decode must be a boolean"),
    ({"probe__probe__epochs": [3]}, "probe.probe: epochs must be an integer"),
    ({"umap__n": None}, "umap: n must be an integer, got None"),
    ({"gmm": [1, 2]}, "study config: gmm must be a mapping"),
    ({"seed": "0"}, "study config: seed must be an integer"),
    ({"report": 1}, "study config: report must be a boolean"),
    ({"tokenizers__maetok": {"size": "tiny", "train": {"steps": 5}}}, "tokenizer 'maetok' has no 'arch:'"),
    ({"tokenizers__maetok": None}, "tokenizer 'maetok' must be a mapping with at least 'arch:'"),
])
def test_study_config_types_are_strict(changes, expect):
    from latentlab.study.config import load_study_config

    with pytest.raises(LatentlabError) as e:
        load_study_config(_study(**changes))
    assert expect in str(e.value)
    assert "\n" not in str(e.value)


def test_study_config_accepts_what_yaml_users_write(tmp_path):
    from latentlab.study.config import load_study_config, section_configs

    path = tmp_path / "s.yaml"
    path.write_text("dataset: digits\ntokenizers:\n  ae: {arch: ae, train: {steps: 5.0, lr: 1e-4, betas: [0.9, 1]}}\n"
                    "gmm: {components: [1, 2, 5]}\nsample: {guidance_interval: [0, 1]}\n")
    cfg, entries = load_study_config(path)
    from latentlab.tokenizers.training import TokenizerRunConfig

    tcfg = TokenizerRunConfig(arch="ae", train=entries["ae"].train).train_config()
    assert tcfg.steps == 5 and isinstance(tcfg.steps, int)
    assert tcfg.lr == 1e-4 and tcfg.betas == (0.9, 1.0)  # YAML 1.1 would read 1e-4 as a string
    sections = section_configs(cfg)
    assert sections["gmm"].components == (1, 2, 5)
    assert sections["sample"].guidance_interval == (0.0, 1.0)


@pytest.mark.parametrize("text, line", [
    ("dataset: digits\ndataset: mnist5k\ntokenizers: {ae: {arch: ae}}\n", 2),
    ("dataset: digits\ntokenizers:\n  ae: {arch: ae}\n  ae: {arch: vae}\n", 4),
    ("dataset: digits\ntokenizers:\n  ae: {arch: ae, train: {steps: 5, steps: 6}}\n", 3),
])
def test_duplicate_yaml_keys_are_refused(tmp_path, text, line):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    msg = _one_line(*run_cli("run", str(path), "--out", str(tmp_path / "out")))
    assert "duplicate key" in msg and f"line {line}" in msg
    assert not (tmp_path / "out").exists()


def _bad_value(tp):
    """A value of the wrong type for type hint `tp` (None where None is allowed is fine, so it is not used)."""
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _bad_value(next(a for a in args if a is not type(None)))
    if origin in (list, tuple):
        return "one"
    if origin is dict or tp is dict:
        return [1]
    return {bool: "yes", int: "twenty", float: "fast", str: 7}.get(tp, None)


def _config_classes():
    """Every settings dataclass of the torch-free config modules (new ones are covered without new test code)."""
    import dataclasses
    import importlib

    mods = ["latentlab.config", "latentlab.tokenizers.config", "latentlab.sit.config", "latentlab.analysis.config",
            "latentlab.metrics.config", "latentlab.study.config"]
    out = []
    for name in mods:
        mod = importlib.import_module(name)
        out += [o for o in vars(mod).values()
                if isinstance(o, type) and dataclasses.is_dataclass(o) and o.__module__ == name]
    return out


def test_every_config_field_refuses_a_value_of_the_wrong_type():
    import dataclasses
    import typing

    from latentlab.config import from_dict

    checked = 0
    for cls in _config_classes():
        required = {f.name: "ae" for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        for name, tp in typing.get_type_hints(cls).items():
            bad = _bad_value(tp)
            if bad is None:
                continue
            with pytest.raises(LatentlabError, match=f"{name} must be") as e:
                from_dict(cls, {**required, name: bad}, cls.__name__)
            assert repr(bad) in str(e.value)
            checked += 1
    assert checked > 100 and len(_config_classes()) >= 12


def test_import_refuses_a_folder_or_an_unreadable_file(tmp_path, monkeypatch):
    import latentlab.io

    (tmp_path / "dir.npy").mkdir()
    msg = _one_line(*run_cli("import-latents", "--latents", str(tmp_path / "dir.npy"), "--out", str(tmp_path / "s")))
    assert "is a folder" in msg
    np.save(tmp_path / "x.npy", np.ones((3, 2), np.float32))

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(latentlab.io, "open", denied, raising=False)  # what open() raises on a chmod-0 file
    msg = _one_line(*run_cli("import-latents", "--latents", str(tmp_path / "x.npy"), "--out", str(tmp_path / "s")))
    assert "cannot read latents file" in msg and "Permission denied" in msg and "permissions" in msg
    assert not (tmp_path / "s").exists()
