"""Probabilistic PCA: likelihood, estimators and the population model, each against an independent reference.

References, all computed here from their sources:
* densities: ``scipy.stats.multivariate_normal`` on C = W Wᵀ + σ² I (missing values: the marginal
  of the observed coordinates, one row at a time);
* ``sklearn.decomposition.PCA(n_components=k).fit(X)``: ``n * score(X)`` is the PPCA log-likelihood
  at Tipping & Bishop's parameters with the n − 1 covariance, and ``get_covariance()`` its C;
* the three estimators (eigendecomposition, EM, L-BFGS on autograd gradients) against each other;
* simulation from known truth (recovery within sampling error);
* the exact Gaussian posterior: log p(y|z) + log p(z) − log p(z|y) = log p(y) for every z, and
  importance sampling with that posterior as proposal (zero-variance weights).
"""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.decomposition import PCA

import pmxgen
from pmxgen.errors import DatasetError, EstimationError, ModelError
from pmxgen.estimation.importance import importance_sampling_from_draws
from pmxgen.models.ppca import (PPCAModel, fit_ppca, ppca_dataset, ppca_log_likelihood, ppca_matrix,
                                ppca_posterior)

T = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def simulate(n, d, k, seed, noise=0.5, missing=0.0):
    """X = μ + Z Wᵀ + ε from known truth; a fraction ``missing`` of the entries set to NaN (MCAR)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, k)) * np.linspace(2.0, 1.0, k)
    mu = rng.normal(size=d)
    x = mu + rng.normal(size=(n, k)) @ w.T + math.sqrt(noise) * rng.normal(size=(n, d))
    if missing:
        x[rng.random(x.shape) < missing] = np.nan
        x[np.isnan(x).all(1), 0] = 0.0   # keep every row observed somewhere
    return x, mu, w, noise


def scipy_loglik(x, mu, w, s2):
    """Σ_i log N(x_i,O; μ_O, C_OO) one row at a time with scipy."""
    c = w @ w.T + s2 * np.eye(len(mu))
    out = []
    for row in x:
        o = ~np.isnan(row)
        out.append(stats.multivariate_normal(mu[o], c[np.ix_(o, o)]).logpdf(row[o]) if o.any() else 0.0)
    return np.array(out)


def rel(a, b):
    """Largest difference relative to the largest magnitude of b."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# ------------------------------------------------------------------------------------------ likelihood
@pytest.mark.parametrize("missing", [0.0, 0.2])
def test_log_likelihood_equals_scipy(missing):
    x, mu, w, s2 = simulate(40, 5, 2, seed=1, missing=missing)
    mu_, w_, s2_ = mu + 0.3, w * 0.9, 0.7          # any parameters, not only the truth
    ref = scipy_loglik(x, mu_, w_, s2_)
    rows = ppca_log_likelihood(x, mu_, w_, s2_, per_row=True)
    assert isinstance(rows, np.ndarray) and rows.shape == (40,)
    assert rel(rows, ref) < 1e-12
    total = ppca_log_likelihood(x, mu_, w_, s2_)
    assert isinstance(total, float) and math.isclose(total, ref.sum(), rel_tol=1e-12)
    # torch inputs give a tensor, a DataFrame is read like its array
    t = ppca_log_likelihood(torch.tensor(x), mu_, w_, s2_)
    assert isinstance(t, torch.Tensor) and math.isclose(float(t), ref.sum(), rel_tol=1e-12)
    assert math.isclose(ppca_log_likelihood(pd.DataFrame(x), mu_, w_, s2_), ref.sum(), rel_tol=1e-12)


def test_log_likelihood_gradient_matches_finite_differences():
    x, mu, w, s2 = simulate(12, 4, 2, seed=2, missing=0.2)
    xt = torch.tensor(x)
    params = (torch.tensor(mu, requires_grad=True), torch.tensor(w, requires_grad=True),
              torch.tensor(0.6, dtype=T, requires_grad=True))
    assert torch.autograd.gradcheck(lambda m, ww, s: ppca_log_likelihood(xt, m, ww, s), params)


