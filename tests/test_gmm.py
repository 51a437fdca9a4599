"""GaussianMixture against scikit-learn (same init) and the behaviours sklearn's own tests check."""

import re
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from latentlab.analysis.gmm import ConvergenceWarning, GaussianMixture, GMMError, RegularisationWarning
from latentlab.errors import LatentlabError
from latentlab.latents import LatentStore

COV_TYPES = ["full", "diag"]
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning",
                                        "ignore::latentlab.analysis.gmm.ConvergenceWarning")


def planted(rng, n=600, d=4, k=3, sep=8.0, offset=5.0):
    """A mixture with well separated, anisotropic components; returns (X float64, labels)."""
    centres = rng.normal(size=(k, d)) * sep + offset
    labels = rng.integers(k, size=n)
    mix = rng.normal(size=(k, d, d)) * 0.6 + np.eye(d)
    x = np.einsum("nd,nde->ne", rng.normal(size=(n, d)), mix[labels]) + centres[labels]
    return x, labels


def gm(k, **kw):
    kw.setdefault("device", "cpu")
    return GaussianMixture(k, **kw)


def sk_init(X, k, cov):
    """Initial weights/means/precisions from one sklearn EM step (deliberately not converged)."""
    init = SkGaussianMixture(k, covariance_type=cov, max_iter=1, random_state=0).fit(X)
    return dict(weights_init=init.weights_, means_init=init.means_, precisions_init=init.precisions_)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_parity_with_sklearn_same_init(rng, cov):
    X, _ = planted(rng)
    kw = dict(covariance_type=cov, tol=0, max_iter=15, **sk_init(X, 3, cov))
    ref = SkGaussianMixture(3, **kw).fit(X)
    ours = gm(3, **kw).fit(X)
    assert ours.n_iter_ == ref.n_iter_ == 15
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-5)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-5)
    np.testing.assert_allclose(ours.weights_, ref.weights_, atol=1e-5)
    np.testing.assert_allclose(ours.means_, ref.means_, atol=1e-4)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.precisions_, ref.precisions_, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-5)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    assert ours.bic(X) == pytest.approx(ref.bic(X), rel=1e-5)
    assert ours.aic(X) == pytest.approx(ref.aic(X), rel=1e-5)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        assert getattr(ours, name).dtype == np.float64 and getattr(ours, name).shape == getattr(ref, name).shape


@pytest.mark.parametrize("cov", COV_TYPES)
def test_responsibilities_sum_to_one_and_fit_predict(rng, cov):
    X, _ = planted(rng, n=400)
    resp = gm(3, covariance_type=cov, random_state=0).fit(X).predict_proba(X)
    assert resp.shape == (400, 3)
    np.testing.assert_allclose(resp.sum(1), 1.0, atol=1e-10)
    for init in ("kmeans", "k-means++", "random_from_data"):
        labels = gm(3, covariance_type=cov, init_params=init, random_state=1, max_iter=3).fit_predict(X)
        again = gm(3, covariance_type=cov, init_params=init, random_state=1, max_iter=3).fit(X).predict(X)
        np.testing.assert_array_equal(labels, again)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_mixture_recovered(cov, seed):
    X, labels = planted(np.random.default_rng(seed), n=1500, d=5, k=4, sep=10.0)
    pred = gm(4, covariance_type=cov, random_state=seed, n_init=2).fit(X).predict(X)
    assert adjusted_rand_score(labels, pred) > 0.95


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("dtype, slack", [("float64", 0.0), ("float32", 1e-7)])
def test_score_never_lowered_by_an_em_iteration(rng, cov, dtype, slack):
    """Exact in float64, as sklearn; float32 products may only wobble by round-off (< 1e-7 relative)."""
    X, _ = planted(rng, n=500, sep=3.0)  # overlapping, so EM needs many iterations
    g = gm(3, covariance_type=cov, reg_covar=0, warm_start=True, max_iter=1, tol=1e-7, random_state=0,
           compute_dtype=dtype)
    current = -np.inf
    for _ in range(300):
        prev = current
        current = g.fit(X).score(X)
        assert current >= prev - slack * abs(prev if np.isfinite(prev) else 0.0)
        if g.converged_:
            break
    assert g.converged_


