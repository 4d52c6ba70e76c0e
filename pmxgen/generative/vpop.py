"""Virtual populations end to end: learn a covariate table, generate ``n`` virtual subjects, stream them to CSV.

:func:`generate_population` is the Python side of ``pmxgen generate``: it reads the covariates
(a CSV file, a DataFrame, a bundled covariate panel such as ``diabetes``, or the subjects of a
bundled NONMEM set such as ``pheno``, one row per subject), fits a registered generator
(:func:`~pmxgen.generative.generator.generator_names`: the families appear as they register),
and draws the population chunk by chunk, writing each chunk to the output CSV before drawing the
next (memory bounded by one chunk, whatever ``n``). An ``ID`` column of the input is not
modelled; the generated rows get ``ID`` 1..n.

With ``conditions`` the generator is conditional on those columns; their values are either
fixed (``given={"SEX": 2}``) or resampled with replacement from the data's rows (seeded), so the
population keeps the data's mix.

Examples
--------
>>> import pandas as pd
>>> pop = generate_population("diabetes", model="gaussian_copula", n=1000, seed=1, drop=["Y"])
>>> pop.frame.shape, pop.frame.columns.tolist()[:3]
((1000, 11), ['ID', 'AGE', 'SEX'])
>>> float(pop.frame["BMI"].min()) >= 18.0 - 1e-9, float(pop.frame["BMI"].max()) <= 42.2 + 1e-9
(True, True)
>>> pop.frame["AGE"].dtype.kind   # whole-number columns stay whole numbers
'i'
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import DatasetError, ModelError

__all__ = ["generate_population", "read_covariates", "GeneratedPopulation"]


@dataclass(frozen=True)
class GeneratedPopulation:
    """What :func:`generate_population` made.

    Attributes
    ----------
    generator : Generator
        The fitted generator (``status_``, ``fit_time_``, ``save``).
    n : int
        Rows generated.
    columns : list of str
        Columns of the generated table (``ID`` first).
    path : Path or None
        The CSV written (None when ``output`` was not given).
    frame : DataFrame or None
        The generated rows when no ``output`` was given (None otherwise: they were streamed).
    source : str
        Where the training covariates came from.
    fit_seconds, sample_seconds : float
        Wall times of fitting and of generating (and writing).
    """

    generator: object
    n: int
    columns: list
    path: Path | None
    frame: pd.DataFrame | None
    source: str
    fit_seconds: float
    sample_seconds: float


def read_covariates(data, *, drop: Sequence[str] | None = None) -> tuple[pd.DataFrame, str]:
    """``(table, source)``: covariates one row per subject from a file, DataFrame or bundled name.

    A CSV file (``.`` and empty cells are missing values, refused naming the file line, header
    = line 1, and the column), a DataFrame, a bundled covariate panel (``pmxgen.datasets.load_table``) or a
    bundled NONMEM data set (its subjects' baseline covariates,
    ``pmxgen.datasets.baseline_covariates``). ``drop`` removes columns (e.g. an outcome).

    Examples
    --------
    >>> table, source = read_covariates("pheno")
    >>> table.columns.tolist(), source
    (['ID', 'WGT', 'APGR'], 'pheno (baseline covariates)')
    """
    from .. import datasets
    if isinstance(data, pd.DataFrame):
        frame, source, line_offset = data.reset_index(drop=True), "<DataFrame>", 0
    elif isinstance(data, (str, Path)) and Path(data).is_file():
        source, line_offset = str(data), 2          # header is line 1
        try:
            frame = pd.read_csv(data, na_values=["."], sep=None, engine="python")
        except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise DatasetError(f"cannot be read as a CSV table ({exc})", source=source,
                               fix="give a comma-separated file with a header line") from None
    elif isinstance(data, str) and data in datasets.list("covariates"):
        frame, source, line_offset = datasets.load_table(data), data, 2
    elif isinstance(data, str) and data in datasets.list("nonmem"):
        frame, source, line_offset = datasets.baseline_covariates(data), f"{data} (baseline covariates)", 0
    elif hasattr(data, "batch") and hasattr(data, "ids"):
        frame, source, line_offset = datasets.baseline_covariates(data), f"{data.source} (baseline covariates)", 0
    else:
        raise DatasetError(f"{data!r} is neither a file, a DataFrame nor a bundled data set", source=str(data),
                           fix=f"give a CSV file or one of {datasets.list()}")
    for name in drop or ():
        if name not in frame.columns:
            raise DatasetError(f"column {name!r} to drop is not in the table", source=source,
                               fix=f"use one of {list(frame.columns)}")
    frame = frame.drop(columns=list(drop or ()))
    missing = frame.isna()
    if missing.to_numpy().any():
        column = next(c for c in frame.columns if missing[c].any())
        row = int(np.flatnonzero(missing[column].to_numpy())[0])
        raise DatasetError("missing value; virtual-population generators need complete rows", source=source,
                           row=row + line_offset, column=str(column),
                           fix="impute or drop incomplete rows (or the column) first")
    return frame, source


def _chunk_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, 7, k]).generate_state(1)[0])


def _match_level(value, levels):
    for level in levels:
        if level == value or str(level) == str(value):
            return level
        try:
            if float(level) == float(value):
                return level
        except (TypeError, ValueError):
            pass
    return None


def generate_population(data, *, model: str = "gaussian_copula", n: int = 10_000, output=None,
                        conditions: Sequence[str] | None = None, given: Mapping | None = None, seed: int = 0,
                        bounds: Mapping | str | None = "auto", categorical: Sequence[str] | None = None,
                        drop: Sequence[str] | None = None, save=None, chunk_size: int = 100_000,
                        params: Mapping | None = None, device=None, progress: bool = False) -> GeneratedPopulation:
    """Fit generator ``model`` to a covariate table and generate ``n`` virtual subjects.

    Parameters
    ----------
    data : str, Path or DataFrame
        Covariates (see :func:`read_covariates`).
    model : str
        A registered generator name (``pmxgen.generative.generator_names()``).
    n : int
        Virtual subjects to generate.
    output : str or Path, optional
        CSV to stream the rows to (chunk by chunk); without it the rows are returned in memory.
    conditions : list of str, optional
        Columns to condition on. Their values come from ``given`` where named there, otherwise
        from the data's rows resampled with replacement.
    given : dict, optional
        Fixed values of condition columns, e.g. ``{"SEX": 2}``.
    seed : int
        Seeds the generator's fit and the draws (chunk ``k`` uses a seed derived from ``(seed, k)``).
    bounds, categorical : optional
        Column bounds and categorical columns (see :meth:`pmxgen.generative.TabularSchema.infer`).
    drop : list of str, optional
        Columns of the input not to model (e.g. an outcome such as ``diabetes``'s ``Y``).
    save : str or Path, optional
        Save the fitted generator there (safetensors).
    chunk_size : int
        Rows per generated chunk (memory bound).
    params : dict, optional
        Hyperparameters of the generator family (e.g. ``{"max_epochs": 50}``).
    device : optional
        Torch device of the generator.
    progress : bool
        Training progress lines on stderr.

    Returns
    -------
    GeneratedPopulation
    """
    from .generator import generator_class
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ModelError(f"n must be a whole number >= 1 (found {n!r})")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ModelError(f"chunk_size must be a whole number >= 1 (found {chunk_size!r})")
    klass = generator_class(model)
    frame, source = read_covariates(data, drop=drop)
    ids = [c for c in frame.columns if str(c).upper() == "ID"]
    frame = frame.drop(columns=ids)
    conditions = list(conditions or [])
    given = dict(given or {})
    unknown = [k for k in list(conditions) + list(given) if k not in frame.columns]
    if unknown:
        raise DatasetError(f"condition column(s) {unknown} are not in the table", source=source,
                           fix=f"use columns among {list(frame.columns)}")
    conditions += [k for k in given if k not in conditions]
    kwargs = {"seed": int(seed), "bounds": bounds, "categorical": list(categorical) if categorical else None,
              "device": device, "progress": progress, **dict(params or {})}
    try:
        gen = klass(**kwargs)
    except TypeError as exc:
        raise ModelError(f"generator {model!r}: {exc}; its hyperparameters are {klass._param_names()}") from None
    started = time.perf_counter()
    gen.fit(frame, conditions=conditions or None, source=source)
    fit_seconds = time.perf_counter() - started
    if gen.status_ == "failed":
        raise ModelError(f"generator {model!r} failed to train on {source}: {gen.message_}")
    schema = gen.transform_.schema
    for k, v in list(given.items()):
        spec = schema[k]
        if spec.kind != "continuous":
            level = _match_level(v, spec.levels)
            if level is None:
                raise DatasetError(f"given value {v!r} of {k} is not one of its levels", source=source, column=k,
                                   fix=f"use one of {list(spec.levels)}")
            given[k] = level
        else:
            given[k] = float(v)
    if save is not None:
        gen.save(save)
    started = time.perf_counter()
    path = Path(output) if output is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    frames, columns = [], None
    resample = [c for c in conditions if c not in given]
    integer = [c.name for c in schema.columns if c.kind == "continuous" and c.integer
               and pd.api.types.is_integer_dtype(frame[c.name])]
    for k, start in enumerate(range(0, int(n), int(chunk_size))):
        m = min(int(chunk_size), int(n) - start)
        chunk_seed = _chunk_seed(seed, k)
        cond = None
        if conditions:
            rng = np.random.default_rng(chunk_seed)
            cond = pd.DataFrame(index=range(m))
            if resample:
                rows = rng.integers(0, len(frame), m)
                for c in resample:
                    cond[c] = frame[c].to_numpy()[rows]
            for c, v in given.items():
                cond[c] = [v] * m
        part = gen.sample(m, conditions=cond, seed=chunk_seed)
        for c in integer:
            part[c] = part[c].astype("int64")
        part.insert(0, "ID", np.arange(start + 1, start + m + 1))
        columns = list(part.columns)
        if path is None:
            frames.append(part)
        else:
            part.to_csv(path, mode="w" if k == 0 else "a", header=k == 0, index=False, float_format="%.12g")
    sample_seconds = time.perf_counter() - started
    return GeneratedPopulation(generator=gen, n=int(n), columns=columns, path=path,
                               frame=pd.concat(frames, ignore_index=True) if frames else None, source=source,
                               fit_seconds=fit_seconds, sample_seconds=sample_seconds)
