"""The frozen result of an estimation: estimates, uncertainty, objective, EBEs, residuals, history."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FitResult"]

_FORMAT = "pmxgen.FitResult/1"


@dataclass(frozen=True)
class FitResult:
    """Everything an estimation produced, frozen.

    Estimates are on NONMEM's reporting scale: θ as defined, Ω elements and σ as variances
    (and covariances). The objective ``ofv`` follows NONMEM (−2 log L without the
    ``N_obs·log 2π`` constant); ``minus2ll`` is the full −2 log L, from which ``aic`` and
    ``bic`` are computed.

    Attributes
    ----------
    method : str
        ``fo``, ``foce``, ``focei``, ``laplace`` (or another estimator's name).
    estimates, se : dict
        All parameters by name (fixed ones too; their SE is NaN).
    fixed : dict
        Name → whether the parameter was fixed.
    covariance : numpy.ndarray or None
        Covariance of the estimated parameters (order of ``estimated_names``).
    ebe, ebe_covariance : numpy.ndarray
        Individual random effects ``[N, K]`` (EBEs) and their conditional covariance ``[N, K, K]``.
    observations : pandas.DataFrame
        One row per observation: ID, TIME, DV, CMT, BLQ, PRED, IPRED, RES, WRES, IWRES, CWRES, ROW
        (ROW = position in ``Dataset.to_frame()``).
    individual : pandas.DataFrame
        One row per subject: ID, the EBEs and the individual parameters.
    shrinkage : dict
        η-shrinkage (SD-based) per η name and ε-shrinkage under ``"EPS"``.
    history : list of dict
        Per iteration: ``iteration``, ``ofv`` and the parameter values.
    importance_sampling : dict or None
        −2LL by importance sampling at the estimates, with its Monte Carlo SE.
    posterior_draws : numpy.ndarray or None
        Draws ``[S, N, K]`` of each subject's η from its conditional distribution, where the
        estimator makes them (MCMC of SAEM/MCEM, variational posteriors); None otherwise.
    elbo : dict or None
        Variational estimators: the final evidence lower bound (``elbo``, its Monte Carlo
        ``se``, the ``bound`` used in fitting, ``elbo`` or ``iwae``) on the log-likelihood scale
        (≤ the log-likelihood; compare with ``-minus2ll / 2``).
    model_recipe, data_recipe : dict or None
        How to rebuild the model and re-read the data (see :func:`pmxgen.load_run`); None when
        the model was built in Python without a recipe.

    Examples
    --------
    >>> import pmxgen
    >>> fit = pmxgen.fit(pmxgen.models.build_model("1cmt_oral", iiv=("KA", "CL")),
    ...                  pmxgen.datasets.load("theophylline"), method="focei")  # doctest: +SKIP
    >>> fit.summary()  # doctest: +SKIP
    """

    method: str
    model_name: str
    data_source: str
    parameter_names: tuple
    estimated_names: tuple
    estimates: dict
    se: dict
    fixed: dict
    covariance: Any
    covariance_method: str | None
    covariance_status: str
    covariance_message: str
    condition_number: float
    ofv: float
    minus2ll: float
    n_observations: int
    n_subjects: int
    ids: tuple
    eta_names: tuple
    ebe: Any
    ebe_covariance: Any
    observations: Any
    individual: Any
    shrinkage: dict
    history: tuple
    status: str
    messages: tuple
    near_bounds: tuple = ()
    importance_sampling: dict | None = None
    elapsed_seconds: float = float("nan")
    options: dict = field(default_factory=dict)
    model_recipe: dict | None = None
    data_recipe: dict | None = None
    posterior_draws: Any = None
    elbo: dict | None = None

    # ------------------------------------------------------------ derived
    @property
    def success(self) -> bool:
        """True when the minimization converged."""
        return self.status == "converged"

    @property
    def n_estimated(self) -> int:
        return len(self.estimated_names)

    @property
    def aic(self) -> float:
        """AIC from the full −2LL."""
        return self.minus2ll + 2 * self.n_estimated

    @property
    def bic(self) -> float:
        """BIC from the full −2LL (log of the number of observations)."""
        return self.minus2ll + self.n_estimated * math.log(max(self.n_observations, 1))

    @property
    def rse(self) -> dict:
        """Relative standard errors in % (100·SE/|estimate|)."""
        return {k: (100.0 * self.se[k] / abs(v) if v != 0 else float("nan")) for k, v in self.estimates.items()}

    @property
    def correlation(self) -> np.ndarray | None:
        """Correlation matrix of the estimates (order of ``estimated_names``)."""
        if self.covariance is None:
            return None
        c = np.asarray(self.covariance)
        d = np.sqrt(np.diag(c))
        with np.errstate(invalid="ignore", divide="ignore"):
            return c / np.outer(d, d)

    def parameter_table(self) -> pd.DataFrame:
        """Estimate, SE, RSE %, 95 % CI and whether fixed, one row per parameter."""
        rows = []
        for name in self.parameter_names:
            est, se = self.estimates[name], self.se[name]
            rows.append({"parameter": name, "estimate": est, "se": se, "rse_percent": self.rse[name],
                         "ci_lower": est - 1.959963984540054 * se, "ci_upper": est + 1.959963984540054 * se,
                         "fixed": self.fixed[name]})
        return pd.DataFrame(rows)

    def checklist(self) -> list[tuple[str, bool, str]]:
        """(item, passed, detail) for minimization, covariance step, condition number, bounds, correlations."""
        items = [("minimization", self.success, self.status + (f": {self.messages[0]}" if self.messages else ""))]
        cov_ok = self.covariance_status == "ok"
        items.append(("covariance step", cov_ok, self.covariance_status +
                      (f" ({self.covariance_method}): {self.covariance_message}" if self.covariance_message else
                       f" ({self.covariance_method})")))
        if cov_ok:
            cn = self.condition_number
            items.append(("condition number", bool(cn < 1000), f"{cn:.4g} (flag at >= 1000)"))
            corr = self.correlation
            names = self.estimated_names
            large = [f"{names[i]}~{names[j]} {corr[i, j]:+.2f}" for i in range(len(names)) for j in range(i)
                     if abs(corr[i, j]) > 0.95]
            items.append(("large correlations", not large, ", ".join(large) if large else "none above |0.95|"))
        items.append(("estimates near bounds", not self.near_bounds,
                      ", ".join(self.near_bounds) if self.near_bounds else "none"))
        return items

    def summary(self) -> str:
        """A text report: status checklist, objective, parameter table, shrinkage."""
        lines = [f"pmxgen fit: {self.model_name}", f"data: {self.data_source}  ({self.n_subjects} subjects, "
                 f"{self.n_observations} observations)", f"method: {self.method.upper()}", "", "Status"]
        for item, ok, detail in self.checklist():
            lines.append(f"  [{'OK' if ok else '!!'}] {item}: {detail}")
        for msg in self.messages[1:]:
            lines.append(f"       {msg}")
        lines += ["", "Objective",
                  f"  OFV (NONMEM, no N*log(2*pi)): {self.ofv:.4f}",
                  f"  -2LL: {self.minus2ll:.4f}   AIC: {self.aic:.4f}   BIC: {self.bic:.4f}"]
        if self.importance_sampling:
            s = self.importance_sampling
            lines.append(f"  -2LL by importance sampling ({s['n_samples']} draws/subject, t{s['df']} proposal): "
                         f"{s['minus2ll']:.4f} +/- {s['se']:.4f} (MC SE)")
        if self.elbo:
            e = self.elbo
            lines.append(f"  ELBO: {e['elbo']:.4f} +/- {e['se']:.4f} (MC SE; -2*ELBO = {-2 * e['elbo']:.4f})")
        from .variability import CV_NOTE, with_cv_percent
        lines += ["", "Parameters", with_cv_percent(self.parameter_table()).to_string(
                      index=False, float_format=lambda v: f"{v:.5g}"),
                  "  " + CV_NOTE, "", "Shrinkage (SD-based, %)"]
        lines.append("  " + "  ".join(f"{k}: {100 * v:.1f}" for k, v in self.shrinkage.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # --------------------------------------------------------- serialization
    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN and infinities as strings) from which :meth:`from_dict` rebuilds the result."""
        out = {"format": _FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, pd.DataFrame):
                value = {"columns": list(value.columns), "dtypes": [str(t) for t in value.dtypes],
                         "data": {c: value[c].tolist() for c in value.columns}}
            elif isinstance(value, np.ndarray):
                value = {"ndarray": value.tolist(), "shape": list(value.shape)}
            out[f.name] = _encode(value)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "FitResult":
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a pmxgen FitResult (format {d.get('format')!r}, expected {_FORMAT!r})")
        kwargs = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            value = _decode(d[f.name])
            if isinstance(value, dict) and "ndarray" in value and "shape" in value:
                value = np.asarray(value["ndarray"], dtype=float).reshape(value["shape"])
            elif isinstance(value, dict) and set(value) == {"columns", "dtypes", "data"}:
                frame = pd.DataFrame({c: value["data"][c] for c in value["columns"]}, columns=value["columns"])
                for c, t in zip(value["columns"], value["dtypes"]):
                    try:
                        frame[c] = frame[c].astype(t)
                    except (TypeError, ValueError):
                        pass
                value = frame
            elif f.name in ("parameter_names", "estimated_names", "ids", "eta_names", "messages", "near_bounds",
                            "history"):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text (written to ``path`` when given); :meth:`from_json` reads it back exactly."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> "FitResult":
        """A FitResult from JSON text or a file written by :meth:`to_json`."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            text = Path(source).read_text()
        return cls.from_dict(json.loads(text))


def _encode(value):
    if isinstance(value, float) or isinstance(value, np.floating):
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


_SPECIAL = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _decode(value):
    if isinstance(value, str) and value in _SPECIAL:
        return _SPECIAL[value]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value
