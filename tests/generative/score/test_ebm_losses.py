"""Score-matching losses (pmxgen.generative.score.losses) on the Gaussian family.

For the Gaussian energy E(x) = ½(x − μ)ᵀP(x − μ) score matching has the maximum-likelihood
estimate as optimum: μ = x̄ and P⁻¹ = S, the biased sample covariance (Hyvärinen 2005). Sliced
score matching has the same expected objective (E_v over projections), so the same optimum; denoising
score matching at level σ fits the σ-smoothed data: μ = x̄, P⁻¹ = S + σ²I exactly.
Measured (n = 1000, 800 Adam steps): sliced fits land within 0.3 SE of x̄ and S, SSM-VR's mean
within 1e-10 SE, denoising (σ = 0.1, 4 noise draws per row) within 0.6 SE.
"""
import math

import pytest
import torch

from pmxgen.generative.score import (
    DenoisingScoreMatching,
    GaussianEnergy,
    SlicedScoreMatching,
    denoising_score_matching,
    explicit_score_matching,
    fit_energy,
    geometric_sigmas,
    noise_conditional_score_matching,
    score_from_energy,
    sliced_score_matching,
)

F64 = torch.float64

#: loss name → (loss, max |fit − sample| in SEs allowed for the mean and for the covariance)
STOCHASTIC = {
    "sliced_gaussian": (lambda: SlicedScoreMatching(n_projections=4, variance_reduction=False), 0.5),
    "sliced_rademacher": (lambda: SlicedScoreMatching(n_projections=4, projection="rademacher",
                                                      variance_reduction=False), 0.5),
    "sliced_vr": (lambda: SlicedScoreMatching(n_projections=4, variance_reduction=True), 0.5),
    "denoising": (lambda: DenoisingScoreMatching(sigma=0.1, n_noise=4), 1.0),
}


def _fit(loss, x):
    model = GaussianEnergy(3)
    fit = fit_energy(model, x, loss=loss, max_iter=800, learning_rate=0.05, seed=1)
    cov = model.covariance.detach()
    if isinstance(loss, DenoisingScoreMatching):
        cov = cov - loss.sigma ** 2 * torch.eye(3, dtype=F64)   # DSM fits the σ-smoothed data: S + σ²I
    return model.mean.detach(), cov, fit


@pytest.fixture(scope="module")
def fits(gauss):
    return {name: _fit(make(), gauss["x"]) for name, (make, _) in STOCHASTIC.items()}


def test_explicit_score_matching_optimum_is_sample_mean_and_biased_covariance(gauss):
    model = GaussianEnergy(3)
    fit = fit_energy(model, gauss["x"], loss="explicit", optimizer="lbfgs", max_iter=150)
    assert (model.mean - gauss["xbar"]).abs().max().item() < 1e-6
    assert (model.covariance - gauss["S"]).abs().max().item() < 1e-6
    # the biased covariance, not the unbiased one (they differ by S/(n−1) ≈ 1e-3)
    unbiased = gauss["S"] * gauss["n"] / (gauss["n"] - 1)
    assert (model.covariance - unbiased).abs().max().item() > 1e-4
    assert fit.history[-1] < fit.history[0]


