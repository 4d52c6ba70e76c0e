r"""Alternatives to score matching for energy-based models: contrastive divergence and NCE.

Both are :class:`~pmxgen.generative.score.losses.Loss` modules for
:func:`~pmxgen.generative.score.fit.fit_energy` and need the model's ``energy(x)``.

**Contrastive divergence** (Hinton 2002). The gradient of the negative log-likelihood of
p_θ = exp(−E_θ)/Z_θ is E_data[∇_θE_θ(x)] − E_{p_θ}[∇_θE_θ(x)]. CD replaces the model expectation
by negative samples from a short MCMC run, here Langevin (ULA or MALA) started at the data batch
(CD-k) or, with ``persistent=True``, continued from the previous step's chains (PCD, Tieleman
2008). The surrogate loss whose gradient is the estimate is

    L_CD = mean_data E_θ(x) − mean_neg E_θ(x⁻)   (x⁻ detached),

optionally plus α(mean E(x)² + mean E(x⁻)²), a regulariser of the energy scale (Du & Mordatch
2019). Its value is not a likelihood and may be negative; only its gradient matters.

**Noise-contrastive estimation** (Gutmann & Hyvärinen 2010). With a noise density q (here a
Gaussian: by default the data mean and the data covariance times ``noise_scale²``), ν noise points
per data point and a learned log-normaliser c, the model log-density is log p_θ(x) = −E_θ(x) − c
and logistic regression of data against noise, with G(u) = log p_θ(u) − log q(u),

    L_NCE = −mean_data log σ(G(x) − log ν) − ν mean_noise log(1 − σ(G(y) − log ν)),

is minimised at the true density with c = log Z (consistent for any q positive where the data are).

References
----------
Hinton, G. E. (2002). Training products of experts by minimizing contrastive divergence. Neural
Computation 14(8).
Tieleman, T. (2008). Training restricted Boltzmann machines using approximations to the
likelihood gradient. ICML.
Gutmann, M. & Hyvärinen, A. (2010). Noise-contrastive estimation: a new estimation principle for
unnormalized statistical models. AISTATS.

Examples
--------
>>> import torch
>>> from pmxgen.generative.score import GaussianEnergy, NoiseContrastiveEstimation
>>> x = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> model, nce = GaussianEnergy(2), NoiseContrastiveEstimation(noise_ratio=2)
>>> nce.setup(model, x, torch.Generator().manual_seed(0))
>>> nce(model, x, torch.Generator().manual_seed(1)).item() > 0
True
"""
from __future__ import annotations

import math

import torch

from ...errors import ModelError
from ._common import check_batch, check_int, check_positive, randn_like
from .langevin import mala, ula
from .losses import Loss, model_energy, score_from_energy

__all__ = ["ContrastiveDivergence", "NoiseContrastiveEstimation", "SAMPLERS"]

#: Samplers of the negative phase of contrastive divergence.
SAMPLERS = ("mala", "ula")


class ContrastiveDivergence(Loss):
    """Contrastive divergence with Langevin negative samples (CD-k, or persistent CD).

    Parameters
    ----------
    n_steps : int, default 20
        Langevin steps per training step (k).
    step_size : float, default 0.01
        ε of the Langevin steps, on the scale of the data.
    sampler : {"mala", "ula"}, default "mala"
    persistent : bool, default False
        Keep the chains between training steps (started at the first batch); otherwise start each
        step's chains at the data batch.
    regularization : float, default 0.0
        α ≥ 0 of the energy-magnitude penalty.

    Attributes
    ----------
    chains : torch.Tensor or None
        The persistent chains (``None`` before the first step, or when not persistent).

    Examples
    --------
    >>> import torch
    >>> from pmxgen.generative.score import GaussianEnergy
    >>> x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> cd = ContrastiveDivergence(n_steps=5, persistent=True)
    >>> loss = cd(GaussianEnergy(2), x, torch.Generator().manual_seed(1))
    >>> tuple(cd.chains.shape), loss.requires_grad
    ((200, 2), True)
    """

    def __init__(self, *, n_steps: int = 20, step_size: float = 0.01, sampler: str = "mala",
                 persistent: bool = False, regularization: float = 0.0) -> None:
        super().__init__()
        self.n_steps = check_int(n_steps, "n_steps", "ContrastiveDivergence")
        self.step_size = check_positive(step_size, "step_size", "ContrastiveDivergence")
        if sampler not in SAMPLERS:
            raise ModelError(f"ContrastiveDivergence: sampler must be one of {SAMPLERS}; found {sampler!r}")
        self.sampler = sampler
        self.persistent = bool(persistent)
        if isinstance(regularization, bool) or not isinstance(regularization, (int, float)) or not (
                math.isfinite(regularization) and regularization >= 0):
            raise ModelError(f"ContrastiveDivergence: regularization must be a finite number >= 0; "
                             f"found {regularization!r}")
        self.regularization = float(regularization)
        self.chains: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"n_steps={self.n_steps}, step_size={self.step_size}, sampler={self.sampler!r}, "
                f"persistent={self.persistent}, regularization={self.regularization}")

    def setup(self, model: torch.nn.Module, data: torch.Tensor, generator: torch.Generator) -> None:
        self.chains = None

    def forward(self, model: torch.nn.Module, x: torch.Tensor,  # type: ignore[override]
                generator: torch.Generator) -> torch.Tensor:
        x = check_batch(x, "ContrastiveDivergence")
        energy = model_energy(model, "ContrastiveDivergence")
        start = x
        if self.persistent:
            if self.chains is None or self.chains.shape[1] != x.shape[1]:
                self.chains = x.detach().clone()
            start = self.chains
        if self.sampler == "mala":
            negatives = mala(lambda z: -energy(z), start, step_size=self.step_size, n_steps=self.n_steps,
                             generator=generator).samples
        else:
            score = getattr(model, "score", None)
            if not callable(score):
                score = score_from_energy(energy)
            negatives = ula(score, start, step_size=self.step_size, n_steps=self.n_steps, generator=generator)
        if self.persistent:
            self.chains = negatives
        e_pos, e_neg = energy(x), energy(negatives.detach())
        loss = e_pos.mean() - e_neg.mean()
        if self.regularization:
            loss = loss + self.regularization * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
        return loss


