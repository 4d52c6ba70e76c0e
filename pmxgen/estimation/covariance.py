"""The covariance step: R (Hessian of the OFV), S (outer products of subject gradients) and their combinations.

As in NONMEM: the default covariance of the estimates is the sandwich ``R⁻¹ S R⁻¹``;
``MATRIX=R`` gives ``2 R⁻¹`` and ``MATRIX=S`` gives ``4 S⁻¹`` (the factors because the OFV is
−2 log L). R comes from central differences of the exact gradient; S from each subject's
exact gradient. A failure (R or S not positive definite, non-finite values, a difference
point where the gradient cannot be evaluated) gives a status and a message naming the
parameter, never an exception. A variance estimate at its boundary of 0 gets a forward
difference and a note.
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


class _StepFailed(Exception):
    """The gradient could not be evaluated at a difference point (parameter ``k`` at ``value``)."""

    def __init__(self, k: int, value: float, exc: Exception):
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.k, self.value = k, value


def finite_difference_hessian(gradient: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                              steps: np.ndarray, forward: Sequence[bool] | None = None) -> np.ndarray:
    """Symmetrised difference Jacobian of ``gradient`` at ``x``: central, or forward for ``forward[k]``.

    A gradient that cannot be evaluated at a difference point raises ``_StepFailed`` carrying
    ``k`` and the value tried (so that :func:`covariance_step` can name the parameter).

    Examples
    --------
    >>> import numpy as np
    >>> h = finite_difference_hessian(lambda x: np.array([2 * x[0] + x[1], x[0] + 6 * x[1]]),
    ...                               np.array([1.0, 1e-9]), np.array([1e-4, 1e-4]), forward=[False, True])
    >>> np.round(h, 6).tolist()
    [[2.0, 1.0], [1.0, 6.0]]
    """
    p = x.size
    hess = np.empty((p, p))
    forward = [False] * p if forward is None else list(forward)
    centre = None

    def at(k: int, sign: float) -> np.ndarray:
        e = np.zeros(p)
        e[k] = sign * steps[k]
        try:
            return gradient(x + e)
        except Exception as exc:  # reported by covariance_step with the parameter's name
            raise _StepFailed(k, float(x[k] + e[k]), exc) from exc

    for k in range(p):
        if forward[k]:
            if centre is None:
                centre = at(k, 0.0)
            hess[:, k] = (at(k, 1.0) - centre) / steps[k]
        else:
            hess[:, k] = (at(k, 1.0) - at(k, -1.0)) / (2 * steps[k])
    return 0.5 * (hess + hess.T)


def _step_failure_message(failed: _StepFailed, phi: np.ndarray, names: Sequence[str]) -> str:
    return (f"the R matrix needs the gradient at {names[failed.k]} = {failed.value:.4g} (estimate "
            f"{phi[failed.k]:.4g}), where it cannot be evaluated ({failed})")


def _is_variance(name: str) -> bool:
    """An Ω diagonal element or a σ²: natural-scale parameters bounded below by 0."""
    return (name.startswith("OMEGA(") and "," not in name) or name.startswith("SIGMA(")


def _boundary_note(at_zero: Sequence[int], phi: np.ndarray, names: Sequence[str]) -> str:
    listed = ", ".join(f"{names[k]} = {phi[k]:.3g}" for k in at_zero)
    return (f"R's column for {listed} by a forward difference: closer to 0 than the central difference step, "
            f"at the boundary (a random effect or error term the data do not support); its SE is not "
            f"meaningful: consider removing or fixing it")


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
        Central-difference step relative to ``max(|phi_k|, 0.01)``. A variance (``OMEGA(X)``,
        ``SIGMA(X)``) closer to 0 than its step gets a forward difference instead (the OFV is
        not evaluated at a negative variance), and the message says so.
    """
    if kind not in COVARIANCE_KINDS:
        raise ValueError(f"covariance must be one of {COVARIANCE_KINDS} (found {kind!r})")
    r = s = None
    steps = relative_step * np.maximum(np.abs(phi), 1e-2)
    # A variance closer to 0 than the step gets a forward difference (never a negative variance).
    forward = [kind in ("sandwich", "R") and _is_variance(name) and phi[k] - steps[k] <= 0
               for k, name in enumerate(names)]
    note = _boundary_note([k for k, f in enumerate(forward) if f], phi, names) if any(forward) else ""

    def failed(message: str) -> CovarianceResult:
        return CovarianceResult(None, "failed", f"{message}; {note}" if note else message, float("nan"), kind, r, s)

    try:
        if kind in ("sandwich", "R"):
            r = finite_difference_hessian(total_gradient, phi, steps, forward)
        if kind in ("sandwich", "S"):
            g = subject_gradients(phi)
            s = g.T @ g
    except _StepFailed as exc:
        return failed(_step_failure_message(exc, phi, names))
    except Exception as exc:  # numerical failure anywhere in the step is reported, not raised
        return failed(f"{type(exc).__name__}: {exc}")
    for label, m in (("R", r), ("S", s)):
        if m is not None and not np.all(np.isfinite(m)):
            return failed(f"the {label} matrix has non-finite elements")
    for label, m in (("R", r), ("S", s)):
        if m is None:
            continue
        # Judge definiteness on the scale-free matrix D^-1/2 M D^-1/2 (parameters differ in
        # magnitude by many orders); R comes from finite differences (relative accuracy ~1e-8),
        # S is exact.
        d = np.diag(m)
        if np.any(d <= 0):
            k = int(np.argmin(d))
            return failed(f"the {label} matrix is not positive definite (diagonal element of {names[k]} is "
                          f"{d[k]:.3g}): a parameter may be unidentifiable or at a boundary")
        scaled = m / np.sqrt(np.outer(d, d))
        w = np.linalg.eigvalsh(scaled)
        if w[0] <= RANK_TOLERANCE[label] * max(abs(w[-1]), 1e-300):
            return failed(f"the {label} matrix is not positive definite ({_weakest(scaled, names)}): a parameter "
                          f"may be unidentifiable or at a boundary")
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
    return CovarianceResult(cov, "ok", note, cond, kind, r, s)
