"""Empirical Bayes estimates: the mode of p(y_i|η) p(η) for every subject at once.

Batched Newton steps with the exact Hessian in η (eigenvalues raised to a positive floor
where it is not positive definite) and a per-subject backtracking line search (Armijo),
warm-started from the previous estimates; once the Newton decrement is below
:data:`PURE_NEWTON_DECREMENT` full steps are taken (the quadratically convergent phase). A
subject whose objective is not finite at the start is restarted at 0.

Several starts per subject (e.g. the previous estimates, the best point's and η = 0) are
solved together as extra rows of the same batched solve, and each subject keeps the lowest
converged mode: when the residual error is small, a subject's conditional objective can have
local modes thousands of units apart, and which one a single start reaches depends on the
start, so that an objective built on them would not be a function of the parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batching import SubjectBatch
from ..errors import IntegrationError, ModelError
from ..models.base import ObservedData, PopulationModel
from ..models.parameter_set import PopulationValues
from .expansion import expanded_model, resolve_derivatives
from .linearization import inner_objective
from .objective import _detached_values, exact_eta_hessian

__all__ = ["EBEResult", "solve_ebes", "MAX_STEP", "PURE_NEWTON_DECREMENT", "MERGE_DISTANCE", "DISTINCT_MODES"]

#: Largest Newton step, in prior standard deviations of each η.
MAX_STEP = 3.0
#: Newton decrement (objective units) below which full steps are taken without a line search.
PURE_NEWTON_DECREMENT = 1e-5


@dataclass
class EBEResult:
    """Modes ``eta [N, K]``, inner objective ``objective [N]``, ``converged [N]``, iterations used,
    ``start [N]``, the start each subject's mode was reached from (0: ``eta0``, s: ``alternatives[s-1]``),
    and ``distinct [N]``: the subject's starts reached different modes (its objective is multimodal)."""

    eta: torch.Tensor
    objective: torch.Tensor
    converged: torch.Tensor
    iterations: int
    start: torch.Tensor | None = None
    distinct: torch.Tensor | None = None


def solve_ebes(model: PopulationModel, values: PopulationValues, batch: SubjectBatch, eta0: torch.Tensor, *,
               variance_at: torch.Tensor | None = None, max_iter: int = 100, tol: float = 1e-10,
               max_halvings: int = 30, derivatives: str = "auto",
               alternatives: tuple[torch.Tensor, ...] = (), switch_margin: float = 0.0) -> EBEResult:
    """Mode of ``−2 log p(y_i|η) p(η)`` for each subject, from ``eta0`` (all values detached).

    Parameters
    ----------
    model, values, batch
        The model, its population parameters and the subjects.
    eta0 : Tensor
        Starting points ``[N, K]`` (e.g. the previous estimates: a warm start).
    variance_at : Tensor, optional
        Predictions at which the residual variance is evaluated (FOCE), ``[N, J]``.
    max_iter : int
        Newton iterations.
    tol : float
        Bound on the Newton decrement ``gᵀH⁻¹g`` (objective units) at convergence.
    max_halvings : int
        Step halvings of the line search.
    derivatives : {"auto", "expansion", "autograd"}
        ``"expansion"`` takes the gradient and Hessian of each Newton step from a
        :mod:`second-order expansion <.expansion>` of the predictions (one batched forward
        evaluation), ``"autograd"`` by differentiating through the structural model. The line
        search always evaluates the model itself. ``"auto"`` chooses (see
        :func:`.expansion.resolve_derivatives`).
    alternatives : tuple of Tensor
        Other starting points ``[N, K]`` (e.g. the EBEs of the best point so far, zeros).
        Every subject is solved from ``eta0`` *and* from each alternative that differs from
        its earlier starts, all in one batched Newton solve (the starts are stacked as extra
        rows; a row that reaches the quadratic region of the same mode as the subject's row
        from ``eta0``, or of a higher mode, stops there). The subject keeps the lowest
        *converged* objective: with a rugged conditional objective (several local modes, e.g.
        a small residual error) the starting objective does not tell which start leads to
        the lowest mode.
    switch_margin : float
        A subject keeps the mode reached from ``eta0`` unless another start's converged
        objective is lower by more than this (objective units).

    Returns
    -------
    EBEResult
        Modes, their objectives, convergence flags, iterations used, which start won and
        whether the starts reached different modes.
    """
    with torch.enable_grad():
        return _solve(model, values, batch, eta0, variance_at, max_iter, tol, max_halvings, derivatives,
                      alternatives, switch_margin)