def test_posterior_equals_gaussian_conditioning():
    """E[z|x_O], Cov[z|x_O] from the joint Gaussian of (z, x_O), by scipy-free plain linear algebra."""
    x, mu, w, s2 = simulate(6, 5, 2, seed=3, missing=0.3)
    mean, cov = ppca_posterior(x, mu, w, s2)
    for i, row in enumerate(x):
        o = ~np.isnan(row)
        c_oo = w[o] @ w[o].T + s2 * np.eye(o.sum())
        gain = w[o].T @ np.linalg.inv(c_oo)                 # Cov(z, x_O) Var(x_O)⁻¹
        np.testing.assert_allclose(mean[i], gain @ (row[o] - mu[o]), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(cov[i], np.eye(2) - gain @ w[o], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------- scikit-learn peer
def test_closed_form_ddof1_reproduces_sklearn_pca():
    x, _, _, _ = simulate(150, 6, 2, seed=4)
    n = len(x)
    sk = PCA(n_components=2).fit(x)
    reference = n * sk.score(x)
    fit = fit_ppca(x, 2, ddof=1)
    assert abs(fit.log_likelihood - reference) <= 1e-8 * abs(reference)
    assert rel(fit.covariance(), sk.get_covariance()) < 1e-10
    assert math.isclose(fit.noise_variance, sk.noise_variance_, rel_tol=1e-10)
    np.testing.assert_allclose(fit.mean, sk.mean_, rtol=0, atol=1e-12)
    # the likelihood at parameters converted from scikit-learn's fit
    w_sk = sk.components_.T * np.sqrt(sk.explained_variance_ - sk.noise_variance_)
    ll = ppca_log_likelihood(x, sk.mean_, w_sk, sk.noise_variance_)
    assert abs(ll - reference) <= 1e-8 * abs(reference)
    # ddof=0 is the maximum-likelihood estimate: never below the ddof=1 parameters
    assert fit_ppca(x, 2).log_likelihood >= fit.log_likelihood


# ---------------------------------------------------------------------------------- estimator agreement
def _agree(a, b, tol=1e-6):
    assert rel(a.loading_covariance(), b.loading_covariance()) < tol
    assert abs(a.noise_variance - b.noise_variance) < tol * b.noise_variance
    assert np.abs(a.mean - b.mean).max() < tol * np.sqrt(np.trace(b.covariance()) / len(b.mean))
    assert abs(a.log_likelihood - b.log_likelihood) < tol


@pytest.fixture(scope="module")
def complete_fits():
    x, _, _, _ = simulate(200, 5, 2, seed=5)
    return x, {m: fit_ppca(x, 2, method=m, seed=1) for m in ("closed_form", "em", "gradient")}


def test_closed_form_em_and_gradient_agree_on_complete_data(complete_fits):
    x, fits = complete_fits
    for fit in fits.values():
        assert fit.converged and fit.status == "converged"
        assert math.isclose(fit.log_likelihood, scipy_loglik(x, fit.mean, fit.components, fit.noise_variance).sum(),
                            rel_tol=1e-12)
    _agree(fits["em"], fits["closed_form"])
    _agree(fits["gradient"], fits["closed_form"])
    assert fits["em"].n_iter > 1 and fits["gradient"].n_iter > 1


def test_em_and_gradient_agree_with_missing_values():
    x, _, _, _ = simulate(120, 5, 2, seed=16, missing=0.1)
    assert 0.07 < np.isnan(x).mean() < 0.13
    em = fit_ppca(x, 2, method="em", seed=2)
    grad = fit_ppca(x, 2, method="gradient", seed=3)
    assert em.converged and grad.converged
    _agree(em, grad)
    assert em.n_observed == int((~np.isnan(x)).sum()) and em.n_samples == 120
    # with missing values the MLE of μ is not the column mean
    assert np.abs(em.mean - np.nanmean(x, 0)).max() > 1e-4
    # EM never decreases the exact likelihood, and its last value is the reported one
    hist = np.array(em.history)
    assert np.diff(hist).min() > -1e-9 * abs(hist[-1])
    assert abs(hist[-1] - em.log_likelihood) < 1e-6
    # the closed form refuses, pointing to EM
    with pytest.raises(ModelError, match="method='em'"):
        fit_ppca(x, 2)


def test_seed_reproducible_and_start_independent():
    x, _, _, _ = simulate(60, 4, 1, seed=7, missing=0.1)
    a, b = fit_ppca(x, 1, method="em", seed=11), fit_ppca(x, 1, method="em", seed=11)
    assert a.history == b.history and np.array_equal(a.components, b.components)
    c = fit_ppca(x, 1, method="em", seed=12)
    assert a.history[0] != c.history[0]              # another start ...
    _agree(a, c)                                     # ... the same maximum


def test_not_converging_is_reported_not_raised():
    x, _, _, _ = simulate(60, 4, 2, seed=8)
    for method in ("em", "gradient"):
        fit = fit_ppca(x, 2, method=method, max_iter=2)
        assert not fit.converged and fit.status == "not converged"
        assert "did not converge" in fit.messages[-1] and np.isfinite(fit.log_likelihood)


def test_data_in_a_k_dimensional_subspace_is_reported():
    """σ² → 0 makes the likelihood unbounded: the closed form raises, the iterative methods say so."""
    rng = np.random.default_rng(15)
    x = rng.normal(size=(20, 2)) @ rng.normal(size=(2, 4))         # rank 2 exactly
    with pytest.raises(EstimationError, match="unbounded"):
        fit_ppca(x, 2)
    em = fit_ppca(x, 2, method="em")
    assert not em.converged and "unbounded" in em.messages[0] and np.isfinite(em.log_likelihood)
    grad = fit_ppca(x, 2, method="gradient")
    assert not grad.converged and np.isfinite(grad.log_likelihood)


def test_result_helpers(complete_fits):
    x, fits = complete_fits
    fit = fits["closed_form"]
    assert math.isclose(fit.score(x), fit.log_likelihood, rel_tol=1e-14)
    np.testing.assert_allclose(fit.transform(x), ppca_posterior(x, fit.mean, fit.components, fit.noise_variance)[0])
    text = fit.summary()
    assert "closed_form" in text and "noise variance" in text and len(text.splitlines()) == 6 + 5
    assert repr(fit).startswith("PPCAResult(method='closed_form'")
    with pytest.raises(ValueError):
        fit.mean[0] = 1.0                            # results are read-only


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("x, kwargs, error, text", [
    (np.ones(5), {}, DatasetError, "must be 2-D"),
    (np.ones((3, 2, 2)), {}, DatasetError, "must be 2-D"),
    (np.array([["a", "b"], ["c", "d"]]), {}, DatasetError, "numeric"),
    (pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]}), {}, DatasetError, "column b"),
    (np.array([[1.0, 2.0, 3.0], [1.0, np.inf, 0.0], [0.0, 1.0, 2.0]]), {}, DatasetError, "row 1, column 1"),
    (np.array([[1.0, 2.0, 3.0], [np.nan] * 3, [0.0, 1.0, 2.0]]), {"method": "em"}, DatasetError, "row 1"),
    (np.array([[1.0, np.nan, 3.0], [2.0, np.nan, 0.0], [0.0, np.nan, 2.0]]), {"method": "em"}, DatasetError,
     "column 1"),
    (np.ones((4, 1)), {"n_components": 1}, ModelError, "at least 2 features"),
    (np.eye(4), {"n_components": 0}, ModelError, "between 1 and d - 1"),
    (np.eye(4), {"n_components": 4}, ModelError, "between 1 and d - 1"),
    (np.eye(4), {"n_components": 1.5}, ModelError, "integer"),
    (np.eye(4), {"n_components": True}, ModelError, "integer"),
    (np.eye(4), {"method": "svd"}, ModelError, "closed_form, em, gradient"),
    (np.eye(4), {"ddof": 2}, ModelError, "ddof"),
    (np.eye(4), {"ddof": 1, "method": "em"}, ModelError, "closed_form' only"),
    (np.eye(4), {"max_iter": 0, "method": "em"}, ModelError, "max_iter"),
    (np.eye(4), {"tol": -1.0, "method": "em"}, ModelError, "tol"),
    (np.array([[1.0, 2.0, 3.0]]), {}, DatasetError, "at least 2"),
    # three points span a plane: with k = 2 the noise variance would be 0
    (np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 5.0], [2.0, 2.0, 2.0]]), {"n_components": 2}, EstimationError,
     "unbounded"),
])
def test_fit_ppca_bad_input(x, kwargs, error, text):
    kwargs = {"n_components": 1, **kwargs}
    with pytest.raises(error, match=text):
        fit_ppca(x, **kwargs)


