"""Empirical Bayes estimates: the mode of p(y_i|η) p(η) for every subject at once.

Batched Newton steps with the exact Hessian in η (eigenvalues raised to a positive floor
where it is not positive definite) and a per-subject backtracking line search (Armijo),
warm-started from the previous estimates; once the Newton decrement is below
:data:`PURE_NEWTON_DECREMENT` full steps are taken (the quadratically convergent phase). A
subject whose objective is not finite at the start is restarted at 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batching import SubjectBatch
from ..errors import IntegrationError, ModelError
from ..models.base import ObservedData, PopulationModel
from ..models.parameters import PopulationValues
from .expansion import expanded_model, resolve_derivatives
from .linearization import inner_objective
from .objective import _detached_values, exact_eta_hessian

__all__ = ["EBEResult", "solve_ebes", "MAX_STEP", "PURE_NEWTON_DECREMENT"]

#: Largest Newton step, in prior standard deviations of each η.
MAX_STEP = 3.0
#: Newton decrement (objective units) below which full steps are taken without a line search.
PURE_NEWTON_DECREMENT = 1e-5


@dataclass
class EBEResult:
    """Modes ``eta [N, K]``, inner objective ``objective [N]``, ``converged [N]`` and iterations used."""

    eta: torch.Tensor
    objective: torch.Tensor
    converged: torch.Tensor
    iterations: int


def solve_ebes(model: PopulationModel, values: PopulationValues, batch: SubjectBatch, eta0: torch.Tensor, *,
               variance_at: torch.Tensor | None = None, max_iter: int = 100, tol: float = 1e-10,
               max_halvings: int = 30, derivatives: str = "auto",
               alternatives: tuple[torch.Tensor, ...] = (), switch_margin: float = 0.0) -> EBEResult:
    """Mode of ``−2 log p(y_i|η) p(η)`` for each subject, from ``eta0`` (all values detached).

    ``alternatives`` are other starting points ``[N, K]``: a subject starts from one of them
    where its objective is lower than at ``eta0`` by more than ``switch_margin`` (the lowest
    wins; one model evaluation per alternative), so that a poor warm start (e.g. from a far
    trial point of an outer line search, which can sit in another local mode) does not decide
    which mode is found.

    ``tol`` bounds the Newton decrement ``gᵀH⁻¹g`` (objective units) at convergence.
    ``derivatives``: ``"expansion"`` takes the gradient and Hessian of each Newton step from a
    :mod:`second-order expansion <.expansion>` of the predictions (one batched forward
    evaluation), ``"autograd"`` by differentiating through the structural model. The line
    search always evaluates the model itself. ``"auto"`` chooses (see
    :func:`.expansion.resolve_derivatives`).
    """
    with torch.enable_grad():
        return _solve(model, values, batch, eta0, variance_at, max_iter, tol, max_halvings, derivatives,
                      alternatives, switch_margin)


def _solve(model, values, batch, eta0, variance_at, max_iter, tol, max_halvings, derivatives,
           alternatives=(), switch_margin=0.0) -> EBEResult:
    values = _detached_values(values)
    variance_at = None if variance_at is None else variance_at.detach()
    omega = model.omega_matrix(values, batch)
    data = model.observed(batch)
    eta = eta0.detach().clone()
    n, k = eta.shape
    everyone = _Problem(model, values, batch, omega, data, variance_at,
                        resolve_derivatives(derivatives, model) == "expansion")
    obj = everyone.objective(eta)
    if alternatives:
        first = obj
        for other in alternatives:
            other = other.detach()
            other_obj = everyone.objective(other)
            better = (other_obj < first - switch_margin) & (other_obj < obj)
            eta = torch.where(better[:, None], other, eta)
            obj = torch.where(better, other_obj, obj)
    restart = ~torch.isfinite(obj)
    if bool(restart.any()):
        eta[restart] = 0.0
        obj = everyone.objective(eta)
    if k == 0:
        return EBEResult(eta, obj, torch.ones(n, dtype=torch.bool, device=eta.device), 0)
    converged = torch.zeros(n, dtype=torch.bool, device=eta.device)
    last_decrement = torch.full((n,), float("inf"), dtype=eta.dtype, device=eta.device)
    # Subjects leave the computation once converged (not with IOV: the η layout depends on the batch).
    can_subset = not getattr(model, "iov_names", ())
    it = 0
    for it in range(1, max_iter + 1):
        idx = torch.nonzero(~converged).flatten()
        if idx.numel() == 0:
            break
        if not can_subset:
            idx = torch.arange(n, device=eta.device)
        sub = everyone if idx.numel() == n else everyone.select(idx)
        e_sub = eta[idx].clone()
        grad, hess, cur = sub.derivatives(e_sub)
        with torch.no_grad():
            step = -_modified_newton_solve(hess, grad)
            step = torch.where(torch.isfinite(step), step, -grad * 1e-3)
            # At most MAX_STEP prior SDs per Newton step in any η.
            ratio = (step.abs() / (MAX_STEP * sub.prior_sd)).amax(-1, keepdim=True).clamp_min(1.0)
            step = step / ratio
            decrement = -(grad * step).sum(-1)
            done = decrement.abs() < tol
            # Pure Newton phase: with a tiny decrement the quadratic model is accurate to working
            # precision, so the full step is taken without a line search (whose objective
            # differences would be rounding or solver noise). A decrement that stopped
            # shrinking quadratically means the subject is at its mode to working precision.
            quadratic = ~done & (decrement >= 0) & (decrement < PURE_NEWTON_DECREMENT)
            stalled = quadratic & (decrement > 0.1 * last_decrement[idx])
            done = done | stalled
            quadratic = quadratic & ~stalled
            # Newton's decrement contracts quadratically there (d_next ~ d²): when d² is far below
            # tol, the full step lands within tol without another derivative evaluation to confirm.
            finished = quadratic & (decrement * decrement < 1e-2 * tol)
            last_decrement[idx] = decrement
            pending = ~done & ~quadratic
            alpha = torch.ones(idx.numel(), dtype=eta.dtype, device=eta.device)
            new_eta = torch.where(quadratic[:, None], e_sub + step, e_sub)
            best = torch.where(quadratic, cur - 0.5 * decrement, cur)
            for _ in range(max_halvings):
                if not bool(pending.any()):
                    break
                trial = e_sub + alpha[:, None] * step
                trial_obj = sub.objective(trial)
                ok = pending & (trial_obj <= cur - 1e-4 * alpha * decrement)
                new_eta[ok] = trial[ok]
                best = torch.where(ok, trial_obj, best)
                pending = pending & ~ok
                alpha = torch.where(pending, alpha * 0.5, alpha)
            # No acceptable step: the subject sits at a mode to working precision.
            done = done | pending | finished
            eta[idx] = new_eta
            obj[idx] = best
            converged[idx] = done
    return EBEResult(eta.detach(), obj.detach(), converged, it)


class _Problem:
    """The inner objective for a set of subjects (all, or a selection of them)."""

    def __init__(self, model, values, batch, omega, data, variance_at, expand=False):
        self.model, self.values, self.batch, self.omega, self.data = model, values, batch, omega, data
        self.variance_at = variance_at
        self.expand = expand
        self.prior_sd = torch.sqrt(torch.diagonal(omega, dim1=-2, dim2=-1))

    def select(self, idx: torch.Tensor) -> "_Problem":
        n = self.batch.n_subjects

        def pick(t):
            return t.index_select(0, idx) if (t is not None and t.dim() >= 1 and t.shape[0] == n) else t

        values = PopulationValues(theta={k: pick(v) for k, v in self.values.theta.items()},
                                  omega=self.values.omega if self.values.omega.dim() < 3 else pick(self.values.omega),
                                  sigma={k: pick(v) for k, v in self.values.sigma.items()})
        omega = self.omega if self.omega.dim() < 3 else pick(self.omega)
        data = ObservedData(y=pick(self.data.y), mask=pick(self.data.mask), blq=pick(self.data.blq),
                            lloq=pick(self.data.lloq))
        return _Problem(self.model, values, self.batch.select(idx), omega, data, pick(self.variance_at), self.expand)

    def objective(self, eta: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            try:
                m, v = self.model.moments(eta, self.values, self.batch, variance_at=self.variance_at)
            except (IntegrationError, ModelError):
                # A trial point the model cannot evaluate (e.g. a stiff ODE): reject it.
                return torch.full(eta.shape[:1], float("inf"), dtype=eta.dtype, device=eta.device)
            obj = inner_objective(self.model, m, v, eta, self.omega, self.data)
        return torch.where(torch.isfinite(obj), obj, torch.full_like(obj, float("inf")))

    def derivatives(self, eta: torch.Tensor):
        model = self.model
        if self.expand:
            model = expanded_model(model, eta, self.values, self.batch) or model
        e = eta.clone().requires_grad_(True)
        m, v = model.moments(e, self.values, self.batch, variance_at=self.variance_at)
        cur = inner_objective(model, m, v, e, self.omega, self.data)
        grad, hess = exact_eta_hessian(cur, e, create_graph=False)
        return grad.detach(), hess.detach(), cur.detach()


def _modified_newton_solve(hess: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``H⁻¹ g`` with H's eigenvalues raised to a positive floor where H is not positive definite."""
    chol, info = torch.linalg.cholesky_ex(hess)
    if not bool((info != 0).any()):
        return torch.cholesky_solve(grad[..., None], chol)[..., 0]
    w, q = torch.linalg.eigh(hess)
    floor = 1e-6 * w.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    w = torch.maximum(w.abs(), floor)
    return (q @ ((q.transpose(-1, -2) @ grad[..., None]) / w[..., None]))[..., 0]


