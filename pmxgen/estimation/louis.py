"""Observed Fisher information by Louis' formula, from draws of the conditional distributions.

For subject i with complete-data log-likelihood ``ℓ_i(φ; η) = log p(y_i|η, φ) + log p(η|φ)``,
the observed information of the marginal likelihood is (Louis 1982)

    I_i(φ) = E[−∇²ℓ_i | y_i] − Cov[∇ℓ_i | y_i],

the expectations over ``p(η_i | y_i, φ)``; ``I = Σ_i I_i``. With draws of each η_i from its
conditional distribution the expectations become averages: this is the stochastic
approximation of the observed information that Monolix and saemix use after SAEM. The
gradient and Hessian are exact (autograd), in the natural parameters φ (Ω and σ as variances),
so ``I⁻¹`` is directly the covariance of the reported estimates.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..data.batching import SubjectBatch
from ..models.base import PopulationModel
from .covariance import CovarianceResult

__all__ = ["louis_information", "louis_covariance"]


def louis_information(model: PopulationModel, phi: torch.Tensor, batch: SubjectBatch, draws: torch.Tensor,
                      mu_refs: Sequence = (), max_rows: int = 20_000) -> torch.Tensor:
    """Louis' observed information ``[P, P]`` at ``phi`` from η draws ``[S, N, K]`` (S ≥ 2).

    ``mu_refs`` (:class:`~pmxgen.estimation.mu_reference.MuReference`): the latent variable of a
    mu-referenced η is taken as ``z = μ(θ) + η`` (held fixed while θ varies). The information is
    the same in theory, but the Monte Carlo error is far smaller where the data say little
    about each η (the two terms of Louis' formula then nearly cancel in the η parametrization);
    Monolix computes it this way too.

    Examples
    --------
    >>> import pmxgen, torch
    >>> from pmxgen.estimation.mcmc import sample_conditional
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> phi = model.parameter_set.initial_natural()
    >>> draws = sample_conditional(model, model.parameter_set.unpack(phi), data.batch, n_draws=20, burn_in=10)
    >>> louis_information(model, phi, data.batch, draws).shape
    torch.Size([6, 6])
    """
    ps = model.parameter_set
    s_total, n, k = draws.shape
    p = phi.numel()
    chunk = max(1, min(s_total, max_rows // max(n, 1)))
    hess_sum = torch.zeros(p, p, dtype=phi.dtype, device=phi.device)
    grads = []
    reps: dict[int, SubjectBatch] = {}
    for start in range(0, s_total, chunk):
        m = min(chunk, s_total - start)
        if m not in reps:
            reps[m] = batch.repeat(m)
        rep = reps[m]
        with torch.enable_grad():
            rows = phi.detach().expand(m * n, p).clone().requires_grad_(True)
            values = ps.unpack(rows)
            eta = draws[start:start + m].reshape(m * n, k).detach()
            if mu_refs:
                shift = torch.zeros(m * n, k, dtype=phi.dtype, device=phi.device)
                for ref in mu_refs:
                    mu_hat = ref.mu(values.theta[ref.theta].detach()[0])
                    shift = shift.index_put((torch.arange(m * n), torch.full((m * n,), ref.eta_index)),
                                            ref.mu(values.theta[ref.theta]) - mu_hat)
                eta = eta - shift
            complete = model.log_likelihood(eta, values, rep) + model.log_prior(eta, values, rep)
            (g,) = torch.autograd.grad(complete.sum(), rows, create_graph=True)
            for j in range(p):
                (h,) = torch.autograd.grad(g[:, j].sum(), rows, retain_graph=j < p - 1)
                hess_sum[j] += h.sum(0).detach()
        grads.append(g.detach().reshape(m, n, p))
    g = torch.cat(grads, 0)
    centred = g - g.mean(0)
    cov_g = torch.einsum("snp,snq->pq", centred, centred) / s_total
    info = -hess_sum / s_total - cov_g
    return 0.5 * (info + info.T)


def louis_covariance(model: PopulationModel, phi: torch.Tensor, batch: SubjectBatch, draws: torch.Tensor,
                     mu_refs: Sequence = (), rank_tolerance: float = 1e-8) -> CovarianceResult:
    """Covariance ``I⁻¹`` of the estimates, with a status (never raises on numerical failure)."""
    names = model.parameter_set.names
    try:
        info = louis_information(model, phi, batch, draws, mu_refs).cpu().numpy()
    except Exception as exc:  # reported, not raised: the fit itself stands
        return CovarianceResult(None, "failed", f"Louis information: {type(exc).__name__}: {exc}", float("nan"),
                                "louis")
    if not np.all(np.isfinite(info)):
        return CovarianceResult(None, "failed", "the Louis information has non-finite elements", float("nan"),
                                "louis", r_matrix=info)
    d = np.diag(info)
    if np.any(d <= 0):
        j = int(np.argmin(d))
        return CovarianceResult(None, "failed", f"the Louis information is not positive definite (diagonal of "
                                f"{names[j]} is {d[j]:.3g}); more posterior draws may help, or the parameter is "
                                f"not identifiable", float("nan"), "louis", r_matrix=info)
    scaled = info / np.sqrt(np.outer(d, d))
    w = np.linalg.eigvalsh(scaled)
    condition = float(w[-1] / w[0]) if w[0] > 0 else float("inf")
    if w[0] <= rank_tolerance * w[-1]:
        return CovarianceResult(None, "failed", f"the Louis information is not positive definite (smallest "
                                f"eigenvalue of the scaled matrix {w[0]:.3g})", condition, "louis", r_matrix=info)
    cov = np.linalg.inv(info)
    return CovarianceResult(0.5 * (cov + cov.T), "ok", "", condition, "louis", r_matrix=info)
