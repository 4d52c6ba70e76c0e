r"""Score-matching losses for a model that gives a score s(x) = ∇ₓ log p(x) or an energy E(x).

An energy-based model p(x) = exp(−E(x)) / Z has the score s(x) = −∇ₓE(x), free of the
normaliser Z; score matching fits s to data without ever computing Z. Every loss takes a callable
``score`` (``[B, D] → [B, D]``; :func:`score_from_energy` turns an energy ``[B, D] → [B]`` into
one) and a batch ``x`` ``[B, D]``, and returns the mean loss over the batch as a 0-d tensor that
is differentiable in the model's parameters. Random draws come from a ``torch.Generator`` (or an
int seed), on the device and with the dtype of ``x``.

**Explicit score matching** (Hyvärinen 2005). Up to a constant independent of the model,
½ E‖s(x) − ∇ log p_data(x)‖² equals

    J(s) = E_data[ ½‖s(x)‖² + tr ∇ₓs(x) ],

with the Jacobian trace computed exactly by autograd (one backward pass per dimension: use it
for D up to ~20). For the Gaussian family s(x) = −P(x − μ) the minimiser is analytic: μ = x̄ and
P⁻¹ = the biased sample covariance, i.e. the maximum-likelihood estimate.

**Sliced score matching** (Song, Garg, Shi & Ermon 2019). Random projections v with E[vvᵀ] = I
(standard normal or Rademacher) replace the trace by one Hessian-vector product,

    J_S(s) = E_data E_v[ vᵀ∇ₓ(vᵀs(x)) + ½(vᵀs(x))² ],

and the variance-reduced form SSM-VR takes E_v(vᵀs)² = ‖s‖² analytically:

    J_VR(s) = E_data E_v[ vᵀ∇ₓ(vᵀs(x)) + ½‖s(x)‖² ].

Both have the expectation J(s) for every x, so the same optimum.

**Denoising score matching** (Vincent 2011). With x̃ = x + σε, ε ~ N(0, I), the score of the
perturbation kernel is −(x̃ − x)/σ² = −ε/σ and

    J_σ(s) = ½ E_data E_ε ‖s(x̃) + ε/σ‖²

equals explicit score matching of the smoothed density p_σ = p_data ∗ N(0, σ²I) up to a constant.
For small σ it approximates the data score (for the Gaussian family it fits mean x̄ and
covariance S + σ²I exactly).

**Noise-conditional score matching** (Song & Ermon 2019, NCSN). A score network s(x, σ) is fitted
at a geometric ladder σ_1 > … > σ_L at once, each level weighted by λ(σ) = σ² so that all levels
contribute on the same scale:

    L(s) = 1/L Σ_i σ_i² · ½ E‖s(x̃, σ_i) + ε/σ_i‖² = 1/L Σ_i ½ E‖σ_i s(x̃, σ_i) + ε‖²,

one level drawn uniformly per data point (or every level for every point, ``all_levels=True``).
:func:`~pmxgen.generative.score.langevin.annealed_langevin` samples from the fitted ladder.

Besides the functions, each loss is a small :class:`Loss` module (``ExplicitScoreMatching`` …) that
reads the model's ``score`` and plugs into :func:`~pmxgen.generative.score.fit.fit_energy`; the
alternatives to score matching (contrastive divergence, noise-contrastive estimation) live in
:mod:`~pmxgen.generative.score.contrastive`.

References
----------
Hyvärinen, A. (2005). Estimation of non-normalized statistical models by score matching. JMLR 6.
Song, Y., Garg, S., Shi, J. & Ermon, S. (2019). Sliced score matching: a scalable approach to
density and score estimation. UAI.
Vincent, P. (2011). A connection between score matching and denoising autoencoders. Neural
Computation 23(7).
Song, Y. & Ermon, S. (2019). Generative modeling by estimating gradients of the data
distribution. NeurIPS.

Examples
--------
Every loss at the true score of N(0, I) is smaller than at a wrong one:

>>> import torch
>>> from pmxgen.generative.score import explicit_score_matching, sliced_score_matching
>>> x = torch.randn(2000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> right, wrong = (lambda z: -z), (lambda z: -0.5 * z)
>>> bool(explicit_score_matching(right, x) < explicit_score_matching(wrong, x))
True
>>> round(explicit_score_matching(right, x).item(), 1)  # E[½‖x‖²] − 2
-1.0
>>> bool(sliced_score_matching(right, x, generator=1) < sliced_score_matching(wrong, x, generator=1))
True
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from ...errors import ModelError
from ._common import check_batch, check_int, check_positive, check_sigmas, make_generator, randn_like, rand_like

__all__ = ["explicit_score_matching", "sliced_score_matching", "denoising_score_matching",
           "noise_conditional_score_matching", "score_from_energy", "geometric_sigmas", "Loss",
           "ExplicitScoreMatching", "SlicedScoreMatching", "DenoisingScoreMatching",
           "NoiseConditionalScoreMatching", "PROJECTIONS", "model_score"]

Score = Callable[[torch.Tensor], torch.Tensor]
Seed = int | torch.Generator | None
#: Projection distributions of sliced score matching (both have E[vvᵀ] = I).
PROJECTIONS = ("gaussian", "rademacher")


def score_from_energy(energy: Callable[[torch.Tensor], torch.Tensor]) -> Score:
    """The score s(x) = −∇ₓE(x) of an energy ``[B, D] → [B]``, by autograd.

    The returned callable keeps the graph (``create_graph``) while gradients are enabled, so a loss
    built on it is differentiable in the energy's parameters and in ``x``; under
    :func:`torch.no_grad` it returns a detached score (e.g. for sampling).

    Examples
    --------
    >>> import torch
    >>> score = score_from_energy(lambda x: 0.5 * (x ** 2).sum(-1))
    >>> score(torch.tensor([[1.0, -2.0]], dtype=torch.float64)).tolist()
    [[-1.0, 2.0]]
    """
    def score(x: torch.Tensor) -> torch.Tensor:
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            e = energy(xg)
            if e.shape != xg.shape[:1]:
                raise ModelError(f"score_from_energy: the energy must return one value per row, shape "
                                 f"[{xg.shape[0]}]; found shape {tuple(e.shape)}")
            (grad,) = torch.autograd.grad(e.sum(), xg, create_graph=create)
        return -grad
    return score


def geometric_sigmas(sigma_max: float, sigma_min: float, n_levels: int, *, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """A geometric ladder of noise levels σ_1 = sigma_max > … > σ_L = sigma_min (Song & Ermon 2019).

    Examples
    --------
    >>> [round(s, 12) for s in geometric_sigmas(10.0, 0.1, 3).tolist()]
    [10.0, 1.0, 0.1]
    """
    hi = check_positive(sigma_max, "sigma_max", "geometric_sigmas")
    lo = check_positive(sigma_min, "sigma_min", "geometric_sigmas")
    n = check_int(n_levels, "n_levels", "geometric_sigmas")
    if n == 1:
        return torch.tensor([hi], dtype=dtype, device=device)
    if not hi > lo:
        raise ModelError(f"geometric_sigmas: sigma_max must be > sigma_min; found {hi} and {lo}")
    ladder = torch.exp(torch.linspace(math.log(hi), math.log(lo), n, dtype=torch.float64))
    ladder[0], ladder[-1] = hi, lo
    return ladder.to(dtype=dtype, device=device)


def _checked_score(score: Callable[..., torch.Tensor], x: torch.Tensor, who: str, *args: torch.Tensor) -> torch.Tensor:
    s = score(x, *args)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        found = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ModelError(f"{who}: the score must return a tensor of the shape of x, {tuple(x.shape)}; found {found}")
    return s


def _grad(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∂(Σ out)/∂x keeping the graph; zero when out does not depend on x."""
    if not out.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out, x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def explicit_score_matching(score: Score, x: torch.Tensor) -> torch.Tensor:
    """Hyvärinen's score-matching loss E[½‖s(x)‖² + tr ∇ₓs(x)] with the exact Jacobian trace.

    Parameters
    ----------
    score : callable
        ``[B, D] → [B, D]``, differentiable in its input (rows independent).
    x : torch.Tensor
        Data ``[B, D]`` (finite).

    Returns
    -------
    torch.Tensor
        0-d mean loss, differentiable in the score's parameters. Costs D backward passes.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> explicit_score_matching(lambda z: -z, x).item()  # mean ½‖x‖² = 1.25, trace −2
    -0.75
    """
    x = check_batch(x, "explicit_score_matching")
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = _checked_score(score, xg, "explicit_score_matching")
        trace = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for d in range(x.shape[1]):
            trace = trace + _grad(s[:, d].sum(), xg)[:, d]
        return (0.5 * s.pow(2).sum(-1) + trace).mean()


