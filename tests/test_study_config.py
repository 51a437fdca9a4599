"""Study config: sweeps expand into named variants, baselines, seeds, primary and reference are validated."""

import pytest

from latentlab.errors import LatentlabError
from latentlab.study.columns import HYPOTHESES, METRICS, KINDS, ROLES, study_metrics
from latentlab.study.config import load_study_config
from latentlab.tokenizers.config import TokenizerConfig

BASE = {"dataset": "digits", "device": "cpu", "gmm": {"components": [1, 2]},
        "tokenizers": {"pixels": {"arch": "pixels"}, "ae": {"arch": "ae"}}}


def _cfg(**kw):
    return {**BASE, **kw}


def test_sweep_is_a_named_product():
    tokenizers = {"pixels": {"arch": "pixels"},
                  "vae": {"arch": "vae", "train": {"steps": 5},
                          "sweep": {"model.kl_weight": [1e-6, 0.001], "train.lr": [0.001, 0.0003]}},
                  "maetok": {"arch": "maetok", "sweep": {"model.mask_ratio": [0.25, 0.5]}},
                  "plain": {"arch": "maetok", "model": {"aux_targets": []}}}
    cfg, entries = load_study_config(_cfg(tokenizers=tokenizers))
    assert list(entries) == ["pixels", "vae@kl_weight=1e-06,lr=0.001", "vae@kl_weight=1e-06,lr=0.0003",
                             "vae@kl_weight=0.001,lr=0.001", "vae@kl_weight=0.001,lr=0.0003",
                             "maetok@mask_ratio=0.25", "maetok@mask_ratio=0.5", "plain"]
    e = entries["vae@kl_weight=0.001,lr=0.0003"]
    assert e.model == {"kl_weight": 0.001} and e.train == {"steps": 5, "lr": 0.0003}
    assert entries["pixels"].baseline is True and not any(e.baseline for n, e in entries.items() if n != "pixels")
    assert cfg.seeds == 1 and cfg.primary is None


def test_mask_ratio_fixes_the_ratio():
    c = TokenizerConfig(arch="maetok", mask_ratio=0.25)
    assert c.mask_min == c.mask_max == 0.25


@pytest.mark.parametrize("change,message", [
    ({"seeds": 0}, "seeds must be a whole number >= 1"),
    ({"reference": "vae"}, "reference 'vae' is not a tokenizer"),
    ({"primary": {"predictor": "lp_top1"}}, "primary must be {predictor"),
    ({"primary": {"predictor": "gmm_nll_per_dim_k1", "target": "sit_loss"}}, "is not a predictor of this study"),
    ({"primary": {"predictor": "gmm_nll_k1", "target": "sit_loss"}}, "is not a predictor of this study"),
    ({"diffusability": {"n_images": 1}}, "n_images must be >= 2"),
    ({"diffusability": {"colour": 1}}, "colour"),
    ({"primary": {"predictor": "lp_top1", "target": "rankme"}}, "is not a target of this study"),
    ({"tokenizers": {"ae": {"arch": "ae", "sweep": {"colour.x": [1]}}}}, "cannot sweep 'colour.x'"),
    ({"tokenizers": {"ae": {"arch": "ae", "sweep": {"model.kl_weight": 0.1}}}}, "must be a non-empty list"),
    ({"tokenizers": {"va": {"arch": "vavae", "sweep": {"model.teacher": ["dinov2:/x/y"]}}}}, "path separator"),
    ({"tokenizers": {"a@b": {"arch": "ae"}}}, "is not allowed"),
])
def test_bad_study_settings_are_one_line_errors(change, message):
    with pytest.raises(LatentlabError, match=message.replace("{", r"\{").replace("(", r"\(")):
        load_study_config(_cfg(**change))


def test_primary_and_reference_accepted():
    cfg, entries = load_study_config(_cfg(primary={"predictor": "gain_k2", "target": "gfd_lenet"},
                                          reference="ae", seeds=3,
                                          tokenizers={"pixels": {"arch": "pixels", "baseline": False},
                                                      "ae": {"arch": "ae", "baseline": True}}))
    assert cfg.seeds == 3 and cfg.reference == "ae"
    assert entries["pixels"].baseline is False and entries["ae"].baseline is True


def test_metric_registry_is_well_formed():
    assert all(m.kind in KINDS and m.role in ROLES for m in METRICS)
    names = [m.name for m in study_metrics([1, 5], "rfd_lenet", "gfd_lenet")]
    assert len(names) == len(set(names))
    assert {"gmm_nll_k1", "gmm_nll_k5", "gmm_nll_per_dim_k5", "rfd_lenet", "gfd_lenet", "sit_loss"} <= set(names)
    assert {"gain_k5", "modes_bic", "gkid_lenet", "cond_acc_lenet", "twonn"} <= set(names) and "gain_k1" not in names
    raw = [m for m in study_metrics([1, 5], "rfd_lenet", "gfd_lenet") if m.name.startswith("gmm_nll")]
    assert raw and all(m.role == "derived" for m in raw)  # the raw NLLs are not mode counts (issue 13)
    assert all(m.hypothesis in HYPOTHESES for m in METRICS if m.role == "predictor")
    inception = [m.name for m in study_metrics([1], "rfid", "gfid")]
    assert {"gkid_inception", "gfd_floor_inception", "cond_acc_inception"} <= set(inception)


def test_diffusability_section_follows_the_study():
    """The diffusability section defaults to the study's seed, device and FD extractor; its own keys win."""
    from latentlab.study.config import section_configs

    cfg, _ = load_study_config(_cfg(seed=7, metrics={"extractor": "torchscript:/x.pt"}))
    d = section_configs(cfg)["diffusability"]
    assert d.extractor == "torchscript:/x.pt" and d.seed == 7 and d.n_images == 256
    cfg, _ = load_study_config(_cfg(diffusability={"extractor": "lenet", "n_images": 64, "taus": [0.5]}))
    d = section_configs(cfg)["diffusability"]
    assert d.extractor == "lenet" and d.n_images == 64 and d.taus == (0.5,)
