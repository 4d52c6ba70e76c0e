"""Continuous normalizing flows (FFJORD; Chen et al. 2018, Grathwohl et al. 2019) with torchdiffeq.

A data row ``x`` (standardised encoding) flows along ``dz/dt = f(z, t | c)`` from ``z(0) = x``
to ``z(T)``, which has a standard normal base, and the instantaneous change of variables gives

``log p(x | c) = log N(z(T); 0, I) + ∫_0^T tr(∂f/∂z(z(t), t | c)) dt``,

solved as one augmented ODE for ``(z, ℓ)``. The trace is computed

- exactly (``d`` vector–Jacobian products per evaluation of ``f``), the natural choice in low
  dimension, or
- by Hutchinson's estimator ``εᵀ(∂f/∂z)ε`` with one Rademacher ``ε`` per row drawn once per
  solve (one vector–Jacobian product): an unbiased estimate of the log density, FFJORD's choice
  in higher dimension.

``trace="auto"`` trains with the exact trace up to ``exact_trace_max_dim`` columns and
Hutchinson beyond; :meth:`~pmxgen.generative.generator.Generator.log_prob` always uses the exact
trace, so reported densities are exact up to the solver tolerances (``eval_rtol``,
``eval_atol``). Gradients go through the solver (``adjoint=False``) or through the adjoint ODE
(``adjoint=True``: memory constant in the number of solver steps). Sampling draws ``z(T)`` with
the seeded generator and integrates back to ``t = 0``.

The velocity field is an MLP of concat-squash layers (FFJORD): each layer
``(W h + b) ⊙ sigmoid(G s + g) + B s`` with ``s = (t, c)``, so time and conditions gate every layer.

Examples
--------
>>> import torch
>>> from pmxgen.generative.cnf import CNFGenerator
>>> x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> gen = CNFGenerator(hidden_features=[16, 16], max_epochs=2, solver="rk4", step_size=0.25).fit(x)
>>> z = gen.forward_transform(x[:3])
>>> bool(torch.allclose(gen.inverse_transform(z), x[:3], atol=1e-5))
True
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import IntegrationError, ModelError
from .generator import Generator, register_generator

__all__ = ["CNFGenerator", "ConcatSquashLinear", "VelocityField", "exact_divergence", "hutchinson_divergence"]

_ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "silu": nn.SiLU, "elu": nn.ELU}
_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
_FIXED = ("euler", "midpoint", "rk4", "heun3", "explicit_adams", "implicit_adams")


class ConcatSquashLinear(nn.Module):
    """``(W h + b) ⊙ sigmoid(G s + g) + B s`` for a context ``s`` (time and conditions)."""

    def __init__(self, in_features: int, out_features: int, context_features: int) -> None:
        super().__init__()
        kw = {"dtype": torch.float64}
        self.layer = nn.Linear(in_features, out_features, **kw)
        self.gate = nn.Linear(context_features, out_features, **kw)
        self.shift = nn.Linear(context_features, out_features, bias=False, **kw)

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.layer(h) * torch.sigmoid(self.gate(s)) + self.shift(s)


class VelocityField(nn.Module):
    """``f(z, t | c)``: concat-squash layers with a smooth activation between them.

    Parameters
    ----------
    dim, cond_dim : int
        Data and condition widths.
    hidden_features : list of int
        Hidden widths.
    activation : str
        "tanh", "softplus", "silu" or "elu" (smooth activations keep the ODE well posed).
    """

    def __init__(self, dim: int, cond_dim: int = 0, hidden_features: Sequence[int] = (64, 64, 64),
                 activation: str = "tanh") -> None:
        super().__init__()
        sizes = [dim, *[int(h) for h in hidden_features], dim]
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b, 1 + cond_dim) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = _ACTIVATIONS[activation]()
        self.cond_dim = cond_dim

    def forward(self, t: torch.Tensor, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        s = t.reshape(1, 1).to(z).expand(z.shape[0], 1)
        if self.cond_dim:
            if c is None:
                raise ModelError("this CNF is conditional: give the conditions c")
            s = torch.cat([s, c], 1)
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(h, s)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h


def exact_divergence(out: torch.Tensor, z: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """``tr(∂out/∂z)`` per row ``[n]`` (``d`` vector–Jacobian products)."""
    total = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for i in range(z.shape[1]):
        (grad,) = torch.autograd.grad(out[:, i].sum(), z, create_graph=create_graph, retain_graph=True)
        total = total + grad[:, i]
    return total


def hutchinson_divergence(out: torch.Tensor, z: torch.Tensor, noise: torch.Tensor, *,
                          create_graph: bool = False) -> torch.Tensor:
    """Hutchinson's ``εᵀ(∂out/∂z)ε`` per row ``[n]`` for probes ``noise`` ``[n, d]`` (one product)."""
    (grad,) = torch.autograd.grad(out, z, noise, create_graph=create_graph, retain_graph=True)
    return (grad * noise).sum(1)