def test_explicit_score_matching_value_is_the_closed_form(gauss):
    """For s(x) = −P(x − μ): J = mean ½(x − μ)ᵀP²(x − μ) − tr P (checks the autograd trace)."""
    cov = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]], dtype=F64)
    model = GaussianEnergy(3, mean=torch.tensor([0.5, -1.0, 0.0], dtype=F64), covariance=cov)
    x = gauss["x"]
    p = torch.linalg.inv(cov)
    c = x - model.mean
    expected = (0.5 * ((c @ p) ** 2).sum(-1) - torch.trace(p)).mean()
    for score in (model.score, score_from_energy(model.energy)):
        got = explicit_score_matching(score, x)
        assert abs(got.item() - expected.item()) < 1e-10
    # differentiable in the parameters: the gradient in μ is P²(μ − x̄), zero at the sample mean
    got = explicit_score_matching(model.score, x)
    (grad,) = torch.autograd.grad(got, model.loc)
    assert torch.allclose(grad, p @ p @ (model.mean - x.mean(0)).detach(), atol=1e-10)


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("vr", [False, True])
def test_sliced_score_matching_has_the_explicit_loss_as_expectation(gauss, projection, vr):
    """Averaged over many projections the sliced loss is the explicit loss (for a non-symmetric Jacobian too)."""
    x = gauss["x"][:200]
    w = torch.tensor([[1.0, 0.5, 0.0], [-0.3, 2.0, 0.2], [0.1, 0.0, 0.7]], dtype=F64)
    score = lambda z: -torch.tanh(z @ w.T) - 0.1 * z ** 3              # nonlinear, Jacobian not symmetric
    exact = explicit_score_matching(score, x).item()
    sliced = sliced_score_matching(score, x, n_projections=2000, projection=projection, variance_reduction=vr,
                                   generator=3).item()
    assert abs(sliced - exact) < 0.02 * (1 + abs(exact))
    # a wrong Hessian-vector product (sign flipped) would differ by 2·E tr ∇s: make sure that is large here
    trace = explicit_score_matching(score, x).item() - 0.5 * score(x).pow(2).sum(-1).mean().item()
    assert abs(2 * trace) > 0.5


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_stochastic_score_matching_recovers_sample_moments(gauss, fits, name):
    mean, cov, fit = fits[name]
    tol = STOCHASTIC[name][1]
    assert ((mean - gauss["xbar"]).abs() / gauss["se_mean"]).max().item() < tol
    assert ((cov - gauss["S"]).abs() / gauss["se_cov"]).max().item() < tol
    # and therefore the true parameters, within sampling error
    assert ((mean - gauss["mu"]).abs() / gauss["se_mean"]).max().item() < 4
    assert ((cov - gauss["sigma"]).abs() / gauss["se_cov"]).max().item() < 4
    assert fit.n_iter == 800 and not fit.stopped_early


def test_the_score_matching_variants_agree(gauss, fits):
    names = list(fits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert ((fits[a][0] - fits[b][0]).abs() / gauss["se_mean"]).max().item() < 1.2, (a, b)
            assert ((fits[a][1] - fits[b][1]).abs() / gauss["se_cov"]).max().item() < 1.2, (a, b)


def test_denoising_at_small_sigma_recovers_the_covariance_without_correction(gauss):
    model = GaussianEnergy(3)
    fit_energy(model, gauss["x"], loss=DenoisingScoreMatching(sigma=0.05, n_noise=8), max_iter=800,
               learning_rate=0.05, seed=2)
    assert ((model.covariance - gauss["S"]).abs() / gauss["se_cov"]).max().item() < 1.2
    assert ((model.mean - gauss["xbar"]).abs() / gauss["se_mean"]).max().item() < 1.0


def test_losses_are_seeded(gauss):
    x, score = gauss["x"], (lambda z: -z)
    for fn in (lambda g: sliced_score_matching(score, x, generator=g),
               lambda g: sliced_score_matching(score, x, projection="rademacher", generator=g),
               lambda g: denoising_score_matching(score, x, 0.3, generator=g),
               lambda g: noise_conditional_score_matching(lambda z, s: -z, x, [2.0, 1.0, 0.5], generator=g)):
        assert fn(7).item() == fn(torch.Generator().manual_seed(7)).item()
        assert fn(7).item() != fn(8).item()


def test_noise_conditional_loss_is_sigma_squared_weighted():
    """For N(0, I) data and the exact smoothed score −x/(1 + σ²), each level's σ²-weighted loss is
    ½D/(1 + σ²): the mean over levels. Unweighted, the small levels would dominate (½D/(σ²(1 + σ²)))."""
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    sigmas = geometric_sigmas(4.0, 0.05, 6)
    exact = lambda z, s: -z / (1 + s[:, None] ** 2)
    got = noise_conditional_score_matching(exact, x, sigmas, all_levels=True, generator=1).item()
    expected = (0.5 * 2 / (1 + sigmas ** 2)).mean().item()
    assert abs(got - expected) < 0.01
    random_level = noise_conditional_score_matching(exact, x, sigmas, generator=1).item()
    assert abs(random_level - expected) < 0.03
    # a score that ignores σ is worse
    assert noise_conditional_score_matching(lambda z, s: -z, x, sigmas, all_levels=True, generator=1).item() > got + 0.1


def test_denoising_loss_value_at_the_exact_smoothed_score():
    """N(0, I) data, s = −x/(1 + σ²): ½E‖s(x̃) + ε/σ‖² = ½D/(σ²(1 + σ²))."""
    sigma = 0.5
    x = torch.randn(40000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    got = denoising_score_matching(lambda z: -z / (1 + sigma ** 2), x, sigma, generator=1).item()
    expected = 0.5 * 2 / (sigma ** 2 * (1 + sigma ** 2))
    assert math.isclose(got, expected, rel_tol=0.02)
