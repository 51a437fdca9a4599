"""A failed study stage starts again from an empty work folder; a study that lacks a package is refused up front."""

import pytest
import yaml
from conftest import run_cli

import latentlab.study.config as C
from latentlab.study.cache import run_stage


def test_failed_stage_that_cannot_resume_starts_from_an_empty_work_folder(tmp_path):
    """relate's tables.mkdir() met the tables/ of a failed attempt (FileExistsError): never again."""
    attempts = []

    def relate(work, resume):
        attempts.append(sorted(p.name for p in work.iterdir()))
        (work / "tables").mkdir()  # no exist_ok, as build_outputs does
        (work / "tables" / "summary.csv").write_text("half")
        if len(attempts) == 1:
            raise RuntimeError("failed partway")
        return {}

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "_study", "relate", {"k": 1}, relate)
    assert (tmp_path / "_study" / "relate.work" / "tables").is_dir()  # what the failure left behind
    res = run_stage(tmp_path, "_study", "relate", {"k": 1}, relate)
    assert attempts == [[], []] and not res.reused and (res.path / "tables" / "summary.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "_study").iterdir()) == ["relate"]


def _study(tmp_path, **over):
    cfg = {"dataset": "digits", "device": "cpu", "report": False,
           "tokenizers": {"pixels": {"arch": "pixels"}}, **over}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


CASES = [  # (config overrides, the module it lacks, words of the message)
    ({"report": True}, "nbclient", ["report: true", "latentlab[notebooks]", "report: false"]),
    ({"report": True}, "nbconvert", ["report: true", "latentlab[notebooks]"]),
    ({"metrics": {"extractor": "inception"}}, "torch_fidelity", ["inception", "latentlab[fid]", "lenet"]),
    ({"metrics": {"extractor": "dinov2:vit-s-14"}}, "torch_fidelity", ["dinov2", "latentlab[fid]", "lenet"]),
    ({"tokenizers": {"va": {"arch": "vavae", "model": {"teacher": "dinov2:/w.pth"}}}}, "timm",
     ["tokenizers.va", "latentlab[teachers]", "hog"]),
    ({"tokenizers": {"mae": {"arch": "maetok", "model": {"aux_targets": ["hog", "clip:/w.bin"]}}}}, "open_clip",
     ["tokenizers.mae", "teacher clip", "latentlab[teachers]"]),
    ({"tokenizers": {"sd": {"arch": "pretrained", "pretrained": "diffusers:/sd-vae"}}}, "diffusers",
     ["tokenizers.sd", "latentlab[external]"]),
]


@pytest.mark.parametrize("over,missing,words", CASES)
def test_missing_optional_package_is_refused_before_any_stage(tmp_path, monkeypatch, over, missing, words):
    real = C.find_spec
    monkeypatch.setattr(C, "find_spec", lambda name: None if name == missing else real(name))
    out = tmp_path / "out"
    code, _, err = run_cli("run", str(_study(tmp_path, **over)), "--out", str(out))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert missing in err and all(w in err for w in words), err
    assert not out.exists()  # refused before the study folder was even created


def test_features_that_are_off_need_nothing(tmp_path, monkeypatch):
    """report: false, the lenet extractor and hog teachers import no optional package."""
    monkeypatch.setattr(C, "find_spec", lambda name: None)
    cfg, entries = C.load_study_config(_study(tmp_path, tokenizers={"va": {"arch": "vavae"}, "m": {"arch": "maetok"}}))
    assert set(entries) == {"va", "m"} and cfg.report is False
