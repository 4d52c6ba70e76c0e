"""A fitted model's regimens on a virtual population: each row one virtual subject with its covariates.

:func:`simulate_virtual_population` takes a table of covariates (e.g. made by ``pmxgen generate``),
gives each row its own η drawn from Ω (seeded; the same η in every regimen: common random
numbers), applies the covariate effects through the model's individual-parameter function, and
counts the probability of target attainment over everyone and per stratum (a column of the
population such as SEX, or bands of a numeric one such as age).

The covariates the model reads are found by evaluating its individual-parameter function on the
fitted data (:func:`needed_covariates`); the population must have them (a clear error names the
missing ones). Covariate columns of the fitted data that the model does not read are filled with
their median in the fitted data (listed in ``meta['filled_covariates']``).

Examples
--------
>>> import pandas as pd, pmxgen
>>> data = pmxgen.datasets.load("theophylline")
>>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
>>> fit = pmxgen.fit(model, data, method="foce", covariance=None, cpu_threads=1)
>>> needed_covariates(pmxgen.load_run(fit))   # the built-in model reads no covariate
()
>>> pop = pd.DataFrame({"SEX": ["F", "M"] * 100})
>>> res = simulate_virtual_population(fit, pop, "320 mg q12h x4", strata="SEX", targets=["cmin[last]>=2"])
>>> res.pta_by_stratum()["stratum"].tolist(), int(res.pta_by_stratum()["n"].sum())
(['F', 'M'], 200)
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import DatasetError, ModelError
from .engine import simulate_arms
from .population import _PopulationSource, arms_and_options, as_run, parameter_draws
from .regimen import Regimen, RegimenError, as_regimens
from .result import SimulationResult

__all__ = ["simulate_virtual_population", "needed_covariates", "parse_strata"]


def needed_covariates(run) -> tuple[str, ...]:
    """The fitted data's covariate columns that the model's individual-parameter function reads.

    Models without an individual-parameter function (or that do not record what they read)
    are taken to need every covariate column (example: the module docstring).
    """
    run = as_run(run)
    model, batch = run.model, run.data.batch
    names = tuple(batch.covariate_names)
    if not hasattr(model, "individual_parameters"):
        return names
    eta = torch.zeros(batch.n_subjects, len(model.eta_names(batch)), dtype=batch.dtype, device=batch.device)
    if hasattr(model, "_covariates_read"):
        del model._covariates_read
    with torch.no_grad():
        model.individual_parameters(eta, run.values, batch)
    read = getattr(model, "_covariates_read", None)
    if read is None:
        return names
    return tuple(c for c in names if c in read)


def parse_strata(population: pd.DataFrame, strata) -> tuple[str, np.ndarray, list]:
    """``(label, codes [n], levels)`` from a column name, ``"COL:cut1,cut2"`` or ``(column, [cuts])``.

    A column alone: its distinct values are the strata. With cut points: bands ``<c1``,
    ``c1-<c2``, ..., ``>=ck`` of a numeric column.

    Examples
    --------
    >>> import pandas as pd
    >>> pop = pd.DataFrame({"AGE": [20, 45, 70, 64], "SEX": ["F", "M", "F", "F"]})
    >>> parse_strata(pop, "AGE:40,65")[1:]
    (array([0, 1, 2, 1]), ['<40', '40-<65', '>=65'])
    >>> parse_strata(pop, "SEX")[1:]
    (array([0, 1, 0, 0]), ['F', 'M'])
    """
    cuts = None
    if isinstance(strata, str) and ":" in strata:
        column, _, text = strata.partition(":")
        try:
            cuts = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise RegimenError(f"strata {strata!r}: cut points must be numbers, e.g. 'AGE:40,65'") from None
    elif isinstance(strata, (tuple, list)):
        column, cuts = strata[0], [float(v) for v in strata[1]]
    else:
        column = strata
    upper = {str(c).upper(): c for c in population.columns}
    if str(column).upper() not in upper:
        raise DatasetError(f"the strata column {column!r} is not in the virtual population",
                           fix=f"use one of {list(population.columns)}")
    values = population[upper[str(column).upper()]]
    if cuts is None:
        levels = sorted(values.unique().tolist(), key=lambda v: (str(type(v)), v))
        codes = pd.Categorical(values, categories=levels).codes.astype(np.int64)
        return str(column), codes, [v.item() if isinstance(v, np.generic) else v for v in levels]
    cuts = sorted(cuts)
    if not cuts:
        raise RegimenError(f"strata {strata!r}: give at least one cut point")
    fmt = [f"{c:g}" for c in cuts]
    levels = [f"<{fmt[0]}"] + [f"{a}-<{b}" for a, b in zip(fmt[:-1], fmt[1:])] + [f">={fmt[-1]}"]
    codes = np.searchsorted(np.asarray(cuts), values.to_numpy(dtype=np.float64), side="right").astype(np.int64)
    return f"{column} band", codes, levels


def _covariate_frame(run, population: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list]:
    data = run.data
    names = tuple(data.batch.covariate_names)
    needed = needed_covariates(run)
    upper = {str(c).upper(): c for c in population.columns}
    missing = [c for c in needed if c.upper() not in upper]
    if missing:
        raise ModelError(f"the model needs the covariate(s) {missing}, which the virtual population ({source}) "
                         f"lacks; its columns are {list(population.columns)}. Generate them too, or rename "
                         f"the columns")
    baseline = data.batch.baseline.detach().cpu().numpy()
    categories = getattr(data, "categories", {}) or {}
    out, filled = {}, []
    for k, name in enumerate(names):
        if name not in needed:
            out[name] = np.full(len(population), float(np.median(baseline[:, k])) if len(baseline) else 0.0)
            filled.append(name)
            continue
        column = upper[name.upper()]
        values = population[column]
        if name in categories:
            codes = pd.Categorical(values.astype(str), categories=[str(v) for v in categories[name]]).codes
            if (codes < 0).any():
                row = int(np.flatnonzero(codes < 0)[0])
                raise DatasetError(f"value is not one of the fitted data's categories {list(categories[name])}",
                                   source=source, row=row, column=str(column), value=values.iloc[row])
            out[name] = codes.astype(np.float64)
            continue
        array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(array).all():
            row = int(np.flatnonzero(~np.isfinite(array))[0])
            raise DatasetError("covariate values must be finite numbers", source=source, row=row, column=str(column),
                               value=values.iloc[row], fix="correct or drop the row")
        out[name] = array
    return pd.DataFrame(out, columns=list(names)), filled


def simulate_virtual_population(run, population, regimens: Sequence[Regimen | str] | Regimen | str, *,
                                strata=None, seed: int = 0, replicates: int = 1, uncertainty: bool = False,
                                residual_error: bool = False, windows=None, horizon: float | None = None,
                                threshold: float | None = None, targets=(), keep_profiles: bool | int = 1000,
                                keep_exposures: bool | int = 100_000, chunk_size: int = 8192,
                                points_per_interval: int = 24, refine: bool = True, device=None,
                                dtype: torch.dtype = torch.float64) -> SimulationResult:
    """Simulate each regimen on a virtual population (one virtual subject per row).

    Parameters
    ----------
    run : Run, FitResult or path
        A fitted run (:func:`pmxgen.load_run`).
    population : DataFrame or path
        Covariates of the virtual subjects, e.g. the CSV of ``pmxgen generate`` (an ``ID``
        column is ignored: subject ``k`` is row ``k``). It must hold the covariates the model
        reads (:func:`needed_covariates`); values of categorical covariates are the fitted
        data's category labels.
    regimens : Regimen, text, or a list of them
        The arms (see :func:`~pmxgen.simulation.parse_regimen`).
    strata : str or (column, cuts), optional
        PTA per stratum: a column of the population (``"SEX"``), or bands of a numeric one
        (``"AGE:40,65"`` or ``("AGE", [40, 65])``). The column need not be a model covariate.
        The result's :meth:`~SimulationResult.pta_by_stratum` and ``pta_strata.csv`` give it;
        ``subjects`` gets the stratum of each kept subject.
    seed, replicates, uncertainty, residual_error, windows, horizon, threshold, targets, keep_profiles, \