def _projections(like: torch.Tensor, projection: str, generator: torch.Generator) -> torch.Tensor:
    if projection == "gaussian":
        return randn_like(like, generator)
    return torch.where(rand_like(like, generator) < 0.5, -1.0, 1.0).to(like.dtype)


def sliced_score_matching(score: Score, x: torch.Tensor, *, n_projections: int = 1, projection: str = "gaussian",
                          variance_reduction: bool = False, generator: Seed = None) -> torch.Tensor:
    """Sliced score matching E[vᵀ∇(vᵀs) + ½(vᵀs)²], or SSM-VR E[vᵀ∇(vᵀs) + ½‖s‖²].

    Parameters
    ----------
    score : callable
        ``[B, D] → [B, D]``.
    x : torch.Tensor
        Data ``[B, D]``.
    n_projections : int, default 1
        Projections per data point (all evaluated in one batch of ``n_projections·B`` rows).
    projection : {"gaussian", "rademacher"}, default "gaussian"
        Distribution of v: standard normal, or ±1 with probability ½ each.
    variance_reduction : bool, default False
        Use SSM-VR (E‖…‖² term analytic).
    generator : torch.Generator, int or None
        Source of the projections.

    Returns
    -------
    torch.Tensor
        0-d mean loss; one Hessian-vector product per row instead of D backward passes.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> a = sliced_score_matching(lambda z: -z, x, projection="rademacher", generator=5)
    >>> b = sliced_score_matching(lambda z: -z, x, projection="rademacher", generator=5)
    >>> bool(a == b)  # same seed, same projections
    True
    >>> vr = sliced_score_matching(lambda z: -z, x, n_projections=20, variance_reduction=True, generator=5)
    >>> abs(vr - explicit_score_matching(lambda z: -z, x)).item() < 0.05  # same loss in expectation
    True
    """
    x = check_batch(x, "sliced_score_matching")
    m = check_int(n_projections, "n_projections", "sliced_score_matching")
    if projection not in PROJECTIONS:
        raise ModelError(f"sliced_score_matching: projection must be one of {PROJECTIONS}; found {projection!r}")
    gen = make_generator(generator)
    with torch.enable_grad():
        xg = x.detach().repeat(m, 1).requires_grad_(True)
        v = _projections(xg, projection, gen)
        s = _checked_score(score, xg, "sliced_score_matching")
        sv = (s * v).sum(-1)
        hvp = (_grad(sv.sum(), xg) * v).sum(-1)
        second = 0.5 * s.pow(2).sum(-1) if variance_reduction else 0.5 * sv.pow(2)
        return (hvp + second).mean()