def test_log_likelihood_bad_parameters():
    x = np.zeros((3, 4))
    with pytest.raises(ModelError, match="mean has 3 entries"):
        ppca_log_likelihood(x, np.zeros(3), np.ones((4, 1)), 1.0)
    with pytest.raises(ModelError, match="components_.T"):
        ppca_log_likelihood(x, np.zeros(4), np.ones((1, 4)), 1.0)     # scikit-learn's [k, d] layout
    with pytest.raises(ModelError, match="noise_variance"):
        ppca_log_likelihood(x, np.zeros(4), np.ones((4, 1)), 0.0)
    with pytest.raises(ModelError, match="finite"):
        ppca_log_likelihood(x, np.array([0, 0, np.nan, 0]), np.ones((4, 1)), 1.0)


# ------------------------------------------------------------------------------------------ the dataset
def test_ppca_dataset_layout_and_round_trip():
    x, _, _, _ = simulate(7, 4, 1, seed=9, missing=0.25)
    n_missing = int(np.isnan(x).sum())
    data = ppca_dataset(x, ids=[f"s{i}" for i in range(7)])
    frame = data.to_frame()
    assert data.n_records == 28 and data.n_observations == 28 - n_missing and n_missing > 0
    assert list(frame.columns) == ["ID", "TIME", "DV", "CMT", "MDV"]
    assert frame.TIME.tolist() == [1.0, 2.0, 3.0, 4.0] * 7 and data.ids[0] == "s0"
    assert int(frame.MDV.sum()) == n_missing and frame.DV.isna().sum() == n_missing   # kept, not observed
    np.testing.assert_array_equal(ppca_matrix(data), x)
    x_last = x.copy()
    x_last[:, -1] = np.nan                     # a feature missing in every row keeps its column
    assert ppca_matrix(ppca_dataset(x_last)).shape == (7, 4)
    with pytest.raises(DatasetError, match="not distinct"):
        ppca_dataset(x, ids=[1, 2, 3, 4, 5, 6, 1])
    with pytest.raises(DatasetError, match="ids has 2 entries"):
        ppca_dataset(x, ids=[1, 2])
    with pytest.raises(DatasetError, match="row 1"):
        ppca_dataset(np.array([[1.0, 2.0], [np.nan, np.nan]]))


