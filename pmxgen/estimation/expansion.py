"""Taylor expansions of a structural model's predictions in the individual parameters.

FOCE-type estimation needs each prediction ``f`` and its first and second derivatives
with respect to the random effects and the population parameters; the gradient of Laplace's
objective (which holds the Hessian of the conditional likelihood) needs third derivatives.
Those act on ``f`` only through the individual parameters ``p`` (KA, CL, V, ...). A
:class:`TaylorExpansion` holds, for every subject and observation, ``f``, ``∂f/∂u``,
``∂²f/∂u²`` (and, at order 3, ``∂³f/∂u³``) at ``u₀ = log p₀``, all from central differences
taken in **one** batched forward evaluation of the structural model over a replicated batch
(no autograd through the solver). It then stands in for the structural model:
``f(p) ≈ f₀ + J·d + ½ H[d, d] (+ ⅙ T[d, d, d])`` with ``d = u − u₀``, which has the same value
and derivatives up to its order at ``p₀``, so autograd on it gives the derivatives FOCE and
FOCE-I (order 2) and Laplace (order 3) need exactly, up to the difference error.

Step sizes: ``∂f/∂u`` from ``u₀ ± 1e-5`` (truncation error ≈ 1.7e-11·|∂³f/∂u³|, rounding
≈ 1e-11·|f|), ``∂²f/∂u²`` from ``u₀ ± 2e-4`` and ``u₀ ± 2e-4 (e_k + e_l)`` (truncation
≈ 3e-9·|∂⁴f|, rounding ≈ 5e-9·|f|), ``∂³f/∂u³`` from ``u₀ ± 1e-3`` and ``± 2e-3`` along each
axis, ``u₀ ± 1e-3 e_k ± 1e-3 e_l`` and ``u₀ ± 1e-3 (±e_k ± e_l ± e_m)`` (truncation
≈ 1e-6·|∂⁵f|, rounding ≈ 1e-6·|f|). The replicated evaluation costs about one forward
solve for small problems (the work is Python overhead) and ``1 + 3P + P²`` forward solves
(order 3: ``1 + 5P + 3P² + 8·C(P, 3)``, 51 for P = 3) when arithmetic dominates; for ODE
models it replaces differentiating through every solver step, which is an order of magnitude
slower (``benchmarks/bench_derivatives.py`` on sim_mm_oral: FOCE-I's and Laplace's objective
with gradient 18 × faster; a Laplace fit 207 s instead of 913 s).

Only parameters that are positive for every subject are expanded (the log scale keeps
perturbed values valid); a model with a non-positive parameter that the random effects or
the population parameters move, or with inter-occasion variability (several parameter sets
per subject), is not expandable and the caller falls back to autograd.
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping

import torch

from ..data.batching import SubjectBatch
from ..errors import EstimationError, ModelError
from ..models.base import PopulationModel
from ..models.parameter_set import PopulationValues
from ..structural.base import StructuralModel
from ..structural.closed_form import LinearCompartmentModel

__all__ = ["TaylorExpansion", "expand_predictions", "expanded_model", "resolve_derivatives", "DERIVATIVES",
           "JACOBIAN_STEP", "HESSIAN_STEP", "THIRD_STEP", "replica_count"]

#: Ways to take the derivatives of the predictions (see :func:`resolve_derivatives`).
DERIVATIVES = ("auto", "expansion", "autograd")

#: Log-scale step of the central differences for first derivatives.
JACOBIAN_STEP = 1e-5
#: Log-scale step of the central differences for second derivatives.
HESSIAN_STEP = 2e-4
#: Log-scale step of the central differences for third derivatives.
THIRD_STEP = 1e-3


class TaylorExpansion(StructuralModel):
    """A structural model replaced by its second- or third-order expansion around ``p₀`` (see the module docs).

    Parameters
    ----------
    base : StructuralModel
        The model expanded (its compartments, parameter names and name are kept).
    names : tuple of str
        The expanded parameters (positive at ``p₀``), in the order of the last axes of ``jac``/``hess``.
    log_p0 : Tensor ``[N, P]``
    f0, jac, hess : Tensors ``[N, J]``, ``[N, J, P]``, ``[N, J, P, P]``
        Predictions and their derivatives in ``u = log p``.
    held : dict
        Parameters not expanded (constant at their values) and checked to be unchanged.
    third : Tensor ``[N, J, P, P, P]`` or None
        Third derivatives in ``u`` (a third-order expansion), or None (second order).
    """

    def __init__(self, base: StructuralModel, names: tuple[str, ...], log_p0: torch.Tensor, f0: torch.Tensor,
                 jac: torch.Tensor, hess: torch.Tensor, held: Mapping[str, torch.Tensor],
                 third: torch.Tensor | None = None):
        self.base = base
        self.compartments = base.compartments
        self.parameter_names = base.parameter_names
        self.default_dose_cmt, self.default_obs_cmt = base.default_dose_cmt, base.default_obs_cmt
        self.name = base.name
        self.names = tuple(names)
        self.log_p0, self.f0, self.jac, self.hess = log_p0, f0, jac, hess
        self.held = dict(held)
        self.third = third

    @property
    def order(self) -> int:
        """2 or 3: the highest derivative the expansion reproduces."""
        return 2 if self.third is None else 3

    def predict(self, params, batch: SubjectBatch) -> torch.Tensor:
        """The expansion at ``params`` (same subjects as at construction), differentiable in them."""
        if tuple(batch.obs.time.shape) != tuple(self.f0.shape):
            raise ModelError(f"this expansion of {self.name} was built for predictions of shape "
                             f"{tuple(self.f0.shape)}, not {tuple(batch.obs.time.shape)}: expand again for this batch")
        if not self.names:
            return self.f0
        u = torch.stack([torch.log(params[n]) for n in self.names], dim=-1)
        du = u - self.log_p0
        out = (self.f0 + torch.einsum("njp,np->nj", self.jac, du)
               + 0.5 * torch.einsum("njpq,np,nq->nj", self.hess, du, du))
        if self.third is not None:
            out = out + torch.einsum("njpqr,np,nq,nr->nj", self.third, du, du, du) / 6.0
        return out


def replica_count(p_count: int, order: int = 2) -> int:
    """Forward evaluations (replicas of the batch) that an expansion of ``p_count`` parameters takes.

    >>> replica_count(3), replica_count(3, order=3)
    (19, 51)
    """
    count = 1 + 3 * p_count + p_count * p_count
    if order == 3:
        count += 4 * p_count + 2 * p_count * (p_count - 1) + 8 * math.comb(p_count, 3)
    return count


def _offsets(p_count: int, dtype, device, order: int = 2) -> tuple[torch.Tensor, list, list, list, dict]:
    """Log-scale offsets ``[R, P]`` of the replicas, the row indices of each difference and
    (order 3) ``{signed step multiples: row}`` of the third-difference points."""
    rows = [torch.zeros(p_count, dtype=torch.float64)]
    jac_rows, diag_rows, pair_rows = [], [], []
    for step, target in ((JACOBIAN_STEP, jac_rows), (HESSIAN_STEP, diag_rows)):
        for k in range(p_count):
            e = torch.zeros(p_count, dtype=torch.float64)
            e[k] = step
            target.append((len(rows), len(rows) + 1))
            rows += [e, -e]
    for k in range(p_count):
        for m in range(k + 1, p_count):
            e = torch.zeros(p_count, dtype=torch.float64)
            e[k] = e[m] = HESSIAN_STEP
            pair_rows.append((k, m, len(rows), len(rows) + 1))
            rows += [e, -e]
    third_rows = {}
    if order == 3:
        for point in _third_points(p_count):
            third_rows[point] = len(rows)
            rows.append(THIRD_STEP * torch.tensor(point, dtype=torch.float64))
    return torch.stack(rows).to(dtype=dtype, device=device), jac_rows, diag_rows, pair_rows, third_rows


def _point(p_count: int, steps: Mapping[int, int]) -> tuple[int, ...]:
    """The offset with ``steps[k]`` multiples of THIRD_STEP along axis k, 0 elsewhere."""
    return tuple(steps.get(k, 0) for k in range(p_count))


_SIGNS = (1, -1)


def _third_points(p_count: int) -> list[tuple[int, ...]]:
    """Offsets (in multiples of THIRD_STEP) of the third-difference points: ±1, ±2 along each axis,
    (±1, ±1) in each pair of axes, (±1, ±1, ±1) in each triple."""
    points = [_point(p_count, {k: s}) for k in range(p_count) for s in (1, -1, 2, -2)]
    points += [_point(p_count, {k: a, m: b}) for k, m in itertools.combinations(range(p_count), 2)
               for a in _SIGNS for b in _SIGNS]
    points += [_point(p_count, {k: a, m: b, q: c}) for k, m, q in itertools.combinations(range(p_count), 3)
               for a in _SIGNS for b in _SIGNS for c in _SIGNS]
    return points


def _third_derivatives(f: torch.Tensor, p_count: int, third_rows: dict) -> torch.Tensor:
    """``[N, J, P, P, P]`` third derivatives from the replicas ``f`` ``[R, N, J]`` (central differences)."""
    third = f.new_zeros(f.shape[1:] + (p_count, p_count, p_count))
    h3 = THIRD_STEP ** 3

    def at(steps):
        return f[third_rows[_point(p_count, steps)]]

    for k in range(p_count):
        third[..., k, k, k] = (at({k: 2}) - 2 * at({k: 1}) + 2 * at({k: -1}) - at({k: -2})) / (2 * h3)
        for m in range(p_count):
            if m != k:
                # ∂/∂u_m of the second difference in u_k, taken at ±THIRD_STEP along u_m.
                value = (at({k: 1, m: 1}) - 2 * at({m: 1}) + at({k: -1, m: 1})
                         - at({k: 1, m: -1}) + 2 * at({m: -1}) - at({k: -1, m: -1})) / (2 * h3)
                for index in ((k, k, m), (k, m, k), (m, k, k)):
                    third[(..., *index)] = value
    for k, m, q in itertools.combinations(range(p_count), 3):
        value = sum(a * b * c * at({k: a, m: b, q: c}) for a in _SIGNS for b in _SIGNS for c in _SIGNS) / (8 * h3)
        for index in itertools.permutations((k, m, q)):
            third[(..., *index)] = value
    return third


def expand_predictions(structural: StructuralModel, params: Mapping[str, torch.Tensor], batch: SubjectBatch,
                       names: tuple[str, ...], replicated: SubjectBatch | None = None,
                       order: int = 2) -> TaylorExpansion:
    """Expand ``structural`` around ``params`` (``{name: [N]}``, detached) in the parameters ``names``.

    ``order`` is 2 or 3. ``replicated`` may pass ``batch.repeat(replica_count(P, order))`` when
    the caller reuses it.

    Examples
    --------
    >>> import math, torch, pandas as pd, pmxgen
    >>> ds = pmxgen.read_nonmem(pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 2.0], "AMT": [100.0, 0.0],
    ...                                       "DV": [float("nan"), 1.0]}))
    >>> model = pmxgen.get_model("1cmt_iv")
    >>> p = {"CL": torch.tensor([2.0], dtype=torch.float64), "V": torch.tensor([10.0], dtype=torch.float64)}
    >>> ex = expand_predictions(model, p, ds.batch, ("CL", "V"))
    >>> exact = -0.4 * 10 * math.exp(-0.4)    # f = 10 exp(-CL t / V); d f / d log CL = -(CL t / V) f
    >>> abs(float(ex.jac[0, 0, 0]) - exact) < 1e-8
    True
    """
    if order not in (2, 3):
        raise EstimationError(f"an expansion has order 2 or 3 (found {order!r})")
    n, j = batch.obs.time.shape
    p_count = len(names)
    like = batch.obs.time
    offsets, jac_rows, diag_rows, pair_rows, third_rows = _offsets(p_count, like.dtype, like.device, order)
    reps = offsets.shape[0]
    if replicated is None:
        replicated = batch.repeat(reps)
    rep_params = {}
    for name, value in params.items():
        v = torch.as_tensor(value, dtype=like.dtype, device=like.device).detach().expand(n)
        if name in names:
            k = names.index(name)
            rep_params[name] = (v.unsqueeze(0) * torch.exp(offsets[:, k:k + 1])).reshape(-1)
        else:
            rep_params[name] = v.repeat(reps)
    with torch.no_grad():
        f = structural.predict(rep_params, replicated).reshape(reps, n, j)
    f0 = f[0]
    jac = f.new_zeros(n, j, p_count)
    hess = f.new_zeros(n, j, p_count, p_count)
    for k, (plus, minus) in enumerate(jac_rows):
        jac[..., k] = (f[plus] - f[minus]) / (2 * JACOBIAN_STEP)
    curv = []
    h2 = HESSIAN_STEP * HESSIAN_STEP
    for k, (plus, minus) in enumerate(diag_rows):
        curv.append(f[plus] + f[minus] - 2 * f0)
        hess[..., k, k] = curv[k] / h2
    for k, m, plus, minus in pair_rows:
        mixed = (f[plus] + f[minus] - 2 * f0 - curv[k] - curv[m]) / (2 * h2)
        hess[..., k, m] = mixed
        hess[..., m, k] = mixed
    log_p0 = torch.stack([torch.log(params[nm].detach().expand(n)) for nm in names], -1) if names else \
        f.new_zeros(n, 0)
    held = {k: v.detach() for k, v in params.items() if k not in names}
    third = _third_derivatives(f, p_count, third_rows) if order == 3 else None
    return TaylorExpansion(structural, names, log_p0, f0, jac, hess, held, third)


def resolve_derivatives(choice: str, model) -> str:
    """``"expansion"`` or ``"autograd"`` for ``choice`` (one of :data:`DERIVATIVES`) and ``model``.

    ``"auto"`` expands models solved numerically (ODEs), where differentiating through the
    solver costs an order of magnitude more, and differentiates closed forms with autograd,
    which is as fast or faster for them (measured in ``benchmarks/bench_derivatives.py``).

    Examples
    --------
    >>> import pmxgen
    >>> model = pmxgen.build_model("1cmt_oral", pmxgen.datasets.load("theophylline"))
    >>> resolve_derivatives("auto", model)
    'autograd'
    """
    if choice not in DERIVATIVES:
        raise EstimationError(f"derivatives must be one of {', '.join(DERIVATIVES)} (found {choice!r})")
    if choice != "auto":
        return choice
    if not expandable(model) or isinstance(model.structural, LinearCompartmentModel):
        return "autograd"
    return "expansion"


def expandable_names(params: Mapping[str, torch.Tensor]) -> tuple[str, ...] | None:
    """Parameters to expand: those that vary (carry gradients) — all must be positive — or None."""
    names = []
    for name, value in params.items():
        if not value.requires_grad:
            continue
        if not bool(torch.all(value.detach() > 0)) or not bool(torch.all(torch.isfinite(value.detach()))):
            return None
        names.append(name)
    return tuple(names)


def expandable(model) -> bool:
    """Whether ``model`` can have its predictions replaced by a Taylor expansion: it has a structural
    model of individual parameters (``structural``, ``individual_parameters``, ``with_structural``), no
    inter-occasion effects, and is not expanded already."""
    structural = getattr(model, "structural", None)
    return (isinstance(structural, StructuralModel) and not isinstance(structural, TaylorExpansion)
            and callable(getattr(model, "individual_parameters", None))
            and callable(getattr(model, "with_structural", None)) and not getattr(model, "iov_names", ())
            # networks inside the structural model (a neural ODE): their weights act on the
            # predictions directly, which an expansion in the individual parameters would drop
            and not len(getattr(structural, "networks", ())))


def expanded_model(model: PopulationModel, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch,
                   *, replicated: dict | None = None, order: int = 2) -> PopulationModel | None:
    """``model`` with its structural model replaced by the expansion of ``order`` at (η, values), or None.

    The parameters expanded are those that move with η or with the population values (the
    individual parameters are evaluated once with gradients on to find them). None for models
    with inter-occasion variability or a moving non-positive parameter: use autograd then.
    ``replicated`` (a dict) caches the replicated batch across calls on the same ``batch``.
    """
    if not expandable(model):
        return None
    with torch.enable_grad():
        probe_eta = eta.detach().requires_grad_(True)
        probe_values = PopulationValues(theta={k: v.detach().requires_grad_(True) for k, v in values.theta.items()},
                                        omega=values.omega.detach(),
                                        sigma={k: v.detach() for k, v in values.sigma.items()})
        params = model.individual_parameters(probe_eta, probe_values, batch)
    names = expandable_names(params)
    if names is None:
        return None
    reps = replica_count(len(names), order)
    rep_batch = None
    if replicated is not None:
        # Keyed by identity; the cache holds the batch itself, so its id cannot be reused.
        held_batch, rep_batch = replicated.get(reps, (None, None))
        if held_batch is not batch:
            rep_batch = batch.repeat(reps)
            replicated[reps] = (batch, rep_batch)
    expansion = expand_predictions(model.structural, {k: v.detach() for k, v in params.items()}, batch, names,
                                   replicated=rep_batch, order=order)
    return model.with_structural(expansion)
