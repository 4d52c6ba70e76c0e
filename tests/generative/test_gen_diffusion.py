"""DDPM and score SDEs: exact identities with known scores, toy-density likelihood, the Generator contract."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pmxgen.errors import ModelError
from pmxgen.generative import load_generator, make_generator, sample_toy, toy_entropy
from pmxgen.generative.ddpm import ddpm_betas, ddpm_sample, q_sample
from pmxgen.generative.score_sde import (VESDE, VPSDE, probability_flow_log_prob, probability_flow_sample,
                                         reverse_sde_sample)

F64 = torch.float64
MU = torch.tensor([0.5, -1.0], dtype=F64)
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)


def _gauss_score(sde):
    """Exact score of p_t = N(α μ, α² Σ + σ² I) for N(μ, Σ) data (the samplers use one t per call)."""
    def score(x, t):
        assert bool((t == t[0]).all())
        a, s = sde.mean_coef(t[:1]), sde.std(t[:1])
        cov = a ** 2 * SIGMA + s ** 2 * torch.eye(2, dtype=F64)
        return -(x - a * MU) @ torch.linalg.inv(cov)
    return score


def _marginal(sde, t):
    tt = torch.tensor([t], dtype=F64)
    a, s = float(sde.mean_coef(tt)), float(sde.std(tt))
    return torch.distributions.MultivariateNormal(a * MU, a ** 2 * SIGMA + s ** 2 * torch.eye(2, dtype=F64))


# -- DDPM: forward marginals, reverse chain with the exact noise predictor ---------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_forward_marginals_equal_the_stepwise_chain(schedule):
    """q(x_k | x_0) in closed form against the chain run one step at a time (non-Gaussian x_0):
    means and covariances agree with √ᾱ_k E x_0 and ᾱ_k Cov x_0 + (1 − ᾱ_k) I within Monte Carlo error."""
    K, n = 100, 40000
    betas = ddpm_betas(K, schedule)
    abar = torch.cumprod(1 - betas, 0)
    assert float(abar[-1]) < 1e-3 and bool((betas > 0).all() and (betas < 1).all())
    g = torch.Generator().manual_seed(0)
    x0 = sample_toy("8gaussians", n, generator=g) / 2
    m0, c0 = x0.mean(0), torch.cov(x0.T)
    chain = x0.clone()
    checked = {9, 49, 99}
    for k in range(K):
        chain = torch.sqrt(1 - betas[k]) * chain + torch.sqrt(betas[k]) * torch.randn(n, 2, dtype=F64, generator=g)
        if k not in checked:
            continue
        closed = q_sample(x0, torch.full((n,), k), betas, torch.randn(n, 2, dtype=F64, generator=g))
        mean = torch.sqrt(abar[k]) * m0
        cov = abar[k] * c0 + (1 - abar[k]) * torch.eye(2, dtype=F64)
        se_mean = torch.sqrt(torch.diagonal(cov) / n)
        for draws in (chain, closed):
            assert bool(((draws.mean(0) - mean).abs() < 4.5 * se_mean).all())
            assert bool(((torch.cov(draws.T) - cov).abs() < 0.04 * cov.diagonal().max()).all())


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_reverse_chain_with_exact_noise_predictor_recovers_gaussian(variance):
    """For N(μ, Σ) data the optimal ε-predictor is √(1 − ᾱ_k) Σ_k⁻¹ (x − √ᾱ_k μ) with
    Σ_k = ᾱ_k Σ + (1 − ᾱ_k) I; the ancestral sampler driven by it returns N(μ, Σ)."""
    K, n = 300, 40000
    betas = ddpm_betas(K)
    abar = torch.cumprod(1 - betas, 0)
    precision = torch.linalg.inv(abar[:, None, None] * SIGMA + (1 - abar)[:, None, None] * torch.eye(2, dtype=F64))

    def eps(x, k):
        assert bool((k == k[0]).all())
        a = abar[k[0]]
        return torch.sqrt(1 - a) * (x - torch.sqrt(a) * MU) @ precision[k[0]]

    x = ddpm_sample(eps, betas, n, 2, variance=variance, generator=torch.Generator().manual_seed(1))
    assert bool(((x.mean(0) - MU).abs() < 4 * torch.sqrt(SIGMA.diagonal() / n)).all())
    assert bool(((torch.cov(x.T) - SIGMA).abs() < 0.03).all())


# -- score SDE: likelihood and samplers with the exact score --------------------------------------
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_min=0.01, sigma_max=20.0)], ids=["vp", "ve"])
def test_pf_ode_likelihood_with_exact_score_is_the_gaussian_density(sde):
    """Instantaneous change of variables along the probability-flow ODE with the exact score:
    log p_1(x(1)) + ∫ div = log p_{t_min}(x) to solver tolerance; the reported log_prob (prior in
    place of p_1) is within the prior mismatch of the data's Gaussian log density."""
    x = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-1.0, -2.5], [0.0, 1.0]], dtype=F64)
    t_min = 1e-5
    out = probability_flow_log_prob(sde, _gauss_score(sde), x, t_min=t_min, rtol=1e-8, atol=1e-8)
    exact_tmin = _marginal(sde, t_min).log_prob(x)
    assert float((_marginal(sde, 1.0).log_prob(out.z) + out.delta - exact_tmin).abs().max()) < 1e-5
    data_density = torch.distributions.MultivariateNormal(MU, SIGMA).log_prob(x)
    # what the reported value leaves out: p_1 ≠ prior, and p_{t_min} ≠ p_data (both known here)
    left_out = ((_marginal(sde, 1.0).log_prob(out.z) - sde.prior_log_prob(out.z)).abs()
                + (exact_tmin - data_density).abs())
    assert bool(((out.log_prob - data_density).abs() <= left_out + 1e-5).all())
    if isinstance(sde, VPSDE):
        assert float((out.log_prob - data_density).abs().max()) < 0.05
    # Hutchinson's estimator is unbiased: its mean over probes equals the exact divergence integral
    rep = x[1:2].repeat(400, 1)
    hutch = probability_flow_log_prob(sde, _gauss_score(sde), rep, t_min=t_min, trace="hutchinson",
                                      generator=torch.Generator().manual_seed(3)).log_prob
    assert abs(float(hutch.mean() - out.log_prob[1])) < 4 * float(hutch.std()) / 20 + 1e-3


