"""latentlab never deletes or replaces what it did not write, and refuses bad output locations in one line."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli

from latentlab.errors import LatentlabError
from latentlab.extract import import_pixels
from latentlab.io import load_safetensors
from latentlab.outputs import MARKER, check_output, output_dir, output_kind
from latentlab.sit.sample import SampleConfig, sample
from latentlab.sit.training import SiTTrainConfig, train_sit
from latentlab.tokenizers.training import TokenizerRunConfig, train_tokenizer

SMALL_TOK = dict(width=32, depth=1, dec_width=32, dec_depth=1, heads=2, num_tokens=4, token_dim=4)
SIT = {"model_overrides": {"depth": 1, "hidden_size": 32, "num_heads": 2}, "heldout_size": 8,
       "train": {"batch_size": 8, "eval_every": 2, "ckpt_every": 2, "device": "cpu"}}


def _tree(root: Path) -> dict:
    """Every file under `root` (hidden ones too) with the hash of its bytes."""
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _one_line_error(code, out, err, *needles):
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """One of every input the writing commands read: a store, a store set, a tokenizer run, a SiT run, samples."""
    root = tmp_path_factory.mktemp("safety")
    rng = np.random.default_rng(0)
    np.save(root / "X.npy", rng.normal(size=(40, 4, 3)).astype(np.float32))
    import_pixels("digits", root / "px")
    train_tokenizer(TokenizerRunConfig(arch="ae", dataset="digits", eval_images=8, model=SMALL_TOK,
                                       train=dict(steps=2, batch_size=8, device="cpu", warmup_steps=1)), root / "tok")
    sit_cfg = SiTTrainConfig(**{**SIT, "train": {**SIT["train"], "steps": 2}})
    train_sit(str(root / "px"), root / "sit", sit_cfg)
    sample(root / "sit", root / "samples", SampleConfig(n=6, steps=2, device="cpu"))
    (root / "study.yaml").write_text(yaml.safe_dump({"dataset": "digits", "device": "cpu", "report": False,
                                                     "tokenizers": {"pixels": {"arch": "pixels"}}}))
    return root


def _commands(w: Path) -> dict[str, list[str]]:
    """Every command that writes, with inputs from `w`, ending just before the value of --out."""
    return {
        "import-latents": ["import-latents", "--latents", str(w / "X.npy")],
        "import-latents --dataset": ["import-latents", "--dataset", "digits"],
        "extract": ["extract", "--tokenizer", str(w / "tok"), "--split", "test", "--device", "cpu"],
        "train-tokenizer": ["train-tokenizer", "--arch", "ae", "--dataset", "digits", "--steps", "1", "--device", "cpu"],
        "train-sit": ["train-sit", "--tokenizer", str(w / "px"), "--steps", "1", "--device", "cpu"],
        "sample": ["sample", "--sit", str(w / "sit"), "--n", "4", "--steps", "1", "--device", "cpu"],
        "fit-gmm": ["fit-gmm", "--tokenizer", str(w / "px"), "--components", "1"],
        "probe": ["probe", "--tokenizer", str(w / "px"), "--epochs", "1", "--device", "cpu"],
        "umap": ["umap", "--tokenizer", str(w / "px"), "--n", "20"],
        "fid": ["fid", "--real", "digits:test", "--fake", str(w / "samples" / "images.npz")],
        "eval-tokenizer": ["eval-tokenizer", "--tokenizer", str(w / "tok"), "--device", "cpu"],
        "eval-sit": ["eval-sit", "--sit", str(w / "sit"), "--n", "4", "--steps", "1", "--device", "cpu"],
        "run": ["run", str(w / "study.yaml")],
    }


COMMANDS = list(_commands(Path(".")))


def _bad_outs(w: Path, tmp: Path, cmd: str) -> list[tuple[str, Path, str]]:
    """(case, --out, expected words): each must be refused without touching anything."""
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("my notes")
    (tmp / "file.txt").write_text("my file")
    (tmp / "broken").symlink_to(tmp / "nowhere")
    other = w / ("sit" if cmd == "sample" else "samples")  # a latentlab output of another kind
    cases = [("foreign folder", tmp / "mine", "did not write"), ("regular file", tmp / "file.txt", "is a file"),
             ("file as parent", tmp / "file.txt" / "sub", "is a file"),
             ("missing parent", tmp / "no" / "such" / "out", "does not exist"),
             ("other kind", other, "holds a latentlab"), ("broken link", tmp / "broken", "broken symbolic link"),
             ("the current folder", Path("."), "did not write"), ("the root folder", Path("/"), "root folder")]
    if Path("/proc/self").is_dir():
        cases.append(("virtual file system", Path("/proc/x"), "cannot write"))
    return cases


@pytest.mark.parametrize("cmd", COMMANDS)
def test_bad_output_locations_are_refused_and_nothing_changes(w, tmp_path, cmd):
    args = _commands(w)[cmd]
    for case, out, words in _bad_outs(w, tmp_path, cmd):
        before = {p: _tree(p) for p in (tmp_path, w)}
        _one_line_error(*run_cli(*args, "--out", str(out)), words)
        assert {p: _tree(p) for p in (tmp_path, w)} == before, case
        assert not (tmp_path / "no").exists() and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("cmd", ["import-latents", "import-latents --dataset", "sample", "probe"])
def test_own_output_is_replaced_whole_and_stale_temps_are_removed(w, tmp_path, cmd):
    args = _commands(w)[cmd]
    out = tmp_path / "out"
    (out).mkdir()  # an empty folder is accepted
    code, _, err = run_cli(*args, "--out", str(out))
    assert code == 0, err
    kind, files = output_kind(out)
    assert kind is not None and sorted(files) == sorted(p.name for p in out.iterdir() if p.name != MARKER)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [tmp_path / f".out.tmp-{dead.pid}-deadbeef", tmp_path / ".out.tmp-0badcafe"]  # killed writers
    live = tmp_path / f".out.tmp-{os.getpid()}-0123abcd"  # a writer that is still running: kept
    for p in stale + [live]:
        p.mkdir()
        (p / "half.npy").write_bytes(b"half")
    code, _, err = run_cli(*args, "--out", str(out))
    assert code == 0, err
    assert output_kind(out)[0] == kind and not any(p.exists() for p in stale) and live.is_dir()
    (out / "mine.txt").write_text("mine")  # a user's file inside a latentlab output: never deleted
    _one_line_error(*run_cli(*args, "--out", str(out)), "mine.txt", "did not write")
    assert (out / "mine.txt").read_text() == "mine"


def test_failed_replacement_keeps_the_old_output(tmp_path):
    out = tmp_path / "o"
    with output_dir(out, "test output") as d:
        (d / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with output_dir(out, "test output") as d:
            (d / "a.txt").write_text("new, half")
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert check_output(out, "test output") is True
    with pytest.raises(LatentlabError, match="holds a latentlab test output, not a store"):
        check_output(out, "store")


def test_replace_without_an_atomic_exchange(tmp_path, monkeypatch):
    """Where renameat2 is missing, the old output is moved aside, the new one renamed in, the old removed."""
    import latentlab.io as io

    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    out = tmp_path / "o"
    for text in ("one", "two"):
        with output_dir(out, "test output") as d:
            (d / "a.txt").write_text(text)
    assert (out / "a.txt").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def _sit_args(w: Path, out: Path, steps: int) -> list[str]:
    cfg = out.parent / "sit.json"
    cfg.write_text(json.dumps(SIT))
    return ["train-sit", "--tokenizer", str(w / "px"), "--steps", str(steps), "--config", str(cfg),
            "--out", str(out)]


def test_second_training_run_needs_resume(w, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli(*_sit_args(w, run, 2))
    assert code == 0, err
    before = _tree(run)
    err = _one_line_error(*run_cli(*_sit_args(w, run, 4)), "already holds a run", "--resume", "fresh --out")
    assert "step 2" in err and _tree(run) == before  # metrics.jsonl untouched: no second log appended
    # a partial run (killed before its first checkpoint) is refused the same way ...
    for f in ("model.safetensors", "ema.safetensors", "state.pt"):
        (run / f).unlink()
    _one_line_error(*run_cli(*_sit_args(w, run, 2)), "no checkpoint yet", "--resume")
    # ... and --resume starts it from step 0, equal to a fresh run
    stale = run / f".state.pt.tmp-{2 ** 22 + 12345}-abcdef12"  # a temporary of a killed checkpoint write
    stale.write_bytes(b"half")
    code, _, err = run_cli(*_sit_args(w, run, 2), "--resume")
    assert code == 0, err
    fresh = tmp_path / "fresh"
    code, _, err = run_cli(*_sit_args(w, fresh, 2))
    assert code == 0, err
    a, b = load_safetensors(run / "ema.safetensors"), load_safetensors(fresh / "ema.safetensors")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a) and not stale.exists()
    assert (run / "metrics.jsonl").read_text().count("\n") == (fresh / "metrics.jsonl").read_text().count("\n")
    # resuming a finished run with the same --steps trains nothing and changes nothing
    before = _tree(run / "ema.safetensors")
    code, _, err = run_cli(*_sit_args(w, run, 2), "--resume")
    assert code == 0, err
    assert _tree(run / "ema.safetensors") == before
    # --resume where there is nothing, and a run of another kind
    _one_line_error(*run_cli(*_sit_args(w, tmp_path / "empty", 2), "--resume"), "nothing to resume")
    _one_line_error(*run_cli("train-tokenizer", "--arch", "ae", "--dataset", "digits", "--steps", "1",
                             "--out", str(run)), "holds a latentlab sit run, not a tokenizer run")


def test_cut_off_checkpoint_is_refused_not_resumed_inexactly(tmp_path, monkeypatch):
    """A crash between renaming the weights and state.pt leaves them disagreeing: resume says so."""
    from test_train import Regression, _cfg

    import latentlab.trainer as T

    T.train(Regression(), _cfg(steps=20, ckpt_every=10, eval_every=10), tmp_path / "run")
    real = os.replace

    def crash_on_third(a, b):
        if Path(b).name == "state.pt":  # model and ema at step 40 are in place, state.pt still at step 20
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(T.os, "replace", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        T.train(Regression(), _cfg(steps=40, ckpt_every=40, eval_every=40), tmp_path / "run", resume=True)
    monkeypatch.setattr(T.os, "replace", real)
    assert not list((tmp_path / "run").glob(".*.tmp-*"))
    with pytest.raises(LatentlabError, match="cut off"):
        T.train(Regression(), _cfg(steps=40, ckpt_every=40, eval_every=40), tmp_path / "run", resume=True)


def test_disk_full_mid_write_is_one_line_and_the_old_output_stays(w, tmp_path, monkeypatch):
    import errno

    import pandas as pd

    args = _commands(w)["fit-gmm"]
    out = tmp_path / "out"
    code, _, err = run_cli(*args, "--out", str(out))
    assert code == 0, err
    before = _tree(out)

    def full(self, path=None, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    _one_line_error(*run_cli(*args, "--out", str(out)), "No space left on device", "free space")
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
