"""SAEM and MCEM: exact MLE of a linear-Gaussian model, agreement with FOCE-I, reproducibility,
Louis' observed information, mu-reference detection, settings validation and the CLI.

References:
* linear-Gaussian model (f = TA + η_A + (TB + η_B)·t, full 2×2 Ω, additive error): the exact
  marginal −2LL is multivariate normal; its MLE (scipy BFGS) and observed information
  (central differences) are computed here with numpy, independently of pmxgen;
* theophylline: pmxgen FOCE-I (itself checked against R nlme/lme4 in test_classical_fits.py);
* simulated sets: FOCE-I estimates and SEs in reference/focei_simulated.json (made by
  reference/focei_simulated.py) and the true values in each truth.json.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pmxgen
from pmxgen.cli import main
from pmxgen.errors import ModelError, ConvergenceWarning, EstimationError
from pmxgen.estimation import MCEM, SAEM, FitResult, louis_information
from pmxgen.estimation.em_steps import EMParameters
from pmxgen.estimation.saem import EM_STATUSES, SAEM_MIN_ESS, saem_convergence
from pmxgen.estimation.mu_reference import find_mu_references
from pmxgen.models import NLMEModel, build_model
from linear_gaussian import LINEAR_NAMES, exact_minus2ll as _exact_minus2ll, exact_mle as _exact_mle, \
    linear_data as _linear_data, linear_model as _linear_model
from simulated_models import BreakingModel, model_for, true_values, z_scores

REFERENCE_FILE = Path(__file__).parent / "reference" / "focei_simulated.json"
QUICK = {"n_explore": 20, "n_smooth": 10, "importance_samples": 50, "posterior_draws": 20, "posterior_burn_in": 5}


NAMES = LINEAR_NAMES


@pytest.fixture(scope="module")
def linear():
    data, subjects = _linear_data()
    mle, info, m2ll = _exact_mle(subjects)
    return data, subjects, mle, info, m2ll


def test_saem_reaches_the_exact_mle_of_a_linear_gaussian_model(linear):
    data, subjects, mle, info, m2ll = linear
    model = _linear_model()
    fit = SAEM(n_chains=20, n_explore=200, n_smooth=200, seed=3).fit(model, data)
    se_exact = np.sqrt(np.diag(np.linalg.inv(info)))
    est = np.array([fit.estimates[n] for n in NAMES])
    # Monte Carlo error of SAEM is small next to the statistical uncertainty
    assert np.all(np.abs(est - mle) < 0.25 * se_exact), (est - mle) / se_exact
    # importance-sampling -2LL at the SAEM estimates equals the exact value there
    exact_here = _exact_minus2ll(est, subjects)
    assert abs(fit.minus2ll - exact_here) < max(4 * fit.importance_sampling["se"], 0.05)
    assert fit.minus2ll >= m2ll - 0.05
    # Louis' standard errors against the exact observed information
    se = np.array([fit.se[n] for n in NAMES])
    np.testing.assert_allclose(se, se_exact, rtol=0.15)
    assert fit.covariance_status == "ok" and fit.covariance_method == "louis"


def test_louis_formula_with_exact_posterior_draws(linear):
    """Louis' formula with draws from the exact Gaussian posteriors equals the exact observed information."""
    data, subjects, mle, info, _ = linear
    model = _linear_model()
    ta, tb, o11, o21, o22, s2 = mle
    om = np.array([[o11, o21], [o21, o22]])
    rng = np.random.default_rng(0)
    n_draws = 4000
    draws = np.empty((n_draws, len(subjects), 2))
    for i, (t, y) in enumerate(subjects):
        z = np.column_stack([np.ones_like(t), t])
        cov = np.linalg.inv(np.linalg.inv(om) + z.T @ z / s2)
        mean = cov @ z.T @ (y - ta - tb * t) / s2
        draws[:, i] = rng.multivariate_normal(mean, cov, size=n_draws)
    phi = torch.tensor(mle, dtype=torch.float64)
    scale = np.sqrt(np.outer(np.diag(info), np.diag(info)))
    values = model.parameter_set.unpack(phi)
    refs = find_mu_references(model, values, data.batch, {"TA", "TB"}, 2)
    # both latent parametrisations (η, and z = μ + η for the mu-referenced θ) give the exact information
    for mu_refs, tolerance in (((), 0.25), (refs, 0.05)):
        ours = louis_information(model, phi, data.batch, torch.tensor(draws), mu_refs).numpy()
        assert np.max(np.abs(ours - info) / scale) < tolerance, (mu_refs, (ours - info) / scale)