def test_n_parameters_bic_aic(rng):
    X, _ = planted(rng, n=300, d=4, k=3)
    k, d, n = 3, 4, 300
    full = gm(k, covariance_type="full", random_state=0).fit(X)
    diag = gm(k, covariance_type="diag", random_state=0).fit(X)
    assert full._n_parameters() == k * d * (d + 1) // 2 + k * d + k - 1 == 44
    assert diag._n_parameters() == k * d + k * d + k - 1 == 26
    assert full.bic(X) == pytest.approx(-2 * full.score(X) * n + 44 * np.log(n))
    assert diag.aic(X) == pytest.approx(-2 * diag.score(X) * n + 2 * 26)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_max_iter_zero_returns_the_initialisation(rng, cov):
    X, _ = planted(rng, n=300)
    means_init = X[:3] + 1.0
    g = gm(3, covariance_type=cov, means_init=means_init, max_iter=0, random_state=0).fit(X)
    np.testing.assert_allclose(g.means_, means_init)
    assert g.n_iter_ == 0 and g.converged_ is False
    inits = sk_init(X, 3, cov)
    g = gm(3, covariance_type=cov, max_iter=0, **inits).fit(X)
    np.testing.assert_allclose(g.weights_, inits["weights_init"])
    np.testing.assert_allclose(g.precisions_, inits["precisions_init"], rtol=1e-10, atol=1e-10)
    # (sklearn itself cannot score here: with all three inits and max_iter=0 it never sets covariances_)
    prec = inits["precisions_init"] if cov == "full" else [np.diag(p) for p in inits["precisions_init"]]
    dens = [w * multivariate_normal(m, np.linalg.inv(p)).pdf(X)
            for w, m, p in zip(inits["weights_init"], inits["means_init"], prec)]
    assert g.score(X) == pytest.approx(np.log(np.sum(dens, 0)).mean(), rel=1e-6)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_warm_start(rng, cov):
    X, _ = planted(rng, n=400, sep=2.0)
    cold = gm(3, covariance_type=cov, max_iter=2, reg_covar=0, random_state=0).fit(X)
    warm = gm(3, covariance_type=cov, max_iter=1, reg_covar=0, random_state=0, warm_start=True)
    score1 = warm.fit(X).score(X)
    score2 = warm.fit(X).score(X)
    np.testing.assert_allclose(warm.weights_, cold.weights_, atol=1e-6)
    np.testing.assert_allclose(warm.means_, cold.means_, atol=1e-5)
    np.testing.assert_allclose(warm.precisions_, cold.precisions_, rtol=1e-4, atol=1e-5)
    assert score2 > score1
    slow = gm(3, covariance_type=cov, max_iter=5, tol=1e-6, random_state=0)
    with pytest.warns(ConvergenceWarning):
        slow.fit(X)
    assert not slow.converged_
    warm = gm(3, covariance_type=cov, max_iter=5, tol=1e-6, random_state=0, warm_start=True)
    for _ in range(200):
        warm.fit(X)
        if warm.converged_:
            break
    assert warm.converged_


def test_more_components_than_samples_is_sklearns_error(rng):
    X = rng.normal(size=(5, 2))
    msg = "Expected n_samples >= n_components but got n_components = 6, n_samples = 5"
    with pytest.raises(LatentlabError, match=re.escape(msg)):
        gm(6).fit(X)
    with pytest.raises(ValueError, match=re.escape(msg)):  # GMMError is also a ValueError, as in sklearn
        gm(6).fit(X)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_degenerate_data_raises_at_zero_reg_and_fits_at_1e6(cov):
    X = np.vstack([np.ones((5, 5)), np.zeros((5, 5))])  # two clusters of zero covariance
    g = gm(10, covariance_type=cov, reg_covar=0, random_state=0)
    with pytest.raises(GMMError, match="ill-defined empirical covariance"):
        g.fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegularisationWarning)  # 1e-6 suffices: no rescue needed
        g.set_params(reg_covar=1e-6).fit(X)
    assert np.isfinite(g.score_samples(X)).all()


