"""A lean batched Dormand–Prince 5(4) integrator over the unit interval.

The ODE engine integrates every event interval of all subjects at once as ``dA/ds`` on
``s ∈ [0, 1]``. For the small states of PK models (a few compartments × subjects) the cost
of a general solver is almost all per-step bookkeeping; this one does only what that call
needs: the Dormand–Prince tableau (FSAL, as ``torchdiffeq``'s ``dopri5``), the same error
norm (root mean square over every element of the batch, so all rows share one step
sequence), Hairer's initial step and the standard step-size controller. It is plain torch
arithmetic, so autograd differentiates through it when needed, and it runs on any device
(one host synchronisation per step, for the accept/reject decision).

Checked against ``torchdiffeq.odeint(method="dopri5")`` and closed-form solutions in
``tests/structural/test_dopri5.py``.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import IntegrationError

__all__ = ["integrate_unit_interval"]

_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
#: 5th-order weights (also the last stage's row: first same as last).
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
#: 5th minus 4th-order weights, over the seven stages.
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)

_SAFETY, _MAX_FACTOR, _MIN_FACTOR = 0.9, 10.0, 0.2


def _rms(x: torch.Tensor) -> float:
    return float(torch.sqrt(torch.mean(x.detach() ** 2))) if x.numel() else 0.0


def _combine(y: torch.Tensor, h: float, coefs, ks) -> torch.Tensor:
    out = y
    for c, k in zip(coefs, ks):
        if c != 0.0:
            out = out + (h * c) * k
    return out


def _initial_step(field, y0, f0, rtol, atol) -> float:
    """Hairer, Nørsett & Wanner (II.4) starting step, as torchdiffeq selects it."""
    scale = atol + y0.abs() * rtol
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    f1 = field(h0, y0 + h0 * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1)


def integrate_unit_interval(field: Callable[[float, torch.Tensor], torch.Tensor], y0: torch.Tensor, *,
                            rtol: float, atol: float, max_steps: int) -> torch.Tensor:
    """The solution at ``s = 1`` of ``dy/ds = field(s, y)``, ``y(0) = y0`` (any batch shape).

    Raises :class:`~pmxgen.errors.IntegrationError` after ``max_steps`` attempted steps
    (stiffness or extreme parameters) or when the solution stops being finite.

    Examples
    --------
    >>> import math, torch
    >>> y1 = integrate_unit_interval(lambda s, y: -2.0 * y, torch.ones(3, 1, dtype=torch.float64),
    ...                              rtol=1e-10, atol=1e-12, max_steps=1000)
    >>> abs(float(y1[0, 0]) - math.exp(-2.0)) < 1e-9           # y(1) = exp(-2)
    True
    """
    y = y0
    k1 = field(0.0, y)
    if not bool(torch.isfinite(k1).all()) or not bool(torch.isfinite(y).all()):
        raise IntegrationError("the right-hand side or the state is not finite at the start of an interval; "
                               "check the parameters (and any network in the right-hand side)")
    h = _initial_step(field, y, k1, rtol, atol)
    s = 0.0
    for _ in range(max_steps):
        if s >= 1.0:
            return y
        h = min(h, 1.0 - s)
        ks = [k1]
        for c, a in zip(_C[1:], _A[1:]):
            ks.append(field(s + c * h, _combine(y, h, a, ks)))
        y_new = _combine(y, h, _B, ks)
        k7 = field(s + h, y_new)
        ks.append(k7)
        err = _combine(torch.zeros_like(y), h, _E, ks)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        ratio = _rms(err / scale)
        if ratio != ratio or ratio == float("inf"):
            if not bool(torch.isfinite(y_new).all()):
                raise IntegrationError("the solution became non-finite (overflow)")
            h *= _MIN_FACTOR
            continue
        if ratio <= 1.0:
            s = 1.0 if 1.0 - (s + h) < 1e-12 else s + h
            y, k1 = y_new, k7
            factor = _MAX_FACTOR if ratio == 0.0 else min(_MAX_FACTOR, max(_SAFETY * ratio ** -0.2, 1.0))
        else:
            factor = max(_MIN_FACTOR, _SAFETY * ratio ** -0.2)
        h *= factor
    if s >= 1.0:
        return y
    raise IntegrationError(f"more than {max_steps} steps on one interval")
