"""The Fisher-score estimator (method="score"): exact MLE of a linear-Gaussian model, agreement with
SAEM on theophylline, the score estimate itself, status, reproducibility, validation, API and CLI.

References:
* linear-Gaussian model (tests/estimation/linear_gaussian.py): exact MLE and observed information
  computed with numpy/scipy, independently of pmxgen; the exact per-subject scores (central
  differences of each subject's exact −2LL) give the exact empirical Fisher information;
* theophylline: pmxgen SAEM (itself checked against FOCE-I and the exact linear-Gaussian MLE in
  test_saem.py).
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import pmxgen
from pmxgen.cli import main
from pmxgen.errors import ConvergenceWarning, EstimationError, ModelError
from pmxgen.estimation import SAEM, FisherScore, FitResult, fisher_identity_score
from pmxgen.estimation.score import SCORE_Z
from pmxgen.models import PPCAModel, build_model, ppca_dataset
from linear_gaussian import LINEAR_NAMES as NAMES, exact_minus2ll, exact_mle, linear_data, linear_model
from simulated_models import BreakingModel

QUICK = dict(iterations=60, importance_samples=50, posterior_draws=20, posterior_burn_in=5)


@pytest.fixture(scope="module")
def linear():
    data, subjects = linear_data()
    mle, info, m2ll = exact_mle(subjects)
    return data, subjects, mle, info, m2ll


def _exact_score_fisher(subjects, p):
    """Σ_i Δ_i Δ_iᵀ with Δ_i the exact score of subject i at p (central differences)."""
    rows = []
    for s in subjects:
        g = np.empty(6)
        for j in range(6):
            h = 1e-5 * max(abs(p[j]), 1e-2)
            e = np.eye(6)[j] * h
            g[j] = -(exact_minus2ll(p + e, [s]) - exact_minus2ll(p - e, [s])) / (4 * h)
        rows.append(g)
    rows = np.array(rows)
    return rows.T @ rows


def test_score_reaches_the_exact_mle_of_a_linear_gaussian_model(linear):
    data, subjects, mle, info, m2ll = linear
    fit = FisherScore(iterations=400, n_chains=20, seed=0).fit(linear_model(), data)
    assert fit.status == "converged", fit.messages
    se_exact = np.sqrt(np.diag(np.linalg.inv(info)))
    est = np.array([fit.estimates[n] for n in NAMES])
    assert np.all(np.abs(est - mle) < 0.25 * se_exact), (est - mle) / se_exact
    # importance-sampling -2LL at the estimates equals the exact value there
    assert abs(fit.minus2ll - exact_minus2ll(est, subjects)) < max(4 * fit.importance_sampling["se"], 0.05)
    assert fit.minus2ll >= m2ll - 4 * fit.importance_sampling["se"]
    assert exact_minus2ll(est, subjects) - m2ll < 0.05            # the exact likelihood there is the maximum
    # Louis' standard errors (the default) against the exact observed information
    se = np.array([fit.se[n] for n in NAMES])
    np.testing.assert_allclose(se, se_exact, rtol=0.2)
    assert fit.covariance_status == "ok" and fit.covariance_method == "louis"
    phases = [h["phase"] for h in fit.history]
    assert (phases.count("heat"), phases.count("decrease"), phases.count("average")) == (200, 100, 100)


def test_fisher_standard_errors_are_the_empirical_fisher_information(linear):
    """covariance='fisher': the running empirical Fisher information, mapped to φ, equals the exact
    Σ_i Δ_i Δ_iᵀ (exact per-subject scores at the MLE); it is not the observed information (its SEs
    are 7-50 % larger here, which is why Louis' formula is the default)."""
    data, subjects, mle, info, _ = linear
    fit = FisherScore(iterations=400, n_chains=20, seed=0, covariance="fisher", importance_samples=50,
                      posterior_draws=20).fit(linear_model(), data)
    assert fit.covariance_method == "fisher" and fit.covariance_status == "ok"
    se = np.array([fit.se[n] for n in NAMES])
    se_bhhh = np.sqrt(np.diag(np.linalg.inv(_exact_score_fisher(subjects, mle))))
    np.testing.assert_allclose(se, se_bhhh, rtol=0.1)
    assert np.max(se / np.sqrt(np.diag(np.linalg.inv(info)))) > 1.3


# ------------------------------------------------------------------------ theophylline vs SAEM
@pytest.fixture(scope="module")
def theoph():
    data = pmxgen.datasets.load("theophylline")
    model = build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    saem = SAEM(n_explore=100, n_smooth=80, n_chains=8, seed=1).fit(model, data)
    score = pmxgen.fit(model, data, method="score", iterations=200, seed=1)
    return data, model, saem, score


def test_score_agrees_with_saem_on_theophylline(theoph):
    _, _, saem, score = theoph
    assert saem.status == "converged" and score.status == "converged", score.messages
    assert score.method == "score"
    for name in saem.estimated_names:
        assert abs(score.estimates[name] - saem.estimates[name]) < saem.se[name], name
        assert abs(score.se[name] - saem.se[name]) < 0.2 * saem.se[name], name
    assert abs(score.minus2ll - saem.minus2ll) < 1.0
    # the result carries what SAEM's does: modes, conditional means/SDs, posterior draws, tables
    assert score.posterior_draws.shape == (500, 12, 2)
    for col in ("ETA(KA)", "MEAN(KA)", "SD(CL)", "KA", "CL", "V"):
        assert col in score.individual.columns
    assert "CWRES" in score.observations.columns
    assert score.importance_sampling["min_ess"] > 100
    back = FitResult.from_json(score.to_json())
    assert back.estimates == score.estimates and back.status == score.status


def test_averaged_complete_data_score_is_zero_at_the_saem_optimum(theoph):
    """Fisher's identity: the mean complete-data score over conditional draws is the marginal score,
    zero at the MLE (SAEM's estimates) within its Monte Carlo error, and clearly not zero elsewhere."""
    data, model, saem, _ = theoph
    at_optimum = fisher_identity_score(model, data, saem.estimates, n_iterations=200, n_chains=8, seed=4)
    assert at_optimum.names == tuple(saem.estimated_names)
    assert np.all(np.abs(at_optimum.z) < SCORE_Z), at_optimum
    moved = dict(saem.estimates, CL=saem.estimates["CL"] * 1.15)
    away = fisher_identity_score(model, data, moved, n_iterations=200, n_chains=8, seed=4)
    j = away.names.index("CL")
    assert away.score[j] < 0 and abs(away.z[j]) > 10, away       # the likelihood falls when CL rises


def test_same_seed_gives_identical_results(theoph):
    data, model, *_ = theoph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = FisherScore(seed=7, **QUICK).fit(model, data)
        b = FisherScore(seed=7, **QUICK).fit(model, data)
        c = FisherScore(seed=8, **QUICK).fit(model, data)
    assert a.estimates == b.estimates and a.minus2ll == b.minus2ll and a.se == b.se
    np.testing.assert_array_equal(a.posterior_draws, b.posterior_draws)
    assert [h["CL"] for h in a.history] == [h["CL"] for h in b.history]
    assert a.estimates != c.estimates


def test_too_short_or_unfinished_runs_are_not_converged(theoph):
    data, model, *_ = theoph
    with pytest.warns(ConvergenceWarning, match="SCORE did not converge"):
        short = FisherScore(iterations=30, seed=1, covariance=None, **{k: v for k, v in QUICK.items()
                                                                      if k != "iterations"}).fit(model, data)
    assert short.status == "max_iterations" and "too few" in short.messages[0]
    # long enough windows, but steps too small to get there from far initial estimates
    far = model.with_initial({"CL": 8.0, "V": 90.0, "OMEGA(CL)": 1.0})
    with pytest.warns(ConvergenceWarning, match="averaged score is not zero"):
        slow = FisherScore(iterations=80, max_step=0.02, seed=1, covariance=None, importance_samples=50,
                           posterior_draws=20, posterior_burn_in=5).fit(far, data)
    assert slow.status == "max_iterations" and "raise iterations" in slow.messages[0]


def test_non_finite_scores_fail(theoph):
    data, model, *_ = theoph
    breaking = BreakingModel(model.structural, theta=list(model.parameter_set.theta),
                              omega=list(model.parameter_set.omega), error=model.error)
    with pytest.warns(ConvergenceWarning, match="SCORE did not converge: the score of"):
        fit = FisherScore(covariance=None, seed=1, **QUICK).fit(breaking, data)
    assert fit.status == "failed" and "is not finite at iteration" in fit.messages[0], fit.messages
    assert all(math.isfinite(v) for v in fit.estimates.values())        # those of the iteration before


@pytest.mark.parametrize("option,value", [("iterations", 1), ("iterations", 2.5), ("heat_fraction", 1.0),
                                          ("heat_fraction", 0), ("step_exponent", 0.5), ("step_exponent", 1.5),
                                          ("max_step", -1.0), ("max_step", math.inf), ("covariance", "sandwich"),
                                          ("n_chains", 1), ("importance_samples", 1), ("posterior_draws", 0),
                                          ("seed", -1), ("kernels", {"gibbs": 1})])
def test_bad_hyperparameters_raise_naming_the_option(theoph, option, value):
    data, model, *_ = theoph
    name = "kernels" if option == "kernels" else option
    with pytest.raises(EstimationError, match=name if name != "kernels" else "unknown MCMC kernels"):
        FisherScore(**{option: value}).fit(model, data)
    with pytest.raises(EstimationError, match="has no option 'n_explore'"):
        pmxgen.fit(model, data, method="score", n_explore=10)


def test_models_without_gaussian_residuals_get_conditional_means():
    """Only the base contract and Gaussian random effects are needed: without the Gaussian-residual
    tier the individual estimates are the conditional means and the tables the generic ones."""

    class NoResiduals(PPCAModel):
        log_scale_observations = None

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2)) @ rng.normal(size=(2, 4)) + 0.5 * rng.normal(size=(30, 4))
    data = ppca_dataset(x)
    model = PPCAModel.from_data(data, 2, perturb=0.2, seed=1, identify=True)
    model.__class__ = NoResiduals
    assert "gaussian_residual" not in pmxgen.capabilities(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = FisherScore(seed=1, **QUICK).fit(model, data)
    assert any("conditional means" in m for m in fit.messages)
    np.testing.assert_array_equal(fit.ebe[:, 0], fit.individual[f"MEAN({fit.eta_names[0]})"].to_numpy())
    assert "CWRES" not in fit.observations.columns and math.isfinite(fit.minus2ll)


def test_network_weights_are_refused():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))
    from mlp_model import build
    data = pmxgen.datasets.load("theophylline")
    with pytest.raises(ModelError, match="SCORE does not optimise network weights"):
        pmxgen.fit(build(data), data, method="score")


def test_registered_and_cli(tmp_path, capsys):
    assert "score" in pmxgen.ALL_METHODS
    code = main(["fit", "theophylline", "--model", "1cmt_oral", "--iiv", "KA,CL", "--error", "additive",
                 "--method", "score", "--iterations", "200", "--importance-samples", "100", "--quiet",
                 "--output", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["method"] == "score" and results["covariance"]["method"] == "louis"
    assert math.isfinite(results["minus2ll"])
    assert main(["fit", "theophylline", "--model", "1cmt_oral", "--method", "score", "--n-explore", "10"]) == 2
    assert "does not apply to --method score" in capsys.readouterr().err

