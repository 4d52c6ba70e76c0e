"""Schrödinger–Föllmer sampler: exact Gaussian moments, mixture weights, MALA beside it, batched targets,
unbiased marginal likelihoods, the Metropolis-corrected kernel and SAEM with it."""
import math

import numpy as np
import pytest
import torch

from pmxgen.errors import EstimationError
from pmxgen.estimation import SAEM
from pmxgen.estimation.follmer import follmer_importance_sampling, follmer_sample
from pmxgen.estimation.mcmc import sample_conditional
from pmxgen.estimation.saem import parse_kernels
from pmxgen.generative.score import mala

from linear_gaussian import LINEAR_NAMES, exact_mle, linear_data, linear_model

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([[0.5, 0.3], [0.3, 0.8]], dtype=torch.float64)


def _gaussian_log_prob(x):
    r = x - MU
    return -0.5 * (r @ torch.linalg.inv(SIGMA) * r).sum(-1)


def _mixture_log_prob(x):
    """0.3 N(−2.5, 0.4²) + 0.7 N(2.5, 0.4²): modes 12 nats apart at the barrier."""
    a = math.log(0.3) - 0.5 * ((x + 2.5) / 0.4) ** 2
    b = math.log(0.7) - 0.5 * ((x - 2.5) / 0.4) ** 2
    return (torch.logaddexp(a, b) - math.log(0.4 * math.sqrt(2 * math.pi))).sum(-1)


def _moment_tolerances(n):
    """4 standard errors of the sample mean and of the sample covariance entries of N(MU, SIGMA), n draws."""
    d = torch.diagonal(SIGMA)
    se_mean = torch.sqrt(d / n)
    se_cov = torch.sqrt((d[:, None] * d[None, :] + SIGMA ** 2) / n)
    return 4 * se_mean, 4 * se_cov


def test_gaussian_target_draws_match_the_exact_mean_and_covariance_and_mala():
    n = 4000
    out = follmer_sample(_gaussian_log_prob, n, 2, n_steps=50, n_mc=8, generator=0)
    x = out.samples
    tol_mean, tol_cov = _moment_tolerances(n)
    assert (torch.abs(x.mean(0) - MU) < tol_mean).all(), x.mean(0)
    assert (torch.abs(torch.cov(x.T) - SIGMA) < tol_cov).all(), torch.cov(x.T)
    # the Girsanov weights: nearly constant (the Laplace-smoothed drift is exact for a Gaussian) and their mean is
    # the normalising constant ∫exp(log_prob) = 2π|Σ|^½ (unbiased; SE from the weights)
    assert out.ess > 0.8 * n
    w = torch.exp(out.log_weight - out.log_weight.max())
    se_log = float(w.std() / w.mean()) / math.sqrt(n)
    exact = 0.5 * float(torch.logdet(2 * math.pi * SIGMA))
    assert abs(out.log_normalizer() - exact) < 4 * se_log + 1e-12
    # MALA on the same target (an exact MCMC sampler) gives the same moments within the same errors
    start = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = mala(_gaussian_log_prob, start, step_size=0.5, n_steps=150, generator=2).samples
    assert (torch.abs(x.mean(0) - ref.mean(0)) < math.sqrt(2) * tol_mean).all()
    assert (torch.abs(torch.cov(x.T) - torch.cov(ref.T)) < math.sqrt(2) * tol_cov).all()


def test_two_mode_mixture_weights_are_recovered_where_mala_stays_put():
    n = 4000
    out = follmer_sample(_mixture_log_prob, n, 1, n_steps=25, n_mc=16, generator=1, defensive=True)
    right = (out.samples[:, 0] > 0).double()
    w = out.normalized_weights()
    weighted = float((w * right).sum())
    # reweighted by the Girsanov weights the estimate is consistent: 4 SE with the weights' ESS
    assert abs(weighted - 0.7) < 4 * math.sqrt(0.21 / out.ess), (weighted, out.ess)
    # the raw draws carry the drift's Monte Carlo bias, but land in both modes in about the right proportion
    assert abs(float(right.mean()) - 0.7) < 0.1
    assert 0.2 < float(1 - right.mean()) and out.failed_rows == 0
    # MALA from the same kind of start stays in the mode each chain started near: about half and half
    start = torch.randn(n, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = mala(_mixture_log_prob, start, step_size=0.1, n_steps=200, generator=4)
    mala_right = float((ref.samples[:, 0] > 0).double().mean())
    assert abs(mala_right - 0.5) < 0.05 and abs(mala_right - 0.7) > 10 * math.sqrt(0.21 / n)


def test_rows_are_separate_targets_and_seeds_reproduce():
    """A batch of three different 1-d Gaussian targets (one per 'subject'), 1500 chains each."""
    means = torch.tensor([-1.0, 0.5, 3.0], dtype=torch.float64)
    sds = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    rows = means.repeat(1500)
    scale = sds.repeat(1500)

    def log_prob(x):
        return (-0.5 * ((x[..., 0] - rows) / scale) ** 2)

    a = follmer_sample(log_prob, rows.numel(), 1, n_steps=40, n_mc=8, generator=7)
    b = follmer_sample(log_prob, rows.numel(), 1, n_steps=40, n_mc=8, generator=7)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.log_weight, b.log_weight)
    x = a.samples[:, 0].reshape(1500, 3)
    assert (torch.abs(x.mean(0) - means) < 4 * sds / math.sqrt(1500)).all(), x.mean(0)
    assert (torch.abs(x.std(0) / sds - 1) < 4 / math.sqrt(2 * 1500) + 0.03).all(), x.std(0)
    with pytest.raises(EstimationError, match="n_steps"):
        follmer_sample(log_prob, 3, 1, n_steps=0)


