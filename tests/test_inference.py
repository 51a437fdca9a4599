"""latentlab.analysis.inference against full enumeration, hand-computed cases and planted data."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from latentlab.analysis.inference import (MetricRuns, hierarchical_draws, holm, interval, paired_difference,
                                          partial_spearman, percentile_interval, spearman, spearman_interval,
                                          spearman_test)
from latentlab.analysis.relate import correlations, predictor_columns


def _enumerated_p(x, y) -> float:
    """Share of all n! pairings whose |rho| reaches the observed |rho|, by brute force."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    obs = abs(np.corrcoef(rx, ry)[0, 1])
    perms = np.array(list(itertools.permutations(range(len(x)))))
    rho = np.array([np.corrcoef(rx[p], ry)[0, 1] for p in perms])
    return float(np.mean(np.abs(rho) >= obs - 1e-12))


@pytest.mark.parametrize("n,ties", [(4, False), (5, False), (6, True), (7, False), (7, True)])
def test_spearman_p_equals_full_enumeration(n, ties):
    rng = np.random.default_rng(n + 10 * ties)
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    if ties:
        x[1] = x[0]
        y[3] = y[2]
    p, method = spearman_test(x, y)
    assert method.startswith("exact") and f"{math.factorial(n):,}" in method
    assert p == pytest.approx(_enumerated_p(x, y), abs=1e-12)


def test_spearman_p_hand_values_and_permutation_above_nine():
    # n = 5: rho = -1 is reached by 2 of the 120 pairings (|rho| = 1: the identity and its reverse)
    assert spearman_test([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])[0] == pytest.approx(2 / 120)
    # rho = 1 - sum(d^2) / 20 = 0.9 (one adjacent swap): |rho| >= 0.9 means sum(d^2) <= 2 (the identity and its
    # 4 adjacent swaps) or >= 38 (the reversal and its 4 adjacent swaps): 10 of 120
    assert spearman_test([1, 2, 3, 4, 5], [1, 3, 2, 4, 5])[0] == pytest.approx(10 / 120)
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    p, method = spearman_test(x, x + 0.3 * rng.normal(size=12), n_permutations=10_000)
    assert method == "permutation (10,000 draws)" and 1 / 10_001 <= p < 0.01
    assert math.isnan(spearman_test([1, 1, 1, 1], [1, 2, 3, 4])[0])


def test_holm_hand_computed():
    # m = 4 finite: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(1*0.04, 0.06)=0.06
    got = holm([0.01, 0.04, 0.03, np.nan, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, np.nan, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1, monotone
    assert np.isnan(holm([np.nan])).all()


def test_partial_spearman_equals_residual_ranks():
    rng = np.random.default_rng(1)
    z = rng.normal(size=30)
    x, y = z + rng.normal(size=30), -z + rng.normal(size=30)
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))
    design = np.column_stack([np.ones(30), rz])
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
    assert partial_spearman(x, y, z) == pytest.approx(np.corrcoef(*res)[0, 1], abs=1e-10)
    assert spearman(x, y) < -0.2 and abs(partial_spearman(x, y, z)) < abs(spearman(x, y))


def test_interval_coverage_planted_hierarchical():
    """seeds ~ N(mu, 1), images within a seed ~ N(seed mean, 2): the 95% interval covers mu about 95% of the time."""
    rng = np.random.default_rng(0)
    mu, hits, reps = 3.0, 0, 120
    for _ in range(reps):
        means = mu + rng.normal(size=8)
        runs = MetricRuns.per_image([m + 2.0 * rng.normal(size=40) for m in means])
        _, lo, hi = interval(runs, n_boot=400, rng=rng)
        hits += lo <= mu <= hi
    assert 0.85 <= hits / reps <= 0.995


def test_interval_coverage_planted_within_run():
    """One seed: the within-run interval of a per-image mean covers the true mean about 95% of the time."""
    rng = np.random.default_rng(1)
    hits, reps = 0, 200
    for _ in range(reps):
        _, lo, hi = interval(MetricRuns.per_image([rng.exponential(size=80)]), n_boot=400, rng=rng)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / reps <= 0.99


