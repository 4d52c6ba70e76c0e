"""Simulate a population dataset with known truth, through the population-model contract.

:func:`simulate_dataset` simulates a study design from a :class:`~pmxgen.models.PopulationModel`:
the random effects come from ``model.sample_eta(values, batch, generator)`` and the observations
from ``model.sample_y(eta, values, batch, generator)``, so simulated data follow exactly the
model that the estimators fit (for an :class:`~pmxgen.models.NLMEModel`, the residual error of
:class:`~pmxgen.models.ResidualError`, the code behind its likelihood). The model is either

* built from a structural model, typical values θ, variances Ω of log-normal inter-individual
  variability and residual error SDs: the equivalent ``NLMEModel`` (``P_i = θ_P exp(η_P)`` or a
  custom individual model; the SDs ``additive`` / ``proportional`` become the σ² of the
  ``additive``, ``proportional`` or ``combined`` error model), or
* any population model (``NLMEModel``, ``PPCAModel``, ...), at its initial values or at given
  values (e.g. a fit's estimates).

The result keeps the truth next to the data so that estimators can be checked against it.

Random numbers
--------------
All draws come from one :class:`torch.Generator` seeded with ``seed`` on the data's device:
first ``sample_eta`` (``[N, K]`` standard normals times the Cholesky factor of Ω), then
``sample_y`` (for an NLME model one ``[N, J]`` standard normal array, ``J`` the padded
observation count; two for combined error, proportional ε₁ then additive ε₂). The same seed,
model, values, design and device give identical data; a different device (CPU vs CUDA) gives
different numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ModelError
from ..models.base import PopulationModel
from ..models.nlme import IndividualModel, NLMEModel
from ..models.parameter_set import OmegaBlock, PopulationValues, Theta
from ..models.residual_error import ResidualError
from ..structural.base import DOSE_PARAMETER

__all__ = ["simulate_dataset", "SimulatedData", "IndividualModel"]

_ERROR_KEYS = ("additive", "proportional")


@dataclass(frozen=True)
class SimulatedData:
    """A simulated dataset and the truth that generated it.

    Attributes
    ----------
    dataset : Dataset
        The design with simulated DVs on the observation records.
    eta : pandas.DataFrame
        Column ``ID`` and one column per random effect (η; for the log-normal IIV of
        :func:`simulate_dataset`'s structural-model form, on the log scale).
    individual : pandas.DataFrame
        Column ``ID`` and one column per individual parameter (NLME models; ``P[occ k]`` per
        occasion with IOV); only ``ID`` for models without individual parameters (PPCA).
    ipred : torch.Tensor
        ``[N, J]`` individual predictions (error-free) at the observation records (0 on padding).
    truth : dict
        ``theta``, ``omega`` (variances by η name), ``omega_matrix`` (``names``, ``matrix``; None
        for a diagonal Ω given as a dict), ``sigma`` (σ², variance scale, by name), ``error``
        (the SDs given, structural-model form; None otherwise), ``error_model`` (the residual
        error model's kind), ``model`` (name) and ``seed``.
    model : PopulationModel
        The population model simulated (built from the specs in the structural-model form).
    values : PopulationValues
        The parameter values simulated, as the model computes with them.
    """

    dataset: object
    eta: pd.DataFrame
    individual: pd.DataFrame
    ipred: torch.Tensor
    truth: dict = field(default_factory=dict)
    model: PopulationModel | None = None
    values: PopulationValues | None = None

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


def _structural(model):
    from ..structural import StructuralModel, get_model
    if isinstance(model, str):
        try:
            return get_model(model)
        except KeyError as exc:
            raise ModelError(str(exc.args[0])) from None
    if not isinstance(model, StructuralModel):
        raise ModelError(f"model must be a population model (e.g. NLMEModel), a structural model or a built-in "
                         f"model name (found {type(model).__name__})")
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


def _nonzero_effects(names: list[str], matrix: np.ndarray) -> list[int]:
    """Indices of the effects with non-zero variance; raises unless Ω is positive semi-definite that way.

    An effect with zero variance (and zero covariances) has no variability: η = 0. The others
    must form a positive definite matrix.
    """
    cov = torch.as_tensor(matrix, dtype=torch.float64)
    if not names:
        return []
    zero = torch.diagonal(cov) == 0
    bad = [names[i] for i in torch.nonzero(zero).flatten().tolist() if float(cov[i].abs().sum()) > 0]
    if bad:
        raise ModelError(f"omega matrix is not positive semi-definite: {', '.join(bad)} have zero variance "
                         f"but non-zero covariances")
    keep = torch.nonzero(~zero).flatten()
    if len(keep):
        sub = cov[keep][:, keep]
        _, info = torch.linalg.cholesky_ex(sub)
        if int(info) != 0:
            failing = names[int(keep[int(info) - 1])]
            eig = torch.linalg.eigvalsh(sub)
            raise ModelError(f"omega matrix is not positive definite: it fails at {failing} (leading minor of order "
                             f"{int(info)} over {', '.join(names[i] for i in keep.tolist())}); smallest eigenvalue "
                             f"{float(eig.min()):.3g}. Check the covariances (|correlations| must be < 1 and "
                             f"jointly consistent)")
    return keep.tolist()


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


def _error_model(err: Mapping[str, float]) -> tuple[str, dict[str, float]]:
    """The residual error model (kind, σ² by name) of error SDs ``additive`` / ``proportional``.

    ``y = f + f ε_prop + ε_add`` with SDs ``prop`` and ``add`` is the ``combined`` model (variance
    sum) with σ²_PROP = prop², σ²_ADD = add²; a zero SD drops its term (``proportional`` or
    ``additive`` alone); no error at all is ``additive`` with σ²_ADD = 0.
    """
    add, prop = err.get("additive", 0.0), err.get("proportional", 0.0)
    if add > 0 and prop > 0:
        return "combined", {"ADD": add * add, "PROP": prop * prop}
    if prop > 0:
        return "proportional", {"PROP": prop * prop}
    return "additive", {"ADD": add * add}


def _log_normal(theta: Mapping[str, torch.Tensor], eta: Mapping[str, torch.Tensor], covariates) -> dict:
    """``P_i = θ_P exp(η_P)`` for every θ (η_P absent: no variability), dose parameters (F1, ALAG1) included."""
    return {name: value * torch.exp(eta[name]) if name in eta else value for name, value in theta.items()}


def _with_zero_effects(individual: IndividualModel, names: Sequence[str]) -> IndividualModel:
    """``individual`` with η = 0 added for the effects ``names`` (zero variance, so not in the model's Ω)."""
    names = tuple(names)

    def wrapped(theta, eta, covariates):
        zero = next(iter(theta.values())).new_zeros(())
        return individual(theta, {**{n: zero for n in names}, **eta}, covariates)

    return wrapped


def _model_from_specs(structural, theta, omega, error, individual, dtype, device):
    """The NLMEModel, its values, η column names and truth of the structural-model form."""
    if not isinstance(theta, Mapping) or not theta:
        raise ModelError("theta must be a non-empty dict name -> typical value")
    theta_f = {str(k): _check_number(k, v, "theta") for k, v in theta.items()}
    names, matrix, as_matrix = _omega(omega)
    err = _error(error)
    custom = individual is not None
    if not custom:
        unknown = [k for k in theta_f if k not in structural.parameter_names and not DOSE_PARAMETER.match(k)]
        if unknown:
            raise ModelError(f"theta has parameters {', '.join(unknown)} that model {structural.name} does not use; "
                             f"its parameters are {', '.join(structural.parameter_names)} (plus F1, ALAG1, ... for doses). "
                             f"For covariate effects or other parameters, pass individual=...")
        missing = [p for p in structural.parameter_names if p not in theta_f]
        if missing:
            raise ModelError(f"theta lacks parameters {', '.join(missing)} of model {structural.name} "
                             f"(it needs {', '.join(structural.parameter_names)})")
        not_positive = [k for k, v in theta_f.items() if v <= 0]
        if not_positive:
            raise ModelError(f"theta must be > 0 for log-normal individual parameters; found "
                             f"{', '.join(f'{k}={theta_f[k]:g}' for k in not_positive)}")
        stray = [k for k in names if k not in theta_f]
        if stray:
            raise ModelError(f"omega names {', '.join(stray)} are not parameters in theta "
                             f"({', '.join(theta_f)}); with the default individual model each η_P scales θ_P")
    elif not callable(individual):
        raise ModelError("individual must be a callable (theta, eta, covariates) -> dict of [N] tensors")

    keep = _nonzero_effects(names, matrix)
    kept = [names[i] for i in keep]
    sub = matrix[np.ix_(keep, keep)]
    zero_names = [n for n in names if n not in kept]
    if not kept:
        omega_spec = None
    elif as_matrix:
        omega_spec = OmegaBlock(kept, sub)
    else:
        omega_spec = {n: float(sub[i, i]) for i, n in enumerate(kept)}
    kind, sigma2 = _error_model(err)
    # A ParameterSet holds σ² > 0 only: without error, the model's initial σ² is a placeholder and
    # the simulated σ² = 0 is in `values`.
    residual = ResidualError(kind, sigma2 if all(v > 0 for v in sigma2.values()) else None)
    if custom:
        thetas = [Theta(k, v) for k, v in theta_f.items()]
        function = _with_zero_effects(individual, zero_names) if zero_names else individual
    else:
        thetas = [Theta(k, v, lower=0.0) for k, v in theta_f.items()]
        # NLMEModel's own default individual model puts η on structural parameters only.
        function = _log_normal if any(DOSE_PARAMETER.match(n) for n in kept) else None
    model = NLMEModel(structural, theta=thetas, omega=omega_spec, error=residual, individual=function,
                      name=structural.name)
    values = PopulationValues(
        theta={k: torch.tensor(v, dtype=dtype, device=device) for k, v in theta_f.items()},
        omega=torch.as_tensor(sub, dtype=dtype, device=device).reshape(len(kept), len(kept)),
        sigma={k: torch.tensor(v, dtype=dtype, device=device) for k, v in sigma2.items()})
    truth = {
        "theta": dict(theta_f),
        "omega": {k: float(matrix[i, i]) for i, k in enumerate(names)},
        "omega_matrix": {"names": list(names), "matrix": matrix.tolist()} if as_matrix else None,
        "sigma": dict(sigma2),
        "error": dict(err),
        "error_model": kind,
        "model": structural.name,
    }
    return model, values, list(names), truth


def _model_values(model: PopulationModel, values, dtype, device) -> PopulationValues:
    """The values to simulate a population model at: its initial ones, updated ones, or given ones."""
    if values is None or isinstance(values, Mapping):
        ps = model.parameter_set
        if values:
            ps = ps.with_initial({str(k): _check_number(k, v, "the value of") for k, v in values.items()})
        return ps.unpack(ps.initial_natural(dtype=dtype, device=device))
    if isinstance(values, PopulationValues):
        def to(v):
            return torch.as_tensor(v, dtype=dtype, device=device)
        return PopulationValues(theta={k: to(v) for k, v in values.theta.items()}, omega=to(values.omega),
                                sigma={k: to(v) for k, v in values.sigma.items()})
    raise ModelError(f"values must be None (the model's initial values), a dict name -> value on the natural "
                     f"scale (e.g. fit.estimates) or a PopulationValues (found {type(values).__name__})")


def _number(t: torch.Tensor):
    """A float (0-d tensor) or nested list (per-subject values) for the truth dict."""
    return t.detach().cpu().tolist()


def _model_truth(model: PopulationModel, values: PopulationValues) -> dict:
    omega = values.omega.detach().cpu()
    names = list(model.parameter_set.eta_names)
    if len(names) != omega.shape[-1]:
        names = [f"ETA{k + 1}" for k in range(omega.shape[-1])]
    error = getattr(model, "error", None)
    return {
        "theta": {k: _number(v) for k, v in values.theta.items()},
        "omega": {n: _number(omega[..., k, k]) for k, n in enumerate(names)},
        "omega_matrix": {"names": names, "matrix": omega.tolist()},
        "sigma": {k: _number(v) for k, v in values.sigma.items()},
        "error": None,
        "error_model": getattr(error, "kind", None),
        "model": model.name,
    }


def _individual_frame(model: PopulationModel, eta: torch.Tensor, values: PopulationValues, data) -> pd.DataFrame:
    """Individual parameters by subject (NLME models; per occasion with IOV); raises where not finite."""
    batch = data.batch
    columns: dict[str, np.ndarray] = {"ID": data.ids}
    if not isinstance(model, NLMEModel):
        return pd.DataFrame(columns)
    occasions = range(model.n_occasions(batch)) if model.iov_names else [None]
    for o in occasions:
        for k, v in model.individual_parameters(eta, values, batch, occasion=o).items():
            if not bool(torch.isfinite(v).all()):
                bad = int(torch.nonzero(~torch.isfinite(v)).flatten()[0])
                raise ModelError(f"individual parameter {k} is not finite for subject {data.ids[bad]}")
            columns[k if o is None else f"{k}[occ {o + 1}]"] = v.detach().cpu().numpy().copy()
    return pd.DataFrame(columns)


def simulate_dataset(model, design, *, theta: Mapping[str, float] | None = None,
                     omega: Mapping[str, float] | tuple[Sequence[str], np.ndarray] | None = None,
                     error: Mapping[str, float] | None = None, individual: IndividualModel | None = None,
                     values: PopulationValues | Mapping[str, float] | None = None, seed: int = 0,
                     lower_bound: float | None = None) -> SimulatedData:
    """Simulate observations for a design from a population model.

    η is drawn by ``model.sample_eta`` and the observations by ``model.sample_y`` (see the
    module docstring for the order of the random numbers). Give either a population model
    (with ``values``), or a structural model with ``theta``, ``omega``, ``error`` and
    ``individual``: the equivalent :class:`~pmxgen.models.NLMEModel` is built and simulated.

    Parameters
    ----------
    model : PopulationModel, StructuralModel or str
        A population model (e.g. :class:`~pmxgen.models.NLMEModel`,
        :class:`~pmxgen.models.PPCAModel`), a structural model, or the name of a built-in one
        (see :func:`pmxgen.get_model`).
    design : Dataset or pandas.DataFrame
        The records (doses, sample times, covariates), e.g. from :func:`design_frame`;
        a DataFrame is read with :func:`pmxgen.read_nonmem`. Its DVs are replaced.
    theta : dict
        Structural model only (required): typical values (population parameters) by name.
    omega : dict or (names, matrix), optional
        Structural model only: variances of the random effects η ~ N(0, Ω) by name, or a pair
        (names, full covariance matrix). With the default ``individual``, the names are
        parameters of ``theta`` and ``P_i = θ_P exp(η_P)``; parameters absent from ``omega``
        have no IIV. A zero variance (with zero covariances) means η = 0 for that effect.
    error : dict, optional
        Structural model only: residual error SDs, ``'additive'`` and/or ``'proportional'``.
        The observation is ``y = f + f ε_prop + ε_add`` with independent ε_prop ~ N(0, prop²),
        ε_add ~ N(0, add²), i.e. variance ``(prop f)² + add²``: the ``combined`` error model
        with σ²_PROP = prop², σ²_ADD = add² (``proportional`` or ``additive`` when one SD is 0
        or absent). No error when absent.
    individual : callable, optional
        Structural model only: ``individual(theta, eta, covariates) -> {parameter: [N] tensor}``
        with ``theta`` a dict of 0-d tensors, ``eta`` a dict of ``[N]`` tensors (one per name in
        ``omega``; 0-d zeros for zero variances) and ``covariates`` a dict of ``[N]`` tensors
        (each subject's first-record value, by column name). Default: ``P_i = θ_P · exp(η_P)``
        for every P in ``theta``.
    values : PopulationValues or dict, optional
        Population model only: the parameter values to simulate at; a dict maps parameter names
        (as ``model.parameter_set.all_names``, natural scale, Ω and σ as variances, e.g.
        ``fit.estimates``) to values and keeps the model's initial values for the others.
        Default: the model's initial values.
    seed : int
        Seed of the :class:`torch.Generator`: the same seed, model, design and device give
        identical data.
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
        non-positive-definite omega matrix, non-finite individual parameters or predictions,
        or arguments of one form given with the other.

    Notes
    -----
    For the structural-model form, the data of a seed are those of pmxgen's earlier
    implementation of this function (which drew η, then proportional ε, then additive ε) for
    combined and proportional error, up to rounding; with additive error alone they differ (ε
    is now the first array drawn after η, it was the second), as they do where Ω has a zero
    variance (η is drawn for the other effects only).

    Examples
    --------
    >>> import pmxgen, torch
    >>> design = pmxgen.design_frame(50, doses=[{"time": 0, "amt": 100}], obs_times=[0.5, 1, 2, 4, 8, 12],
    ...                              obs_cmt=2)
    >>> sim = pmxgen.simulate_dataset("1cmt_oral", design, theta={"KA": 1.0, "CL": 4.0, "V": 30.0},
    ...                               omega={"CL": 0.09, "V": 0.04}, error={"proportional": 0.1}, seed=1)
    >>> sim.dataset.n_subjects, sim.ipred.shape, list(sim.eta.columns)
    (50, torch.Size([50, 6]), ['ID', 'CL', 'V'])
    >>> sim.model.error.kind, sim.truth["sigma"]                 # the SD 0.1 is σ²_PROP = 0.01
    ('proportional', {'PROP': 0.010000000000000002})
    >>> again = pmxgen.simulate_dataset("1cmt_oral", design, theta={"KA": 1.0, "CL": 4.0, "V": 30.0},
    ...                                 omega={"CL": 0.09, "V": 0.04}, error={"proportional": 0.1}, seed=1)
    >>> bool((again.dataset.batch.obs.dv == sim.dataset.batch.obs.dv).all())
    True

    A population model directly, here at other values than its initial ones; the draws are
    those of ``sample_eta`` and ``sample_y`` with a generator seeded alike:

    >>> model = pmxgen.build_model("1cmt_oral", sim.dataset, error="combined", iiv=("KA", "CL"))
    >>> sim2 = pmxgen.simulate_dataset(model, design, values={"CL": 4.0, "OMEGA(CL)": 0.09}, seed=2)
    >>> batch, gen = sim2.dataset.batch, torch.Generator().manual_seed(2)
    >>> eta = model.sample_eta(sim2.values, batch, gen)
    >>> bool(torch.equal(model.sample_y(eta, sim2.values, batch, gen), batch.obs.dv))
    True
    """
    data = _read_design(design)
    batch = data.batch
    dtype, device = batch.dtype, batch.device
    if lower_bound is not None:
        lower_bound = _check_number("lower_bound", lower_bound, "the")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ModelError(f"seed must be an integer (found {seed!r})")

    if isinstance(model, PopulationModel):
        given = [k for k, v in (("theta", theta), ("omega", omega), ("error", error), ("individual", individual))
                 if v is not None]
        if given:
            raise ModelError(f"{', '.join(given)} describe a structural model; for the population model "
                             f"{model.name} give its parameter values with values=... (default: its initial values)")
        population = model
        pop_values = _model_values(model, values, dtype, device)
        eta_columns = list(model.eta_names(batch))
        truth = _model_truth(model, pop_values)
        if isinstance(model, NLMEModel):
            model.structural.check_dataset(data)
    else:
        structural = _structural(model)
        if values is not None:
            raise ModelError("values= is for a population model; with a structural model give theta=, omega=, "
                             "error= (and individual=)")
        population, pop_values, eta_columns, truth = _model_from_specs(structural, theta, omega, error, individual,
                                                                       dtype, device)
        structural.check_dataset(data)
    truth["seed"] = int(seed)

    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    mask = batch.obs.mask
    with torch.no_grad():
        eta = population.sample_eta(pop_values, batch, gen)
        individual_frame = _individual_frame(population, eta, pop_values, data)
        ipred = population.predict(eta, pop_values, batch)
        if not bool(torch.isfinite(ipred[mask]).all()):
            raise ModelError(f"model {population.name} gave non-finite predictions; check the parameter values")
        dv = population.sample_y(eta, pop_values, batch, gen)
    if lower_bound is not None:
        dv = torch.clamp(dv, min=lower_bound)
    dv = torch.where(mask, dv, torch.zeros_like(dv))
    ipred = torch.where(mask, ipred, torch.zeros_like(ipred))

    sampled = list(population.eta_names(batch))
    eta_frame = pd.DataFrame({"ID": data.ids, **{
        name: (eta[:, sampled.index(name)].detach().cpu().numpy() if name in sampled
               else np.zeros(batch.n_subjects)) for name in eta_columns}})
    return SimulatedData(dataset=data.with_dv(dv), eta=eta_frame, individual=individual_frame, ipred=ipred,
                         truth=truth, model=population, values=pop_values)