def test_reverse_sde_and_pf_ode_samples_agree_with_exact_score():
    """Both samplers of the VP SDE, driven by the exact score, give N(μ, Σ) moments (and agree)."""
    sde, n = VPSDE(), 20000
    g = torch.Generator().manual_seed(5)
    x_sde = reverse_sde_sample(sde, _gauss_score(sde), sde.prior_sample(n, 2, g), n_steps=400, generator=g)
    x_ode = probability_flow_sample(sde, _gauss_score(sde), sde.prior_sample(n, 2, g), rtol=1e-6, atol=1e-6)
    se = torch.sqrt(SIGMA.diagonal() / n)
    for x in (x_sde, x_ode):
        assert bool(((x.mean(0) - MU).abs() < 4 * se).all())
        assert bool(((torch.cov(x.T) - SIGMA).abs() < 0.04).all())


# -- trained score SDE on a toy density ------------------------------------------------------------
def test_score_sde_toy_likelihood_above_entropy_and_below_gaussian():
    """Held-out NLL of the probability-flow likelihood on 8 Gaussians (fast run): above the true
    entropy (cross-entropy ≥ entropy, up to Monte Carlo error) and well below the best Gaussian's;
    reverse-SDE and PF-ODE samples of the fitted model have the same moments. The long run is
    benchmarks/gen_score_sde_likelihood.py (figures in its .json)."""
    train, test = sample_toy("8gaussians", 3000, seed=0), sample_toy("8gaussians", 400, seed=1)
    gen = make_generator("score_sde", hidden=[64, 64], max_epochs=120, batch_size=128, learning_rate=1e-3,
                         validation_fraction=0, seed=0, rtol=1e-4, atol=1e-4).fit(train)
    nll = -gen.log_prob(test)
    entropy = toy_entropy("8gaussians")
    gauss = -make_generator("mvn").fit(train).log_prob(test)
    se = float(nll.std()) / math.sqrt(len(nll))
    print(f"score SDE NLL {float(nll.mean()):.3f} ± {se:.3f}, entropy {entropy:.3f}, Gaussian {float(gauss.mean()):.3f}")
    assert float(nll.mean()) > entropy - 3 * se
    # fast run (120 epochs, 3000 rows): measured 3.53 ± 0.04 against entropy 2.83 and Gaussian 4.27 nats
    assert float(nll.mean()) < float(gauss.mean()) - 0.5
    ode = gen.set_params(sampler="ode").sample(3000, seed=2)
    sde = gen.set_params(sampler="sde", n_steps=300).sample(3000, seed=2)
    # an imperfect score moves the two samplers apart (they agree exactly only for the true score, see
    # above); fast run measured SD ratios ODE/data 1.09, 0.94 and SDE/data 0.97, 0.92
    for draws in (ode, sde):
        assert bool(((draws.mean(0) - train.mean(0)).abs() < 0.25).all())
        assert bool(((draws.std(0) / train.std(0) - 1).abs() < 0.15).all())
    assert bool(((ode.std(0) / sde.std(0) - 1).abs() < 0.15).all())