# ------------------------------------------------------------------------ theophylline vs FOCE-I
@pytest.fixture(scope="module")
def theoph():
    data = pmxgen.datasets.load("theophylline")
    model = build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    focei = pmxgen.fit(model, data, method="focei")
    saem1 = pmxgen.fit(model, data, method="saem", n_explore=100, n_smooth=80, n_chains=8, seed=1)
    saem2 = pmxgen.fit(model, data, method="saem", n_explore=100, n_smooth=80, n_chains=8, seed=2)
    return data, model, focei, saem1, saem2


def test_saem_agrees_with_focei_on_theophylline(theoph):
    _, _, focei, saem1, saem2 = theoph
    assert saem1.status == "converged" and saem2.status == "converged", (saem1.messages, saem2.messages)
    for name in focei.estimated_names:
        assert abs(saem1.estimates[name] - focei.estimates[name]) < focei.se[name], name
    # the IS -2LL at the SAEM estimates is within a point of FOCE-I's approximation
    assert abs(saem1.minus2ll - focei.minus2ll) < 1.0


def test_different_seeds_agree_within_se(theoph):
    _, _, _, saem1, saem2 = theoph
    assert saem1.estimates != saem2.estimates
    for name in saem1.estimated_names:
        assert abs(saem1.estimates[name] - saem2.estimates[name]) < 0.5 * saem1.se[name], name


def test_same_seed_gives_identical_results(theoph):
    data, model, *_ = theoph
    a = SAEM(seed=7, **QUICK).fit(model, data)
    b = SAEM(seed=7, **QUICK).fit(model, data)
    assert a.estimates == b.estimates and a.minus2ll == b.minus2ll
    np.testing.assert_array_equal(a.posterior_draws, b.posterior_draws)


def test_mcem_agrees_with_focei_on_theophylline(theoph):
    data, model, focei, *_ = theoph
    fit = MCEM(n_chains=4, max_draws=40, max_iter=60, tol=0.05, seed=1).fit(model, data)
    assert fit.status == "converged", fit.messages
    for name in focei.estimated_names:
        assert abs(fit.estimates[name] - focei.estimates[name]) < focei.se[name], name
    assert fit.history[-1]["phase"].startswith("draws=")


def test_em_fit_result_contents(theoph, tmp_path):
    data, _, _, saem1, _ = theoph
    assert [h["phase"] for h in saem1.history].count("explore") == 100
    assert [h["phase"] for h in saem1.history].count("smooth") == 80
    assert saem1.posterior_draws.shape == (500, 12, 2)
    ind = saem1.individual
    for col in ("ETA(KA)", "MEAN(KA)", "SD(CL)", "KA", "CL", "V"):
        assert col in ind.columns
    # conditional means and modes are close for this nearly linear model; SDs positive
    assert np.corrcoef(ind["ETA(CL)"], ind["MEAN(CL)"])[0, 1] > 0.99
    assert (ind["SD(KA)"] > 0).all()
    assert saem1.importance_sampling["min_ess"] > 100
    back = FitResult.from_json(saem1.to_json())
    np.testing.assert_array_equal(back.posterior_draws, saem1.posterior_draws)
    assert pd.DataFrame(list(back.history)).equals(pd.DataFrame(list(saem1.history)))   # NaN-aware


def test_linearization_standard_errors(theoph):
    data, model, focei, *_ = theoph
    fit = SAEM(covariance="linearization", seed=1, **QUICK).fit(model, data)
    assert fit.covariance_status == "ok" and fit.covariance_method == "linearization"
    assert all(fit.se[n] > 0 for n in fit.estimated_names)


# ------------------------------------------------------------------------ status
def test_saem_too_short_run_is_not_converged(theoph):
    data, model, *_ = theoph
    with pytest.warns(ConvergenceWarning, match="SAEM did not converge"):
        fit = SAEM(n_explore=5, n_smooth=5, seed=1, covariance=None, **{k: v for k, v in QUICK.items()
                                                                         if not k.startswith("n_")}).fit(model, data)
    assert fit.status == "max_iterations" and fit.status in EM_STATUSES
    assert "too few to judge convergence" in fit.messages[0] and "raise n_explore" in fit.messages[0]


