"""Empirical Bayes estimates: the mode of p(y_i|η) p(η) for every subject at once.

Batched Fisher-scoring Newton steps (the curvature matrix is positive definite by
construction) with a per-subject backtracking line search (Armijo), warm-started from the
previous estimates. A subject whose objective is not finite at the start is restarted at 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batching import SubjectBatch
from ..models.nlme import NLMEModel, ObservedData
from ..models.parameters import PopulationValues
from .linearization import fisher_information, inner_objective, linearize

__all__ = ["EBEResult", "solve_ebes"]


@dataclass
class EBEResult:
    """Modes ``eta [N, K]``, inner objective ``objective [N]``, ``converged [N]`` and iterations used."""

    eta: torch.Tensor
    objective: torch.Tensor
    converged: torch.Tensor
    iterations: int


def _objective_at(model, eta, values, batch, omega, data, variance_at):
    with torch.no_grad():
        m, v = model.moments(eta, values, batch, variance_at=variance_at)
        obj = inner_objective(model, m, v, eta, omega, data)
    return torch.where(torch.isfinite(obj), obj, torch.full_like(obj, float("inf")))


def solve_ebes(model: NLMEModel, values: PopulationValues, batch: SubjectBatch, eta0: torch.Tensor, *,
               variance_at: torch.Tensor | None = None, max_iter: int = 100, tol: float = 1e-10,
               max_halvings: int = 30) -> EBEResult:
    """Mode of ``−2 log p(y_i|η) p(η)`` for each subject, from ``eta0`` (all values detached).

    ``tol`` bounds the Newton decrement ``gᵀH⁻¹g`` (objective units) at convergence.
    """
    values = _detached(values)
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
    it = 0
    for it in range(1, max_iter + 1):
        e = eta.clone().requires_grad_(True)
        lin = linearize(model, e, values, batch, variance_at=variance_at)
        cur = inner_objective(model, lin.m, lin.v, e, omega, data)
        (grad,) = torch.autograd.grad(cur.sum(), e)
        with torch.no_grad():
            info = 2.0 * fisher_information(lin, omega, data)
            chol, bad = torch.linalg.cholesky_ex(info)
            if bool(bad.any()):
                info = info + torch.eye(k, dtype=info.dtype, device=info.device) * 1e-8 * \
                    info.diagonal(dim1=-2, dim2=-1).abs().amax(-1)[:, None, None]
                chol, _ = torch.linalg.cholesky_ex(info)
            step = -torch.cholesky_solve(grad[..., None], chol)[..., 0]
            step = torch.where(torch.isfinite(step), step, -grad * 1e-3)
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


def _detached(values: PopulationValues) -> PopulationValues:
    return PopulationValues(theta={k: v.detach() for k, v in values.theta.items()}, omega=values.omega.detach(),
                            sigma={k: v.detach() for k, v in values.sigma.items()})