def _frame(records):
    return pd.DataFrame(records, columns=["ID", "TIME", "DV", "AMT", "CMT", "BLQ"])


@pytest.mark.parametrize("records, text", [
    ([(1, 1, 1.0, 0, 1, 0), (1, 2.5, 2.0, 0, 1, 0)], "feature number"),
    ([(1, 1, 1.0, 0, 1, 0), (1, 4, 2.0, 0, 1, 0)], "feature number"),
    ([(1, 0, 0.0, 100, 1, 0), (1, 1, 2.0, 0, 1, 0)], "no doses"),
    ([(1, 1, 1.0, 0, 1, 1), (1, 2, 2.0, 0, 1, 0)], "BLQ"),
    ([(1, 1, 1.0, 0, 2, 0), (1, 2, 2.0, 0, 1, 0)], "CMT"),
])
def test_check_refuses_data_that_are_not_ppca(records, text):
    model = PPCAModel(np.zeros(3), np.ones((3, 1)), 1.0)
    with pytest.raises(DatasetError, match=text):
        model.check(pmxgen.read_nonmem(_frame(records)))


def test_repeated_feature_is_a_valid_model_but_not_a_matrix():
    """Two records of one feature: two independent noisy measurements of μ_f + w_fᵀ z (checked with scipy)."""
    frame = _frame([(1, 1, 0.5, 0, 1, 0), (1, 2, 1.0, 0, 1, 0), (1, 2, 1.4, 0, 1, 0), (2, 3, -1.0, 0, 1, 0)])
    data = pmxgen.read_nonmem(frame)
    mu, w, s2 = np.array([0.1, 0.2, 0.3]), np.array([[1.0], [0.5], [-0.7]]), 0.4
    model = PPCAModel(mu, w, s2)
    model.check(data)
    values = model.population_values(mu, w, s2)
    f1 = np.array([0, 1, 1])
    c1 = w[f1] @ w[f1].T + s2 * np.eye(3)
    ref = [stats.multivariate_normal(mu[f1], c1).logpdf([0.5, 1.0, 1.4]),
           stats.norm(mu[2], math.sqrt(w[2, 0] ** 2 + s2)).logpdf(-1.0)]
    np.testing.assert_allclose(model.log_marginal(values, data.batch).numpy(), ref, rtol=1e-12)
    with pytest.raises(DatasetError, match="same feature"):
        ppca_matrix(data)


