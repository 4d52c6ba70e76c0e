"""Shared pieces of the time-indexed generators (DDPM, score SDE, flow matching).

- :class:`TimeMLP`: a network ``(x [n, d], t [n], c [n, k] or None) → [n, d]`` with smooth
  activations; time enters as ``t`` and sinusoidal features ``sin(π j t), cos(π j t)``
  (j = 1…``time_features``), conditions are concatenated to the input.
- :func:`integrate`: a batch of ODEs ``dx/dt = f(t, x)`` from ``t0`` to ``t1`` (either direction)
  with a fixed-step method (Euler, RK4) or an adaptive solver of ``torchdiffeq`` (dopri5, ...).
- :func:`integrate_with_divergence`: the same ODE augmented with ``d(log det)/dt = div f``, the
  instantaneous change of variables (Chen et al. 2018), with the exact divergence (one
  backward pass per dimension) or Hutchinson's estimator ``εᵀ(∂f/∂x)ε`` with Rademacher ε drawn
  once per row (Grathwohl et al. 2019).

Examples
--------
Linear flow dx/dt = A x: the log-determinant of the map is t·trace(A), exactly.

>>> import torch
>>> a = torch.tensor([[-0.5, 1.0], [0.0, 0.3]], dtype=torch.float64)
>>> x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> z, delta = integrate_with_divergence(lambda t, y: y @ a.T, x, 0.0, 2.0)
>>> bool(torch.allclose(delta, torch.full((4,), 2.0 * float(torch.trace(a)), dtype=torch.float64), atol=1e-6))
True
>>> bool(torch.allclose(z, x @ torch.linalg.matrix_exp(2.0 * a).T, atol=1e-5))
True
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..errors import IntegrationError, ModelError

__all__ = ["TimeMLP", "integrate", "integrate_with_divergence", "FIXED_STEP_METHODS", "rademacher", "loss_generator"]

FIXED_STEP_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")
_ACTIVATIONS = {"silu": torch.nn.functional.silu, "tanh": torch.tanh, "softplus": torch.nn.functional.softplus,
                "gelu": torch.nn.functional.gelu}


class TimeMLP(torch.nn.Module):
    """MLP of ``[x, t, sin(πjt), cos(πjt), c]`` → ``[n, dim]`` (see the module docstring).

    Parameters
    ----------
    dim, cond_dim : int
        Width of x and of the conditions (0: none).
    hidden : sequence of int
        Hidden widths.
    activation : {"silu", "tanh", "softplus", "gelu"}
    time_features : int
        Number of sinusoid frequencies j = 1…time_features.
    """

    def __init__(self, dim: int, cond_dim: int = 0, hidden: Sequence[int] = (64, 64), *, activation: str = "silu",
                 time_features: int = 4) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ModelError(f"activation must be one of {sorted(_ACTIVATIONS)} (found {activation!r})")
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ModelError(f"hidden must be a non-empty list of positive widths (found {list(hidden)})")
        self.dim, self.cond_dim, self.activation = dim, cond_dim, activation
        self.register_buffer("freqs", math.pi * torch.arange(1, time_features + 1, dtype=torch.float64))
        sizes = (dim + 1 + 2 * time_features + cond_dim, *hidden, dim)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b, dtype=torch.float64)
                                          for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        arg = t[:, None] * self.freqs.to(x.dtype)
        parts = [x, t[:, None], torch.sin(arg), torch.cos(arg)]
        if c is not None:
            parts.append(c)
        h = torch.cat(parts, 1)
        act = _ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            h = act(layer(h))
        return self.layers[-1](h)


def _check_method(method: str, n_steps: int) -> None:
    from torchdiffeq._impl.odeint import SOLVERS
    if method not in SOLVERS:
        raise ModelError(f"unknown ODE solver {method!r}; choose one of {sorted(SOLVERS)}")
    if method in FIXED_STEP_METHODS and (not isinstance(n_steps, int) or n_steps < 1):
        raise ModelError(f"the fixed-step solver {method!r} needs n_steps >= 1 (found {n_steps!r})")


def _odeint(func, state, t0: float, t1: float, method: str, n_steps: int, rtol: float, atol: float):
    from torchdiffeq import odeint
    like = state[0] if isinstance(state, tuple) else state
    times = torch.tensor([t0, t1], dtype=like.dtype, device=like.device)
    options = {"step_size": (t1 - t0) / n_steps} if method in FIXED_STEP_METHODS else None
    try:
        out = odeint(func, state, times, method=method, rtol=rtol, atol=atol, options=options)
    except AssertionError as exc:  # torchdiffeq's "underflow in dt" and similar
        raise IntegrationError(f"the ODE solver {method!r} failed between t={t0} and t={t1} ({exc}); "
                               f"loosen rtol/atol or use a fixed-step solver") from None
    return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]


def integrate(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, t0: float, t1: float, *,
              method: str = "dopri5", n_steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5) -> torch.Tensor:
    """Solve ``dx/dt = f(t, x)`` from ``t0`` to ``t1`` for a batch ``x`` ``[n, d]``; returns x(t1).

    ``method``: a fixed-step solver ("euler", "midpoint", "rk4", ...) with ``n_steps`` equal steps, or an adaptive torchdiffeq
    solver ("dopri5", "bosh3", ...) with tolerances ``rtol``, ``atol``.
    """
    _check_method(method, n_steps)
    with torch.no_grad():
        out = _odeint(f, x, float(t0), float(t1), method, n_steps, rtol, atol)
    if not torch.isfinite(out).all():
        raise IntegrationError(f"the ODE solution from t={t0} to t={t1} is not finite ({method}); the fitted "
                               f"vector field is unusable or the step too large")
    return out


def rademacher(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """±1 with probability ½ each, ``shape``, dtype/device of ``like`` (drawn on the generator's device)."""
    r = torch.randint(0, 2, tuple(shape), generator=generator, device=generator.device)
    return (2 * r - 1).to(dtype=like.dtype, device=like.device)


def integrate_with_divergence(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                              t0: float, t1: float, *, trace: str = "exact",
                              generator: torch.Generator | None = None, method: str = "dopri5",
                              n_steps: int = 100, rtol: float = 1e-5,
                              atol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``dx/dt = f(t, x)`` together with ``∫ div f(t, x(t)) dt`` from ``t0`` to ``t1``.

    Returns ``(x(t1) [n, d], ∫_{t0}^{t1} div f dt [n])``. With ``trace="exact"`` the divergence is
    Σ_i ∂f_i/∂x_i (d backward passes); with ``"hutchinson"`` it is εᵀ(∂f/∂x)ε with one Rademacher ε per
    row drawn from ``generator`` and kept along the path (unbiased for the integral).
    """
    if trace not in ("exact", "hutchinson"):
        raise ModelError(f"trace must be 'exact' or 'hutchinson' (found {trace!r})")
    _check_method(method, n_steps)
    d = x.shape[1]
    eps = None
    if trace == "hutchinson":
        eps = rademacher(x.shape, generator or torch.Generator(device=x.device).manual_seed(0), x)

    def augmented(t, state):
        y = state[0]
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            v = f(t, y)
            if eps is None:
                div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
                for i in range(d):
                    div = div + torch.autograd.grad(v[:, i].sum(), y, retain_graph=i < d - 1)[0][:, i]
            else:
                div = (torch.autograd.grad((v * eps).sum(), y)[0] * eps).sum(1)
        return v.detach(), div.detach()

    state = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    z, delta = _odeint(augmented, state, float(t0), float(t1), method, n_steps, rtol, atol)
    if not (torch.isfinite(z).all() and torch.isfinite(delta).all()):
        raise IntegrationError(f"the ODE solution with its log-determinant from t={t0} to t={t1} is not finite "
                               f"({method}); the fitted vector field is unusable")
    return z, delta


def loss_generator(gen) -> torch.Generator:
    """The random numbers of a generator family's ``_loss``: the training stream while gradients are on, and a
    fixed stream (seeded by ``gen.seed``) for the held-out loss, so that early stopping compares the weights on
    the same noise every epoch (common random numbers) rather than on fresh noise."""
    if torch.is_grad_enabled():
        return gen._generator
    device = gen._generator.device
    return torch.Generator(device=device).manual_seed(int(gen.seed) + 7_919)
