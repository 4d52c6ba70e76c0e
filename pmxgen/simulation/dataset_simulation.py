"""Simulate a population dataset with known truth: log-normal IIV and combined residual error.

:func:`simulate_dataset` draws random effects η (log-normal inter-individual variability),
forms individual parameters, predicts with a structural model for every subject at once,
and adds residual error. The result keeps the truth (θ, Ω, σ) next to the data so that
estimators can be checked against it.

Random numbers
--------------
All draws come from one :class:`torch.Generator` seeded with ``seed`` on the data's
device, in this order: η ``[N, K]`` standard normals, proportional ε ``[N, J]``, additive ε
``[N, J]`` (``J`` the padded observation count). The same seed, design and device give
identical data; a different device (CPU vs CUDA) gives different numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ModelError
from ..structural.base import DOSE_PARAMETER

__all__ = ["simulate_dataset", "SimulatedData", "IndividualModel"]

#: ``individual(theta, eta, covariates) -> {parameter: [N] tensor}``.
IndividualModel = Callable[[dict, dict, dict], Mapping[str, torch.Tensor]]
_ERROR_KEYS = ("additive", "proportional")


@dataclass(frozen=True)
class SimulatedData:
    """A simulated dataset and the truth that generated it.

    Attributes
    ----------
    dataset : Dataset
        The design with simulated DVs on the observation records.
    eta : pandas.DataFrame
        Column ``ID`` and one column per random effect (η, on the log scale).
    individual : pandas.DataFrame
        Column ``ID`` and one column per individual parameter.
    ipred : torch.Tensor
        ``[N, J]`` individual predictions (error-free) at the observation records (0 on padding).
    truth : dict
        ``theta``, ``omega`` (variances by name), ``omega_matrix`` (``names``, ``matrix``),
        ``error`` (SDs), ``model`` (name) and ``seed``.
    """

    dataset: object
    eta: pd.DataFrame
    individual: pd.DataFrame
    ipred: torch.Tensor
    truth: dict = field(default_factory=dict)

    def observation_frame(self) -> pd.DataFrame:
        """The observation records with the simulated ``DV`` and the error-free ``IPRED``."""
        return self.dataset.observation_frame(self.ipred, name="IPRED")


def _read_design(design):
    from ..data import Dataset, read_nonmem
    if isinstance(design, Dataset):
        return design
    if isinstance(design, pd.DataFrame):
        return read_nonmem(design)
    raise ModelError(f"design must be a pmxgen Dataset or a pandas DataFrame (found {type(design).__name__}); "
                     f"build one with pmxgen.design_frame(...)")


def _model(model):
    from ..structural import StructuralModel, get_model
    if isinstance(model, str):
        try:
            return get_model(model)
        except KeyError as exc:
            raise ModelError(str(exc.args[0])) from None
    if not isinstance(model, StructuralModel):
        raise ModelError(f"model must be a structural model or a built-in model name (found {type(model).__name__})")
    return model


def _check_number(name: str, value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ModelError(f"{what} {name!r} must be a number (found {value!r})") from None
    if not math.isfinite(v):
        raise ModelError(f"{what} {name!r} must be finite (found {v})")
    return v


def _omega(omega) -> tuple[list[str], np.ndarray, bool]:
    """(names, covariance matrix, given as matrix?) from a dict of variances or a (names, matrix) pair."""
    if omega is None:
        return [], np.zeros((0, 0)), False
    if isinstance(omega, Mapping):
        names = [str(k) for k in omega]
        var = np.array([_check_number(k, v, "omega variance of") for k, v in omega.items()], dtype=np.float64)
        negative = [k for k, v in zip(names, var) if v < 0]
        if negative:
            raise ModelError(f"omega variances must be >= 0; negative for {', '.join(negative)} "
                             f"({', '.join(f'{v:g}' for v in var[var < 0])}). Give variances (SD squared) of "
                             f"the log-normal IIV")
        return names, np.diag(var), False
    if isinstance(omega, (tuple, list)) and len(omega) == 2:
        names = [str(n) for n in omega[0]]
        matrix = np.asarray(omega[1], dtype=np.float64)
        k = len(names)
        if len(set(names)) != k:
            raise ModelError(f"omega names repeat a name: {names}")
        if matrix.shape != (k, k):
            raise ModelError(f"omega matrix has shape {matrix.shape}, expected ({k}, {k}) for names {names}")
        if not np.isfinite(matrix).all():
            raise ModelError("omega matrix has non-finite entries")
        if not np.allclose(matrix, matrix.T, rtol=1e-12, atol=1e-14):
            i, j = np.unravel_index(np.argmax(np.abs(matrix - matrix.T)), matrix.shape)
            raise ModelError(f"omega matrix is not symmetric: [{names[i]}, {names[j]}] = {matrix[i, j]:g} but "
                             f"[{names[j]}, {names[i]}] = {matrix[j, i]:g}")
        negative = [n for n, v in zip(names, np.diag(matrix)) if v < 0]
        if negative:
            raise ModelError(f"omega variances must be >= 0; negative on the diagonal for {', '.join(negative)}")
        return names, 0.5 * (matrix + matrix.T), True
    raise ModelError("omega must be a dict name -> variance, or a pair (names, covariance matrix)")


def _cholesky(names: list[str], matrix: np.ndarray, dtype, device) -> torch.Tensor:
    """Lower Cholesky factor; effects with zero variance (and zero covariances) get a zero row."""
    k = len(names)
    cov = torch.as_tensor(matrix, dtype=dtype, device=device)
    if k == 0:
        return cov
    diag = torch.diagonal(cov)
    zero = diag == 0
    bad = [names[i] for i in torch.nonzero(zero).flatten().tolist() if float(cov[i].abs().sum()) > 0]
    if bad:
        raise ModelError(f"omega matrix is not positive semi-definite: {', '.join(bad)} have zero variance "
                         f"but non-zero covariances")
    keep = torch.nonzero(~zero).flatten()
    chol = torch.zeros_like(cov)
    if len(keep):
        sub = cov[keep][:, keep]
        lower, info = torch.linalg.cholesky_ex(sub)
        if int(info) != 0:
            failing = names[int(keep[int(info) - 1])]
            eig = torch.linalg.eigvalsh(sub)
            raise ModelError(f"omega matrix is not positive definite: it fails at {failing} (leading minor of order "
                             f"{int(info)} over {', '.join(names[i] for i in keep.tolist())}); smallest eigenvalue "
                             f"{float(eig.min()):.3g}. Check the covariances (|correlations| must be < 1 and "
                             f"jointly consistent)")
        chol[keep.unsqueeze(1), keep.unsqueeze(0)] = lower
    return chol


def _error(error) -> dict[str, float]:
    if error is None:
        return {}
    if not isinstance(error, Mapping):
        raise ModelError("error must be a dict with keys 'additive' and/or 'proportional' (standard deviations)")
    unknown = [k for k in error if k not in _ERROR_KEYS]
    if unknown:
        raise ModelError(f"unknown residual error keys {unknown}; use 'additive' and/or 'proportional' (SDs)")
    out = {k: _check_number(k, v, "error SD") for k, v in error.items()}
    negative = [k for k, v in out.items() if v < 0]
    if negative:
        raise ModelError(f"residual error SDs must be >= 0; negative for {', '.join(negative)}")
    return out


def _default_individual(theta: dict, eta: dict, covariates: dict) -> dict:
    return {name: value * torch.exp(eta[name]) if name in eta else value for name, value in theta.items()}


def simulate_dataset(model, design, *, theta: Mapping[str, float],
                     omega: Mapping[str, float] | tuple[Sequence[str], np.ndarray] | None = None,
                     error: Mapping[str, float] | None = None, individual: IndividualModel | None = None,
                     seed: int = 0, lower_bound: float | None = None) -> SimulatedData:
    """Simulate observations for a design with log-normal IIV and combined residual error.

    Parameters
    ----------
    model : StructuralModel or str
        A structural model, or the name of a built-in one (see :func:`pmxgen.get_model`).
    design : Dataset or pandas.DataFrame
        The records (doses, sample times, covariates), e.g. from :func:`design_frame`;
        a DataFrame is read with :func:`pmxgen.read_nonmem`. Its DVs are replaced.
    theta : dict
        Typical values (population parameters) by name.
    omega : dict or (names, matrix), optional
        Variances of the random effects η ~ N(0, Ω) by name, or a pair (names, full
        covariance matrix). With the default ``individual``, the names are parameters of
        ``theta`` and ``P_i = θ_P exp(η_P)``; parameters absent from ``omega`` have no IIV.
    error : dict, optional
        Residual error SDs: ``'additive'`` and/or ``'proportional'``. The observation is
        ``y = f + f ε_prop + ε_add`` with independent ε_prop ~ N(0, prop²), ε_add ~ N(0, add²),
        i.e. variance ``(prop f)² + add²``. No error when absent.
    individual : callable, optional
        ``individual(theta, eta, covariates) -> {parameter: [N] tensor}`` with ``theta`` a dict
        of 0-d tensors, ``eta`` a dict of ``[N]`` tensors (one per name in ``omega``) and
        ``covariates`` a dict of ``[N]`` tensors (each subject's first-record value, by column
        name). Default: ``P_i = θ_P · exp(η_P)`` for every P in ``theta``.
    seed : int
        Seed of the :class:`torch.Generator`: the same seed, design and device give identical data.
    lower_bound : float, optional
        Simulated DVs below it are set to it (e.g. 0 to avoid negative concentrations).

    Returns
    -------
    SimulatedData

    Raises
    ------
    ModelError
        For parameter names the model does not know, a missing model parameter, omega names
        not in ``theta`` (default ``individual``), negative variances or SDs, a non-symmetric or
        non-positive-definite omega matrix, or non-finite individual parameters or predictions.

    Examples
    --------
    >>> import pmxgen
    >>> design = pmxgen.design_frame(50, doses=[{"time": 0, "amt": 100}], obs_times=[0.5, 1, 2, 4, 8, 12],
    ...                              obs_cmt=2)
    >>> sim = pmxgen.simulate_dataset("1cmt_oral", design, theta={"KA": 1.0, "CL": 4.0, "V": 30.0},
    ...                               omega={"CL": 0.09, "V": 0.04}, error={"proportional": 0.1}, seed=1)
    >>> sim.dataset.n_subjects, sim.ipred.shape, list(sim.eta.columns)
    (50, torch.Size([50, 6]), ['ID', 'CL', 'V'])
    >>> again = pmxgen.simulate_dataset("1cmt_oral", design, theta={"KA": 1.0, "CL": 4.0, "V": 30.0},
    ...                                 omega={"CL": 0.09, "V": 0.04}, error={"proportional": 0.1}, seed=1)
    >>> bool((again.dataset.batch.obs.dv == sim.dataset.batch.obs.dv).all())
    True
    """
    model = _model(model)
    data = _read_design(design)
    batch = data.batch
    dtype, device = batch.dtype, batch.device
    if not isinstance(theta, Mapping) or not theta:
        raise ModelError("theta must be a non-empty dict name -> typical value")
    theta_f = {str(k): _check_number(k, v, "theta") for k, v in theta.items()}
    names, matrix, as_matrix = _omega(omega)
    err = _error(error)
    if lower_bound is not None:
        lower_bound = _check_number("lower_bound", lower_bound, "the")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ModelError(f"seed must be an integer (found {seed!r})")

    if individual is None:
        unknown = [k for k in theta_f if k not in model.parameters and not DOSE_PARAMETER.match(k)]
        if unknown:
            raise ModelError(f"theta has parameters {', '.join(unknown)} that model {model.name} does not use; its "
                             f"parameters are {', '.join(model.parameters)} (plus F1, ALAG1, ... for doses). For "
                             f"covariate effects or other parameters, pass individual=...")
        missing = [p for p in model.parameters if p not in theta_f]
        if missing:
            raise ModelError(f"theta lacks parameters {', '.join(missing)} of model {model.name} "
                             f"(it needs {', '.join(model.parameters)})")
        not_positive = [k for k, v in theta_f.items() if v <= 0]
        if not_positive:
            raise ModelError(f"theta must be > 0 for log-normal individual parameters; found "
                             f"{', '.join(f'{k}={theta_f[k]:g}' for k in not_positive)}")
        stray = [k for k in names if k not in theta_f]
        if stray:
            raise ModelError(f"omega names {', '.join(stray)} are not parameters in theta "
                             f"({', '.join(theta_f)}); with the default individual model each η_P scales θ_P")
        individual = _default_individual
    elif not callable(individual):
        raise ModelError("individual must be a callable (theta, eta, covariates) -> dict of [N] tensors")

    n = batch.n_subjects
    model.check_dataset(data)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    chol = _cholesky(names, matrix, dtype, device)
    z = torch.randn(n, len(names), generator=gen, dtype=dtype, device=device)
    eta_mat = z @ chol.T
    eta = {name: eta_mat[:, k] for k, name in enumerate(names)}
    theta_t = {k: torch.tensor(v, dtype=dtype, device=device) for k, v in theta_f.items()}
    covariates = {name: batch.baseline[:, k] for k, name in enumerate(batch.covariate_names)}

    raw = individual(theta_t, eta, covariates)
    if not isinstance(raw, Mapping):
        raise ModelError(f"individual(...) must return a dict name -> [N] tensor (returned {type(raw).__name__})")
    params: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        t = torch.as_tensor(v, dtype=dtype, device=device)
        if t.dim() == 0:
            t = t.expand(n).clone()
        if t.shape != (n,):
            raise ModelError(f"individual parameter {k} has shape {tuple(t.shape)}; expected ({n},), one per subject")
        if not bool(torch.isfinite(t).all()):
            bad = int(torch.nonzero(~torch.isfinite(t)).flatten()[0])
            raise ModelError(f"individual parameter {k} is not finite for subject {data.ids[bad]}")
        params[str(k)] = t
    missing = [p for p in model.parameters if p not in params]
    if missing:
        raise ModelError(f"individual(...) returned no {', '.join(missing)}; model {model.name} needs "
                         f"{', '.join(model.parameters)}")

    with torch.no_grad():
        ipred = model.predict(params, batch)
    mask = batch.obs.mask
    if not bool(torch.isfinite(ipred[mask]).all()):
        raise ModelError(f"model {model.name} gave non-finite predictions; check theta and omega")
    eps_prop = torch.randn(ipred.shape, generator=gen, dtype=dtype, device=device) * err.get("proportional", 0.0)
    eps_add = torch.randn(ipred.shape, generator=gen, dtype=dtype, device=device) * err.get("additive", 0.0)
    dv = ipred + ipred * eps_prop + eps_add
    if lower_bound is not None:
        dv = torch.clamp(dv, min=lower_bound)
    dv = torch.where(mask, dv, torch.zeros_like(dv))
    ipred = torch.where(mask, ipred, torch.zeros_like(ipred))
    simulated = data.with_dv(dv)

    ids = data.ids
    eta_frame = pd.DataFrame({"ID": ids, **{k: v.detach().cpu().numpy() for k, v in eta.items()}})
    ind_frame = pd.DataFrame({"ID": ids, **{k: v.detach().cpu().numpy() for k, v in params.items()}})
    truth = {
        "theta": dict(theta_f),
        "omega": {k: float(matrix[i, i]) for i, k in enumerate(names)},
        "omega_matrix": {"names": list(names), "matrix": matrix.tolist()} if as_matrix else None,
        "error": dict(err),
        "model": model.name,
        "seed": int(seed),
    }
    return SimulatedData(dataset=simulated, eta=eta_frame, individual=ind_frame, ipred=ipred, truth=truth)