def _starting_rows(eta0: torch.Tensor, alternatives) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked starts ``[R, K]`` with their subject ``[R]`` and start number ``[R]``: all of ``eta0``
    (rows ``0..N-1``), then each alternative's rows that differ from every earlier start."""
    n = eta0.shape[0]
    starts = [eta0.detach()]
    rows, subject, origin = [starts[0]], [torch.arange(n, device=eta0.device)], [torch.zeros(n, dtype=torch.long,
                                                                                             device=eta0.device)]
    for s, other in enumerate(alternatives, start=1):
        other = other.detach().to(eta0)
        new = torch.ones(n, dtype=torch.bool, device=eta0.device)
        for earlier in starts:
            new &= ~(other == earlier).all(-1)
        starts.append(other)
        if bool(new.any()):
            idx = torch.nonzero(new).flatten()
            rows.append(other[idx])
            subject.append(idx)
            origin.append(torch.full_like(idx, s))
    return torch.cat(rows), torch.cat(subject), torch.cat(origin)


def _solve(model, values, batch, eta0, variance_at, max_iter, tol, max_halvings, derivatives,
           alternatives=(), switch_margin=0.0) -> EBEResult:
    values = _detached_values(values)
    variance_at = None if variance_at is None else variance_at.detach()
    omega = model.omega_matrix(values, batch)
    data = model.observed(batch)
    n, k = eta0.shape
    everyone = _Problem(model, values, batch, omega, data, variance_at,
                        resolve_derivatives(derivatives, model) == "expansion")
    eta, subject, origin = _starting_rows(eta0, alternatives)
    rows = eta.shape[0]
    problem = everyone if rows == n else everyone.select(subject)
    obj = problem.objective(eta)
    restart = ~torch.isfinite(obj)
    if bool(restart.any()):
        eta[restart] = 0.0
        obj = problem.objective(eta)
    if k == 0:
        none = torch.zeros(n, dtype=torch.long, device=eta.device)
        return EBEResult(eta[:n], obj[:n], torch.ones(n, dtype=torch.bool, device=eta.device), 0, none, none.bool())
    converged = torch.zeros(rows, dtype=torch.bool, device=eta.device)
    # Rows from later starts that stopped because they reach the first start's mode (joined), or a
    # mode above the first start's objective (lost): never chosen.
    joined = torch.zeros(rows, dtype=torch.bool, device=eta.device)
    lost = torch.zeros(rows, dtype=torch.bool, device=eta.device)
    last_decrement = torch.full((rows,), float("inf"), dtype=eta.dtype, device=eta.device)
    # Rows leave the computation once converged. With IOV the η layout depends on the occasions
    # present in the batch: a row that has the last occasion always stays in (its update is
    # discarded once it has converged).
    anchor = _occasion_anchor(model, problem.batch)
    it = 0
    for it in range(1, max_iter + 1):
        idx = torch.nonzero(~converged & ~joined & ~lost).flatten()
        if idx.numel() == 0:
            break
        m = idx.numel()
        if anchor is not None and not bool((idx == anchor).any()):
            idx = torch.cat([idx, anchor.reshape(1)])
        sub = problem if idx.numel() == rows else problem.select(idx)
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
            if rows > n:
                # A full, unclamped Newton step on a positive definite Hessian whose objective
                # decrease is the one its quadratic model predicted: the row is in the quadratic
                # region of its mode, which it has (nearly) reached.
                trusted = ((torch.linalg.cholesky_ex(hess).info == 0) & (ratio[:, 0] == 1.0) & ~pending
                           & (alpha == 1.0) & ((cur - best) - 0.5 * decrement).abs().le(0.125 * decrement + 1e-9))
            idx, new_eta, best, done, decrement = idx[:m], new_eta[:m], best[:m], done[:m], decrement[:m]
            last_decrement[idx] = decrement
            eta[idx] = new_eta
            obj[idx] = best
            converged[idx] = done
            if rows > n:
                near, worse = _joins_or_loses(idx, eta, obj, subject, hess[:m], decrement, trusted[:m], n)
                joined[idx] = near & ~done
                lost[idx] = worse & ~near & ~done
    return _lowest_converged(eta, obj, converged, joined, lost, subject, origin, n, len(alternatives) + 1,
                             switch_margin, it)


