"""Between-subject variability as pharmacometricians read it: Ω variances as %CV.

For a log-normal individual parameter ``P = θ·exp(η)`` with ``η ~ N(0, ω²)`` (pmxgen's default
individual model and every built-in model), the coefficient of variation of ``P`` is exactly

    %CV = 100·√(exp(ω²) − 1),

which pmxgen reports. The common approximation ``100·ω`` (first order in ω) is close for small
ω² (0.09: 30.7 % exact vs 30 %) and too low for large ones (1.0: 131 % vs 100 %). For an η that
enters a custom model otherwise (e.g. additively) the column does not apply.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

__all__ = ["lognormal_cv_percent", "with_cv_percent", "CV_FORMULA", "CV_NOTE"]

#: The formula, as written under tables.
CV_FORMULA = "100*sqrt(exp(omega^2) - 1)"
#: A footnote for tables that carry the ``cv_percent`` column.
CV_NOTE = (f"cv_percent: Omega diagonal elements (variances omega^2) as the CV of a log-normal parameter "
           f"P = theta*exp(eta), {CV_FORMULA} (exact; not the approximation 100*omega).")

_DIAGONAL = re.compile(r"^OMEGA\([^,()]+\)$")


def lognormal_cv_percent(variance):
    """``100·√(exp(ω²) − 1)``: the %CV of ``θ·exp(η)`` for ``η ~ N(0, ω²)`` (NaN for ω² < 0).

    Parameters
    ----------
    variance : float or array_like
        ω², the Ω diagonal element (variance scale, as pmxgen reports it).

    Returns
    -------
    float or ndarray

    Examples
    --------
    >>> round(float(lognormal_cv_percent(0.09)), 3)   # the approximation 100·ω gives 30
    30.688
    >>> float(lognormal_cv_percent(0.0))
    0.0
    """
    v = np.asarray(variance, dtype=float)
    with np.errstate(invalid="ignore"):
        out = 100.0 * np.sqrt(np.expm1(np.where(v >= 0, v, np.nan)))
    return out if out.ndim else float(out)


def with_cv_percent(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of a parameter table (``parameter``, ``estimate`` columns) with ``cv_percent`` after
    ``estimate``: :func:`lognormal_cv_percent` for Ω diagonal elements ``OMEGA(name)``, NaN for the
    other rows (θ, σ, off-diagonal Ω).

    Examples
    --------
    >>> t = pd.DataFrame({"parameter": ["CL", "OMEGA(CL)", "OMEGA(CL,V)", "SIGMA(ADD)"],
    ...                   "estimate": [2.8, 0.09, 0.01, 0.5]})
    >>> with_cv_percent(t)["cv_percent"].round(3).tolist()
    [nan, 30.688, nan, nan]
    """
    out = table.copy()
    diagonal = out["parameter"].astype(str).str.match(_DIAGONAL).to_numpy(dtype=bool)
    cv = np.full(len(out), np.nan)
    cv[diagonal] = lognormal_cv_percent(out["estimate"].to_numpy(dtype=float)[diagonal])
    out.insert(out.columns.get_loc("estimate") + 1, "cv_percent", cv)
    return out