def denoising_score_matching(score: Score, x: torch.Tensor, sigma: float, *, generator: Seed = None) -> torch.Tensor:
    """Denoising score matching at one noise level: ½ E‖s(x + σε) + ε/σ‖².

    Parameters
    ----------
    score : callable
        ``[B, D] → [B, D]`` (the score of the σ-smoothed density at optimum).
    x : torch.Tensor
        Data ``[B, D]``.
    sigma : float
        Noise standard deviation σ > 0.
    generator : torch.Generator, int or None
        Source of ε.

    Returns
    -------
    torch.Tensor
        0-d mean loss; no derivatives of the score in x are needed.

    Examples
    --------
    The exact score of N(0, (1 + σ²)I) beats the unsmoothed N(0, I) score on N(0, I) data:

    >>> import torch
    >>> x = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> smoothed = denoising_score_matching(lambda z: -z / 2.0, x, 1.0, generator=1)
    >>> raw = denoising_score_matching(lambda z: -z, x, 1.0, generator=1)
    >>> bool(smoothed < raw)
    True
    """
    x = check_batch(x, "denoising_score_matching")
    sig = check_positive(sigma, "sigma", "denoising_score_matching")
    gen = make_generator(generator)
    eps = randn_like(x, gen)
    with torch.enable_grad():
        s = _checked_score(score, x.detach() + sig * eps, "denoising_score_matching")
        return 0.5 * (s + eps / sig).pow(2).sum(-1).mean()


