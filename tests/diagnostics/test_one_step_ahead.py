"""One-step-ahead predictive log-likelihoods: exact Gaussian conditionals, the IS −2LL, M3, seeds, dispatch,
the diagnostics table and the HTML report."""
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import pmxgen
from pmxgen.diagnostics.one_step_ahead import observation_log_density, one_step_ahead
from pmxgen.errors import ModelError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "estimation"))
from linear_gaussian import linear_data, linear_model  # noqa: E402

# Values of the linear-Gaussian model at which the terms are checked (any values would do).
P = {"TA": 9.8, "TB": -0.55, "OMEGA(A)": 1.4, "OMEGA(B,A)": 0.15, "OMEGA(B)": 0.07, "SIGMA(ADD)": 0.45}


def _linear(n_subjects=12, blq_last=()):
    """Linear-Gaussian data (optionally with the last observation of some subjects BLQ at LLOQ = DV + 0.3),
    the model and its values."""
    data, subjects = linear_data(n_subjects=n_subjects, seed=7)
    if blq_last:
        rows = []
        for i, (t, y) in enumerate(subjects):
            for j, (a, b) in enumerate(zip(t, y)):
                cens = (i + 1) in blq_last and j == len(t) - 1
                rows.append({"ID": i + 1, "TIME": a, "DV": b + 0.3 if cens else b, "BLQ": int(cens),
                             "LLOQ": b + 0.3 if cens else np.nan})
        data = pmxgen.read_nonmem(pd.DataFrame(rows))
    model = linear_model()
    ps = model.parameter_set
    values = ps.unpack(torch.tensor([P[n] for n in ps.names], dtype=torch.float64))
    return data, subjects, model, values


def _exact_terms(subjects, blq_last=()):
    """log p(y_j | y_<j) by the Schur complement of each subject's marginal covariance (numpy, independent of
    pmxgen); for a censored last observation log Φ((LLOQ − m)/s) of the same conditional normal."""
    om = np.array([[P["OMEGA(A)"], P["OMEGA(B,A)"]], [P["OMEGA(B,A)"], P["OMEGA(B)"]]])
    out = []
    for i, (t, y) in enumerate(subjects):
        z = np.column_stack([np.ones_like(t), t])
        cov = z @ om @ z.T + P["SIGMA(ADD)"] * np.eye(t.size)
        mu = P["TA"] + P["TB"] * t
        for j in range(t.size):
            if j == 0:
                m, v = mu[0], cov[0, 0]
            else:
                k = np.linalg.solve(cov[:j, :j], cov[:j, j])
                m, v = mu[j] + k @ (y[:j] - mu[:j]), cov[j, j] - cov[:j, j] @ k
            if (i + 1) in blq_last and j == t.size - 1:
                out.append(stats.norm.logcdf((y[j] + 0.3 - m) / math.sqrt(v)))
            else:
                out.append(stats.norm.logpdf(y[j], m, math.sqrt(v)))
    return np.array(out)


def test_each_term_is_the_exact_gaussian_conditional_within_mc_error():
    data, subjects, model, values = _linear()
    osa = one_step_ahead(model, data, values=values, n_samples=2000, seed=3)
    exact = _exact_terms(subjects)
    z = (osa.table["OSA_LOGLIK"].to_numpy() - exact) / osa.table["OSA_SE"].to_numpy()
    assert len(z) == data.n_observations == len(exact)
    assert np.max(np.abs(z)) < 4.5, np.max(np.abs(z))
    # the SEs do not understate the error (mean z² about 1; seeds 0-5 gave 0.41-1.59 with 48 correlated terms)
    assert np.mean(z ** 2) < 2.5
    # and small: the estimate is informative
    assert osa.table["OSA_SE"].max() < 0.1 and osa.min_ess > 100
    # summed per subject: the exact marginal log-likelihood
    assert abs(osa.total - exact.sum()) < 4 * osa.se


def test_blq_m3_term_is_the_exact_censored_conditional():
    blq = (2, 5, 9)
    data, subjects, model, values = _linear(blq_last=blq)
    assert data.n_blq == 3
    osa = one_step_ahead(model, data, values=values, n_samples=2000, seed=4)
    exact = _exact_terms(subjects, blq_last=blq)
    z = (osa.table["OSA_LOGLIK"].to_numpy() - exact) / osa.table["OSA_SE"].to_numpy()
    assert np.max(np.abs(z)) < 4.5
    censored = osa.table.index[osa.table.groupby("ID").cumcount(ascending=False).eq(0)
                               & osa.table["ID"].isin(blq)]
    assert (exact[censored] < 0).all() and np.allclose(osa.table["OSA_LOGLIK"].to_numpy()[censored],
                                                       exact[censored], atol=0.05)