def _linear_setup(n_subjects):
    data, subjects = linear_data(n_subjects=n_subjects, seed=4)
    model = linear_model()
    p = {"TA": 9.8, "TB": -0.55, "OMEGA(A)": 1.4, "OMEGA(B,A)": 0.15, "OMEGA(B)": 0.07, "SIGMA(ADD)": 0.45}
    values = model.parameter_set.unpack(torch.tensor([p[k] for k in model.parameter_set.names], dtype=torch.float64))
    om = np.array([[p["OMEGA(A)"], p["OMEGA(B,A)"]], [p["OMEGA(B,A)"], p["OMEGA(B)"]]])
    exact = []
    for t, y in subjects:           # exact posterior of η and marginal log-likelihood (numpy)
        z = np.column_stack([np.ones_like(t), t])
        r = y - (p["TA"] + p["TB"] * t)
        prec = np.linalg.inv(om) + z.T @ z / p["SIGMA(ADD)"]
        cov = np.linalg.inv(prec)
        mean = cov @ z.T @ r / p["SIGMA(ADD)"]
        marg = z @ om @ z.T + p["SIGMA(ADD)"] * np.eye(t.size)
        loglik = -0.5 * (t.size * math.log(2 * math.pi) + np.linalg.slogdet(marg)[1] + r @ np.linalg.solve(marg, r))
        exact.append((mean, cov, loglik))
    return data, model, values, exact


def test_follmer_importance_sampling_gives_each_subjects_exact_marginal_likelihood():
    data, model, values, exact = _linear_setup(8)
    s = 100
    result = follmer_importance_sampling(model, values, data.batch, n_samples=s, n_steps=20, n_mc=8, seed=5)
    truth = np.array([e[2] for e in exact])
    est = result.log_marginal.numpy()
    # per subject: delta-method SE of log mean w from the weights' ESS, var(w)/mean(w)² = S/ESS − 1
    se = np.sqrt(np.maximum(s / result.ess.numpy() - 1, 0) / s)
    assert np.all(np.abs(est - truth) < 4 * se + 1e-12), (est - truth) / se
    assert abs(result.minus2ll - (-2 * truth.sum())) < 4 * result.se + 1e-9
    assert float(result.ess.min()) > 0.25 * s


def test_follmer_kernel_leaves_each_subjects_posterior_invariant():
    data, model, values, exact = _linear_setup(6)
    draws = sample_conditional(model, values, data.batch, n_draws=240, n_chains=60, burn_in=4,
                               kernels={"follmer": 1}, seed=3)
    for i, (mean, cov, _) in enumerate(exact):
        d = draws[:, i].numpy()
        sd = np.sqrt(np.diag(cov))
        # chains are independent; within a chain successive draws repeat on rejection: 60 chains bound the error
        assert np.all(np.abs(d.mean(0) - mean) < 4 * sd / math.sqrt(60)), (i, d.mean(0), mean)
        assert np.all(np.abs(d.std(0) / sd - 1) < 0.3), (i, d.std(0), sd)


@pytest.mark.filterwarnings("ignore::pmxgen.errors.ConvergenceWarning")   # 40 + 30 iterations: status not judged
def test_saem_with_the_follmer_kernel_reaches_the_default_estimates():
    data, subjects = linear_data(n_subjects=20, seed=4)
    p, info, _ = exact_mle(subjects)
    se = np.sqrt(np.diag(np.linalg.inv(info)))
    common = dict(n_explore=40, n_smooth=30, n_chains=3, covariance=None, importance_samples=200, posterior_draws=30,
                  posterior_burn_in=3, seed=2)
    default = SAEM(**common).fit(linear_model(), data)
    follmer = SAEM(kernels=parse_kernels("follmer=1"), **common).fit(linear_model(), data)
    assert any("acceptance follmer" in m for m in follmer.messages)
    est_d = np.array([default.estimates[n] for n in LINEAR_NAMES])
    est_f = np.array([follmer.estimates[n] for n in LINEAR_NAMES])
    # both at the exact MLE within their Monte Carlo error (3 chains: up to 0.55 SE over seeds 0, 1, 2, 3 for the
    # default kernels, 0.41 SE for the Föllmer kernel), hence at each other
    assert np.all(np.abs(est_d - p) < 0.75 * se), (est_d - p) / se
    assert np.all(np.abs(est_f - p) < 0.75 * se), (est_f - p) / se
    assert np.all(np.abs(est_f - est_d) < 1.0 * se), (est_f - est_d) / se


def test_kernels_option_parsing_and_unknown_kernels():
    assert parse_kernels("prior=2, follmer=1") == {"prior": 2, "follmer": 1}
    for bad in ("follmer", "mala=x", ""):
        with pytest.raises(ValueError):
            parse_kernels(bad)
    data, _ = linear_data(n_subjects=3, seed=4)
    with pytest.raises(EstimationError, match="follmer"):
        SAEM(kernels={"folmer": 1}, n_explore=2, n_smooth=2).fit(linear_model(), data)
    assert any(o.flag == "--kernels" for o in SAEM.cli_options)