#: A row from another start that lands within this distance of the first start's row of the same
#: subject, in its objective's own Hessian metric ``dᵀHd`` (objective units), joins it (stops).
MERGE_DISTANCE = 1e-2


def _joins_or_loses(idx, eta, obj, subject, hess, decrement, trusted, n) -> tuple[torch.Tensor, torch.Tensor]:
    """Which rows ``idx`` (from later starts, in the quadratic region of their mode: ``trusted``)
    reach their subject's first-start mode, or a mode above its current objective.

    Same mode: the row is within :data:`MERGE_DISTANCE` of the first start's row in the metric
    of the Hessian it stepped with. Worse mode: even a further decrease as large as the last
    step's predicted one (or 1) would leave it above the first start's current objective, which
    only decreases.
    """
    first = subject[idx]
    later = trusted & (idx >= n)
    d = eta[idx] - eta[first]
    near = torch.einsum("rk,rkl,rl->r", d, hess, d) < MERGE_DISTANCE
    worse = obj[idx] - torch.clamp(0.5 * decrement, min=1.0) > obj[first]
    return later & near, later & worse


#: Two converged rows of a subject whose objectives differ by more than this (objective units) are
#: at different modes (rows at the same mode agree to rounding, far below it).
DISTINCT_MODES = 1e-6


def _lowest_converged(eta, obj, converged, joined, lost, subject, origin, n, n_starts, switch_margin,
                      it) -> EBEResult:
    """Per subject, the row with the lowest converged objective (the first start's unless another is
    lower by more than ``switch_margin``; subjects with no converged row: the lowest finite one),
    and whether the subject's starts reached different modes."""
    rows = eta.shape[0]
    none = torch.zeros(n, dtype=torch.long, device=eta.device)
    if rows == n:
        return EBEResult(eta, obj, converged, it, none, none.bool())
    usable = ~joined & ~lost & torch.isfinite(obj)
    good = usable & converged
    has_good = torch.zeros(n, dtype=torch.long, device=eta.device).index_add_(0, subject, good.long()) > 0
    use = torch.where(has_good[subject], good, usable)
    score = torch.where(use, obj - switch_margin * (origin == 0).to(obj.dtype), torch.full_like(obj, float("inf")))
    table = torch.full((n_starts, n), float("inf"), dtype=obj.dtype, device=obj.device)
    table[origin, subject] = score
    where = torch.full((n_starts, n), -1, dtype=torch.long, device=obj.device)
    where[origin, subject] = torch.arange(rows, device=obj.device)
    # argmin takes the first of equal values: the first start on ties (and when nothing is finite).
    won = table.argmin(0)
    chosen = where[won, torch.arange(n, device=obj.device)]
    other = lost | (usable & converged & ((obj - obj[chosen][subject]).abs() > DISTINCT_MODES))
    distinct = none.index_add(0, subject, other.long()) > 0
    return EBEResult(eta[chosen].detach(), obj[chosen].detach(), converged[chosen], it, won, distinct)


def _occasion_anchor(model, batch) -> torch.Tensor | None:
    """With IOV, a row whose subject has the batch's last occasion (None without IOV)."""
    if not getattr(model, "iov_names", ()):
        return None
    occ = torch.where(batch.obs.mask, batch.obs.occasion, torch.full_like(batch.obs.occasion, -1))
    return occ.amax(-1).argmax()


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
    """``H⁻¹ g`` with H's eigenvalues raised to a positive floor in the rows where H is not positive definite.

    Only those rows: the floor (relative to the largest eigenvalue) would otherwise also cut the
    steps of an ill-conditioned but positive definite row (a small residual error gives
    condition numbers far above 1e6), whose Newton steps then stall short of its mode.
    """
    chol, info = torch.linalg.cholesky_ex(hess)
    bad = info != 0
    if not bool(bad.any()):
        return torch.cholesky_solve(grad[..., None], chol)[..., 0]
    good = ~bad
    out = torch.empty_like(grad)
    out[good] = torch.cholesky_solve(grad[good][..., None], chol[good])[..., 0]
    w, q = torch.linalg.eigh(hess[bad])
    floor = 1e-6 * w.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    w = torch.maximum(w.abs(), floor)
    out[bad] = (q @ ((q.transpose(-1, -2) @ grad[bad][..., None]) / w[..., None]))[..., 0]
    return out


