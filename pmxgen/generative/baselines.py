"""Baseline generator: the multivariate normal on the transformed, standardised scale.

The reference every other generator must beat on a virtual population: a Gaussian of the
encoded columns (logs of positive columns, logits of bounded ones, dequantised levels), fitted
in closed form (mean and maximum-likelihood covariance). With conditions it is the exact
conditional Gaussian given the conditioning columns. Its held-out log density is exact.

Examples
--------
>>> import torch
>>> from pmxgen.generative.baselines import MultivariateNormalGenerator
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(2000, 2, dtype=torch.float64, generator=g) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]],
...                                                                          dtype=torch.float64)
>>> gen = MultivariateNormalGenerator().fit(x)
>>> round(float(torch.corrcoef(gen.sample(20000, seed=2).T)[0, 1]), 1)
0.8
"""
from __future__ import annotations

import math

import torch

from ..errors import ModelError
from .generator import Generator, register_generator

__all__ = ["MultivariateNormalGenerator"]


class _GaussianState(torch.nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("covariance", torch.eye(size, dtype=torch.float64))


@register_generator
class MultivariateNormalGenerator(Generator):
    """Multivariate normal of the encoded columns (closed-form fit; see the module docstring).

    Parameters
    ----------
    jitter : float
        Added to the covariance diagonal (on the standardised scale) so that it is positive definite.
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator`.
    """

    name = "mvn"
    tractable_log_prob = True

    def __init__(self, *, jitter: float = 1e-9, **common) -> None:
        super().__init__(**common)
        self.jitter = jitter

    def _build(self, dim: int, cond_dim: int) -> torch.nn.Module:
        self._dim, self._cond_dim = dim, cond_dim
        return _GaussianState(dim + cond_dim)

    def _train(self, x, c, x_val, c_val):
        rows = [x] if x_val is None else [x, x_val]
        if c is not None:
            rows = [torch.cat([x, c], 1)] if x_val is None else [torch.cat([x, c], 1), torch.cat([x_val, c_val], 1)]
        data = torch.cat(rows)
        mean = data.mean(0)
        centred = data - mean
        cov = centred.T @ centred / data.shape[0]
        cov = cov + self.jitter * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        if torch.linalg.cholesky_ex(cov).info != 0:
            return "failed", "the covariance of the encoded columns is singular (a column is a copy of another?)", []
        self.network.mean.copy_(mean)
        self.network.covariance.copy_(cov)
        return "converged", f"closed form from {data.shape[0]} rows", []

    def _conditional(self, c):
        d = self.transform_.dim
        mean, cov = self.network.mean, self.network.covariance
        if c is None:
            return mean.expand(1, d), torch.linalg.cholesky(cov)
        s_xx, s_xc, s_cc = cov[:d, :d], cov[:d, d:], cov[d:, d:]
        gain = torch.linalg.solve(s_cc, s_xc.T).T
        loc = mean[:d] + (c - mean[d:]) @ gain.T
        return loc, torch.linalg.cholesky(s_xx - gain @ s_xc.T)

    def _sample(self, n, c, generator):
        loc, chol = self._conditional(c)
        z = torch.randn(n, self.transform_.dim, generator=generator, dtype=torch.float64, device=loc.device)
        return loc + z @ chol.T

    def _log_prob(self, x, c):
        loc, chol = self._conditional(c)
        resid = torch.linalg.solve_triangular(chol, (x - loc).T, upper=False).T
        d = x.shape[1]
        return (-0.5 * (resid ** 2).sum(1) - torch.log(torch.diagonal(chol)).sum()
                - 0.5 * d * math.log(2 * math.pi))

    def _validate(self) -> None:
        super()._validate()
        if not self.jitter >= 0:
            raise ModelError(f"jitter must be >= 0 (found {self.jitter})")
