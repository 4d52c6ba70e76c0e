"""Contrastive divergence and noise-contrastive estimation (pmxgen.generative.score.contrastive).

On a correlated 2-D Gaussian sample (n = 1000; SE of the mean ≈ 0.03, of a covariance entry
≈ 0.04), fitted Gaussian energies, measured: CD-20 with MALA negatives within 0.009 of the sample
moments, persistent CD-5 within 0.016, CD-20 with ULA within 0.009; NCE (4 noise points per data
point, noise N(x̄, 1.5²S)) within 0.005, with log-normaliser within 0.003 of the true log Z; NCE
with a fixed noise N((0, −1), 4I) within 0.011.
"""
import pytest
import torch

from pmxgen.generative.score import ContrastiveDivergence, GaussianEnergy, NoiseContrastiveEstimation, fit_energy

F64 = torch.float64


@pytest.fixture(scope="module")
def data():
    mu = torch.tensor([1.0, -2.0], dtype=F64)
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=F64)
    x = mu + torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=F64) @ a.T
    xbar = x.mean(0)
    return x, xbar, (x - xbar).T @ (x - xbar) / x.shape[0]


@pytest.mark.parametrize("loss,tol", [
    (lambda: ContrastiveDivergence(n_steps=20, step_size=0.1), 0.03),
    (lambda: ContrastiveDivergence(n_steps=5, step_size=0.1, persistent=True), 0.04),
    (lambda: ContrastiveDivergence(n_steps=20, step_size=0.05, sampler="ula"), 0.03),
], ids=["cd_mala", "pcd_mala", "cd_ula"])
def test_contrastive_divergence_recovers_the_gaussian(data, loss, tol):
    x, xbar, s = data
    model = GaussianEnergy(2)
    cd = loss()
    fit = fit_energy(model, x, loss=cd, max_iter=400, learning_rate=0.05, seed=1)
    assert (model.mean - xbar).abs().max().item() < tol
    assert (model.covariance - s).abs().max().item() < tol
    if cd.persistent:
        assert cd.chains is not None and cd.chains.shape == x.shape
    assert fit.n_iter == 400


def test_noise_contrastive_estimation_recovers_the_gaussian_and_its_normaliser(data):
    x, xbar, s = data
    model = GaussianEnergy(2)
    nce = NoiseContrastiveEstimation(noise_ratio=4, noise_scale=1.5)
    fit = fit_energy(model, x, loss=nce, max_iter=500, learning_rate=0.05, seed=1)
    assert (model.mean - xbar).abs().max().item() < 0.02
    assert (model.covariance - s).abs().max().item() < 0.02
    assert abs(nce.log_normalizer.item() - model.log_normalizer.item()) < 0.01
    assert fit.loss is nce
    assert torch.allclose(nce.noise_mean, xbar)
    assert torch.allclose(nce.noise_scale_tril @ nce.noise_scale_tril.T, 2.25 * s, atol=1e-8)


def test_nce_with_given_noise(data):
    x, xbar, s = data
    model = GaussianEnergy(2)
    nce = NoiseContrastiveEstimation(noise_ratio=4, noise_mean=torch.tensor([0.0, -1.0]),
                                     noise_covariance=4 * torch.eye(2))
    fit_energy(model, x, loss=nce, max_iter=500, learning_rate=0.05, seed=1)
    assert (model.mean - xbar).abs().max().item() < 0.04
    assert (model.covariance - s).abs().max().item() < 0.04
    assert torch.equal(nce.noise_mean, torch.tensor([0.0, -1.0], dtype=F64))


def test_contrastive_losses_are_seeded(data):
    x = data[0]
    for make in (lambda: ContrastiveDivergence(n_steps=3), lambda: NoiseContrastiveEstimation()):
        runs = []
        for seed in (3, 3, 4):
            model = GaussianEnergy(2)
            runs.append(fit_energy(model, x, loss=make(), max_iter=5, seed=seed).history)
        assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