# --------------------------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def model_case():
    x, _, _, _ = simulate(60, 5, 2, seed=10, missing=0.15)
    data = ppca_dataset(x)
    model = PPCAModel.from_data(data, 2, perturb=0.3, seed=1)
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    return x, data, model, values


def test_parameter_names_and_values(model_case):
    x, data, model, values = model_case
    ps = model.parameter_set
    assert ps.names[:5] == ("MU1", "MU2", "MU3", "MU4", "MU5")
    assert ps.names[5:9] == ("W(1,1)", "W(1,2)", "W(2,1)", "W(2,2)") and ps.names[-1] == "SIGMA(NOISE)"
    assert "OMEGA(Z1)" in ps.all_names and "OMEGA(Z1)" not in ps.names          # Ω = I is fixed
    assert torch.equal(values.omega, torch.eye(2, dtype=T))
    mu, w, s2 = model.split_values(values)
    assert mu.shape == (5,) and w.shape == (5, 2) and s2.shape == ()
    assert model.eta_names(data.batch) == ("Z1", "Z2") and model.iov_names == ()
    assert not model.error.log_scale and model.recipe is None


def test_log_marginal_equals_ppca_log_likelihood(model_case):
    x, data, model, values = model_case
    mu, w, s2 = model.split_values(values)
    exact = ppca_log_likelihood(x, mu.numpy(), w.numpy(), float(s2), per_row=True)
    np.testing.assert_allclose(model.log_marginal(values, data.batch).numpy(), exact, rtol=1e-12)
    np.testing.assert_allclose(exact, scipy_loglik(x, mu.numpy(), w.numpy(), float(s2)), rtol=1e-12)