def noise_conditional_score_matching(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                                     sigmas: torch.Tensor, *, all_levels: bool = False,
                                     generator: Seed = None) -> torch.Tensor:
    """Song & Ermon's NCSN loss over a noise ladder, weighted by σ²: mean of ½‖σ s(x̃, σ) + ε‖².

    Parameters
    ----------
    score : callable
        ``(x [B, D], sigma [B]) → [B, D]``: the score at noise level ``sigma[b]`` for row b.
    x : torch.Tensor
        Data ``[B, D]``.
    sigmas : sequence of float or torch.Tensor
        Noise levels σ_1 > … > σ_L (e.g. :func:`geometric_sigmas`).
    all_levels : bool, default False
        False: one level drawn uniformly per row (as in the paper); True: every level for every row
        (``L·B`` evaluations, less variance).
    generator : torch.Generator, int or None
        Source of the levels and of ε.

    Returns
    -------
    torch.Tensor
        0-d mean loss.

    Examples
    --------
    The exact smoothed score of N(0, I) data, −x/(1 + σ²), makes the loss ≈ ½·D/(1 + σ²) averaged
    over the levels, below a score that ignores σ:

    >>> import torch
    >>> x = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> sigmas = geometric_sigmas(3.0, 0.1, 4)
    >>> exact = lambda z, s: -z / (1 + s[:, None] ** 2)
    >>> a = noise_conditional_score_matching(exact, x, sigmas, all_levels=True, generator=2)
    >>> b = noise_conditional_score_matching(lambda z, s: -z, x, sigmas, all_levels=True, generator=2)
    >>> bool(a < b)
    True
    """
    x = check_batch(x, "noise_conditional_score_matching")
    levels = check_sigmas(sigmas, "noise_conditional_score_matching", like=x)
    gen = make_generator(generator)
    n_levels, b = levels.shape[0], x.shape[0]
    if all_levels:
        idx = torch.arange(n_levels, device=x.device).repeat_interleave(b)
        x = x.repeat(n_levels, 1)
    else:
        idx = torch.floor(rand_like(x, gen, (b,)) * n_levels).long().clamp_(max=n_levels - 1)
    sig = levels[idx]
    eps = randn_like(x, gen)
    with torch.enable_grad():
        s = _checked_score(score, x.detach() + sig[:, None] * eps, "noise_conditional_score_matching", sig)
        return 0.5 * (sig[:, None] * s + eps).pow(2).sum(-1).mean()