def test_saem_still_trending_run_names_the_parameters():
    """Ω starts 30x too large and is annealed down by at most 5 % per iteration: after 30 exploratory
    iterations the parameters still fall (measured: 2.9-3.9 within-half SDs), while the same start with
    300 + 200 iterations is converged (largest drift 0.3 SD)."""
    data = pmxgen.datasets.load("theophylline")
    model = build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"), omega_init=3.0,
                        init={"KA": 0.3, "CL": 10, "V": 10})
    with pytest.warns(ConvergenceWarning):
        fit = SAEM(n_explore=30, n_smooth=20, seed=1, covariance=None, importance_samples=50,
                   posterior_draws=20, posterior_burn_in=5).fit(model, data)
    assert fit.status == "max_iterations"
    first = fit.messages[0]
    assert "still moved in the exploration phase" in first and "raise n_explore" in first, first
    assert "OMEGA(KA)" in first and "KA" in first.split("still moved")[0], first


def test_saem_convergence_rule_on_synthetic_trajectories():
    rng = np.random.default_rng(1)
    names = ["A", "B"]
    flat = np.array([1.0, 5.0]) + 0.01 * rng.standard_normal((200, 2))
    status, messages, diag = saem_convergence(flat, names, n_explore=100)
    assert status == "converged" and set(diag) == set(names)
    assert all(d["ess"] >= SAEM_MIN_ESS for d in diag.values())
    # B trends through the exploration phase only
    trend = flat.copy()
    trend[:100, 1] += np.linspace(1.0, 0.0, 100)
    status, messages, _ = saem_convergence(trend, names, n_explore=100)
    assert status == "max_iterations" and messages[0].startswith("B still moved in the exploration phase")
    # A trends in the smoothing phase: the back-computed draws' values x_k rise linearly
    smooth = flat.copy()
    x = flat[100:, 0] + np.linspace(0.0, 0.2, 100)
    smooth[100:, 0] = np.cumsum(x) / np.arange(1, 101)          # γ_k = 1/k averaging of x
    status, messages, _ = saem_convergence(smooth, names, n_explore=100)
    assert status == "max_iterations" and "A still moved in the smoothing phase" in messages[0]
    # strongly autocorrelated smoothing values: too few effective draws
    walk = flat.copy()
    ar = np.zeros(100)
    for i in range(1, 100):
        ar[i] = 0.995 * ar[i - 1] + 0.01 * rng.standard_normal()
    walk[100:, 1] = np.cumsum(5.0 + ar - ar.mean()) / np.arange(1, 101)
    status, messages, diag = saem_convergence(walk, names, n_explore=100)
    assert diag["B"]["ess"] < SAEM_MIN_ESS and status == "max_iterations"
    assert any("Monte Carlo error of B" in m for m in messages), messages


@pytest.mark.parametrize("estimator", [SAEM(n_explore=20, n_smooth=20, seed=1, covariance=None, importance_samples=50,
                                            posterior_draws=20, posterior_burn_in=5),
                                       MCEM(max_iter=5, seed=1, covariance=None, importance_samples=50,
                                            posterior_draws=20, posterior_burn_in=5)], ids=["saem", "mcem"])
def test_em_run_whose_likelihood_becomes_nonfinite_fails(theoph, estimator):
    data, model, *_ = theoph
    breaking = BreakingModel(model.structural, theta=list(model.parameter_set.theta),
                              omega=list(model.parameter_set.omega), error=model.error)
    with pytest.warns(ConvergenceWarning, match="log-likelihood is not finite"):
        fit = estimator.fit(breaking, data)
    assert fit.status == "failed", fit.messages
    assert fit.messages[0].startswith("the log-likelihood is not finite at the final estimates for subject(s) 1, 2")


def test_mcem_stopped_by_max_iter_reports_max_iterations(theoph):
    data, model, *_ = theoph
    with pytest.warns(ConvergenceWarning, match="MCEM did not converge"):
        fit = MCEM(max_iter=3, seed=1, covariance=None, importance_samples=50, posterior_draws=20,
                   posterior_burn_in=5).fit(model, data)
    assert fit.status == "max_iterations" and len(fit.history) == 3
    assert "raise max_iter" in fit.messages[0]


# ------------------------------------------------------------------------ simulated sets
@pytest.mark.parametrize("name", ["sim_1cmt_oral_wt"])
def test_saem_recovers_simulated_sets_and_matches_focei(name):
    """sim_2cmt_iv_infusion passes too (measured, 160 s) but is left out of CI for time."""
    data = pmxgen.datasets.load(name)
    fit = SAEM(n_explore=100, n_smooth=80, seed=1).fit(model_for(name, data), data)
    assert fit.status == "converged" and fit.covariance_status == "ok", fit.covariance_message
    z = z_scores(fit, true_values(pmxgen.datasets.truth(name)))
    assert all(abs(v) < 3.5 for v in z.values()), z
    ref = json.loads(REFERENCE_FILE.read_text())["sets"][name]
    for p in fit.estimated_names:
        assert abs(fit.estimates[p] - ref["estimates"][p]) < ref["se"][p], (p, fit.estimates[p], ref["estimates"][p])