keep_exposures, chunk_size, points_per_interval, refine, device, dtype
        As :func:`~pmxgen.simulation.simulate_population` (η are drawn per subject and replicate;
        every regimen sees the same subjects and η).

    Returns
    -------
    SimulationResult
        (example: the module docstring)
    """
    from ..generative.vpop import read_covariates
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 1:
        raise RegimenError(f"replicates must be a whole number >= 1 (found {replicates!r})")
    run = as_run(run, device=device)
    device = torch.device(device) if device is not None else run.data.device
    frame, source = read_covariates(population)
    frame = frame.drop(columns=[c for c in frame.columns if str(c).upper() == "ID"])
    n = len(frame)
    if n < 1:
        raise DatasetError("the virtual population has no rows", source=source)
    table, filled = _covariate_frame(run, frame, source)
    regs = as_regimens(regimens)
    rejected = 0
    if uncertainty:
        values_list, rejected = parameter_draws(run, int(replicates), seed=seed)
    else:
        values_list = [run.values] * int(replicates)
    arms, options = arms_and_options(run, regs, horizon=horizon, windows=windows,
                                     points_per_interval=points_per_interval, residual_error=residual_error,
                                     keep_profiles=keep_profiles, keep_exposures=keep_exposures, threshold=threshold,
                                     targets=targets, chunk_size=chunk_size, refine=refine)
    label = None
    if strata is not None:
        label, codes, levels = parse_strata(frame, strata)
        options.strata = (codes, levels)
    src = _PopulationSource(run, values_list, n, table, seed, dtype, device)
    meta = {"mode": "virtual population", "seed": int(seed), "uncertainty": bool(uncertainty),
            "rejected_parameter_draws": int(rejected), "device": str(device), "model": run.fit.model_name,
            "covariates": f"from the virtual population {source}", "population": source,
            "filled_covariates": filled, "strata": label}
    result = simulate_arms(run.model, arms, src, options, meta)
    if label is not None and result.subjects is not None:
        position = result.subjects["subject"].to_numpy() - 1
        stratum = np.asarray(levels, dtype=object)[codes[position]]
        result = replace(result, subjects=result.subjects.assign(**{label: stratum}))
    return result
