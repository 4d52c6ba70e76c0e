"""Second-order expansions of a structural model's predictions in the individual parameters.

FOCE-type estimation needs each prediction ``f`` and its first and second derivatives
with respect to the random effects and the population parameters. Those act on ``f`` only
through the individual parameters ``p`` (KA, CL, V, ...). A :class:`QuadraticExpansion`
holds, for every subject and observation, ``f``, ``∂f/∂u`` and ``∂²f/∂u²`` at ``u₀ = log p₀``,
all from central differences taken in **one** batched forward evaluation of the structural
model over a replicated batch (no autograd through the solver). It then stands in for the
structural model: ``f(p) ≈ f₀ + J·(u − u₀) + ½ (u − u₀)ᵀ H (u − u₀)``, which has the same
value, gradient and Hessian at ``p₀``, so autograd on it gives the derivatives FOCE and
FOCE-I need (up to second order) exactly, up to the difference error.

Step sizes: ``∂f/∂u`` from ``u₀ ± 1e-5`` (truncation error ≈ 1.7e-11·|∂³f/∂u³|, rounding
≈ 1e-11·|f|), ``∂²f/∂u²`` from ``u₀ ± 2e-4`` and ``u₀ ± 2e-4 (e_k + e_l)`` (truncation
≈ 3e-9·|∂⁴f|, rounding ≈ 5e-9·|f|). The replicated evaluation costs about one forward
solve for small problems (the work is Python overhead) and ``1 + 3P + P²`` forward solves
when arithmetic dominates; for ODE models it replaces differentiating through every solver
step, which is an order of magnitude slower.

Only parameters that are positive for every subject are expanded (the log scale keeps
perturbed values valid); a model with a non-positive parameter that the random effects or
the population parameters move, or with inter-occasion variability (several parameter sets
per subject), is not expandable and the caller falls back to autograd.
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch

from ..data.batching import SubjectBatch
from ..errors import EstimationError, ModelError
from ..models.nlme import NLMEModel
from ..models.parameters import PopulationValues
from ..structural.base import StructuralModel
from ..structural.closed_form import LinearCompartmentModel

__all__ = ["QuadraticExpansion", "expand_predictions", "expanded_model", "resolve_derivatives", "DERIVATIVES",
           "JACOBIAN_STEP", "HESSIAN_STEP"]

#: Ways to take the derivatives of the predictions (see :func:`resolve_derivatives`).
DERIVATIVES = ("auto", "expansion", "autograd")

#: Log-scale step of the central differences for first derivatives.
JACOBIAN_STEP = 1e-5
#: Log-scale step of the central differences for second derivatives.
HESSIAN_STEP = 2e-4


class QuadraticExpansion(StructuralModel):
    """A structural model replaced by its second-order expansion around ``p₀`` (see the module docs).

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
    """

    def __init__(self, base: StructuralModel, names: tuple[str, ...], log_p0: torch.Tensor, f0: torch.Tensor,
                 jac: torch.Tensor, hess: torch.Tensor, held: Mapping[str, torch.Tensor]):
        self.base = base
        self.compartments = base.compartments
        self.parameters = base.parameters
        self.default_dose_cmt, self.default_obs_cmt = base.default_dose_cmt, base.default_obs_cmt
        self.name = base.name
        self.names = tuple(names)
        self.log_p0, self.f0, self.jac, self.hess = log_p0, f0, jac, hess
        self.held = dict(held)

    def predict(self, params, batch: SubjectBatch) -> torch.Tensor:
        """The expansion at ``params`` (same subjects as at construction), differentiable in them."""
        if tuple(batch.obs.time.shape) != tuple(self.f0.shape):
            raise ModelError(f"this expansion of {self.name} was built for predictions of shape "
                             f"{tuple(self.f0.shape)}, not {tuple(batch.obs.time.shape)}: expand again for this batch")
        if not self.names:
            return self.f0
        u = torch.stack([torch.log(params[n]) for n in self.names], dim=-1)
        du = u - self.log_p0
        return (self.f0 + torch.einsum("njp,np->nj", self.jac, du)
                + 0.5 * torch.einsum("njpq,np,nq->nj", self.hess, du, du))


def _offsets(p_count: int, dtype, device) -> tuple[torch.Tensor, list, list, list]:
    """Log-scale offsets ``[R, P]`` of the replicas and the row indices of each difference."""
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
    return torch.stack(rows).to(dtype=dtype, device=device), jac_rows, diag_rows, pair_rows


def expand_predictions(structural: StructuralModel, params: Mapping[str, torch.Tensor], batch: SubjectBatch,
                       names: tuple[str, ...], replicated: SubjectBatch | None = None) -> QuadraticExpansion:
    """Expand ``structural`` around ``params`` (``{name: [N]}``, detached) in the parameters ``names``.

    ``replicated`` may pass ``batch.repeat(1 + 3P + P²)`` when the caller reuses it.

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
    n, j = batch.obs.time.shape
    p_count = len(names)
    like = batch.obs.time
    offsets, jac_rows, diag_rows, pair_rows = _offsets(p_count, like.dtype, like.device)
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
    return QuadraticExpansion(structural, names, log_p0, f0, jac, hess, held)


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
    structural = getattr(model, "structural", None)
    if structural is None or isinstance(structural, LinearCompartmentModel) or getattr(model, "iov_names", ()):
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


def expanded_model(model: NLMEModel, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch,
                   *, replicated: dict | None = None) -> NLMEModel | None:
    """``model`` with its structural model replaced by the expansion at (η, values), or None.

    The parameters expanded are those that move with η or with the population values (the
    individual parameters are evaluated once with gradients on to find them). None for models
    with inter-occasion variability or a moving non-positive parameter: use autograd then.
    ``replicated`` (a dict) caches the replicated batch across calls on the same ``batch``.
    """
    if not isinstance(model, NLMEModel) or model.iov_names or isinstance(model.structural, QuadraticExpansion):
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
    p_count = len(names)
    reps = 1 + 3 * p_count + p_count * p_count
    rep_batch = None
    if replicated is not None:
        # Keyed by identity; the cache holds the batch itself, so its id cannot be reused.
        held_batch, rep_batch = replicated.get(reps, (None, None))
        if held_batch is not batch:
            rep_batch = batch.repeat(reps)
            replicated[reps] = (batch, rep_batch)
    expansion = expand_predictions(model.structural, {k: v.detach() for k, v in params.items()}, batch, names,
                                   replicated=rep_batch)
    surrogate = copy.copy(model)
    surrogate.structural = expansion
    return surrogate
