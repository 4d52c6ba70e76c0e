r"""Energy-based generator: a noise-conditional energy network fitted by score matching, sampled by
annealed Langevin dynamics.

A thin wrapper of :mod:`pmxgen.generative.score` under the :class:`~pmxgen.generative.generator.Generator`
interface: the model is an :class:`~pmxgen.generative.score.EnergyNetwork` with
``noise_conditional=True`` (E(x, σ) = MLP(x, log σ)/σ + ½α‖x‖², score −∇ₓE) or, with
``parametrisation="score"``, a :class:`~pmxgen.generative.score.NoiseConditionalScoreNetwork`;
the loss is :func:`~pmxgen.generative.score.noise_conditional_score_matching` over a geometric
ladder of noise levels σ_1 > … > σ_L (Song & Ermon 2019), and samples come from
:func:`~pmxgen.generative.score.annealed_langevin` started from N(0, σ_1² I), ending with
Tweedie's denoising step. σ_1 defaults to the largest pairwise distance of the (encoded,
standardised) training rows (Song & Ermon 2020, technique 1); the ladder is kept with the weights.

Conditions enter the network as extra inputs that are not noised: the energy is
E([x, c], σ) and the score is its gradient in x only.

The density exp(−E)/Z has no tractable normaliser, so there is no ``log_prob``; compare samples
with the kernel statistics of :mod:`pmxgen.generative.kernels` (the tests use MMD).

Examples
--------
>>> import torch
>>> x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> gen = EnergyBasedGenerator(hidden=[16], n_levels=5, max_epochs=5, n_steps_per_level=5).fit(x)
>>> gen.sample(3, seed=1).shape, bool((gen.network.sigmas.diff() < 0).all())
(torch.Size([3, 2]), True)
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ModelError
from ._timenet import loss_generator
from .generator import Generator, register_generator
from .score import EnergyNetwork, NoiseConditionalScoreNetwork, annealed_langevin, noise_conditional_score_matching
from .score.losses import geometric_sigmas

__all__ = ["EnergyBasedGenerator"]

PARAMETRISATIONS = ("energy", "score")


class _EBMState(torch.nn.Module):
    """The network and its noise ladder (a buffer, saved with the weights)."""

    def __init__(self, model: torch.nn.Module, n_levels: int) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("sigmas", torch.zeros(n_levels, dtype=torch.float64))


@register_generator
class EnergyBasedGenerator(Generator):
    """Noise-conditional EBM (or NCSN) trained by score matching, sampled by annealed Langevin.

    Parameters
    ----------
    parametrisation : {"energy", "score"}
        An energy network (conservative score, second derivatives in training) or a direct score network.
    hidden : list of int
        Hidden widths.
    activation : str
        "silu", "softplus", "tanh" or "gelu" (smooth).
    quadratic : float
        α of the confinement ½α‖x‖² of the energy (``parametrisation="energy"`` only).
    n_levels : int
        L, noise levels of the ladder.
    sigma_max : float or None
        σ_1 on the standardised scale; None: the largest pairwise distance of the training rows.
    sigma_min : float
        σ_L on the standardised scale.
    step_scale : float
        ε of annealed Langevin (step α_i = ε σ_i²/σ_L²).
    n_steps_per_level : int
        Langevin steps per level.
    denoise : bool
        Finish with Tweedie's step x + σ_L² s(x, σ_L).
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator`.
    """

    name = "ebm"
    validation_needs_grad = False

    def __init__(self, *, parametrisation: str = "energy", hidden: Sequence[int] = (128, 128),
                 activation: str = "silu", quadratic: float = 0.0, n_levels: int = 10, sigma_max: float | None = None,
                 sigma_min: float = 0.05, step_scale: float = 1e-3, n_steps_per_level: int = 50,
                 denoise: bool = True, **common) -> None:
        super().__init__(**common)
        self.parametrisation, self.hidden, self.activation = parametrisation, list(hidden), activation
        self.quadratic, self.n_levels, self.sigma_max, self.sigma_min = quadratic, n_levels, sigma_max, sigma_min
        self.step_scale, self.n_steps_per_level, self.denoise = step_scale, n_steps_per_level, denoise

    def _validate(self) -> None:
        super()._validate()
        if self.parametrisation not in PARAMETRISATIONS:
            raise ModelError(f"parametrisation must be one of {PARAMETRISATIONS} (found {self.parametrisation!r})")
        if not (isinstance(self.n_levels, int) and self.n_levels >= 2):
            raise ModelError(f"n_levels must be an int >= 2 (found {self.n_levels!r})")
        if self.sigma_max is not None and not self.sigma_max > self.sigma_min > 0:
            raise ModelError(f"need sigma_max > sigma_min > 0 (found {self.sigma_max}, {self.sigma_min})")

    def _build(self, dim: int, cond_dim: int) -> torch.nn.Module:
        width = dim + cond_dim
        if self.parametrisation == "energy":
            model = EnergyNetwork(width, tuple(self.hidden), activation=self.activation, noise_conditional=True,
                                  quadratic=float(self.quadratic), seed=int(self.seed))
        else:
            model = NoiseConditionalScoreNetwork(width, tuple(self.hidden), activation=self.activation,
                                                 seed=int(self.seed))
        return _EBMState(model, self.n_levels)

    def score(self, x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """s(x, σ | c) on the encoded scale (the gradient in x only when conditions are given)."""
        model, d = self.network.model, x.shape[1]
        if self.parametrisation == "score":
            inputs = x if c is None else torch.cat([x, c], 1)
            return model.score(inputs, sigma)[:, :d]
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            inputs = xg if c is None else torch.cat([xg, c], 1)
            (grad,) = torch.autograd.grad(model.energy(inputs, sigma).sum(), xg, create_graph=create)
        return -grad

    def energy(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None,
               c: torch.Tensor | None = None) -> torch.Tensor:
        """E(x, σ | c) on the encoded scale (default σ = σ_L), up to the unknown log-normaliser."""
        if self.parametrisation != "energy":
            raise ModelError("a score-parametrised EBM has no energy; use parametrisation='energy'")
        sigma = self.network.sigmas[-1] if sigma is None else sigma
        return self.network.model.energy(x if c is None else torch.cat([x, c], 1), sigma)

    def _train(self, x, c, x_val, c_val):
        with torch.no_grad():
            if self.sigma_max is not None:
                top = float(self.sigma_max)
            else:
                sub = x[:2000]
                top = float(torch.cdist(sub, sub).max())
            if not top > self.sigma_min:
                raise ModelError(f"sigma_max ({top:.4g}) must exceed sigma_min={self.sigma_min}")
            self.network.sigmas.copy_(geometric_sigmas(top, self.sigma_min, self.n_levels, device=x.device))
        return super()._train(x, c, x_val, c_val)

    def _loss(self, x, c):
        gen = loss_generator(self)
        return noise_conditional_score_matching(lambda z, s: self.score(z, s, c), x, self.network.sigmas,
                                                generator=gen)

    def _sample(self, n, c, generator):
        sigmas = self.network.sigmas
        dev = self.torch_device
        x0 = float(sigmas[0]) * torch.randn(n, self.transform_.dim, generator=generator, dtype=torch.float64,
                                            device=generator.device).to(dev)
        return annealed_langevin(lambda z, s: self.score(z, s, c), x0, sigmas, step_scale=self.step_scale,
                                 n_steps_per_level=self.n_steps_per_level, denoise=self.denoise,
                                 generator=generator)
