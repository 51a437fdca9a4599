"""hypotheses.csv: which hypothesis's predictor tracks generation, on planted data with a known answer."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from latentlab.analysis.hypotheses import (COLUMNS, PAIR_COLUMNS, hypotheses_paragraph, hypotheses_table,
                                           pairs_table)
from latentlab.analysis.inference import holm
from latentlab.analysis.relate import correlations
from latentlab.study.columns import HYPOTHESES, METRICS, representatives, study_metrics


def test_registry_declares_at_most_one_representative_per_hypothesis():
    reps = [m for m in METRICS if m.representative]
    assert all(m.role == "predictor" and m.hypothesis in HYPOTHESES for m in reps)
    assert len({m.hypothesis for m in reps}) == len(reps)
    assert all(m.hypothesis in HYPOTHESES for m in METRICS if m.role == "predictor")


def test_representatives_are_declared_then_fall_back_in_registry_order():
    metrics = study_metrics([1, 2, 4], "rfd_lenet", "gfd_lenet")
    flagged = [m.name for m in metrics if m.representative]
    assert "gain_k4" in flagged and "gain_k2" not in flagged  # a "{K>1}" template: its largest K only
    names = [m.name for m in metrics]
    got = representatives(metrics, names)
    assert set(got) <= set(HYPOTHESES) and got["modes"] == "gain_k4" and got["discriminability"] == "lp_top1"
    assert got["spectrum"] == "response_hf" and got["robustness"] == "noise_robustness" and got["dimension"] == "rankme"
    # the declared one is missing (e.g. constant in this study): the hypothesis's first predictor in METRICS order
    fallback = representatives(metrics, [n for n in names if n not in ("gain_k4", "lp_top1")])
    assert fallback["modes"] == "modes_heldout" and fallback["discriminability"] == "lp_top5"
    assert "modes" not in representatives(metrics, ["lp_top1", "sit_loss"])


def _planted(n: int = 12, n_boot: int = 400, seed: int = 0):
    """n tokenizers (and one baseline row that would break every ranking) with a known answer.

    `mono` is monotone in the target in every draw; `copy` is `mono` again; `noise` and `noise2` are unrelated;
    `psnr` is a quality column (not a hypothesis). Draws add noise far smaller than the spacing of the values.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.float64)
    cols = {"target": y, "mono": np.exp(y / 3), "noise": rng.normal(size=n), "noise2": rng.normal(size=n),
            "psnr": rng.normal(size=n)}
    cols["copy"] = cols["mono"].copy()
    table = pd.DataFrame({k: np.append(v, 100.0 if k == "target" else -100.0) for k, v in cols.items()})
    table["baseline"] = [False] * n + [True]
    draws = {k: table[k].to_numpy()[:, None] + 1e-3 * rng.normal(size=(n + 1, n_boot)) for k in cols}
    draws["copy"] = draws["mono"].copy()
    hyp_of = {"mono": "modes", "copy": "spectrum", "noise": "discriminability", "noise2": "robustness"}
    reps = {h: p for p, h in hyp_of.items()}
    return table, draws, hyp_of, reps


def _pair(pairs, a, b):
    r = pairs[((pairs.predictor_a == a) & (pairs.predictor_b == b)) | ((pairs.predictor_a == b) & (pairs.predictor_b == a))]
    assert len(r) == 1
    return r.iloc[0]


def test_paired_abs_rho_difference_on_planted_data():
    table, draws, hyp_of, reps = _planted()
    pairs = pairs_table(table, hyp_of, reps, ["target"], draws, "baseline", seed=0)
    assert list(pairs.columns) == PAIR_COLUMNS and len(pairs) == 6  # every two of the 4 predictors
    assert (pairs.n == 12).all()  # the baseline row never counts
    r = _pair(pairs, "mono", "noise")
    assert r.predictor_a == "mono" and r.hypothesis_a == "modes"  # a is the larger |rho|
    rho_noise = stats.spearmanr(table.noise[:12], table.target[:12]).statistic
    assert r.diff_abs_rho == pytest.approx(1 - abs(rho_noise))
    # the draws' noise never reorders the tokenizers: every replicate draw gives the same difference
    assert 0 < r.diff_lo <= r.diff_abs_rho + 1e-12 and r.diff_abs_rho <= r.diff_hi + 1e-12 and r.share_a_beats_b == 1.0
    assert 0 < r.diff_lo_tokenizers and r.diff_lo_tokenizers <= r.diff_lo  # resampling tokenizers too: wider
    same = _pair(pairs, "mono", "copy")  # identical predictors: exactly 0 in every draw
    assert same.diff_abs_rho == 0 and same.diff_lo == same.diff_hi == 0 and same.share_a_beats_b == 0.5
    assert same.diff_lo_tokenizers == same.diff_hi_tokenizers == 0
    assert (pairs.diff_abs_rho >= 0).all() and not pairs.predictor_a.isin(["psnr"]).any()
    again = pairs_table(table, hyp_of, reps, ["target"], draws, "baseline", seed=0)
    pd.testing.assert_frame_equal(pairs, again)  # seeded


