import json

import numpy as np
import pandas as pd
import pytest

from latentlab.analysis.relate import correlations
from latentlab.study.cache import StageLog, run_stage


def test_stage_cached_and_rerun_on_change(tmp_path):
    calls = []

    def fn(work, resume):
        calls.append(resume)
        (work / "out.txt").write_text("x")
        return {"file": "out.txt"}

    log = StageLog()
    a = run_stage(tmp_path, "tok", "s", {"k": 1}, fn, log)
    b = run_stage(tmp_path, "tok", "s", {"k": 1}, fn, log)
    assert not a.reused and b.reused and calls == [False]
    assert (b.path / "out.txt").read_text() == "x"
    c = run_stage(tmp_path, "tok", "s", {"k": 2}, fn, log)
    assert not c.reused and len(calls) == 2
    assert log.reused() == ["tok/s"] and log.ran() == ["tok/s", "tok/s"]
    assert json.loads((c.path / "stage.json").read_text())["key"] == {"k": 2}


def test_killed_stage_leaves_nothing_and_resumes(tmp_path):
    def boom(work, resume):
        (work / "ckpt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path, "tok", "train", {"k": 1}, boom, resumable=True)
    assert not (tmp_path / "tok" / "train").exists()
    seen = {}

    def fn(work, resume):
        seen["resume"] = resume
        seen["ckpt"] = (work / "ckpt").read_text()
        return {}

    run_stage(tmp_path, "tok", "train", {"k": 1}, fn, resumable=True)
    assert seen == {"resume": True, "ckpt": "half"}
    assert not (tmp_path / "tok" / "train.work").exists()
    # a different key never resumes from a stale work directory
    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path, "tok", "other", {"k": 1}, boom, resumable=True)
    run_stage(tmp_path, "tok", "other", {"k": 2}, lambda w, r: seen.update(r2=r) or {}, resumable=True)
    assert seen["r2"] is False


def test_correlations_planted():
    from scipy import stats

    rng = np.random.default_rng(0)
    target = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    df = pd.DataFrame({"tokenizer": list("abcde"), "sit_loss": target,
                       "up": target * 3 + 1, "down": -target ** 2, "noise": rng.normal(size=5),
                       "sparse": [1.0, np.nan, np.nan, np.nan, 2.0]})
    c = correlations(df, ["up", "down", "noise", "sparse"], ["sit_loss"]).set_index("predictor")
    assert c.loc["up", "spearman"] == pytest.approx(1.0) and c.loc["up", "kendall"] == pytest.approx(1.0)
    assert c.loc["down", "spearman"] == pytest.approx(-1.0)
    rho = stats.spearmanr(df["noise"], target)[0]
    assert c.loc["noise", "spearman"] == pytest.approx(rho)
    assert c.loc["sparse", "n"] == 2 and np.isnan(c.loc["sparse", "spearman"])
    assert c.loc["up", "n"] == 5