def test_degenerate_component_rescued_tenfold_without_nan(rng):
    t = rng.normal(size=(200, 1)) * 1e6  # a line off the axes: covariance rank 1 at a scale of 1e12
    X = np.hstack([t, t, rng.normal(size=(200, 1))])
    with pytest.raises(ValueError):  # sklearn gives up here
        SkGaussianMixture(2, random_state=0).fit(X)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = gm(2, random_state=0).fit(X)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RegularisationWarning)]
    assert msgs and all(m.startswith("n_components=2: ") for m in msgs)
    assert "raising reg_covar to 1e-05" in msgs[0]
    assert 1e-6 < g.reg_covar_ <= 1e-2
    for a in (g.weights_, g.means_, g.covariances_, g.precisions_cholesky_, g.score_samples(X)):
        assert np.isfinite(a).all()
    with warnings.catch_warnings(record=True), pytest.raises(
            GMMError, match="increase reg_covar, reduce n_components, or scale the input data"):
        warnings.simplefilter("always")
        gm(2, random_state=0).fit(X * 100)  # beyond reg_covar_max=1e-2


@pytest.mark.parametrize("cov", COV_TYPES)
def test_store_stream_equals_array(tmp_path, rng, cov):
    X, _ = planted(rng, n=700, d=6)
    X = X.astype(np.float32)
    store = LatentStore.create(tmp_path / "s", X.reshape(700, 2, 3), shard_size=256)
    kw = dict(covariance_type=cov, random_state=0, tol=0, max_iter=8)
    a = gm(3, **kw).fit(X)
    s = gm(3, batch_size=150, **kw).fit(store)  # chunks straddle the 256-row shards
    assert s.score(store) == pytest.approx(a.score(X), rel=1e-6)
    np.testing.assert_allclose(s.means_, a.means_, atol=1e-4)
    np.testing.assert_allclose(s.covariances_, a.covariances_, rtol=1e-4, atol=1e-4)
    t = gm(3, **kw).fit(torch.from_numpy(X))
    assert t.score(X) == pytest.approx(a.score(X), rel=1e-6)
    idx = rng.permutation(700)[:400]
    sub_store = gm(3, batch_size=128, **kw).fit(store, indices=idx)
    sub_array = gm(3, **kw).fit(X[idx])
    assert sub_store.score(store, indices=idx) == pytest.approx(sub_array.score(X[idx]), rel=1e-6)
    np.testing.assert_array_equal(sub_store.predict(store, indices=idx), sub_array.predict(X[idx]))


@pytest.mark.parametrize("kw, match", [
    (dict(covariance_type="tied"), "covariance_type 'tied'"),
    (dict(init_params="random"), "init_params 'random'"),
    (dict(tol=-1.0), "tol must be >= 0"),
    (dict(n_init=0), "n_init must be"),
    (dict(reg_covar=-1e-3), "reg_covar must be >= 0"),
    (dict(compute_dtype="float16"), "unknown compute_dtype"),
    (dict(means_init=np.zeros((2, 3))), r"means_init must have shape \(3, 4\)"),
    (dict(weights_init=[0.5, 0.6, -0.1]), "weights_init must lie in"),
])
def test_bad_parameters(rng, kw, match):
    with pytest.raises(LatentlabError, match=match):
        gm(3, **kw).fit(rng.normal(size=(50, 4)))


def test_nonfinite_rows_are_counted(rng):
    X = rng.normal(size=(50, 4))
    X[3, 1], X[7, 0], X[7, 2] = np.nan, np.inf, -np.inf
    with pytest.raises(LatentlabError, match="2 of 50 input rows contain NaN or inf"):
        gm(2).fit(X)


def test_sklearn_estimator_protocol_clone_pipeline_and_grid_search(rng):
    """BaseEstimator + DensityMixin: parameters, clone, repr, pipelines and model selection by score."""
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    g = gm(3, covariance_type="diag", random_state=0)
    c = clone(g)
    assert c is not g and c.get_params() == g.get_params() and not hasattr(c, "means_")
    assert " ".join(repr(g).split()) == "GaussianMixture(covariance_type='diag', device='cpu', n_components=3, random_state=0)"
    assert g.set_params(max_iter=7).max_iter == 7 and g.__sklearn_tags__().estimator_type == "density_estimator"
    with pytest.raises(ValueError, match="Invalid parameter"):
        g.set_params(bogus=1)
    X, _ = planted(rng, n=400, k=3)
    pipe = make_pipeline(StandardScaler(), gm(3, random_state=0)).fit(X)
    z = StandardScaler().fit_transform(X)
    assert pipe.score(X) == pytest.approx(gm(3, random_state=0).fit(z).score(z), rel=1e-12)
    search = GridSearchCV(gm(1, random_state=0), {"n_components": [1, 3]}, cv=2).fit(X)  # held-out log-likelihood
    assert search.best_params_ == {"n_components": 3}