@pytest.mark.parametrize("per_subject", [False, True])
def test_joint_minus_posterior_is_the_marginal_for_any_z(model_case, per_subject):
    """log p(y|z) + log p(z) − log N(z; posterior) = log p(y) for every z (the posterior is exact)."""
    x, data, model, values = model_case
    batch = data.batch
    if per_subject:   # θ with a leading subject dimension, as the estimators use for per-subject gradients
        phi = model.parameter_set.initial_natural().expand(batch.n_subjects, -1)
        values = model.parameter_set.unpack(phi)
    marginal = model.log_marginal(values, batch)
    mean, cov = model.posterior(values, batch)
    post = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        z = 2.0 * torch.randn(batch.n_subjects, 2, generator=gen, dtype=T)
        joint = model.log_likelihood(z, values, batch) + model.log_prior(z, values, batch)
        assert float((joint - post.log_prob(z) - marginal).abs().max()) < 1e-10


def test_importance_sampling_with_exact_posterior_has_zero_variance(model_case):
    """The generic IS estimator, given the exact posterior as proposal, returns the exact marginal."""
    x, data, model, values = model_case
    mean, cov = model.posterior(values, data.batch)
    post = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    draws = post.sample((20,))
    result = importance_sampling_from_draws(model, values, data.batch, draws, post.log_prob(draws))
    exact = model.log_marginal(values, data.batch)
    assert float((result.log_marginal - exact).abs().max()) < 1e-9
    assert result.se < 1e-7
    assert math.isclose(result.minus2ll, -2 * float(exact.sum()), rel_tol=1e-12)


def test_predict_sample_and_likelihood_by_hand(model_case):
    x, data, model, values = model_case
    batch = data.batch
    mu, w, s2 = (v.numpy() for v in model.split_values(values))
    z = torch.randn(batch.n_subjects, 2, generator=torch.Generator().manual_seed(1), dtype=T)
    pred = model.predict(z, values, batch)
    full = mu + z.numpy() @ w.T                                       # [n, d]
    obs = ~np.isnan(x)
    assert pred.shape == batch.obs.mask.shape
    np.testing.assert_allclose(pred[batch.obs.mask].numpy(), full[obs], rtol=1e-13)
    assert float(pred[~batch.obs.mask].abs().sum()) == 0.0
    ll = model.log_likelihood(z, values, batch).numpy()
    ref = np.where(obs, stats.norm(full, math.sqrt(s2)).logpdf(np.nan_to_num(x)), 0.0).sum(1)
    np.testing.assert_allclose(ll, ref, rtol=1e-12)
    assert model.individual_parameters(z, values, batch)["Z2"] is not None
    y1 = model.sample_y(z, values, batch, torch.Generator().manual_seed(5))
    y2 = model.sample_y(z, values, batch, torch.Generator().manual_seed(5))
    assert torch.equal(y1, y2) and float(y1[~batch.obs.mask].abs().sum()) == 0.0


def test_simulated_data_recover_the_truth_within_sampling_error():
    """Simulate from the model (sample_eta, sample_y) with known μ, W, σ²; fit by the closed form."""
    n, d, k = 1500, 4, 2
    rng = np.random.default_rng(11)
    w_true, mu_true, s2_true = rng.normal(size=(d, k)), rng.normal(size=d), 0.3
    model = PPCAModel(mu_true, w_true, s2_true)
    design = ppca_dataset(np.zeros((n, d)))
    values = model.population_values(mu_true, w_true, s2_true)
    gen = torch.Generator().manual_seed(3)
    z = model.sample_eta(values, design.batch, gen)
    y = model.sample_y(z, values, design.batch, gen)
    data = design.with_dv(y)
    x = ppca_matrix(data)
    fit = fit_ppca(x, k)
    c_true = w_true @ w_true.T + s2_true * np.eye(d)
    se_c = np.sqrt((np.outer(np.diag(c_true), np.diag(c_true)) + c_true ** 2) / n)   # SE of a sample covariance
    se_s2 = s2_true * math.sqrt(2.0 / (n * (d - k)))
    assert np.all(np.abs(fit.covariance() - c_true) < 4 * se_c)
    assert abs(fit.noise_variance - s2_true) < 4 * se_s2
    assert np.all(np.abs(fit.loading_covariance() - w_true @ w_true.T) < 4 * se_c + 4 * se_s2)
    assert np.all(np.abs(fit.mean - mu_true) < 4 * np.sqrt(np.diag(c_true) / n))


