"""Approximate marginal likelihoods of NLME models: FO, FOCE, FOCE-I and Laplace.

Every function returns each subject's objective (NONMEM OFV convention: −2 log L without
the log 2π of each observation) as a differentiable function of the natural parameters φ.
For the conditional methods the EBEs enter through one Newton step taken *with* gradients
from the converged (detached) modes, ``η̃ = η̂ − H⁻¹ g(η̂, φ)`` with H the exact Hessian in η:
its value is η̂ (g = 0 at the mode) and its derivative is the implicit-function derivative
``dη̂/dφ = −H⁻¹ ∂g/∂φ``, so the gradient of the objective is exact.

Formulas (per subject, K random effects; see ``NONMEM-CONVENTIONS.md``):

* FO: ``log|C| + rᵀC⁻¹r`` with ``r = y − f(0)``, ``C = G Ω Gᵀ + diag V`` at η = 0.
* FOCE-I: ``Σ_j [log V_j + (y_j − f_j)²/V_j] + η̂ᵀΩ⁻¹η̂ + log|Ω| + log|Ω⁻¹ + Σ GᵀG/V + ½ Σ WᵀW/V²|``.
* FOCE: as FOCE-I with V evaluated at η = 0 (so W = 0), in the EBE search too.
* Laplace: the matrix is ½ × the exact Hessian of ``−2 log p(y|η)p(η)`` at η̂; BLQ (M3)
  observations contribute ``−2 log Φ((LLOQ − f)/sd)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data.batching import SubjectBatch
from ..errors import EstimationError
from ..models.base import ObservedData, PopulationModel
from ..models.parameter_set import PopulationValues
from .expansion import DERIVATIVES, expanded_model, resolve_derivatives
from .linearization import fisher_information, inner_objective, linearize

__all__ = ["METHODS", "DERIVATIVES", "SubjectObjective", "subject_objective", "variance_reference",
           "exact_eta_hessian", "log_two_pi_count"]

#: The linearisation-based estimation methods.
METHODS = ("fo", "foce", "focei", "laplace")

_LOG2PI = math.log(2 * math.pi)


@dataclass
class SubjectObjective:
    """Per-subject objective ``ofv [N]`` (NONMEM convention) and the curvature matrix used ``[N, K, K]``."""

    ofv: torch.Tensor
    curvature: torch.Tensor | None


def log_two_pi_count(data: ObservedData) -> torch.Tensor:
    """Number of density (non-BLQ) observations per subject ``[N]``: the OFV omits that many log 2π."""
    return data.normal.sum(-1).to(data.y.dtype)


def variance_reference(model: PopulationModel, values: PopulationValues, batch: SubjectBatch, method: str
                       ) -> torch.Tensor | None:
    """Predictions at η = 0 for FOCE (residual variance without interaction); None otherwise."""
    if method != "foce":
        return None
    eta0 = torch.zeros(batch.n_subjects, len(model.eta_names(batch)), dtype=batch.dtype, device=batch.device)
    return model.predict(eta0, values, batch)


def exact_eta_hessian(objective: torch.Tensor, eta: torch.Tensor, *, create_graph: bool) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """Gradient ``[N, K]`` and exact Hessian ``[N, K, K]`` of a per-subject objective ``[N]`` in η."""
    (grad,) = torch.autograd.grad(objective.sum(), eta, create_graph=True)
    k = eta.shape[-1]
    rows = []
    for j in range(k):
        (row,) = torch.autograd.grad(grad[:, j].sum(), eta, create_graph=create_graph, retain_graph=True,
                                     allow_unused=True)
        rows.append(torch.zeros_like(eta) if row is None else row)
    hess = torch.stack(rows, dim=-2)
    return grad, 0.5 * (hess + hess.transpose(-1, -2))


def _logdet(matrix: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        sign, logabs = torch.linalg.slogdet(matrix)
        return torch.where(sign > 0, logabs, torch.full_like(logabs, float("nan")))
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def _fo(model: PopulationModel, values: PopulationValues, batch: SubjectBatch, data: ObservedData) -> SubjectObjective:
    n, k = batch.n_subjects, len(model.eta_names(batch))
    eta0 = torch.zeros(n, k, dtype=batch.dtype, device=batch.device, requires_grad=True)
    lin = linearize(model, eta0, values, batch, create_graph=True)
    omega = model.omega_matrix(values, batch)
    normal = data.normal
    g = torch.where(normal[..., None], lin.G, torch.zeros_like(lin.G))
    cov = g @ omega @ g.transpose(-1, -2)
    diag = torch.where(normal, lin.v, torch.ones_like(lin.v))
    cov = cov + torch.diag_embed(diag)
    r = torch.where(normal, data.y - lin.m, torch.zeros_like(lin.m))
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, r[..., None], upper=False)[..., 0]
    ofv = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1) + (z * z).sum(-1)
    return SubjectObjective(ofv=ofv, curvature=None)


def subject_objective(model: PopulationModel, values: PopulationValues, batch: SubjectBatch, eta_hat: torch.Tensor,
                      method: str, *, derivatives: str = "auto", cache: dict | None = None) -> SubjectObjective:
    """Each subject's approximate −2 log-likelihood (OFV convention), differentiable in ``values``.

    ``eta_hat`` are the converged EBEs for ``values`` (ignored by FO). Works under
    ``torch.no_grad()`` too (the η-derivatives it needs are taken with autograd enabled).
    ``derivatives="expansion"`` takes the derivatives of the predictions from a
    :mod:`Taylor expansion <.expansion>` (second order for FO, FOCE, FOCE-I; third order for
    Laplace, whose gradient needs third derivatives), ``"autograd"`` differentiates through the
    structural model, ``"auto"`` chooses (see :func:`.expansion.resolve_derivatives`).
    ``cache`` keeps the expansion's replicated batch between calls.
    """
    with torch.enable_grad():
        return _subject_objective(model, values, batch, eta_hat, method, derivatives, cache)


def _detached_values(values: PopulationValues) -> PopulationValues:
    return PopulationValues(theta={k: v.detach() for k, v in values.theta.items()}, omega=values.omega.detach(),
                            sigma={k: v.detach() for k, v in values.sigma.items()})


def _subject_objective(model: PopulationModel, values: PopulationValues, batch: SubjectBatch, eta_hat: torch.Tensor,
                       method: str, derivatives: str = "auto", cache: dict | None = None) -> SubjectObjective:
    if method not in METHODS:
        raise EstimationError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    derivatives = resolve_derivatives(derivatives, model)
    data = model.observed(batch)
    # FOCE's residual variance at η = 0 comes from the model itself, not from an expansion at η̂.
    var_ref = variance_reference(model, values, batch, method)
    if derivatives == "expansion":
        at = torch.zeros_like(eta_hat) if method == "fo" else eta_hat
        expanded = expanded_model(model, at.detach(), _detached_values(values), batch, replicated=cache,
                                  order=3 if method == "laplace" else 2)
        if expanded is not None:
            model = expanded
    if method == "fo":
        return _fo(model, values, batch, data)
    omega = model.omega_matrix(values, batch)
    if eta_hat.shape[-1] == 0:
        # No random effects: the likelihood itself, no approximation.
        m, v = model.moments(eta_hat.detach(), values, batch, variance_at=var_ref)
        ofv = model.observation_neg2ll(m, v, data).sum(-1) - _LOG2PI * log_two_pi_count(data)
        return SubjectObjective(ofv=ofv, curvature=m.new_zeros(m.shape[0], 0, 0))
    eta = eta_hat.detach().clone().requires_grad_(True)
    m, v = model.moments(eta, values, batch, variance_at=var_ref)
    inner = inner_objective(model, m, v, eta, omega, data)
    grad, hess = exact_eta_hessian(inner, eta, create_graph=False)
    hess = hess.detach()
    chol, info = torch.linalg.cholesky_ex(hess)
    if bool((info != 0).any()):
        # Not at a strict mode for some subject: fall back to the expected curvature there.
        lin0 = linearize(model, eta.detach(), _detached_values(values), batch,
                         variance_at=None if var_ref is None else var_ref.detach())
        fisher = 2.0 * fisher_information(lin0, omega.detach(), data).detach()
        hess = torch.where((info != 0)[:, None, None], fisher, hess)
        chol = torch.linalg.cholesky(hess)
    eta_t = eta.detach() - torch.cholesky_solve(grad[..., None], chol)[..., 0]
    if method == "laplace":
        if not eta_t.requires_grad:
            eta_t = eta_t.requires_grad_(True)
        m, v = model.moments(eta_t, values, batch, variance_at=var_ref)
        inner_t = inner_objective(model, m, v, eta_t, omega, data)
        _, hess_t = exact_eta_hessian(inner_t, eta_t, create_graph=True)
        curvature = 0.5 * hess_t
        data_term = model.observation_neg2ll(m, v, data).sum(-1)
    else:
        lin = linearize(model, eta_t, values, batch, variance_at=var_ref, create_graph=True)
        curvature = fisher_information(lin, omega, data)
        data_term = model.observation_neg2ll(lin.m, lin.v, data).sum(-1)
    k = eta_t.shape[-1]
    if k:
        chol_o = torch.linalg.cholesky(omega)
        z = torch.linalg.solve_triangular(chol_o.expand(eta_t.shape[:-1] + (k, k)), eta_t[..., None],
                                          upper=False)[..., 0]
        prior = (z * z).sum(-1) + 2.0 * torch.log(torch.diagonal(chol_o, dim1=-2, dim2=-1)).sum(-1)
        ofv = data_term + prior + _logdet(curvature)
    else:
        ofv = data_term
    ofv = ofv - _LOG2PI * log_two_pi_count(data)
    return SubjectObjective(ofv=ofv, curvature=curvature)