class NoiseContrastiveEstimation(Loss):
    """Noise-contrastive estimation against a Gaussian noise density, with a learned log-normaliser.

    Parameters
    ----------
    noise_ratio : int, default 1
        ν: noise points per data point.
    noise_mean, noise_covariance : torch.Tensor, optional
        The Gaussian noise q; by default, from the data in :meth:`setup`: their mean and their
        (biased) covariance times ``noise_scale²``.
    noise_scale : float, default 1.0

    Attributes
    ----------
    log_normalizer : torch.nn.Parameter
        c (0-d): the fitted log Z of exp(−E). :meth:`setup` starts it where the model and the noise
        have equal mean log-density on the data.
    noise_mean, noise_scale_tril : torch.Tensor
        The noise q = N(noise_mean, LLᵀ) in use (buffers).

    Examples
    --------
    >>> NoiseContrastiveEstimation(noise_ratio=4, noise_scale=1.5)
    NoiseContrastiveEstimation(noise_ratio=4, noise_scale=1.5)
    """

    noise_mean: torch.Tensor | None
    noise_scale_tril: torch.Tensor | None

    def __init__(self, *, noise_ratio: int = 1, noise_mean: torch.Tensor | None = None,
                 noise_covariance: torch.Tensor | None = None, noise_scale: float = 1.0) -> None:
        super().__init__()
        self.noise_ratio = check_int(noise_ratio, "noise_ratio", "NoiseContrastiveEstimation")
        self.noise_scale = check_positive(noise_scale, "noise_scale", "NoiseContrastiveEstimation")
        if (noise_mean is None) != (noise_covariance is None):
            raise ModelError("NoiseContrastiveEstimation: give both noise_mean and noise_covariance, or neither "
                             "(then both come from the data)")
        self.log_normalizer = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("noise_mean", None)
        self.register_buffer("noise_scale_tril", None)
        self._given = None if noise_mean is None else (torch.as_tensor(noise_mean), torch.as_tensor(noise_covariance))

    def extra_repr(self) -> str:
        return f"noise_ratio={self.noise_ratio}, noise_scale={self.noise_scale}"

    def _noise_log_prob(self, y: torch.Tensor) -> torch.Tensor:
        low = self.noise_scale_tril
        z = torch.linalg.solve_triangular(low, (y - self.noise_mean).mT, upper=False).mT
        return (-0.5 * z.pow(2).sum(-1) - torch.log(torch.diagonal(low)).sum()
                - 0.5 * y.shape[1] * math.log(2 * math.pi))

    @torch.no_grad()
    def setup(self, model: torch.nn.Module, data: torch.Tensor, generator: torch.Generator) -> None:
        d = data.shape[1]
        if self._given is None:
            mean = data.mean(0)
            centred = data - mean
            cov = centred.mT @ centred / data.shape[0] * self.noise_scale ** 2
            cov = cov + 1e-9 * torch.diagonal(cov).mean() * torch.eye(d, dtype=data.dtype, device=data.device)
        else:
            mean, cov = (t.to(dtype=data.dtype, device=data.device) for t in self._given)
            if mean.shape != (d,) or cov.shape != (d, d):
                raise ModelError(f"NoiseContrastiveEstimation: noise_mean must be [{d}] and noise_covariance "
                                 f"[{d}, {d}]; found {tuple(mean.shape)} and {tuple(cov.shape)}")
        low, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0 or not bool(torch.isfinite(low).all()):
            raise ModelError("NoiseContrastiveEstimation: the noise covariance is not positive definite (constant or "
                             "collinear columns?); pass noise_covariance=")
        self.noise_mean, self.noise_scale_tril = mean, low
        energy = model_energy(model, "NoiseContrastiveEstimation")
        start = (-energy(data) - self._noise_log_prob(data)).mean()
        self.log_normalizer.data = start.to(dtype=data.dtype, device=data.device)

    def forward(self, model: torch.nn.Module, x: torch.Tensor,  # type: ignore[override]
                generator: torch.Generator) -> torch.Tensor:
        x = check_batch(x, "NoiseContrastiveEstimation")
        if self.noise_mean is None:
            raise ModelError("NoiseContrastiveEstimation: call setup(model, data, generator) first (fit_energy does)")
        energy = model_energy(model, "NoiseContrastiveEstimation")
        nu = self.noise_ratio
        y = self.noise_mean + randn_like(x, generator, (nu * x.shape[0], x.shape[1])) @ self.noise_scale_tril.mT
        log_nu = math.log(nu)
        g_x = -energy(x) - self.log_normalizer - self._noise_log_prob(x) - log_nu
        g_y = -energy(y) - self.log_normalizer - self._noise_log_prob(y) - log_nu
        return torch.nn.functional.softplus(-g_x).mean() + nu * torch.nn.functional.softplus(g_y).mean()