@pytest.mark.parametrize("identify", [False, True])
def test_maximising_log_marginal_through_the_contract_gives_the_closed_form(identify):
    """L-BFGS on Σ log_marginal over the ParameterSet's unconstrained vector (a fit through the contract)."""
    x, _, _, _ = simulate(80, 4, 2, seed=12)
    data = ppca_dataset(x)
    model = PPCAModel.from_data(data, 2, perturb=0.5, seed=2, identify=identify)
    ps = model.parameter_set
    if identify:
        fixed = {t.name for t in ps.theta if t.fixed}
        assert fixed == {"W(1,2)"} and "W(1,2)" not in ps.names and "W(2,2)" in ps.names
    u = ps.to_unconstrained(ps.initial_natural()).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([u], max_iter=500, tolerance_grad=1e-12, tolerance_change=0, history_size=30,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -model.log_marginal(ps.unpack(ps.from_unconstrained(u)), data.batch).sum() / x.size
        loss.backward()
        return loss

    opt.step(closure)
    mu, w, s2 = model.split_values(ps.unpack(ps.from_unconstrained(u.detach())))
    ref = fit_ppca(x, 2)
    assert rel(w @ w.T, ref.loading_covariance()) < 1e-6
    assert abs(float(s2) - ref.noise_variance) < 1e-6 * ref.noise_variance
    assert np.abs(mu.numpy() - ref.mean).max() < 1e-6
    if identify:
        assert float(w[0, 1]) == 0.0


def test_identify_rotates_the_start_without_changing_w_wt():
    w = np.random.default_rng(13).normal(size=(5, 2))
    model = PPCAModel(np.zeros(5), w, 0.5, identify=True)
    _, w_id, _ = model.split_values(model.parameter_set.unpack(model.parameter_set.initial_natural()))
    assert float(w_id[0, 1]) == 0.0 and float(w_id[0, 0]) > 0 and float(w_id[1, 1]) > 0
    np.testing.assert_allclose((w_id @ w_id.T).numpy(), w @ w.T, rtol=1e-12, atol=1e-12)


def test_model_constructor_errors():
    with pytest.raises(ModelError, match="1 <= k <= d - 1"):
        PPCAModel(np.zeros(2), np.ones((2, 2)), 1.0)
    with pytest.raises(ModelError, match="noise_variance"):
        PPCAModel(np.zeros(3), np.ones((3, 1)), -1.0)
    model = PPCAModel(np.zeros(3), np.ones((3, 1)), 1.0)
    with pytest.raises(ModelError, match="2 columns"):
        model.population_values(np.zeros(3), np.ones((3, 2)), 1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_device(device):
    x, mu, w, s2 = simulate(30, 4, 1, seed=14, missing=0.1)
    xt = torch.tensor(x, device=device)
    ll = ppca_log_likelihood(xt, mu, w, s2)
    assert ll.device.type == device and math.isclose(float(ll), scipy_loglik(x, mu, w, s2).sum(), rel_tol=1e-12)
    fit = fit_ppca(xt, 1, method="em")
    _agree(fit, fit_ppca(x, 1, method="em"), tol=1e-8)
    data = ppca_dataset(x, device=device)
    model = PPCAModel(mu, w, s2)
    values = model.population_values(mu, w, s2, device=device)
    lm = model.log_marginal(values, data.batch)
    assert lm.device.type == device
    np.testing.assert_allclose(lm.cpu().numpy(), scipy_loglik(x, mu, w, s2), rtol=1e-12)