# ------------------------------------------------------------------------ mu-referencing
def test_mu_reference_detection():
    data = pmxgen.datasets.load("sim_1cmt_oral_wt")
    model = model_for("sim_1cmt_oral_wt", data)
    em = EMParameters(model, data.batch)
    assert [(m.theta, m.eta_index, m.scale) for m in em.mu_refs] == [("KA", 0, "log"), ("CL", 1, "log"),
                                                                      ("V", 2, "log")]
    assert em.numeric_names == ["WT_ON_CL", "SIGMA(ADD)", "SIGMA(PROP)"]
    lin = _linear_model()
    values = lin.parameter_set.unpack(lin.parameter_set.initial_natural())
    refs = find_mu_references(lin, values, data.batch, {"TA", "TB"}, 2)
    assert [(m.theta, m.scale) for m in refs] == [("TA", "identity"), ("TB", "identity")]
    # CL = θ1 + θ2·exp(η) = θ1 + exp(log θ2 + η): θ2 is mu-referenced, θ1 is not;
    # CL = θ1·exp(θ2·η): neither
    for cl, expected in ((lambda th, e: th["T1"] + th["T2"] * torch.exp(e), [("T2", 0, "log")]),
                         (lambda th, e: th["T1"] * torch.exp(th["T2"] * e), [])):
        odd = NLMEModel(pmxgen.get_model("1cmt_oral"),
                        theta={"KA": (0, 1.0), "T1": (0, 1.0), "T2": (0, 2.0), "V": (0, 30.0)},
                        omega={"CL": 0.1}, error="additive",
                        individual=lambda th, eta, cov, cl=cl: {"KA": th["KA"], "V": th["V"], "CL": cl(th, eta["CL"])})
        values = odd.parameter_set.unpack(odd.parameter_set.initial_natural())
        found = find_mu_references(odd, values, data.batch, {"KA", "T1", "T2", "V"}, 1)
        assert [(m.theta, m.eta_index, m.scale) for m in found] == expected


# ------------------------------------------------------------------------ settings
@pytest.mark.parametrize("kwargs,match", [
    ({"n_explore": 0}, "n_explore must be an integer >= 1"),
    ({"step_exponent": 0.4}, "step_exponent must be in"),
    ({"annealing": 1.5}, "annealing must be in"),
    ({"n_chains": 0}, "n_chains must be a positive integer"),
    ({"covariance": "sandwich"}, "covariance must be one of louis, linearization"),
    ({"kernels": {"hmc": 1}}, "unknown MCMC kernels"),
    ({"importance_samples": 1}, "importance_samples must be an integer >= 2"),
])
def test_invalid_saem_settings(theoph, kwargs, match):
    data, model, *_ = theoph
    with pytest.raises(EstimationError, match=match):
        SAEM(**kwargs).fit(model, data)


def test_invalid_mcem_settings_and_models(theoph):
    data, model, *_ = theoph
    with pytest.raises(EstimationError, match="growth must be"):
        MCEM(growth=0.5).fit(model, data)
    with pytest.raises(EstimationError, match="max_draws"):
        MCEM(initial_draws=50, max_draws=10).fit(model, data)
    pooled = NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": (0, 1.5), "CL": (0, 3.0), "V": (0, 30.0)},
                       error="additive")
    with pytest.raises(EstimationError, match="needs random effects"):
        SAEM().fit(pooled, data)
    with pytest.raises(EstimationError, match="unknown method"):
        pmxgen.fit(model, data, method="nuts")
    moxo = pmxgen.datasets.load("moxo")
    iov = build_model("1cmt_oral", moxo, error="proportional", iiv=("CL",), iov=("CL",))
    with pytest.raises(ModelError, match="SAEM does not handle inter-occasion variability"):
        SAEM().fit(iov, moxo)


# ------------------------------------------------------------------------ CLI
def test_cli_fit_saem(tmp_path, capsys):
    code = main(["fit", "theophylline", "--model", "1cmt_oral", "--error", "additive", "--iiv", "KA,CL",
                 "--method", "saem", "--n-explore", "40", "--n-smooth", "30", "--importance-samples", "100",
                 "--quiet", "--output", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["method"] == "saem" and results["covariance"]["method"] == "louis"
    assert math.isfinite(results["minus2ll"])
    assert main(["fit", "theophylline", "--model", "1cmt_oral", "--method", "saem", "--covariance", "sandwich"]) == 2
    assert "does not apply to --method saem" in capsys.readouterr().err