def test_sum_equals_the_importance_sampling_loglik_of_a_focei_fit():
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.build_model("1cmt_oral", data, error="combined", iiv=("KA", "CL", "V"))
    fit = pmxgen.fit(model, data, method="focei", covariance=None, importance_samples=3000, cpu_threads=1)
    osa = one_step_ahead(fit, data, n_samples=2000, seed=5)
    imp = fit.importance_sampling
    diff = osa.total - (-0.5 * imp["minus2ll"])
    tol = 4 * math.sqrt(osa.se ** 2 + (0.5 * imp["se"]) ** 2)
    assert abs(diff) < tol, (diff, tol)
    # the per-subject sums are the subjects' marginal log-likelihoods, and they add up to the total
    assert np.isclose(osa.subjects["OSA_LOGLIK"].sum(), osa.total)
    assert np.isclose(osa.table.groupby("ID", sort=False)["OSA_LOGLIK"].sum().to_numpy(),
                      osa.subjects["OSA_LOGLIK"].to_numpy()).all()
    assert list(osa.table["ROW"]) == list(fit.observations["ROW"])


def test_same_seed_same_numbers_other_seed_other_numbers():
    data, _, model, values = _linear(n_subjects=6)
    a = one_step_ahead(model, data, values=values, n_samples=300, seed=11)
    b = one_step_ahead(model, data, values=values, n_samples=300, seed=11)
    c = one_step_ahead(model, data, values=values, n_samples=300, seed=12)
    d = one_step_ahead(model, data, values=values, n_samples=300, seed=11, chunk_size=7)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert not np.allclose(a.table["OSA_LOGLIK"], c.table["OSA_LOGLIK"])
    assert np.allclose(a.table["OSA_LOGLIK"], d.table["OSA_LOGLIK"], rtol=0, atol=1e-12)


def test_per_observation_densities_add_up_to_the_likelihood_with_m3():
    data, _, model, values = _linear(blq_last=(1, 3))
    eta = 0.3 * torch.randn(data.n_subjects, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    per_obs = observation_log_density(model, eta, values, data.batch)
    assert torch.allclose(per_obs.sum(-1), model.log_likelihood(eta, values, data.batch), atol=1e-10)


class _OwnOSA(pmxgen.PopulationModel):
    """A tiny fake model that computes its one-step-ahead terms itself (as a latent SDE does by particle filtering):
    the terms are a known function of the data, so dispatch is checked exactly."""

    name = "own one-step-ahead"
    parameter_set = linear_model().parameter_set

    def __init__(self):
        self.calls = []

    def one_step_ahead_log_likelihood(self, data, *, n_particles, seed):
        self.calls.append((n_particles, seed))
        obs = data.batch.obs
        return torch.where(obs.mask, -0.5 * obs.dv ** 2, torch.zeros_like(obs.dv))

    def predict(self, eta, values, batch):          # pragma: no cover - not used by the dispatch
        raise AssertionError

    def log_likelihood(self, eta, values, batch):   # pragma: no cover
        raise AssertionError

    def sample_y(self, eta, values, batch, generator=None):  # pragma: no cover
        raise AssertionError


def test_models_with_their_own_method_are_dispatched_to_it():
    data, _, _, _ = _linear(n_subjects=4)
    model = _OwnOSA()
    osa = one_step_ahead(model, data, n_samples=123, seed=9)
    assert model.calls == [(123, 9)] and osa.method == "model"
    dv = data.batch.obs.dv[data.batch.obs.mask].numpy()
    assert np.isclose(osa.total, float((-0.5 * dv ** 2).sum()))
    assert np.allclose(np.sort(osa.table["OSA_LOGLIK"]), np.sort(-0.5 * dv ** 2))


def test_a_model_without_observation_densities_is_refused_clearly():
    class NoDensities(_OwnOSA):
        one_step_ahead_log_likelihood = None

        def log_likelihood(self, eta, values, batch):
            return torch.zeros(batch.n_subjects, dtype=torch.float64)

    data, _, _, values = _linear(n_subjects=3)
    with pytest.raises(ModelError, match="observation_log_likelihood"):
        one_step_ahead(NoDensities(), data, values=values, n_samples=10)


def test_diagnostics_table_and_html_report_have_the_one_step_ahead_terms(tmp_path):
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    fit = pmxgen.fit(model, data, method="focei", covariance=None, importance_samples=500, cpu_threads=1)
    diag = pmxgen.diagnose(fit, n_simulations=30, seed=2, data=data, model=model, osa_samples=400)
    direct = one_step_ahead(fit, data, n_samples=400, seed=2)
    assert np.allclose(diag.observations["OSA_LOGLIK"], direct.table["OSA_LOGLIK"])
    assert "one-step-ahead log-likelihood" in diag.summary()
    tables = diag.tables()
    assert {"OSA_LOGLIK", "OSA_SE"} <= set(tables["residuals"].columns)
    paths = pmxgen.report(diag, tmp_path / "r.html")
    text = paths[0].read_text(encoding="utf-8")
    assert "One-step-ahead predictive log-likelihood" in text and "id='one-step-ahead'" in text
    assert f"{direct.total:.5g}" in text
    assert "OSA_LOGLIK" in pd.read_csv(tmp_path / "r_residuals.csv").columns
    skipped = pmxgen.diagnose(fit, n_simulations=30, seed=2, data=data, model=model, osa_samples=0)
    assert skipped.one_step_ahead is None and "OSA_LOGLIK" not in skipped.observations.columns
