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


#: Fields an estimator may leave out (None), each with its reason in ``FitResult.unavailable``.
OPTIONAL_FIELDS = ("ofv", "minus2ll", "ebe", "ebe_covariance", "shrinkage")
#: Statuses a FitResult may carry.
STATUSES = ("converged", "max_iterations", "failed")


@dataclass(frozen=True, kw_only=True)
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
    network_weights : dict or None
        The fitted network weights of the model (``model.networks``) by name, float64 arrays;
        None for models without networks. :meth:`to_json` stores them in the safetensors format
        (beside the JSON file, or inline as base64) with their SHA-256, checked when read back.
    unavailable : dict
        Why each field an estimator could not give is None (``ofv``, ``minus2ll``, ``ebe``,
        ``ebe_covariance``, ``shrinkage``): e.g. "variational fit: ELBO only". Never faked.

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
    ofv: float | None = None
    minus2ll: float | None = None
    n_observations: int
    n_subjects: int
    ids: tuple
    eta_names: tuple
    ebe: Any = None
    ebe_covariance: Any = None
    observations: Any
    individual: Any
    shrinkage: dict | None = None
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
    network_weights: dict | None = None
    unavailable: dict = field(default_factory=dict)

    def __post_init__(self):
        missing = [name for name in OPTIONAL_FIELDS if getattr(self, name) is None and not self.unavailable.get(name)]
        if missing:
            raise ValueError(f"FitResult: {', '.join(missing)} missing without a reason; give unavailable="
                             f"{{name: reason}} for each field the estimator cannot provide")
        if self.status not in STATUSES:
            raise ValueError(f"FitResult: status {self.status!r} is not one of {', '.join(STATUSES)}")

    # ------------------------------------------------------------ derived
    @property
    def success(self) -> bool:
        """True when the minimization converged."""
        return self.status == "converged"

    @property
    def n_estimated(self) -> int:
        return len(self.estimated_names)

    @property
    def n_parameters(self) -> int:
        """Named estimated parameters plus fitted network weights (the count AIC and BIC use)."""
        return self.n_estimated + self.n_network_weights

    @property
    def aic(self) -> float | None:
        """AIC from the full −2LL (None when the fit has no −2LL; see ``unavailable``).

        Counts the named estimated parameters and every fitted network weight (they are population
        parameters too)."""
        return None if self.minus2ll is None else self.minus2ll + 2 * self.n_parameters

    @property
    def bic(self) -> float | None:
        """BIC from the full −2LL (log of the number of observations); None without a −2LL."""
        if self.minus2ll is None:
            return None
        return self.minus2ll + self.n_parameters * math.log(max(self.n_observations, 1))

    @property
    def n_network_weights(self) -> int:
        """Number of fitted network weights (0 for parametric models)."""
        return int(sum(np.asarray(v).size for v in (self.network_weights or {}).values()))

    @property
    def network_weight_norm(self) -> float:
        """Euclidean norm of the fitted network weights (0.0 without them)."""
        return float(math.sqrt(sum(float((np.asarray(v) ** 2).sum()) for v in (self.network_weights or {}).values())))

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
        lines += ["", "Objective"]
        if self.ofv is not None:
            lines.append(f"  OFV (NONMEM, no N*log(2*pi)): {self.ofv:.4f}")
        else:
            lines.append(f"  OFV: not available ({self.unavailable.get('ofv', '')})")
        if self.minus2ll is not None:
            lines.append(f"  -2LL: {self.minus2ll:.4f}   AIC: {self.aic:.4f}   BIC: {self.bic:.4f}")
        else:
            lines.append(f"  -2LL, AIC, BIC: not available ({self.unavailable.get('minus2ll', '')})")
        if self.importance_sampling:
            s = self.importance_sampling
            lines.append(f"  -2LL by importance sampling ({s['n_samples']} draws/subject, t{s['df']} proposal): "
                         f"{s['minus2ll']:.4f} +/- {s['se']:.4f} (MC SE)")
        if self.elbo:
            e = self.elbo
            lines.append(f"  ELBO: {e['elbo']:.4f} +/- {e['se']:.4f} (MC SE; -2*ELBO = {-2 * e['elbo']:.4f})")
        from .variability import CV_NOTE, with_cv_percent
        lines += ["", "Parameters", with_cv_percent(self.parameter_table()).to_string(
                      index=False, float_format=lambda v: f"{v:.5g}"), "  " + CV_NOTE]
        if self.network_weights:
            lines.append(f"  network weights: {self.n_network_weights} (norm {self.network_weight_norm:.4g}) in "
                         f"{len(self.network_weights)} tensors")
        lines += ["", "Shrinkage (SD-based, %)"]
        if self.shrinkage is None:
            lines.append(f"  not available ({self.unavailable.get('shrinkage', '')})")
        else:
            lines.append("  " + "  ".join(f"{k}: {100 * v:.1f}" for k, v in self.shrinkage.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # --------------------------------------------------------- serialization
    def to_dict(self, *, weights_file: str | None = None) -> dict:
        """A JSON-ready dict (NaN and infinities as strings) from which :meth:`from_dict` rebuilds the result.

        Network weights are stored as safetensors bytes with their SHA-256: inline (base64) by
        default, or as a reference to ``weights_file`` (written by :meth:`to_json`).
        """
        out = {"format": _FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "network_weights":
                out[f.name] = None if value is None else _weights_entry(value, weights_file)
                continue
            if isinstance(value, pd.DataFrame):
                value = {"columns": list(value.columns), "dtypes": [str(t) for t in value.dtypes],
                         "data": {c: value[c].tolist() for c in value.columns}}
            elif isinstance(value, np.ndarray):
                value = {"ndarray": value.tolist(), "shape": list(value.shape)}
            out[f.name] = _encode(value)
        return out

    @classmethod
    def from_dict(cls, d: dict, *, folder: str | Path | None = None) -> "FitResult":
        """Rebuild a result from :meth:`to_dict` output; ``folder`` holds a referenced weights file."""
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a pmxgen FitResult (format {d.get('format')!r}, expected {_FORMAT!r})")
        kwargs = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            if f.name == "network_weights":
                kwargs[f.name] = None if d[f.name] is None else _read_weights_entry(d[f.name], folder)
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
        """JSON text (written to ``path`` when given); :meth:`from_json` reads it back exactly.

        With ``path`` and network weights, the weights go to ``<path stem>.weights.safetensors``
        beside it (the JSON records the file name and its SHA-256); without ``path`` they are
        inline.
        """
        weights_file = None
        if path is not None and self.network_weights:
            from ..models.weights import weights_to_bytes
            weights_file = Path(path).stem + ".weights.safetensors"
            (Path(path).parent / weights_file).write_bytes(weights_to_bytes(self.network_weights))
        text = json.dumps(self.to_dict(weights_file=weights_file), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> "FitResult":
        """A FitResult from JSON text or a file written by :meth:`to_json`.

        Network weights are read with the safetensors parser (which cannot execute code) and
        only after their SHA-256 matches the one recorded at the fit: a changed weights file is
        refused with a :class:`~pmxgen.errors.ModelError`.
        """
        text = str(source)
        folder = None
        if not text.lstrip().startswith("{"):
            folder = Path(source).parent
            text = Path(source).read_text()
        return cls.from_dict(json.loads(text), folder=folder)


def _weights_entry(state: dict, weights_file: str | None) -> dict:
    """The JSON entry of network weights: safetensors bytes inline (base64) or a file name, with SHA-256."""
    import base64

    from ..models.weights import sha256, weights_to_bytes
    blob = weights_to_bytes(state)
    entry = {"format": "safetensors", "sha256": sha256(blob), "count": int(sum(np.asarray(v).size
                                                                             for v in state.values()))}
    if weights_file is None:
        entry["base64"] = base64.b64encode(blob).decode("ascii")
    else:
        entry["file"] = weights_file
    return entry


def _read_weights_entry(entry: dict, folder) -> dict:
    import base64

    from ..errors import ModelError
    from ..models.weights import weights_from_bytes
    if not isinstance(entry, dict) or entry.get("format") != "safetensors" or "sha256" not in entry:
        raise ModelError("the fit's network weights entry is not a safetensors reference with a SHA-256; the "
                         "file was not written by pmxgen")
    if "base64" in entry:
        return weights_from_bytes(base64.b64decode(entry["base64"]), expected_sha256=entry["sha256"],
                                  source="the inline network weights")
    name = str(entry.get("file", ""))
    if folder is None or not name or Path(name).name != name:
        raise ModelError(f"the fit's network weights are in a file ({name!r}) that cannot be located; read the fit "
                         f"from its file with FitResult.from_json(path)")
    path = Path(folder) / name
    if not path.is_file():
        raise ModelError(f"the network weights file {path} is missing; copy it beside the fit's JSON file")
    return weights_from_bytes(path.read_bytes(), expected_sha256=entry["sha256"], source=f"the network weights {path}")


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
