r"""Langevin samplers on plain tensors: unadjusted (ULA), Metropolis-adjusted (MALA) and annealed.

All samplers move a batch of B independent chains ``x`` ``[B, D]`` at once (a Python loop runs
over steps only), draw their noise from a ``torch.Generator`` (or an int seed) on the device and
with the dtype of ``x``, run without building a graph and return detached tensors. One step of
size ε follows the score s = ∇ log p:

    x' = x + (ε/2) s(x) + √ε z,   z ~ N(0, I).

* :func:`ula` — unadjusted Langevin: the step above, repeated. Its stationary law is biased at
  O(ε): for a Gaussian target with precision eigenvalue λ the stationary variance is
  1/(λ(1 − ελ/4)) instead of 1/λ.
* :func:`mala` — the step as a proposal, accepted with probability
  min(1, p(x')q(x | x') / (p(x)q(x' | x))), q(x' | x) = N(x + (ε/2)∇log p(x), εI) (Roberts &
  Tweedie 1996): exact stationary law p. Needs the (unnormalised) log-density.
* :func:`annealed_langevin` — Song & Ermon (2019), Algorithm 1: for a noise ladder σ_1 > … > σ_L
  and a noise-conditional score s(x, σ), T steps of size α_i = ε σ_i²/σ_L² at each level i in
  turn, each level starting where the previous ended. Large σ moves samples between distant
  modes, so mixture weights come out right where plain Langevin keeps each chain in the mode it
  started near.

References
----------
Roberts, G. O. & Tweedie, R. L. (1996). Exponential convergence of Langevin distributions and
their discrete approximations. Bernoulli 2(4).
Song, Y. & Ermon, S. (2019). Generative modeling by estimating gradients of the data
distribution. NeurIPS.

Examples
--------
>>> import torch
>>> from pmxgen.generative.score import mala
>>> x0 = torch.zeros(2000, 2, dtype=torch.float64)
>>> out = mala(lambda x: -0.5 * (x ** 2).sum(-1), x0, step_size=0.5, n_steps=100, generator=0)
>>> [round(v, 1) for v in out.samples.var(0).tolist()], bool(out.acceptance_rate.mean() > 0.8)
([1.0, 1.0], True)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ...errors import ModelError
from ._common import check_batch, check_int, check_positive, check_sigmas, make_generator, rand_like, randn_like

__all__ = ["ula", "mala", "annealed_langevin", "MALAResult"]

Seed = int | torch.Generator | None


class MALAResult(NamedTuple):
    """Final states ``samples`` ``[B, D]`` and each chain's acceptance rate ``[B]``."""

    samples: torch.Tensor
    acceptance_rate: torch.Tensor


def _score_values(score: Callable[..., torch.Tensor], x: torch.Tensor, who: str, *args: torch.Tensor) -> torch.Tensor:
    s = score(x, *args)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        found = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ModelError(f"{who}: the score must return a tensor of the shape of x, {tuple(x.shape)}; found {found}")
    return s.detach()


def ula(score: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *, step_size: float, n_steps: int,
        generator: Seed = None) -> torch.Tensor:
    """Unadjusted Langevin: ``n_steps`` of x ← x + (ε/2)s(x) + √ε z from ``x0``.

    Parameters
    ----------
    score : callable
        ``[B, D] → [B, D]``, the score ∇ log p (e.g. ``model.score``).
    x0 : torch.Tensor
        Starting points ``[B, D]`` (one chain per row).
    step_size : float
        ε > 0.
    n_steps : int
    generator : torch.Generator, int or None

    Returns
    -------
    torch.Tensor
        Final states ``[B, D]`` (detached).

    Examples
    --------
    >>> import torch
    >>> x0 = torch.zeros(4000, 1, dtype=torch.float64)
    >>> x = ula(lambda x: -x, x0, step_size=0.4, n_steps=100, generator=0)
    >>> round(x.var().item(), 1)  # 1/(1 − ε/4) = 1.11, not 1: the O(ε) bias of ULA
    1.1
    """
    x = check_batch(x0, "ula").detach().clone()
    eps = check_positive(step_size, "step_size", "ula")
    n = check_int(n_steps, "n_steps", "ula", minimum=0)
    gen = make_generator(generator)
    noise = eps ** 0.5
    with torch.no_grad():
        for _ in range(n):
            x = x + 0.5 * eps * _score_values(score, x, "ula") + noise * randn_like(x, gen)
    return x


