"""Predictions and residuals of an NLME fit, NONMEM definitions, and η/ε shrinkage.

* PRED = f(η = 0); IPRED = f(η̂); RES = DV − PRED; IWRES = (DV − IPRED)/sd(IPRED).
* WRES: first-order linearisation at η = 0, ``C = G Ω Gᵀ + diag V``, ``WRES = C^(−1/2)(y − f(0))``
  per subject.
* CWRES (Hooker, Staatz & Karlsson 2007): linearisation at η̂, ``E[y] = f(η̂) − G η̂``,
  ``C = G Ω Gᵀ + diag V``, ``CWRES = C^(−1/2)(y − E[y])``, with the residual variance ``V`` at η̂
  for fits with interaction (FOCE-I, Laplace, the EM methods) and at η = 0 for FOCE (no
  interaction), as NONMEM.

``C^(−1/2)`` is the **symmetric** inverse square root ``Q diag(λ^(−1/2)) Qᵀ`` from the
eigendecomposition ``C = Q diag(λ) Qᵀ`` (:func:`inverse_sqrt_covariance`), which is what NONMEM
uses for WRES and CWRES. It is not the inverse Cholesky factor ``L⁻¹`` (``C = L Lᵀ``): both give
the same sum of squares ``rᵀr = eᵀC⁻¹e`` per subject, but different residuals for every subject
with more than one observation (``L⁻¹e`` depends on the order of the observations, ``C^(−1/2)e``
does not). On pheno at NONMEM 7.4.2's final FOCE-I estimates (EBEs equal to 1e-6), the
symmetric CWRES equal NONMEM's to 5e-5 (its table precision); Cholesky ones correlate only 0.92
with them. NPDE (:mod:`.npde`) keep the Cholesky decorrelation, as the npde method prescribes.

Residuals are on the likelihood scale (log scale for exponential error); observations below
the LLOQ (M3) get NaN residuals and are left out of the whitening.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.batching import SubjectBatch
from ..models.nlme import NLMEModel, ObservedData
from ..models.parameter_set import PopulationValues

__all__ = ["nlme_residuals", "whitened_residuals", "inverse_sqrt_covariance", "eta_shrinkage", "epsilon_shrinkage"]


def inverse_sqrt_covariance(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric inverse square root ``C^(−1/2) = Q diag(λ^(−1/2)) Qᵀ`` of SPD matrices ``[..., J, J]``.

    From the eigendecomposition ``C = Q diag(λ) Qᵀ`` (:func:`torch.linalg.eigh`, batched over the
    leading dimensions); the result is symmetric and ``C^(−1/2) C C^(−1/2) = I``. Matrices with an
    eigenvalue ``≤ 0`` (not positive definite) give NaN.

    Examples
    --------
    >>> c = torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
    >>> w = inverse_sqrt_covariance(c)
    >>> torch.allclose(w, w.T), torch.allclose(w @ c @ w, torch.eye(2, dtype=torch.float64))
    (True, True)
    """
    lam, vec = torch.linalg.eigh(cov)
    ok = (lam > 0).all(-1)
    scale = torch.where(lam > 0, lam, torch.ones_like(lam)).rsqrt()
    out = (vec * scale[..., None, :]) @ vec.transpose(-1, -2)
    out = 0.5 * (out + out.transpose(-1, -2))
    return torch.where(ok[..., None, None], out, torch.full_like(out, float("nan")))