def model_score(model: object, who: str) -> Callable[..., torch.Tensor]:
    """The score of a model: its ``score`` method, else −∇ of its ``energy`` method."""
    if callable(getattr(model, "score", None)):
        return model.score  # type: ignore[attr-defined, no-any-return]
    if callable(getattr(model, "energy", None)):
        return score_from_energy(model.energy)  # type: ignore[attr-defined]
    raise ModelError(f"{who}: the model must have a score(x) or an energy(x) method; "
                     f"found {type(model).__name__} with neither")


def model_energy(model: object, who: str) -> Callable[..., torch.Tensor]:
    """The energy method of a model (contrastive losses need energies, not only scores)."""
    if callable(getattr(model, "energy", None)):
        return model.energy  # type: ignore[attr-defined, no-any-return]
    raise ModelError(f"{who}: this loss needs an energy-based model with an energy(x) method; "
                     f"found {type(model).__name__} without one")


class Loss(torch.nn.Module, ABC):
    """A training loss for :func:`~pmxgen.generative.score.fit.fit_energy`: ``loss(model, x, generator)``.

    A loss may hold parameters of its own (e.g. the log-normaliser of noise-contrastive estimation),
    optimised with the model's, and state prepared once from the whole data set by :meth:`setup`.

    Examples
    --------
    >>> import torch
    >>> from pmxgen.generative.score import GaussianEnergy
    >>> x = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> loss = ExplicitScoreMatching()
    >>> loss(GaussianEnergy(2), x, torch.Generator().manual_seed(0)).shape
    torch.Size([])
    """

    #: Whether the loss uses random numbers (deterministic losses may be minimised by L-BFGS).
    stochastic: bool = True

    def setup(self, model: torch.nn.Module, data: torch.Tensor, generator: torch.Generator) -> None:
        """Prepare from the whole data set before the first step (default: nothing)."""

    @abstractmethod
    def forward(self, model: torch.nn.Module, x: torch.Tensor,  # type: ignore[override]
                generator: torch.Generator) -> torch.Tensor:
        """The mean loss of the batch ``x`` (differentiable in the model's weights)."""


class ExplicitScoreMatching(Loss):
    """:func:`explicit_score_matching` of ``model.score`` (deterministic).

    Examples
    --------
    >>> ExplicitScoreMatching().stochastic
    False
    """

    stochastic = False

    def forward(self, model: torch.nn.Module, x: torch.Tensor,  # type: ignore[override]
                generator: torch.Generator) -> torch.Tensor:
        return explicit_score_matching(model_score(model, "ExplicitScoreMatching"), x)


class SlicedScoreMatching(Loss):
    """:func:`sliced_score_matching` of ``model.score``.

    Parameters
    ----------
    n_projections : int, default 1
    projection : {"gaussian", "rademacher"}, default "gaussian"
    variance_reduction : bool, default True
        SSM-VR.

    Examples
    --------
    >>> SlicedScoreMatching(projection="rademacher", n_projections=4)
    SlicedScoreMatching(n_projections=4, projection='rademacher', variance_reduction=True)
    """

    def __init__(self, *, n_projections: int = 1, projection: str = "gaussian", variance_reduction: bool = True) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ModelError(f"SlicedScoreMatching: projection must be one of {PROJECTIONS}; found {projection!r}")
        self.n_projections = check_int(n_projections, "n_projections", "SlicedScoreMatching")
        self.projection = projection
        self.variance_reduction = bool(variance_reduction)

    def extra_repr(self) -> str:
        return (f"n_projections={self.n_projections}, projection={self.projection!r}, "
                f"variance_reduction={self.variance_reduction}")

    def forward(self, model: torch.nn.Module, x: torch.Tensor,  # type: ignore[override]
                generator: torch.Generator) -> torch.Tensor:
        return sliced_score_matching(model_score(model, "SlicedScoreMatching"), x, n_projections=self.n_projections,
                                     projection=self.projection, variance_reduction=self.variance_reduction,
                                     generator=generator)


