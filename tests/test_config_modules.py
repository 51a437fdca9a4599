"""The settings dataclasses live in torch-free config modules that the library and the CLI share."""

import subprocess
import sys
from pathlib import Path

import pytest

from latentlab.config import TrainConfig, from_dict
from latentlab.errors import LatentlabError
from latentlab.sit.config import SIT_MODELS, SIT_TRAIN_DEFAULTS, SiTTrainConfig
from latentlab.tokenizers.config import ARCHS
from latentlab.tokenizers.models import TOKENIZERS

ROOT = Path(__file__).resolve().parents[1]
CONFIG_MODULES = ["latentlab.config", "latentlab.tokenizers.config", "latentlab.sit.config",
                  "latentlab.analysis.config", "latentlab.metrics.config"]


def test_config_modules_import_no_heavy_library():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CONFIG_MODULES)
            + "print(','.join(m for m in ('torch', 'sklearn', 'scipy', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}, check=True)
    assert out.stdout.strip() == ""


def test_arch_names_are_the_registry_keys():
    assert ARCHS == tuple(TOKENIZERS)


def test_sit_train_defaults_per_preset():
    assert set(SIT_TRAIN_DEFAULTS) == set(SIT_MODELS)
    tiny, small = SiTTrainConfig(model="SiT-tiny").train_config(), SiTTrainConfig(model="SiT-S/2").train_config()
    # the SiT paper's recipe for the paper presets, a faster EMA and lr for the CPU preset
    assert (small.lr, small.ema_decay, small.schedule, small.warmup_steps) == (1e-4, 0.9999, "constant", 0)
    assert (tiny.lr, tiny.ema_decay, tiny.schedule, tiny.warmup_steps) == (3e-4, 0.999, "constant", 50)
    assert tiny.steps == TrainConfig().steps  # fields the structure leaves out come from TrainConfig
    # a run's own `train:` wins over its preset, and the shared defaults are not mutated by it
    over = SiTTrainConfig(model="SiT-tiny", train={"lr": 5e-3, "ema_decay": 0.5}).train_config()
    assert (over.lr, over.ema_decay, over.warmup_steps) == (5e-3, 0.5, 50)
    assert SIT_TRAIN_DEFAULTS["SiT-tiny"].lr == 3e-4


def test_unknown_sit_model_refused_when_configured():
    with pytest.raises(LatentlabError, match="unknown SiT model 'SiT-huge'"):
        from_dict(SiTTrainConfig, {"model": "SiT-huge"}, "train-sit config")