def whitened_residuals(residual: torch.Tensor, G: torch.Tensor, omega: torch.Tensor, v: torch.Tensor,
                       use: torch.Tensor) -> torch.Tensor:
    """``C^(−1/2) r`` per subject with ``C = G Ω Gᵀ + diag v`` over the observations in ``use`` (NaN elsewhere).

    ``C^(−1/2)`` is the symmetric inverse square root (:func:`inverse_sqrt_covariance`), as NONMEM
    computes WRES and CWRES, of the covariance of the **used** observations only: rows and columns
    of padding and BLQ entries are replaced by those of the identity before the eigendecomposition,
    so ``C`` is block diagonal (used block ⊕ I) and its inverse square root is the used block's
    inverse square root ⊕ I; with the residual set to 0 there, the unused entries do not mix into
    the used ones. All subjects are whitened in one batched call.

    Parameters
    ----------
    residual : Tensor ``[N, J]``
        ``y − E[y]`` per observation.
    G : Tensor ``[N, J, K]``
        ``∂f/∂η`` at the linearisation point.
    omega : Tensor ``[K, K]`` or ``[N, K, K]``
    v : Tensor ``[N, J]``
        Residual variances.
    use : bool Tensor ``[N, J]``
        Observations to whiten (not padding, not BLQ).

    Returns
    -------
    Tensor ``[N, J]``
        The whitened residuals; NaN where ``use`` is False (and for a subject whose ``C`` is
        not positive definite).

    Examples
    --------
    One subject, two used observations and one padding entry:

    >>> dt = torch.float64
    >>> r = torch.tensor([[1.0, -0.5, 7.0]], dtype=dt)
    >>> G = torch.tensor([[[1.0], [0.5], [3.0]]], dtype=dt)
    >>> use = torch.tensor([[True, True, False]])
    >>> w = whitened_residuals(r, G, torch.tensor([[0.4]], dtype=dt), torch.tensor([[0.2, 0.1, 9.0]], dtype=dt), use)
    >>> c = torch.tensor([[0.4 + 0.2, 0.2], [0.2, 0.1 + 0.1]], dtype=dt)   # G Ω Gᵀ + diag v, used block
    >>> lam, vec = torch.linalg.eigh(c)
    >>> torch.allclose(w[0, :2], vec @ torch.diag(lam ** -0.5) @ vec.T @ r[0, :2]), bool(w[0, 2].isnan())
    (True, True)
    """
    g = torch.where(use[..., None], G, torch.zeros_like(G))
    cov = g @ omega @ g.transpose(-1, -2) + torch.diag_embed(torch.where(use, v, torch.ones_like(v)))
    r = torch.where(use, residual, torch.zeros_like(residual))
    z = (inverse_sqrt_covariance(cov) @ r[..., None])[..., 0]
    return torch.where(use, z, torch.full_like(z, float("nan")))


def nlme_residuals(model: NLMEModel, values: PopulationValues, batch: SubjectBatch, eta_hat: torch.Tensor, *,
                   variance_at: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """PRED, IPRED, RES, WRES, IWRES and CWRES ``[N, J]`` (see the module docstring).

    Parameters
    ----------
    model : NLMEModel
    values : PopulationValues
        Population parameters (θ, Ω, σ).
    batch : SubjectBatch
    eta_hat : Tensor ``[N, K]``
        The EBEs.
    variance_at : Tensor ``[N, J]``, optional
        Predictions at which the residual variance of the CWRES covariance is evaluated: the
        predictions at η = 0 for a fit without interaction (FOCE, as NONMEM), None (the default)
        for the variance at η̂ (FOCE-I, Laplace and the EM methods). IWRES always use the
        variance at η̂ (``sd(IPRED)``).

    Returns
    -------
    dict of str to Tensor ``[N, J]``
        NaN on padding, and for RES, WRES, IWRES, CWRES on BLQ observations.

    Examples
    --------
    >>> import pmxgen
    >>> from pmxgen.models import NLMEModel
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": (0, 1.5), "CL": (0, 2.8), "V": (0, 32.0)},
    ...                   omega={"KA": 0.4, "CL": 0.07}, error={"kind": "additive", "init": {"ADD": 0.5}})
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> eta = torch.zeros(data.n_subjects, 2, dtype=torch.float64)
    >>> res = nlme_residuals(model, values, data.batch, eta)
    >>> sorted(res), res["CWRES"].shape == data.batch.obs.dv.shape
    (['CWRES', 'IPRED', 'IWRES', 'PRED', 'RES', 'WRES'], True)
    >>> bool(torch.allclose(res["WRES"].nan_to_num(), res["CWRES"].nan_to_num()))   # η̂ = 0: the same
    True
    """
    from ..estimation.linearization import linearize

    data: ObservedData = model.observed(batch)
    use = data.normal
    omega = model.omega_matrix(values, batch).detach()
    zeros = torch.zeros_like(eta_hat)
    lin0 = linearize(model, zeros, values, batch)
    lin1 = linearize(model, eta_hat.detach(), values, batch)
    cwres_v = lin1.v
    if variance_at is not None:
        with torch.no_grad():
            cwres_v = model.moments(eta_hat.detach(), values, batch, variance_at=variance_at.detach())[1]
    with torch.no_grad():
        pred = model.predict(zeros, values, batch)
        ipred = model.predict(eta_hat, values, batch)
        nan = torch.full_like(pred, float("nan"))
        res = torch.where(use, batch.obs.dv - pred, nan)
        iwres = torch.where(use, (data.y - lin1.m) / torch.sqrt(lin1.v), nan)
        wres = whitened_residuals(data.y - lin0.m, lin0.G, omega, lin0.v, use)
        expected = lin1.m - (lin1.G @ eta_hat[..., None])[..., 0]
        cwres = whitened_residuals(data.y - expected, lin1.G, omega, cwres_v, use)
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