def test_pairs_without_draws_have_no_interval_and_baseline_never_counts():
    table, draws, hyp_of, reps = _planted(n=6)
    pairs = pairs_table(table, hyp_of, reps, ["target"], None, "baseline")
    assert pairs[["diff_lo", "diff_hi", "diff_lo_tokenizers"]].isna().all().all()
    without = pairs_table(table[~table.baseline], hyp_of, reps, ["target"], None)
    pd.testing.assert_frame_equal(pairs, without)


def test_hypotheses_table_holm_within_each_family_and_the_paragraph():
    table, draws, hyp_of, reps = _planted()
    hyp_of = {**hyp_of, "noise_extra": "modes"}
    table["noise_extra"] = np.random.default_rng(5).normal(size=len(table))
    draws["noise_extra"] = table["noise_extra"].to_numpy()[:, None] + np.zeros((1, 400))
    corr = correlations(table, list(hyp_of) + ["psnr"], ["target"], draws, "baseline", n_permutations=2000)
    hyp = hypotheses_table(corr, hyp_of, reps, ["target"])
    assert list(hyp.columns) == COLUMNS and "psnr" not in set(hyp.predictor)  # quality columns are no hypothesis
    assert list(hyp.representative) == [True] * 4 + [False] and hyp.predictor.iloc[-1] == "noise_extra"
    assert set(hyp.predictor[:2]) == {"mono", "copy"} and (hyp.n == 12).all()
    fam = hyp[hyp.representative]
    np.testing.assert_allclose(fam.p_holm, holm(fam.p_exact.to_numpy()))
    assert hyp.p_holm.iloc[-1] == hyp.p_exact.iloc[-1]  # a family of one
    pairs = pairs_table(table, hyp_of, reps, ["target"], draws, "baseline")
    text = hypotheses_paragraph(hyp, pairs, "target")
    # mono and its copy tie: the data cannot tell modes from spectrum, and say so
    assert "The largest |rho| is that of modes (mono)" in text and "cannot tell modes apart from spectrum" in text
    assert "does not single out one hypothesis" in text
    swapped = {"copy": "spectrum", "mono": "modes", "noise": "discriminability", "noise2": "robustness"}
    hyp_s = hypotheses_table(corr, swapped, reps, ["target"])  # the tie lists modes second in its pair
    pairs_s = pairs_table(table, swapped, reps, ["target"], draws, "baseline")
    assert _pair(pairs_s, "mono", "copy").predictor_a == "copy"
    assert "cannot tell modes apart from spectrum" in hypotheses_paragraph(hyp_s, pairs_s, "target")
    solo = {k: v for k, v in reps.items() if k != "spectrum"}
    hyp2 = hypotheses_table(corr, {k: v for k, v in hyp_of.items() if k != "copy"}, solo, ["target"])
    text = hypotheses_paragraph(hyp2, pairs_table(table, {k: v for k, v in hyp_of.items() if k != "copy"}, solo,
                                                  ["target"], draws, "baseline"), "target")
    assert "the data rank modes first" in text and "This study supports the modes hypothesis" in text


def test_the_paragraph_says_when_n_is_too_small():
    table, draws, hyp_of, reps = _planted(n=4)
    corr = correlations(table, list(hyp_of), ["target"], draws, "baseline")
    hyp = hypotheses_table(corr, hyp_of, reps, ["target"])
    text = hypotheses_paragraph(hyp, pairs_table(table, hyp_of, reps, ["target"], draws, "baseline"), "target")
    assert "n = 4 no rank correlation can reach p < 0.05" in text and "does not single out" in text
    text = hypotheses_paragraph(hyp, pairs_table(table, hyp_of, reps, ["target"], draws, "baseline"), "target",
                                hypotheses=list(HYPOTHESES))
    assert "Not measured here (no predictor that varies across the tokenizers): dimension." in text
    assert "No hypothesis" in hypotheses_paragraph(hyp, pd.DataFrame(columns=PAIR_COLUMNS), "other")
