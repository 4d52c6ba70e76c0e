"""Langevin samplers (pmxgen.generative.score.langevin): ULA, MALA, annealed Langevin.

Gaussian targets have exact answers: MALA's stationary law is the target; ULA's is the Gaussian
with the same mean and, per precision eigenvalue λ, variance 1/(λ(1 − ελ/4)) (steps of size ε).

Mixture 0.8·N((5, 5), I) + 0.2·N((−5, −5), I) from uniform starts on [−8, 8]² (4000 chains, exact
scores): annealed Langevin (σ 20 → 1, 20 levels, 100 steps each, ε = 0.1) gives weight 0.7935 to
the (5, 5) mode; plain Langevin (2000 steps of ε = 0.1 on the exact score) gives 0.4935, about the
share of starting points nearer (5, 5) (0.486), since its chains never cross between the modes.
"""
import pytest
import torch

from pmxgen.generative.score import annealed_langevin, geometric_sigmas, mala, ula

F64 = torch.float64
MEAN = torch.tensor([1.0, -2.0], dtype=F64)
COV = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=F64)
PREC = torch.linalg.inv(COV)
WEIGHTS = torch.tensor([0.8, 0.2], dtype=F64)
MODES = torch.tensor([[5.0, 5.0], [-5.0, -5.0]], dtype=F64)


def gauss_log_prob(x):
    c = x - MEAN
    return -0.5 * ((c @ PREC) * c).sum(-1)


def gauss_score(x):
    return -(x - MEAN) @ PREC


def mixture_score(x, sigma=None):
    """Exact score of the mixture smoothed by N(0, σ²I): the mixture with component variance 1 + σ²."""
    var = torch.ones(x.shape[0], dtype=x.dtype) if sigma is None else 1 + sigma ** 2
    diff = MODES[None] - x[:, None, :]                                 # [B, K, D]
    resp = torch.softmax(torch.log(WEIGHTS) - 0.5 * diff.pow(2).sum(-1) / var[:, None], dim=-1)
    return (resp[..., None] * diff).sum(1) / var[:, None]


def moments_se(x):
    """Sample mean and covariance with the SE of each (independent chains)."""
    n = x.shape[0]
    m, c = x.mean(0), torch.cov(x.T)
    v = torch.diagonal(c)
    return m, c, (v / n).sqrt(), ((torch.outer(v, v) + c ** 2) / n).sqrt()


def test_mala_matches_the_exact_mean_and_covariance():
    x0 = torch.zeros(4000, 2, dtype=F64)
    out = mala(gauss_log_prob, x0, step_size=0.8, n_steps=300, generator=0)
    m, c, se_m, se_c = moments_se(out.samples)
    assert ((m - MEAN).abs() / se_m).max().item() < 4
    assert ((c - COV).abs() / se_c).max().item() < 4
    rate = out.acceptance_rate.mean().item()
    assert 0.3 < rate < 0.95 and out.acceptance_rate.shape == (4000,)
    # with an explicit score (no autograd) the chain is the same
    same = mala(gauss_log_prob, x0, step_size=0.8, n_steps=300, score=gauss_score, generator=0)
    assert torch.allclose(same.samples, out.samples, atol=1e-12)


def test_ula_matches_its_exact_biased_stationary_law():
    eps = 0.8
    lam, q = torch.linalg.eigh(PREC)
    biased = q @ torch.diag(1 / (lam * (1 - eps * lam / 4))) @ q.T
    x0 = torch.zeros(4000, 2, dtype=F64)
    x = ula(gauss_score, x0, step_size=eps, n_steps=300, generator=0)
    m, c, se_m, se_c = moments_se(x)
    assert ((m - MEAN).abs() / se_m).max().item() < 4
    assert ((c - biased).abs() / se_c).max().item() < 4
    assert ((c - COV).abs() / se_c).max().item() > 8             # the O(ε) bias is real, MALA removes it


@pytest.mark.parametrize("sampler", ["ula", "mala", "annealed"])
def test_same_seed_same_draws(sampler):
    x0 = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    run = {"ula": lambda g: ula(gauss_score, x0, step_size=0.1, n_steps=20, generator=g),
           "mala": lambda g: mala(gauss_log_prob, x0, step_size=0.1, n_steps=20, generator=g).samples,
           "annealed": lambda g: annealed_langevin(mixture_score, x0, [3.0, 1.0], step_scale=0.1,
                                                   n_steps_per_level=10, generator=g)}[sampler]
    a, b, c = run(5), run(torch.Generator().manual_seed(5)), run(6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(x0, torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64))  # not in place


def test_annealed_langevin_recovers_mixture_weights_where_plain_langevin_does_not():
    x0 = 16 * torch.rand(4000, 2, generator=torch.Generator().manual_seed(3), dtype=F64) - 8
    sigmas = geometric_sigmas(20.0, 1.0, 20)
    x = annealed_langevin(mixture_score, x0, sigmas, step_scale=0.1, n_steps_per_level=100, generator=1)
    annealed = (x.sum(1) > 0).double().mean().item()                     # measured 0.7935
    assert abs(annealed - 0.8) < 0.03, annealed
    plain_x = ula(mixture_score, x0, step_size=0.1, n_steps=2000, generator=1)
    plain = (plain_x.sum(1) > 0).double().mean().item()                  # measured 0.4935
    assert abs(plain - 0.8) > 0.1, plain
    # both end in the modes (unit variance around ±(5, 5))
    near = torch.cdist(x, MODES).min(1).values
    assert near.median().item() < 2.5


def test_annealed_langevin_denoise_step_removes_the_last_smoothing():
    """N(0, I) data: samples at σ_L have variance 1 + σ_L²; Tweedie's step x + σ_L² s(x, σ_L) shrinks them by
    1/(1 + σ_L²)."""
    score = lambda x, s: -x / (1 + s[:, None] ** 2)
    x0 = torch.zeros(4000, 1, dtype=F64)
    sigmas = [2.0, 0.5]
    noisy = annealed_langevin(score, x0, sigmas, step_scale=0.2, n_steps_per_level=100, generator=0)
    clean = annealed_langevin(score, x0, sigmas, step_scale=0.2, n_steps_per_level=100, generator=0, denoise=True)
    assert torch.allclose(clean, noisy / 1.25)
    # last level: ULA with α = ε = 0.2 on N(0, 1.25) (precision λ = 0.8): variance 1/(λ(1 − αλ/4)) = 1.302
    assert abs(noisy.var().item() - 1 / (0.8 * (1 - 0.2 * 0.8 / 4))) < 0.1