# -- the Generator contract: save/load, seeds, conditions -------------------------------------------
FAMILIES = [("ddpm", {"n_timesteps": 40}), ("score_sde", {"sde": "vp", "sampler": "sde", "n_steps": 60}),
            ("score_sde", {"sde": "ve", "sigma_max": 5.0})]


def _panel(n=600, seed=0):
    rng = np.random.default_rng(seed)
    sex = rng.integers(1, 3, n)
    wt = np.exp(np.log(65) + 0.25 * (sex - 1) + 0.1 * rng.standard_normal(n))
    return pd.DataFrame({"WT": wt, "SEX": sex, "HT": 150 + 0.3 * wt + 5 * rng.standard_normal(n)})


@pytest.mark.parametrize("family,params", FAMILIES, ids=["ddpm", "vp", "ve"])
def test_save_load_seed_and_conditional_sampling(family, params, tmp_path):
    frame = _panel()
    gen = make_generator(family, hidden=[32, 32], max_epochs=40, batch_size=100, learning_rate=5e-3,
                         validation_fraction=0, seed=1, **params).fit(frame, conditions=["SEX"])
    a = gen.sample(300, conditions={"SEX": 2}, seed=4)
    pd.testing.assert_frame_equal(a, gen.sample(300, conditions={"SEX": 2}, seed=4))
    assert not a.equals(gen.sample(300, conditions={"SEX": 2}, seed=5))
    back = load_generator(gen.save(tmp_path / "g.safetensors"))
    pd.testing.assert_frame_equal(back.sample(300, conditions={"SEX": 2}, seed=4), a)
    assert (a["SEX"] == 2).all() and (a["WT"] > 0).all()
    women = gen.sample(300, conditions={"SEX": 1}, seed=4)
    # the condition carries its effect: exp(0.25) ≈ 1.28 times the weight
    assert 1.1 < a["WT"].median() / women["WT"].median() < 1.5
    if gen.tractable_log_prob:
        lp = gen.log_prob(frame.iloc[:5])
        assert lp.shape == (5,) and bool(torch.isfinite(lp).all())
    with pytest.raises(ModelError, match="conditional on"):
        gen.sample(3)


def test_invalid_settings_are_refused():
    x = torch.randn(50, 2, dtype=F64)
    with pytest.raises(ModelError, match="sde must be"):
        make_generator("score_sde", sde="sub-vp").fit(x)
    with pytest.raises(ModelError, match="schedule must be"):
        make_generator("ddpm", schedule="quadratic").fit(x)
    with pytest.raises(ModelError, match="sampler must be"):
        make_generator("score_sde", sampler="pc").fit(x)
