"""The covariance step: R (Hessian of the OFV), S (outer products of subject gradients) and their combinations.

As in NONMEM: the default covariance of the estimates is the sandwich ``R⁻¹ S R⁻¹``;
``MATRIX=R`` gives ``2 R⁻¹`` and ``MATRIX=S`` gives ``4 S⁻¹`` (the factors because the OFV is
−2 log L). R comes from central differences of the exact gradient; S from each subject's
exact gradient. A failure (R or S not positive definite, non-finite values) gives a status
and a message, never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["CovarianceResult", "covariance_step", "COVARIANCE_KINDS", "finite_difference_hessian"]

#: Accepted covariance kinds.
COVARIANCE_KINDS = ("sandwich", "R", "S")

#: Smallest eigenvalue ratio (smallest/largest) accepted as positive definite, per matrix.
RANK_TOLERANCE = {"R": 1e-8, "S": 1e-12}


@dataclass(frozen=True)
class CovarianceResult:
    """Covariance of the estimates (or None), status ``ok``/``failed``, message, condition number."""

    matrix: np.ndarray | None
    status: str
    message: str
    condition_number: float
    kind: str
    r_matrix: np.ndarray | None = None
    s_matrix: np.ndarray | None = None


def finite_difference_hessian(gradient: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                              steps: np.ndarray) -> np.ndarray:
    """Symmetrised central-difference Jacobian of ``gradient`` at ``x``."""
    p = x.size
    hess = np.empty((p, p))
    for k in range(p):
        e = np.zeros(p)
        e[k] = steps[k]
        hess[:, k] = (gradient(x + e) - gradient(x - e)) / (2 * steps[k])
    return 0.5 * (hess + hess.T)


def _weakest(matrix: np.ndarray, names: Sequence[str]) -> str:
    w, v = np.linalg.eigh(matrix)
    k = int(np.argmax(np.abs(v[:, 0])))
    return f"smallest eigenvalue of the scaled matrix {w[0]:.3g}, mostly along {names[k]}"


def covariance_step(phi: np.ndarray, names: Sequence[str], total_gradient: Callable[[np.ndarray], np.ndarray],
                    subject_gradients: Callable[[np.ndarray], np.ndarray], kind: str = "sandwich",
                    relative_step: float = 1e-4) -> CovarianceResult:
    """Covariance of the estimates ``phi`` (natural scale) by NONMEM's rules.

    Parameters
    ----------
    phi : ndarray
        Estimates ``[P]``.
    names : sequence of str
        Their names (for messages).
    total_gradient : callable
        ``phi -> d OFV / d phi`` (EBEs re-estimated at each ``phi``).
    subject_gradients : callable
        ``phi -> [N, P]`` gradients of each subject's OFV contribution.
    kind : {"sandwich", "R", "S"}
    relative_step : float
        Central-difference step relative to ``max(|phi_k|, 0.01)``.
    """
    if kind not in COVARIANCE_KINDS:
        raise ValueError(f"covariance must be one of {COVARIANCE_KINDS} (found {kind!r})")
    r = s = None
    try:
        if kind in ("sandwich", "R"):
            steps = relative_step * np.maximum(np.abs(phi), 1e-2)
            r = finite_difference_hessian(total_gradient, phi, steps)
        if kind in ("sandwich", "S"):
            g = subject_gradients(phi)
            s = g.T @ g
    except Exception as exc:  # numerical failure anywhere in the step is reported, not raised
        return CovarianceResult(None, "failed", f"{type(exc).__name__}: {exc}", float("nan"), kind, r, s)
    for label, m in (("R", r), ("S", s)):
        if m is not None and not np.all(np.isfinite(m)):
            return CovarianceResult(None, "failed", f"the {label} matrix has non-finite elements", float("nan"),
                                    kind, r, s)
    for label, m in (("R", r), ("S", s)):
        if m is None:
            continue
        # Judge definiteness on the scale-free matrix D^-1/2 M D^-1/2 (parameters differ in
        # magnitude by many orders); R comes from finite differences (relative accuracy ~1e-8),
        # S is exact.
        d = np.diag(m)
        if np.any(d <= 0):
            k = int(np.argmin(d))
            return CovarianceResult(None, "failed", f"the {label} matrix is not positive definite (diagonal "
                                    f"element of {names[k]} is {d[k]:.3g}): a parameter may be unidentifiable or "
                                    f"at a boundary", float("nan"), kind, r, s)
        scaled = m / np.sqrt(np.outer(d, d))
        w = np.linalg.eigvalsh(scaled)
        if w[0] <= RANK_TOLERANCE[label] * max(abs(w[-1]), 1e-300):
            return CovarianceResult(None, "failed", f"the {label} matrix is not positive definite "
                                    f"({_weakest(scaled, names)}): a parameter may be unidentifiable or at a "
                                    f"boundary", float("nan"), kind, r, s)
    if kind == "sandwich":
        r_inv = np.linalg.inv(r)
        cov = r_inv @ s @ r_inv
    elif kind == "R":
        cov = 2.0 * np.linalg.inv(r)
    else:
        cov = 4.0 * np.linalg.inv(s)
    cov = 0.5 * (cov + cov.T)
    d = np.sqrt(np.diag(cov))
    corr = cov / np.outer(d, d)
    w = np.linalg.eigvalsh(corr)
    cond = float(w[-1] / w[0]) if w[0] > 0 else float("inf")
    return CovarianceResult(cov, "ok", "", cond, kind, r, s)