class _Dynamics(nn.Module):
    """Right-hand side of the augmented ODE ``(z, ℓ)`` for torchdiffeq (a module, as the adjoint needs)."""

    def __init__(self, field: VelocityField) -> None:
        super().__init__()
        self.field = field
        self.c: torch.Tensor | None = None
        self.noise: torch.Tensor | None = None   # None → exact trace
        self.evaluations = 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        z = state[0]
        self.evaluations += 1
        training = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = self.field(t, z, self.c)
            if self.noise is None:
                div = exact_divergence(dz, z, create_graph=training)
            else:
                div = hutchinson_divergence(dz, z, self.noise, create_graph=training)
        if not training:
            dz, div = dz.detach(), div.detach()
        return dz, div


class _Velocity(nn.Module):
    def __init__(self, field: VelocityField) -> None:
        super().__init__()
        self.field = field
        self.c: torch.Tensor | None = None

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.field(t, z, self.c)


@register_generator
class CNFGenerator(Generator):
    """Continuous normalizing flow (FFJORD) on the encoded columns; see the module docstring.

    Parameters
    ----------
    hidden_features : list of int
        Hidden widths of the velocity field.
    activation : str
        "tanh", "softplus", "silu" or "elu".
    end_time : float
        Integration time ``T``.
    trace : {"auto", "exact", "hutchinson"}
        Trace used by the training loss ("auto": exact up to ``exact_trace_max_dim`` columns).
    exact_trace_max_dim : int
        Widest encoding trained with the exact trace under ``trace="auto"``.
    solver : str
        torchdiffeq method for training: adaptive ("dopri5", …) or fixed-step ("rk4", …, with ``step_size``).
    rtol, atol : float
        Tolerances of adaptive training solves.
    step_size : float, optional
        Step of fixed-step solvers (default ``end_time/8``).
    eval_solver, eval_rtol, eval_atol : str, float, float
        Solver and tolerances of ``log_prob`` and sampling (adaptive).
    adjoint : bool
        Differentiate through the adjoint ODE (``torchdiffeq.odeint_adjoint``) instead of the solver.
    max_num_steps : int
        Limit on adaptive steps per solve; exceeding it is an
        :class:`~pmxgen.errors.IntegrationError` (a non-finite loss while training).
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator`.
    """

    name = "cnf"
    tractable_log_prob = True

    def __init__(self, *, hidden_features: Sequence[int] = (64, 64, 64), activation: str = "tanh",
                 end_time: float = 1.0, trace: str = "auto", exact_trace_max_dim: int = 4, solver: str = "dopri5",
                 rtol: float = 1e-5, atol: float = 1e-5, step_size: float | None = None, eval_solver: str = "dopri5",
                 eval_rtol: float = 1e-7, eval_atol: float = 1e-9, adjoint: bool = False,
                 max_num_steps: int = 10_000, **common) -> None:
        super().__init__(**common)
        self.hidden_features, self.activation, self.end_time = list(hidden_features), activation, end_time
        self.trace, self.exact_trace_max_dim = trace, exact_trace_max_dim
        self.solver, self.rtol, self.atol, self.step_size = solver, rtol, atol, step_size
        self.eval_solver, self.eval_rtol, self.eval_atol = eval_solver, eval_rtol, eval_atol
        self.adjoint, self.max_num_steps = adjoint, max_num_steps

    def _validate(self) -> None:
        super()._validate()
        checks = [("hidden_features", bool(self.hidden_features) and all(int(h) >= 1 for h in self.hidden_features)),
                  ("activation", self.activation in _ACTIVATIONS), ("end_time", self.end_time > 0),
                  ("trace", self.trace in ("auto", "exact", "hutchinson")),
                  ("solver", self.solver in _ADAPTIVE + _FIXED), ("eval_solver", self.eval_solver in _ADAPTIVE),
                  ("rtol", self.rtol > 0), ("atol", self.atol > 0), ("eval_rtol", self.eval_rtol > 0),
                  ("eval_atol", self.eval_atol > 0), ("step_size", self.step_size is None or self.step_size > 0),
                  ("max_num_steps", self.max_num_steps >= 1)]
        for name, ok in checks:
            if not ok:
                raise ModelError(f"CNFGenerator: invalid {name}={getattr(self, name)!r} (activations "
                                 f"{sorted(_ACTIVATIONS)}; solvers {_ADAPTIVE + _FIXED}, adaptive for eval_solver; "
                                 f"trace 'auto', 'exact' or 'hutchinson'; positive tolerances and times)")

    def _build(self, dim: int, cond_dim: int) -> nn.Module:
        return VelocityField(dim, cond_dim, self.hidden_features, self.activation)

    # -- solves ---------------------------------------------------------------------------------
    def _options(self, solver: str) -> dict:
        if solver in _FIXED:
            return {"step_size": self.step_size if self.step_size is not None else self.end_time / 8}
        return {"max_num_steps": int(self.max_num_steps)}

    def _solve(self, func: nn.Module, y0, t0: float, t1: float, *, evaluation: bool):
        import torchdiffeq
        solver = self.eval_solver if evaluation else self.solver
        rtol, atol = (self.eval_rtol, self.eval_atol) if evaluation else (self.rtol, self.atol)
        first = y0[0] if isinstance(y0, tuple) else y0
        times = torch.tensor([t0, t1], dtype=first.dtype, device=first.device)
        kwargs = {"rtol": rtol, "atol": atol, "method": solver, "options": self._options(solver)}
        try:
            if self.adjoint and not evaluation:
                out = torchdiffeq.odeint_adjoint(func, y0, times, adjoint_params=tuple(self.network.parameters()),
                                                 **kwargs)
            else:
                out = torchdiffeq.odeint(func, y0, times, **kwargs)
        except AssertionError as exc:   # torchdiffeq signals step-size underflow and step limits by assert
            raise IntegrationError(f"CNF: the ODE solve from t={t0} to t={t1} failed ({exc}); lower the learning "
                                   f"rate, loosen rtol/atol or raise max_num_steps") from None
        return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]

    def _flow_with_logdet(self, x: torch.Tensor, c: torch.Tensor | None, *, trace: str,
                          evaluation: bool, generator: torch.Generator | None = None):
        """``(z(T), ∫ tr ∂f/∂z dt)`` from ``z(0) = x``; ``trace`` "exact" or "hutchinson"."""
        dynamics = _Dynamics(self.network)
        dynamics.c = c
        if trace == "hutchinson":
            gen = generator if generator is not None else self._noise_generator()
            dynamics.noise = (torch.randint(0, 2, x.shape, generator=gen, device=gen.device).to(x) * 2 - 1)
        zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z, integral = self._solve(dynamics, (x, zero), 0.0, float(self.end_time), evaluation=evaluation)
        self.last_evaluations_ = dynamics.evaluations
        return z, integral

    def _noise_generator(self) -> torch.Generator:
        gen = getattr(self, "_generator", None)
        if gen is None:
            gen = self._generator = torch.Generator(device=self.torch_device).manual_seed(self.seed)
        return gen

    def _train_trace(self) -> str:
        if self.trace != "auto":
            return self.trace
        return "exact" if self.transform_.dim <= self.exact_trace_max_dim else "hutchinson"

    @staticmethod
    def _base_log_prob(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z ** 2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)

    def log_prob_estimate(self, x: torch.Tensor, c: torch.Tensor | None = None, *, trace: str = "exact",
                          evaluation: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """``log p(x | c)`` on the standardised encoding with the chosen trace (Hutchinson: unbiased estimate).

        Differentiable when called with gradients enabled and ``evaluation=False`` (training solver).
        """
        z, integral = self._flow_with_logdet(x, c, trace=trace, evaluation=evaluation, generator=generator)
        return self._base_log_prob(z) + integral

    # -- Generator hooks ------------------------------------------------------------------------
    def _loss(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        grad = torch.is_grad_enabled()
        try:
            # the held-out loss (no gradients) uses the exact trace with the training solver
            lp = self.log_prob_estimate(x, c, trace=self._train_trace() if grad else "exact", evaluation=False)
        except IntegrationError:
            return torch.tensor(float("nan"), dtype=x.dtype, device=x.device)
        return -lp.mean()

    def _log_prob(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return self.log_prob_estimate(x, c, trace="exact", evaluation=True)

    def forward_transform(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``z(T)`` from ``z(0) = x`` (data → base; evaluation solver)."""
        velocity = _Velocity(self.network)
        velocity.c = c
        with torch.no_grad():
            return self._solve(velocity, x, 0.0, float(self.end_time), evaluation=True)

    def inverse_transform(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``z(0)`` from ``z(T) = z`` (base → data; evaluation solver)."""
        velocity = _Velocity(self.network)
        velocity.c = c
        with torch.no_grad():
            return self._solve(velocity, z, float(self.end_time), 0.0, evaluation=True)

    def _sample(self, n: int, c: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.transform_.dim, generator=generator, dtype=torch.float64, device=generator.device)
        return self.inverse_transform(z.to(self.torch_device), c)
