"""MCMC kernels against an analytically known posterior (linear-Gaussian model).

With f = (TA + η_A) + (TB + η_B)·t, additive error σ² and η ~ N(0, Ω), subject i's
posterior is Gaussian: covariance (Ω⁻¹ + ZᵀZ/σ²)⁻¹ and mean Σ Zᵀ(y − Z·θ)/σ² (numpy).
Each kernel alone must reproduce its mean and variance within Monte Carlo error, judged
from independent chains (between-chain spread of the chain means).
"""
from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
import torch

import pmxgen
from pmxgen.errors import EstimationError
from pmxgen.estimation import mcmc
from pmxgen.estimation.mcmc import sample_conditional, validate_kernels
from pmxgen.models import NLMEModel, OmegaBlock
from linear_gaussian import LinearInTime

OMEGA = np.array([[1.5, 0.2], [0.2, 0.08]])
SIGMA = 0.4
THETA = np.array([10.0, -0.6])


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(11)
    rows, exact = [], []
    for i in range(6):
        t = np.sort(rng.uniform(0, 10, 2 + i % 3))
        eta = rng.multivariate_normal(np.zeros(2), OMEGA)
        y = THETA[0] + eta[0] + (THETA[1] + eta[1]) * t + rng.normal(0, math.sqrt(SIGMA), t.size)
        rows += [{"ID": i + 1, "TIME": a, "DV": b} for a, b in zip(t, y)]
        z = np.column_stack([np.ones_like(t), t])
        cov = np.linalg.inv(np.linalg.inv(OMEGA) + z.T @ z / SIGMA)
        exact.append((cov @ z.T @ (y - z @ THETA) / SIGMA, cov))
    model = NLMEModel(LinearInTime(), theta={"TA": THETA[0], "TB": THETA[1]}, omega=OmegaBlock(["A", "B"], OMEGA),
                      error={"kind": "additive", "init": {"ADD": SIGMA}},
                      individual=lambda th, eta, cov: {"A": th["TA"] + eta["A"], "B": th["TB"] + eta["B"]})
    data = pmxgen.read_nonmem(pd.DataFrame(rows))
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    return model, data, values, exact


@pytest.mark.parametrize("kernels", [{"mala": 1}, {"random_walk": 1}, {"prior": 1}],
                         ids=["mala", "random_walk", "prior"])
def test_kernel_reproduces_the_exact_posterior(linear, kernels):
    model, data, values, exact = linear
    chains, sweeps = 40, 400
    draws = sample_conditional(model, values, data.batch, n_draws=chains * sweeps, n_chains=chains, burn_in=100,
                               kernels=kernels, seed=5)
    per_chain = draws.reshape(sweeps, chains, 6, 2).numpy()
    chain_means = per_chain.mean(0)                          # [C, N, K], independent across chains
    mean = chain_means.mean(0)
    se = chain_means.std(0, ddof=1) / math.sqrt(chains)
    exact_mean = np.array([m for m, _ in exact])
    z = (mean - exact_mean) / se
    assert np.all(np.abs(z) < 4.5), z
    # variance and covariance of each subject, judged the same way (per-chain estimates)
    centred = per_chain - per_chain.mean(0)
    chain_moments = np.stack([(centred[..., 0] ** 2).mean(0), (centred[..., 1] ** 2).mean(0),
                              (centred[..., 0] * centred[..., 1]).mean(0)], -1)          # [C, N, 3]
    exact_moments = np.array([[c[0, 0], c[1, 1], c[0, 1]] for _, c in exact])
    z = (chain_moments.mean(0) - exact_moments) / (chain_moments.std(0, ddof=1) / math.sqrt(chains))
    assert np.all(np.abs(z) < 4.5), z


def test_same_seed_same_draws_other_seed_differs(linear):
    model, data, values, _ = linear
    a = sample_conditional(model, values, data.batch, n_draws=30, burn_in=5, seed=1)
    b = sample_conditional(model, values, data.batch, n_draws=30, burn_in=5, seed=1)
    c = sample_conditional(model, values, data.batch, n_draws=30, burn_in=5, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_adaptation_reaches_the_target_acceptance(linear):
    model, data, values, _ = linear
    rep = data.batch.repeat(20)
    target = mcmc.ConditionalTarget(model, values, rep)
    state = mcmc.KernelState(eta=torch.zeros(rep.n_subjects, 2, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        mcmc.apply_kernels(target, state, {"random_walk": 1, "mala": 1}, gen)
    state.reset_counters()
    for _ in range(200):
        mcmc.apply_kernels(target, state, {"random_walk": 1, "mala": 1}, gen)
    rates = state.acceptance()
    assert rates["random_walk"] == pytest.approx(0.4, abs=0.06)
    assert rates["mala"] == pytest.approx(0.57, abs=0.06)


def test_unevaluable_proposals_are_rejected(linear):
    model, data, values, _ = linear

    class Fragile(mcmc.ConditionalTarget):
        def log_likelihood(self, eta):
            ll = super().log_likelihood(eta)
            return torch.where(eta[:, 0] > 0.5, torch.full_like(ll, -math.inf), ll)

    target = Fragile(model, values, data.batch)
    state = mcmc.KernelState(eta=torch.zeros(6, 2, dtype=torch.float64))
    gen = torch.Generator().manual_seed(3)
    for _ in range(100):
        mcmc.apply_kernels(target, state, {"prior": 1, "random_walk": 1, "mala": 1}, gen)
        assert bool((state.eta[:, 0] <= 0.5).all()) and bool(torch.isfinite(state.log_density).all())


@pytest.mark.parametrize("kernels,match", [({"gibbs": 1}, "unknown MCMC kernels"), ({"mala": -1}, "non-negative"),
                                           ({"prior": 0}, "at least one"), ([1, 2], "must be a dict")])
def test_bad_kernel_settings(kernels, match):
    with pytest.raises(EstimationError, match=match):
        validate_kernels(kernels)


def test_bad_sampling_settings(linear):
    model, data, values, _ = linear
    with pytest.raises(EstimationError, match="n_chains must be an integer >= 1"):
        sample_conditional(model, values, data.batch, n_chains=0)


def test_docstring_examples():
    failures, tried = doctest.testmod(mcmc, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