def _log_prob_and_grad(log_prob: Callable[[torch.Tensor], torch.Tensor],
                       score: Callable[[torch.Tensor], torch.Tensor] | None,
                       x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(score is None)
        lp = log_prob(xg)
        if not isinstance(lp, torch.Tensor) or lp.shape != x.shape[:1]:
            found = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
            raise ModelError(f"mala: log_prob must return one value per row, shape [{x.shape[0]}]; found {found}")
        if score is None:
            (grad,) = torch.autograd.grad(lp.sum(), xg)
        else:
            grad = _score_values(score, x.detach(), "mala")
    return lp.detach(), grad.detach()


def mala(log_prob: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *, step_size: float, n_steps: int,
         score: Callable[[torch.Tensor], torch.Tensor] | None = None, generator: Seed = None) -> MALAResult:
    """Metropolis-adjusted Langevin: ULA proposals with a Metropolis-Hastings correction.

    Parameters
    ----------
    log_prob : callable
        ``[B, D] → [B]``, the log-density up to a constant (e.g. ``lambda x: -model.energy(x)``).
    x0 : torch.Tensor
        Starting points ``[B, D]``.
    step_size : float
        ε > 0 (proposal x + (ε/2)∇log p(x) + √ε z).
    n_steps : int
    score : callable, optional
        ∇ log p ``[B, D] → [B, D]``; by default the gradient of ``log_prob`` by autograd.
    generator : torch.Generator, int or None

    Returns
    -------
    MALAResult
        ``samples`` ``[B, D]`` (detached) and ``acceptance_rate`` ``[B]`` per chain.

    Examples
    --------
    >>> import torch
    >>> x0 = torch.zeros(4000, 1, dtype=torch.float64)
    >>> out = mala(lambda x: -0.5 * (x ** 2).sum(-1), x0, step_size=0.4, n_steps=100, generator=0)
    >>> round(out.samples.var().item(), 1)  # exact: no O(ε) bias
    1.0
    """
    x = check_batch(x0, "mala").detach().clone()
    eps = check_positive(step_size, "step_size", "mala")
    n = check_int(n_steps, "n_steps", "mala", minimum=0)
    gen = make_generator(generator)
    accepted = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    lp, grad = _log_prob_and_grad(log_prob, score, x)
    with torch.no_grad():
        for _ in range(n):
            mean_fwd = x + 0.5 * eps * grad
            y = mean_fwd + eps ** 0.5 * randn_like(x, gen)
            lp_y, grad_y = _log_prob_and_grad(log_prob, score, y)
            mean_bwd = y + 0.5 * eps * grad_y
            log_q_fwd = -(y - mean_fwd).pow(2).sum(-1) / (2 * eps)
            log_q_bwd = -(x - mean_bwd).pow(2).sum(-1) / (2 * eps)
            log_alpha = lp_y - lp + log_q_bwd - log_q_fwd
            u = rand_like(x, gen, (x.shape[0],))
            accept = torch.log(u) < torch.nan_to_num(log_alpha, nan=-torch.inf)
            x = torch.where(accept[:, None], y, x)
            lp = torch.where(accept, lp_y, lp)
            grad = torch.where(accept[:, None], grad_y, grad)
            accepted += accept.to(x.dtype)
    return MALAResult(x, accepted / max(n, 1))


def annealed_langevin(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                      sigmas: torch.Tensor, *, step_scale: float = 2e-5, n_steps_per_level: int = 100,
                      denoise: bool = False, generator: Seed = None) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019) over the noise ladder σ_1 > … > σ_L.

    Parameters
    ----------
    score : callable
        ``(x [B, D], sigma [B]) → [B, D]``: the score of the σ-smoothed density (e.g. a trained
        :class:`~pmxgen.generative.score.NoiseConditionalScoreNetwork`'s ``score``); ``sigma`` is
        passed as a tensor of the current level, one entry per row.
    x0 : torch.Tensor
        Starting points ``[B, D]`` (e.g. uniform over a box around the data).
    sigmas : sequence of float or torch.Tensor
        Strictly decreasing noise levels.
    step_scale : float, default 2e-5
        ε: the step at level i is α_i = ε σ_i² / σ_L².
    n_steps_per_level : int, default 100
        T.
    denoise : bool, default False
        End with one noise-free step x + σ_L² s(x, σ_L) (Tweedie's denoised mean), which removes
        the σ_L smoothing from the samples.
    generator : torch.Generator, int or None

    Returns
    -------
    torch.Tensor
        Samples ``[B, D]`` (detached).

    Examples
    --------
    Samples of N(3, 1) from the exact smoothed scores −(x − 3)/(1 + σ²):

    >>> import torch
    >>> from pmxgen.generative.score import geometric_sigmas
    >>> score = lambda x, s: -(x - 3.0) / (1 + s[:, None] ** 2)
    >>> x0 = torch.zeros(4000, 1, dtype=torch.float64)
    >>> x = annealed_langevin(score, x0, geometric_sigmas(5.0, 0.1, 5), step_scale=0.01, generator=0)
    >>> round(x.mean().item(), 1), round(x.var().item(), 1)
    (3.0, 1.0)
    """
    x = check_batch(x0, "annealed_langevin").detach().clone()
    levels = check_sigmas(sigmas, "annealed_langevin", like=x)
    eps = check_positive(step_scale, "step_scale", "annealed_langevin")
    n = check_int(n_steps_per_level, "n_steps_per_level", "annealed_langevin", minimum=0)
    gen = make_generator(generator)
    sigma_last = float(levels[-1])
    with torch.no_grad():
        for sigma in levels.tolist():
            alpha = eps * sigma ** 2 / sigma_last ** 2
            sig = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
            for _ in range(n):
                x = x + 0.5 * alpha * _score_values(score, x, "annealed_langevin", sig) + alpha ** 0.5 * randn_like(x, gen)
        if denoise:
            sig = torch.full((x.shape[0],), sigma_last, dtype=x.dtype, device=x.device)
            x = x + sigma_last ** 2 * _score_values(score, x, "annealed_langevin", sig)
    return x