def test_set_level_runs():
    assert math.isnan(interval(MetricRuns.set_level([3.0]))[1])  # one seed, no replicates: no interval
    runs = MetricRuns.set_level([10.0], [np.array([20.0, 21.0, 22.0, 23.0])])  # replicates re-centred on 10
    est, lo, hi = interval(runs, n_boot=500)
    assert est == 10.0 and 8.5 <= lo < 10 < hi <= 11.5
    runs = MetricRuns.set_level([1.0, 3.0])  # two seeds: draws are means of resampled seeds
    assert set(np.unique(hierarchical_draws(runs, 200))) <= {1.0, 2.0, 3.0}
    assert MetricRuns.set_level([math.inf]).estimate == math.inf


def test_paired_difference_planted_and_exact_sign_flips():
    rng = np.random.default_rng(2)
    base = rng.normal(size=300)
    a = np.stack([base + 0.5 + 0.2 * rng.normal(size=300) for _ in range(2)])
    ref = base[None] + 0.2 * rng.normal(size=(3, 300))
    res = paired_difference(a, ref, n_boot=500)
    assert res["diff"] == pytest.approx(a.mean() - ref.mean())
    assert res["diff_lo"] < 0.5 < res["diff_hi"] and res["p"] < 1e-3
    assert res["p_method"].startswith("permutation")
    # 8 images: all 256 sign flips, against brute force
    d = rng.normal(size=8) + 0.4
    res = paired_difference(d[None], np.zeros((1, 8)), n_boot=200)
    flips = np.array(list(itertools.product([-1, 1], repeat=8)))
    assert res["p_method"].startswith("exact")
    assert res["p"] == pytest.approx(np.mean(np.abs((flips * d).mean(1)) >= abs(d.mean()) - 1e-12))


def test_spearman_interval_from_draws():
    x = np.tile(np.arange(5.0)[:, None], (1, 50))
    lo, hi = spearman_interval(x, -x)
    assert lo == hi == pytest.approx(-1.0)
    assert all(map(math.isnan, percentile_interval(np.array([np.nan, 1.0]))))  # fewer than 2 finite draws


def test_correlations_exclude_baseline_and_label_the_family():
    """The baseline row would flip the sign; it is never counted. Holm runs over the exploratory rows only."""
    target = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    df = pd.DataFrame({"tokenizer": list("abcdef"), "baseline": [False] * 5 + [True],
                       "loss": target, "up": [1.0, 2.0, 3.0, 4.0, 5.0, -50.0],
                       "noise": [0.3, -1.0, 0.2, 0.9, -0.4, 7.0], "const": [1.0] * 5 + [9.0],
                       "rfd": [5.0, 4.0, 3.5, 2.0, 1.0, 0.0]})
    kept, dropped = predictor_columns(df, ["up", "noise", "const", "rfd"], "baseline")
    assert kept == ["up", "noise", "rfd"] and dropped == ["const"]
    c = correlations(df, kept, ["loss"], baseline="baseline", primary=("up", "loss"), control="rfd").set_index(
        "predictor")
    assert (c.n == 5).all()
    assert c.loc["up", "spearman"] == pytest.approx(1.0) and c.loc["up", "p_exact"] == pytest.approx(2 / 120)
    assert c.loc["noise", "spearman"] == pytest.approx(stats.spearmanr(df.noise[:5], target[:5]).statistic)
    assert bool(c.loc["up", "primary"]) and c.loc["up", "p_holm"] == c.loc["up", "p_exact"]
    np.testing.assert_allclose(c.loc[["noise", "rfd"], "p_holm"], holm(c.loc[["noise", "rfd"], "p_exact"]))
    assert math.isnan(c.loc["rfd", "spearman_partial"])  # the control itself
    assert c.loc["noise", "spearman_partial"] == pytest.approx(partial_spearman(df.noise[:5], target[:5], df.rfd[:5]))
