"""The command line as a whole: instant --help, validated options, defaults from the dataclasses, one-line errors.

The option tests walk click's command tree, so a new command or option is covered without new test code.
"""

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from conftest import run_cli
from latentlab.cli import cli
from latentlab.cli.common import IntList
from latentlab.config import from_dict
from latentlab.datasets import DATASETS
from latentlab.errors import LatentlabError
from latentlab.metrics.config import GFID_SAMPLES, GFID_SAMPLES_EMBEDDED, MetricsConfig, default_n_samples

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "sklearn")

# Runs every --help (and `datasets`) in one fresh interpreter and reports what was imported after each.
RUNNER = """
import contextlib, io, json, sys
from latentlab.cli import cli
cases = [["--help"], ["--version"], ["datasets"], ["datasets", "--json"]] + [[c, "--help"] for c in sorted(cli.commands)]
report = []
for args in cases:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            cli.main(args=args)
        except SystemExit as e:
            code = e.code
    report.append({"args": args, "code": code, "heavy": [m for m in %r if m in sys.modules], "out": out.getvalue()})
print(json.dumps(report))
""" % (HEAVY,)


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "", "LATENTLAB_PROGRESS": "0"})


def test_help_and_datasets_import_no_torch():
    res = _python("-c", RUNNER)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert len(report) == 4 + len(cli.commands)
    for r in report:
        assert r["code"] == 0, r["args"]
        assert r["heavy"] == [], f"latentlab {' '.join(r['args'])} imported {r['heavy']}"
        assert r["out"].strip()
    listing = json.loads(report[3]["out"])
    assert sorted(listing) == sorted(DATASETS) and all(listing.values())


def test_entry_point_help_imports_no_torch():
    res = _python("-X", "importtime", "-m", "latentlab", "--help")
    assert res.returncode == 0 and "Usage: latentlab" in res.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "latentlab.cli" in imported and not imported & set(HEAVY)


# ---------------------------------------------------------------- the command tree

def _options():
    for name, cmd in sorted(cli.commands.items()):
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.is_flag and "--help" not in p.opts:
                yield name, p


def _numeric_options():
    return [(n, p) for n, p in _options()
            if isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType, IntList))]


def _flag(p: click.Option) -> str:
    return max(p.opts, key=len)


def _within(value: str, t: click.ParamType) -> bool:
    """Whether `value` lies in the option's declared range (read from the type, not from click's answer)."""
    try:
        x = float(value)
    except ValueError:
        return False
    if isinstance(t, IntList):
        return x >= t.min
    if t.min is not None and (x < t.min or (t.min_open and x == t.min)):
        return False
    if t.max is not None and (x > t.max or (t.max_open and x == t.max)):
        return False
    return True


NUMERIC = _numeric_options()


def test_the_tree_has_numeric_options():
    flags = {(n, _flag(p)) for n, p in NUMERIC}
    assert {("train-sit", "--eval-every"), ("eval-sit", "--n"), ("fid", "--real-limit"),
            ("fit-gmm", "--components"), ("sample", "--guidance-interval")} <= flags


@pytest.mark.parametrize("command,option", NUMERIC, ids=[f"{n}{_flag(p)}" for n, p in NUMERIC])
def test_every_numeric_option_is_ranged_and_refuses_bad_values(command, option):
    t = option.type
    assert isinstance(t, (click.IntRange, click.FloatRange, IntList)), f"{command} {_flag(option)} has no range"
    if not isinstance(t, IntList):
        assert t.min is not None or t.max is not None
    bad = [v for v in ("0", "-1", "abc") if not _within(v, t)]
    assert "abc" in bad
    for v in bad:
        code, out, err = run_cli(command, _flag(option), *[v] * option.nargs)
        lines = err.strip().splitlines()
        assert code == 2 and out == "", (command, _flag(option), v, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
        assert f"'{_flag(option)}'" in lines[0], lines[0]  # the flag, not an internal field


def test_no_default_is_written_in_the_cli():
    """Defaults come from the library's dataclasses: every option defaults to None (flags to off)."""
    for name, p in _options():
        default = p.to_info_dict()["default"]  # None also when no default was given
        assert default is None, f"{name} {_flag(p)} has default={default!r}; put it in the config dataclass"


@pytest.mark.parametrize("args,flag", [
    (["train-sit", "--lr", "0"], "--lr"),
    (["train-sit", "--lr", "-1e-3"], "--lr"),
    (["train-sit", "--eval-every", "0"], "--eval-every"),
    (["train-sit", "--batch-size", "0"], "--batch-size"),
    (["train-tokenizer", "--lr", "0"], "--lr"),
    (["eval-sit", "--steps", "0"], "--steps"),
    (["eval-sit", "--n", "0"], "--n"),
    (["fid", "--real-limit", "-3"], "--real-limit"),
    (["fit-gmm", "--epochs", "0"], "--epochs"),
    (["fit-gmm", "--components", "1,x"], "--components"),
    (["train-tokenizer", "--arch", "transformer"], "--arch"),
    (["train-tokenizer", "--size", "XXL"], "--size"),
    (["train-sit", "--model", "SiT-huge"], "--model"),
    (["sample", "--guidance-interval", "0.8", "0.2"], "--guidance-interval"),
    (["sample", "--guidance-interval", "0.2", "1.5"], "--guidance-interval"),
])
def test_reported_bad_values_are_refused_before_work(args, flag):
    code, out, err = run_cli(*args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and f"'{flag}'" in err


@pytest.mark.parametrize("args", [["train-sit", "--no-such-flag"], ["no-such-command"], ["fid"],
                                  ["sample", "--guidance-interval", "0.1"]])
def test_usage_errors_are_one_line(args):
    code, out, err = run_cli(*args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_help_shows_the_dataclass_defaults():
    from latentlab.sit.config import SIT_TRAIN_DEFAULTS, SampleConfig, SiTTrainConfig

    code, out, _ = run_cli("sample", "--help")
    assert code == 0 and f"[{SampleConfig().n}]" in out and f"[{SampleConfig().steps}]" in out
    code, out, _ = run_cli("train-sit", "--help")
    tiny = SIT_TRAIN_DEFAULTS[SiTTrainConfig().model]
    assert code == 0 and f"{tiny.lr:g}" in out and f"{SIT_TRAIN_DEFAULTS['SiT-B'].lr:g}" in out


# ---------------------------------------------------------------- the library behind eval-sit --n

def test_metrics_config_refuses_impossible_counts():
    for bad in ({"n": 0}, {"steps": 0}, {"batch_size": 0}, {"real_limit": -3}, {"sampler": "rk4"}, {"cfg": -1.0}):
        with pytest.raises(LatentlabError):
            from_dict(MetricsConfig, bad, "metrics")
    assert from_dict(MetricsConfig, {"n": 7}, "metrics").n == 7


def test_default_number_of_gfid_samples():
    assert default_n_samples("mnist5k") == GFID_SAMPLES_EMBEDDED
    assert default_n_samples("imagefolder:/data/imagenet") == GFID_SAMPLES