class DenoisingScoreMatching(Loss):
    """:func:`denoising_score_matching` of ``model.score`` at one noise level σ.

    Parameters
    ----------
    sigma : float, default 0.1
        Noise SD, on the scale of the data (the fit approximates the σ-smoothed density).
    n_noise : int, default 1
        Noise draws per data point per step (rows repeated; less gradient noise).

    Examples
    --------
    >>> DenoisingScoreMatching(sigma=0.05)
    DenoisingScoreMatching(sigma=0.05, n_noise=1)
    """

    def __init__(self, *, sigma: float = 0.1, n_noise: int = 1) -> None:
        super().__init__()
        self.sigma = check_positive(sigma, "sigma", "DenoisingScoreMatching")
        self.n_noise = check_int(n_noise, "n_noise", "DenoisingScoreMatching")

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, n_noise={self.n_noise}"

    def forward(self, model: torch.nn.Module, x: torch.Tensor,  # type: ignore[override]
                generator: torch.Generator) -> torch.Tensor:
        x = check_batch(x, "DenoisingScoreMatching")
        return denoising_score_matching(model_score(model, "DenoisingScoreMatching"), x.repeat(self.n_noise, 1),
                                        self.sigma, generator=generator)


class NoiseConditionalScoreMatching(Loss):
    """:func:`noise_conditional_score_matching` of ``model.score(x, sigma)`` over a noise ladder.

    Parameters
    ----------
    sigmas : sequence of float, optional
        σ_1 > … > σ_L. When omitted, :meth:`setup` builds a geometric ladder of ``n_levels`` from
        the largest pairwise distance of the data (σ_1, Song & Ermon 2020, technique 1; computed on
        at most 2000 rows) down to ``sigma_min``.
    n_levels : int, default 10
    sigma_min : float, default 0.01
    all_levels : bool, default False
        Every level for every row at each step.

    Attributes
    ----------
    sigmas : torch.Tensor
        The ladder in use (a buffer: saved with the loss).

    Examples
    --------
    >>> import torch
    >>> loss = NoiseConditionalScoreMatching(n_levels=3, sigma_min=0.1)
    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    >>> loss.setup(None, x, torch.Generator())
    >>> [round(s, 6) for s in loss.sigmas.tolist()]
    [5.0, 0.707107, 0.1]
    """

    sigmas: torch.Tensor

    def __init__(self, sigmas: object = None, *, n_levels: int = 10, sigma_min: float = 0.01,
                 all_levels: bool = False) -> None:
        super().__init__()
        self.n_levels = check_int(n_levels, "n_levels", "NoiseConditionalScoreMatching")
        self.sigma_min = check_positive(sigma_min, "sigma_min", "NoiseConditionalScoreMatching")
        self.all_levels = bool(all_levels)
        ladder = None if sigmas is None else check_sigmas(sigmas, "NoiseConditionalScoreMatching")
        self.register_buffer("sigmas", ladder)

    def setup(self, model: torch.nn.Module, data: torch.Tensor, generator: torch.Generator) -> None:
        if self.sigmas is None:
            sub = data[:2000]
            sigma_max = float(torch.cdist(sub, sub).max())
            if not sigma_max > self.sigma_min:
                raise ModelError(f"NoiseConditionalScoreMatching: the largest pairwise distance of the data "
                                 f"({sigma_max:.6g}) is not above sigma_min={self.sigma_min}; pass sigmas=")
            self.sigmas = geometric_sigmas(sigma_max, self.sigma_min, self.n_levels, dtype=data.dtype,
                                           device=data.device)

    def forward(self, model: torch.nn.Module, x: torch.Tensor,  # type: ignore[override]
                generator: torch.Generator) -> torch.Tensor:
        if self.sigmas is None:
            raise ModelError("NoiseConditionalScoreMatching: no noise levels; pass sigmas= or call setup(model, "
                             "data, generator) first (fit_energy does)")
        return noise_conditional_score_matching(model_score(model, "NoiseConditionalScoreMatching"), x, self.sigmas,
                                                all_levels=self.all_levels, generator=generator)
