"""Predictions and residuals of an NLME fit, NONMEM definitions, and η/ε shrinkage.

* PRED = f(η = 0); IPRED = f(η̂); RES = DV − PRED; IWRES = (DV − IPRED)/sd(IPRED).
* WRES: first-order linearisation at η = 0, ``C = G Ω Gᵀ + diag V``, ``WRES = L⁻¹(y − f(0))``
  with ``C = L Lᵀ`` (Cholesky) per subject.
* CWRES (Hooker, Staatz & Karlsson 2007): linearisation at η̂, ``E[y] = f(η̂) − G η̂``,
  ``C = G Ω Gᵀ + diag V(η̂)``, ``CWRES = L⁻¹(y − E[y])``.

Residuals are on the likelihood scale (log scale for exponential error); observations below
the LLOQ (M3) get NaN residuals and are left out of the whitening.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.batching import SubjectBatch
from ..models.nlme import NLMEModel, ObservedData
from ..models.parameters import PopulationValues

__all__ = ["nlme_residuals", "whitened_residuals", "eta_shrinkage", "epsilon_shrinkage"]


def whitened_residuals(residual: torch.Tensor, G: torch.Tensor, omega: torch.Tensor, v: torch.Tensor,
                       use: torch.Tensor) -> torch.Tensor:
    """``L⁻¹ r`` per subject with ``L Lᵀ = G Ω Gᵀ + diag v`` over the observations in ``use`` (NaN elsewhere)."""
    g = torch.where(use[..., None], G, torch.zeros_like(G))
    cov = g @ omega @ g.transpose(-1, -2) + torch.diag_embed(torch.where(use, v, torch.ones_like(v)))
    r = torch.where(use, residual, torch.zeros_like(residual))
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, r[..., None], upper=False)[..., 0]
    return torch.where(use, z, torch.full_like(z, float("nan")))


def nlme_residuals(model: NLMEModel, values: PopulationValues, batch: SubjectBatch, eta_hat: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """PRED, IPRED, RES, WRES, IWRES and CWRES ``[N, J]`` (see the module docstring)."""
    from ..estimation.linearization import linearize

    data: ObservedData = model.observed(batch)
    use = data.normal
    omega = model.omega_matrix(values, batch).detach()
    zeros = torch.zeros_like(eta_hat)
    lin0 = linearize(model, zeros, values, batch)
    lin1 = linearize(model, eta_hat.detach(), values, batch)
    with torch.no_grad():
        pred = model.predict(zeros, values, batch)
        ipred = model.predict(eta_hat, values, batch)
        nan = torch.full_like(pred, float("nan"))
        res = torch.where(use, batch.obs.dv - pred, nan)
        iwres = torch.where(use, (data.y - lin1.m) / torch.sqrt(lin1.v), nan)
        wres = whitened_residuals(data.y - lin0.m, lin0.G, omega, lin0.v, use)
        expected = lin1.m - (lin1.G @ eta_hat[..., None])[..., 0]
        cwres = whitened_residuals(data.y - expected, lin1.G, omega, lin1.v, use)
    return {"PRED": pred, "IPRED": ipred, "RES": res, "WRES": wres, "IWRES": iwres, "CWRES": cwres}


def eta_shrinkage(eta_hat: np.ndarray, omega_diag: np.ndarray) -> np.ndarray:
    """SD-based η-shrinkage ``1 − SD(η̂_k)/√ω_kk`` over subjects (SD with N − 1)."""
    eta_hat = np.asarray(eta_hat, dtype=float)
    if eta_hat.shape[0] < 2:
        return np.full(eta_hat.shape[1], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - eta_hat.std(axis=0, ddof=1) / np.sqrt(np.asarray(omega_diag, dtype=float))


def epsilon_shrinkage(iwres: np.ndarray) -> float:
    """SD-based ε-shrinkage ``1 − SD(IWRES)`` over the observations (NaNs ignored)."""
    values = np.asarray(iwres, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan")
    return float(1.0 - values.std(ddof=1))
