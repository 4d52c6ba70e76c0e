"""Shared data of the score-matching tests: a correlated 3-D Gaussian sample and its moments."""
import pytest
import torch

F64 = torch.float64


def gaussian_sample(n: int = 1000, seed: int = 0):
    """n draws of N(μ, AAᵀ) in 3-D with correlations, and the true μ and Σ."""
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.4, 0.5]], dtype=F64)
    x = mu + torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64) @ a.T
    return x, mu, a @ a.T


@pytest.fixture(scope="session")
def gauss():
    """dict: x [1000, 3], true mean/cov, sample mean, biased sample covariance, and their standard errors."""
    x, mu, sigma = gaussian_sample()
    n = x.shape[0]
    xbar = x.mean(0)
    s = (x - xbar).T @ (x - xbar) / n
    var = torch.diagonal(s)
    return {"x": x, "mu": mu, "sigma": sigma, "xbar": xbar, "S": s, "n": n,
            "se_mean": (var / n).sqrt(),                                   # SE of each sample mean
            "se_cov": ((torch.outer(var, var) + s ** 2) / n).sqrt()}      # SE of each sample covariance entry
