"""Built-in NLME models for common PK, with initial estimates from the data.

``build_model("1cmt_oral", data, error="combined", iiv=("KA", "CL", "V"))`` gives an
:class:`NLMEModel` with log-normal individual parameters ``P_i = θ_P exp(η_P)``, positive θ
(lower bound 0) and initial estimates from a non-compartmental look at the data
(:func:`initial_estimates`): terminal slope, AUC, clearance and volume, median over subjects.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..errors import ModelError
from ..structural.library import get_model
from .nlme import NLMEModel
from .parameter_set import OmegaBlock, Theta
from .residual_error import ERROR_MODELS, ResidualError

__all__ = ["build_model", "initial_estimates", "LIBRARY", "DEFAULT_IIV"]

#: Structural models available to :func:`build_model`.
LIBRARY = ("1cmt_iv", "1cmt_oral", "2cmt_iv", "2cmt_oral", "3cmt_iv", "3cmt_oral", "1cmt_iv_mm", "1cmt_oral_mm")

#: Default parameters with inter-individual variability.
DEFAULT_IIV = {"1cmt_iv": ("CL", "V"), "1cmt_oral": ("KA", "CL", "V"), "2cmt_iv": ("CL", "V1"),
               "2cmt_oral": ("KA", "CL", "V1"), "3cmt_iv": ("CL", "V1"), "3cmt_oral": ("KA", "CL", "V1"),
               "1cmt_iv_mm": ("VM", "V"), "1cmt_oral_mm": ("KA", "VM", "V")}

_FALLBACK = {"CL": 1.0, "V": 10.0, "KA": 1.0}


def _nca(data) -> dict[str, float]:
    """Median CL, V, k (terminal) and tmax over subjects; NaN where the data do not allow it."""
    b = data.batch
    obs_t = b.obs.time.cpu().numpy()
    obs_y = b.obs.dv.cpu().numpy()
    obs_m = (b.obs.mask & ~b.obs.blq).cpu().numpy()
    dose_t = b.doses.time.cpu().numpy()
    dose_a = b.doses.amt.cpu().numpy()
    dose_m = b.doses.mask.cpu().numpy()
    cl, vol, ks, tmaxs, conc = [], [], [], [], []
    for i in range(b.n_subjects):
        if not dose_m[i].any() or obs_m[i].sum() < 3:
            continue
        t0 = dose_t[i][dose_m[i]].min()
        dose = dose_a[i][dose_m[i]].sum()
        t = obs_t[i][obs_m[i]] - t0
        y = obs_y[i][obs_m[i]]
        keep = (t >= 0) & np.isfinite(y)
        t, y = t[keep], y[keep]
        order = np.argsort(t, kind="stable")
        t, y = t[order], y[order]
        if y.size < 3 or not (y > 0).any():
            continue
        conc.extend(y[y > 0].tolist())
        imax = int(np.argmax(y))
        tmaxs.append(t[imax])
        tail = [(tt, yy) for tt, yy in zip(t[imax + 1:], y[imax + 1:]) if yy > 0][-3:]
        if len(tail) < 2:
            continue
        tt, yy = np.array(tail).T
        slope = np.polyfit(tt, np.log(yy), 1)[0]
        if not slope < 0:
            continue
        k = -slope
        tt_all = np.concatenate([[0.0], t]) if t[0] > 0 else t
        yy_all = np.concatenate([[0.0], y]) if t[0] > 0 else y
        auc = float(np.sum(np.diff(tt_all) * (yy_all[1:] + yy_all[:-1]) / 2)) + yy[-1] / k
        if auc > 0 and dose > 0:
            cl.append(dose / auc)
            vol.append(dose / auc / k)
            ks.append(k)
    med = lambda v: float(np.median(v)) if v else float("nan")  # noqa: E731
    return {"CL": med(cl), "V": med(vol), "k": med(ks), "tmax": med(tmaxs), "conc": med(conc)}


def initial_estimates(name: str, data=None) -> dict[str, float]:
    """Typical-value initial estimates for built-in model ``name`` from ``data`` (defaults without data).

    Examples
    --------
    >>> import pmxgen
    >>> init = initial_estimates("1cmt_oral", pmxgen.datasets.load("theophylline"))
    >>> sorted(init), 1 < init["CL"] < 6, 15 < init["V"] < 60
    (['CL', 'KA', 'V'], True, True)
    """
    if name not in LIBRARY:
        raise ModelError(f"unknown model {name!r}; built-in NLME models are {', '.join(LIBRARY)}")
    nca = _nca(data) if data is not None else {"CL": float("nan"), "V": float("nan"), "k": float("nan"),
                                                   "tmax": float("nan"), "conc": float("nan")}
    cl = nca["CL"] if math.isfinite(nca["CL"]) and nca["CL"] > 0 else _FALLBACK["CL"]
    v = nca["V"] if math.isfinite(nca["V"]) and nca["V"] > 0 else _FALLBACK["V"]
    k = cl / v
    ka = 2.5 / nca["tmax"] if math.isfinite(nca["tmax"]) and nca["tmax"] > 0 else _FALLBACK["KA"]
    ka = max(ka, 2.0 * k)
    conc = nca["conc"] if math.isfinite(nca["conc"]) and nca["conc"] > 0 else 1.0
    out: dict[str, float] = {}
    if "oral" in name:
        out["KA"] = ka
    if name.endswith("_mm"):
        out.update({"VM": cl * conc * 2.0, "KM": conc, "V": v})
    elif name.startswith("1cmt"):
        out.update({"CL": cl, "V": v})
    elif name.startswith("2cmt"):
        out.update({"CL": cl, "V1": v / 2, "Q": cl, "V2": v})
    else:
        out.update({"CL": cl, "V1": v / 3, "Q2": cl, "V2": v / 3, "Q3": cl / 2, "V3": v})
    return out


def _default_sigma(kind: str, data) -> dict[str, float]:
    level = 1.0
    if data is not None:
        b = data.batch
        y = b.obs.dv[b.obs.mask & ~b.obs.blq].cpu().numpy()
        y = y[np.isfinite(y) & (y > 0)]
        if y.size:
            level = float(np.median(y))
    return {"additive": {"ADD": (0.2 * level) ** 2}, "proportional": {"PROP": 0.04},
            "combined": {"ADD": (0.1 * level) ** 2, "PROP": 0.04},
            "combined_sd": {"ADD": (0.1 * level) ** 2, "PROP": 0.04}, "exponential": {"EXP": 0.04}}[kind]


def build_model(name: str, data=None, *, error: str | ResidualError = "combined",
                iiv: Sequence[str] | None = None, iov: Sequence[str] = (), omega_init: float = 0.1,
                full_omega: bool = False, init: Mapping[str, float] | None = None,
                sigma_init: Mapping[str, float] | None = None) -> NLMEModel:
    """A built-in NLME model with log-normal individual parameters.

    Parameters
    ----------
    name : str
        One of :data:`LIBRARY`.
    data : Dataset, optional
        Data to derive initial estimates from (see :func:`initial_estimates`).
    error : str or ResidualError
        ``additive``, ``proportional``, ``combined``, ``combined_sd`` or ``exponential``.
    iiv : sequence of str, optional
        Parameters with inter-individual variability (default :data:`DEFAULT_IIV`).
    iov : sequence of str
        Parameters with inter-occasion variability (data read with ``occasion=``).
    omega_init : float
        Initial variance of every random effect.
    full_omega : bool
        One full Ω block over all IIV effects instead of a diagonal Ω.
    init : dict, optional
        Initial θ overriding the data-derived ones.
    sigma_init : dict, optional
        Initial σ² by name (``ADD``, ``PROP``, ``EXP``).

    Examples
    --------
    >>> model = build_model("1cmt_oral", error="additive", iiv=("KA", "CL"))
    >>> model.parameter_set.names
    ('KA', 'CL', 'V', 'OMEGA(KA)', 'OMEGA(CL)', 'SIGMA(ADD)')
    """
    if name not in LIBRARY:
        raise ModelError(f"unknown model {name!r}; built-in NLME models are {', '.join(LIBRARY)}")
    structural = get_model(name)
    theta0 = initial_estimates(name, data)
    for key, value in dict(init or {}).items():
        if key not in structural.parameter_names:
            raise ModelError(f"init names {key!r}, not a parameter of {name} ({', '.join(structural.parameter_names)})")
        theta0[key] = float(value)
    iiv = tuple(DEFAULT_IIV[name] if iiv is None else iiv)
    for group, label in ((iiv, "iiv"), (tuple(iov), "iov")):
        bad = [p for p in group if p not in structural.parameter_names]
        if bad:
            raise ModelError(f"{label} names {bad}, not parameters of {name} ({', '.join(structural.parameter_names)})")
    if isinstance(error, ResidualError):
        err = error
    else:
        if error not in ERROR_MODELS:
            raise ModelError(f"unknown error model {error!r}; choose one of {', '.join(ERROR_MODELS)}")
        sig = _default_sigma(error, data)
        sig.update({k.upper(): v for k, v in dict(sigma_init or {}).items()})
        err = ResidualError(error, sig)
    thetas = [Theta(p, theta0[p], lower=0.0) for p in structural.parameter_names]
    if full_omega and len(iiv) > 1:
        omega = [OmegaBlock(iiv, np.eye(len(iiv)) * omega_init)]
    else:
        omega = [OmegaBlock([p], [omega_init]) for p in iiv]
    iov_blocks = [OmegaBlock([f"IOV_{p}"], [omega_init / 2]) for p in iov]
    model = NLMEModel(structural, theta=thetas, omega=omega, error=err, iov=iov_blocks or None,
                      name=f"{name} ({err.kind} error; IIV on {', '.join(iiv) or 'none'}"
                           f"{'; IOV on ' + ', '.join(iov) if iov else ''})")
    if not isinstance(error, ResidualError):
        model.recipe = {"library": name, "error": error, "iiv": list(iiv), "iov": list(iov),
                        "omega_init": float(omega_init), "full_omega": bool(full_omega),
                        "init": {k: float(v) for k, v in dict(init or {}).items()},
                        "sigma_init": {k: float(v) for k, v in dict(sigma_init or {}).items()}}
    return model


