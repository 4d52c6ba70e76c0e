"""Empirical Bayes estimates: the mode of p(y_i|η) p(η) for every subject at once.

Batched Newton steps with the exact Hessian in η (eigenvalues raised to a positive floor
where it is not positive definite) and a per-subject backtracking line search (Armijo),
warm-started from the previous estimates. A subject whose objective is not finite at the
start is restarted at 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batching import SubjectBatch
from ..errors import IntegrationError, ModelError
from ..models.nlme import NLMEModel, ObservedData
from ..models.parameters import PopulationValues
from .linearization import inner_objective
from .objective import _detached_values, exact_eta_hessian

__all__ = ["EBEResult", "solve_ebes", "MAX_STEP"]

#: Largest Newton step, in prior standard deviations of each η.
MAX_STEP = 3.0


@dataclass
class EBEResult:
    """Modes ``eta [N, K]``, inner objective ``objective [N]``, ``converged [N]`` and iterations used."""

    eta: torch.Tensor
    objective: torch.Tensor
    converged: torch.Tensor
    iterations: int


def _objective_at(model, eta, values, batch, omega, data, variance_at):
    with torch.no_grad():
        try:
            m, v = model.moments(eta, values, batch, variance_at=variance_at)
        except (IntegrationError, ModelError):
            # A trial point the model cannot evaluate (e.g. a stiff ODE): reject it.
            return torch.full(eta.shape[:1], float("inf"), dtype=eta.dtype, device=eta.device)
        obj = inner_objective(model, m, v, eta, omega, data)
    return torch.where(torch.isfinite(obj), obj, torch.full_like(obj, float("inf")))


def solve_ebes(model: NLMEModel, values: PopulationValues, batch: SubjectBatch, eta0: torch.Tensor, *,
               variance_at: torch.Tensor | None = None, max_iter: int = 100, tol: float = 1e-10,
               max_halvings: int = 30) -> EBEResult:
    """Mode of ``−2 log p(y_i|η) p(η)`` for each subject, from ``eta0`` (all values detached).

    ``tol`` bounds the Newton decrement ``gᵀH⁻¹g`` (objective units) at convergence.
    """
    with torch.enable_grad():
        return _solve(model, values, batch, eta0, variance_at, max_iter, tol, max_halvings)


def _solve(model, values, batch, eta0, variance_at, max_iter, tol, max_halvings) -> EBEResult:
    values = _detached_values(values)
    variance_at = None if variance_at is None else variance_at.detach()
    omega = model.omega_matrix(values, batch)
    data = model.observed(batch)
    eta = eta0.detach().clone()
    n, k = eta.shape
    converged = torch.zeros(n, dtype=torch.bool, device=eta.device)
    obj = _objective_at(model, eta, values, batch, omega, data, variance_at)
    restart = ~torch.isfinite(obj)
    if bool(restart.any()):
        eta[restart] = 0.0
        obj = _objective_at(model, eta, values, batch, omega, data, variance_at)
    if k == 0:
        return EBEResult(eta, obj, torch.ones(n, dtype=torch.bool, device=eta.device), 0)
    prior_sd = torch.sqrt(torch.diagonal(omega, dim1=-2, dim2=-1))
    it = 0
    for it in range(1, max_iter + 1):
        e = eta.clone().requires_grad_(True)
        m, v = model.moments(e, values, batch, variance_at=variance_at)
        cur = inner_objective(model, m, v, e, omega, data)
        grad, hess = exact_eta_hessian(cur, e, create_graph=False)
        with torch.no_grad():
            grad = grad.detach()
            step = -_modified_newton_solve(hess.detach(), grad)
            step = torch.where(torch.isfinite(step), step, -grad * 1e-3)
            # At most MAX_STEP prior SDs per Newton step in any η.
            ratio = (step.abs() / (MAX_STEP * prior_sd)).amax(-1, keepdim=True).clamp_min(1.0)
            step = step / ratio
            decrement = -(grad * step).sum(-1)
            converged = converged | (decrement.abs() < tol)
            active = ~converged
            if not bool(active.any()):
                break
            obj = cur.detach()
            alpha = torch.ones(n, dtype=eta.dtype, device=eta.device)
            pending = active.clone()
            new_eta = eta.clone()
            for _ in range(max_halvings):
                trial = eta + alpha[:, None] * step
                trial_obj = _objective_at(model, trial, values, batch, omega, data, variance_at)
                ok = pending & (trial_obj <= obj - 1e-4 * alpha * decrement)
                new_eta[ok] = trial[ok]
                obj = torch.where(ok, trial_obj, obj)
                pending = pending & ~ok
                if not bool(pending.any()):
                    break
                alpha = torch.where(pending, alpha * 0.5, alpha)
            # No acceptable step: the subject sits at a mode to working precision.
            converged = converged | pending
            eta = new_eta
    return EBEResult(eta.detach(), obj.detach(), converged, it)


def _modified_newton_solve(hess: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``H⁻¹ g`` with H's eigenvalues raised to a positive floor where H is not positive definite."""
    chol, info = torch.linalg.cholesky_ex(hess)
    if not bool((info != 0).any()):
        return torch.cholesky_solve(grad[..., None], chol)[..., 0]
    w, q = torch.linalg.eigh(hess)
    floor = 1e-6 * w.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    w = torch.maximum(w.abs(), floor)
    return (q @ ((q.transpose(-1, -2) @ grad[..., None]) / w[..., None]))[..., 0]


