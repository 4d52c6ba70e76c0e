"""First-order terms of an NLME model around given random effects, for all subjects at once.

Because subject i's predictions depend only on η_i, the per-subject Jacobians ``∂f_i/∂η_i``
are the K directional derivatives along the coordinate axes, each taken for all subjects in
one pass. They are computed with the double-backward trick (a Jacobian-vector product from
two reverse passes), which keeps the result differentiable for the outer gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..models.base import ObservedData, PopulationModel
from ..models.parameter_set import PopulationValues
from ..data.batching import SubjectBatch

__all__ = ["eta_jacobian", "Linearization", "linearize", "fisher_information", "inner_objective"]


def eta_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], eta: torch.Tensor, *, create_graph: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(η)`` ``[N, M]`` and its per-subject Jacobian ``[N, M, K]``.

    ``fn`` must make row i depend on ``η[i]`` only. With ``create_graph`` the Jacobian is
    itself differentiable (with respect to η and to anything ``fn`` closes over).

    Examples
    --------
    >>> eta = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    >>> out, jac = eta_jacobian(lambda e: torch.stack([e[:, 0] * e[:, 1], e[:, 0] ** 2], -1), eta)
    >>> jac[1].tolist()
    [[4.0, 3.0], [6.0, 0.0]]
    """
    if not eta.requires_grad:
        eta = eta.detach().requires_grad_(True)
    out = fn(eta)
    n, k = eta.shape
    if k == 0:
        return out, out.new_zeros(out.shape + (0,))
    u = torch.zeros_like(out, requires_grad=True)
    (vjp,) = torch.autograd.grad(out, eta, u, create_graph=True, allow_unused=True)
    if vjp is None or not vjp.requires_grad:
        return out, out.new_zeros(out.shape + (k,))
    cols = []
    for j in range(k):
        e = torch.zeros_like(eta)
        e[:, j] = 1.0
        (col,) = torch.autograd.grad(vjp, u, e, create_graph=create_graph, retain_graph=True, allow_unused=True)
        cols.append(torch.zeros_like(out) if col is None else col)
    return out, torch.stack(cols, dim=-1)


@dataclass
class Linearization:
    """Mean ``m``, variance ``v`` ``[N, J]`` and their η-derivatives ``G``, ``W`` ``[N, J, K]`` at η."""

    eta: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor
    G: torch.Tensor
    W: torch.Tensor


def linearize(model: PopulationModel, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch, *,
              variance_at: torch.Tensor | None = None, create_graph: bool = False) -> Linearization:
    """:class:`Linearization` of ``model`` at η (variance at ``variance_at`` predictions if given)."""
    if not eta.requires_grad:
        eta = eta.detach().requires_grad_(True)
    j = batch.obs.time.shape[1]

    def fn(e):
        m, v = model.moments(e, values, batch, variance_at=variance_at)
        return torch.cat([m, v], dim=-1)

    out, jac = eta_jacobian(fn, eta, create_graph=create_graph)
    return Linearization(eta=eta, m=out[:, :j], v=out[:, j:], G=jac[:, :j], W=jac[:, j:])


def inner_objective(model: PopulationModel, lin_m: torch.Tensor, lin_v: torch.Tensor, eta: torch.Tensor,
                    omega: torch.Tensor, data: ObservedData) -> torch.Tensor:
    """``−2 log p(y_i|η_i) − 2 log p(η_i)`` per subject ``[N]`` from the moments at η (with constants)."""
    from ..models.base import gaussian_log_prior
    return model.observation_neg2ll(lin_m, lin_v, data).sum(-1) - 2.0 * gaussian_log_prior(eta, omega)


def fisher_information(lin: Linearization, omega: torch.Tensor, data: ObservedData) -> torch.Tensor:
    """``Ω⁻¹ + Σ_j G_jᵀG_j/V_j + ½ Σ_j W_jᵀW_j/V_j²`` per subject ``[N, K, K]`` (NONMEM's FOCE-I matrix).

    For BLQ (M3) observations the Gaussian weights are replaced by the curvature of
    ``−log Φ`` in the mean. Equals ½ × the expected Hessian of :func:`inner_objective`.
    """
    v = lin.v
    normal = data.normal
    a = torch.where(normal, 1.0 / v, torch.zeros_like(v))
    b = torch.where(normal, 0.5 / (v * v), torch.zeros_like(v))
    if bool(data.blq.any()):
        sd = torch.sqrt(v)
        z = (data.lloq - lin.m) / sd
        lam = torch.exp(-0.5 * z * z - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=v.dtype))
                        - torch.special.log_ndtr(z))
        a = torch.where(data.blq, lam * (z + lam) / v, a)
    k = lin.G.shape[-1]
    eye = torch.eye(k, dtype=v.dtype, device=v.device)
    omega_inv = torch.cholesky_solve(eye.expand(omega.shape), torch.linalg.cholesky(omega))
    info = torch.einsum("nj,njk,njl->nkl", a, lin.G, lin.G) + torch.einsum("nj,njk,njl->nkl", b, lin.W, lin.W)
    return omega_inv + info
