"""hypotheses.csv: which hypothesis's predictor tracks generation, on planted data with a known answer."""

from latentlab.study.columns import HYPOTHESES, METRICS, representatives, study_metrics


def test_registry_declares_at_most_one_representative_per_hypothesis():
    reps = [m for m in METRICS if m.representative]
    assert all(m.role == "predictor" and m.hypothesis in HYPOTHESES for m in reps)
    assert len({m.hypothesis for m in reps}) == len(reps)
    assert all(m.hypothesis in HYPOTHESES for m in METRICS if m.role == "predictor")


def test_representatives_are_declared_then_fall_back_in_registry_order():
    metrics = study_metrics([1, 2, 4], "rfd_lenet", "gfd_lenet")
    flagged = [m.name for m in metrics if m.representative]
    assert "gmm_nll_k4" in flagged and "gmm_nll_k2" not in flagged  # a "{K}" template: its largest K only
    names = [m.name for m in metrics]
    got = representatives(metrics, names)
    assert set(got) <= set(HYPOTHESES) and got["modes"] == "gmm_nll_k4" and got["discriminability"] == "lp_top1"
    # the declared one is missing (e.g. constant in this study): the hypothesis's first predictor in METRICS order
    fallback = representatives(metrics, [n for n in names if n not in ("gmm_nll_k4", "lp_top1")])
    assert fallback["modes"] == "gmm_nll_k1" and fallback["discriminability"] == "lp_top5"
    assert "modes" not in representatives(metrics, ["lp_top1", "sit_loss"])
