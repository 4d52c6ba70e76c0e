"""Compare registered generators on one table: fit on a train split, generate, evaluate on the held-out split.

:func:`compare_generators` splits the rows (seeded) into a train and a held-out part, fits every
requested family (:func:`~pmxgen.generative.generator.make_generator`) on the train part, draws
``n`` rows from each (with ``conditions``: at the held-out rows' condition values, resampled
to ``n``), and evaluates them against the held-out rows with
:func:`~pmxgen.generative.metrics.evaluate`, timing the fit and the sampling. A family that
fails (an error while fitting or sampling, or status "failed") gets a row with its status and
message and no metrics; the others go on. With ``reference=True`` a first row
``"(train split)"`` evaluates the train rows themselves against the held-out rows: the values
a perfect generator would reach at these sample sizes (the noise floor of every metric).

The result (:class:`GeneratorComparison`) keeps the table, the splits and the generated tables,
from which :func:`pmxgen.report.generators.write_generator_report` draws the HTML report.

Examples
--------
>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> data = pd.DataFrame({"WT": rng.lognormal(4.2, 0.2, 150), "AGE": rng.integers(18, 80, 150)})
>>> result = compare_generators(data, ["mvn"], n=100, seed=0, metrics={"n_permutations": 20, "c2st_epochs": 50})
>>> result.table[["model", "status"]].to_string(index=False)
'model    status\\n  mvn converged'
>>> bool(result.table.loc[0, "fit_time_s"] >= 0), sorted(result.samples)
(True, ['mvn'])
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import DatasetError, ModelError, PmxgenError
from .generator import generator_class
from .metrics import METRIC_DESCRIPTIONS, evaluate
from .tabular import as_frame

__all__ = ["compare_generators", "GeneratorComparison", "baseline_check", "REFERENCE"]

#: Model name of the reference row (train split evaluated as if it were generated).
REFERENCE = "(train split)"


@dataclass
class GeneratorComparison:
    """What :func:`compare_generators` found.

    Attributes
    ----------
    table : DataFrame
        One row per model: ``model``, ``status``, ``message``, ``fit_time_s``, ``sample_time_s``,
        then the metrics of :func:`~pmxgen.generative.metrics.evaluate`.
    train, test : DataFrame
        The two splits of the data.
    samples : dict
        Model name → its generated table (successful models only).
    generators : dict
        Model name → the fitted generator (successful models only).
    settings : dict
        ``n``, ``seed``, ``test_fraction``, ``conditions``, ``source``, ``n_train``, ``n_test``, ``models``,
        ``categorical``.
    """

    table: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame
    samples: dict = field(default_factory=dict)
    generators: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def _split(frame: pd.DataFrame, test_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(frame)
    n_test = int(round(test_fraction * n))
    if not 0 < test_fraction < 1 or n_test < 2 or n - n_test < 2:
        raise DatasetError(f"cannot split {n} rows with test_fraction={test_fraction}: each part needs at least 2 "
                           f"rows", fix="give more rows or a test_fraction between 0 and 1")
    order = np.random.default_rng(seed).permutation(n)
    return frame.iloc[order[n_test:]].reset_index(drop=True), frame.iloc[order[:n_test]].reset_index(drop=True)


def _failure(model: str, status: str, message: str, **times) -> dict:
    return {"model": model, "status": status, "message": message, **times}


def compare_generators(data, models: Sequence[str] = ("mvn",), *, n: int | None = None, seed: int = 0,
                       conditions: Sequence[str] | None = None, test_fraction: float = 0.3,
                       params: Mapping[str, Mapping] | None = None, common: Mapping | None = None,
                       reference: bool = False, metrics: Mapping | None = None,
                       source: str = "<data>", progress: bool = False) -> GeneratorComparison:
    """Fit, sample and evaluate every generator in ``models`` on the same split of ``data``.

    Parameters
    ----------
    data : DataFrame or array ``[n, d]``
        The table (e.g. covariates of a population); arrays get columns ``x0, x1, ...``.
    models : list of str
        Registered generator names (:func:`~pmxgen.generative.generator_names`).
    n : int, optional
        Rows generated per model (default: as many as the train split).
    seed : int
        Seeds the split, every generator (its ``seed``), the sampling and the metrics.
    conditions : list of str, optional
        Columns to condition on; generation uses the held-out rows' values (resampled to ``n``).
    test_fraction : float
        Share of rows held out for the evaluation.
    params : dict, optional
        Model name → hyperparameters of that family.
    common : dict, optional
        Hyperparameters given to every family (e.g. ``bounds``, ``categorical``, ``device``).
    reference : bool
        Add the ``"(train split)"`` row (see the module docstring).
    metrics : dict, optional
        Keywords of :func:`~pmxgen.generative.metrics.evaluate` (``n_permutations``, ``max_points`` ...).
    source : str
        Name of the data for messages and the report.
    progress : bool
        Print one line per model to stderr.

    Returns
    -------
    GeneratorComparison
    """
    import sys
    frame, _ = as_frame(data, source=source)
    models = list(models)
    if not models and not reference:
        raise ModelError("give at least one generator name in models")
    if len(set(models)) != len(models):
        raise ModelError(f"a model is named twice in {models}; give each name once (use params for its settings)")
    for name in models:
        generator_class(name)                       # unknown names fail before any fitting
    unknown = [k for k in (params or {}) if k not in models]
    if unknown:
        raise ModelError(f"params given for {unknown}, which are not among the models {models}")
    conditions = list(conditions or [])
    missing = [c for c in conditions if c not in frame.columns]
    if missing:
        raise DatasetError(f"condition columns {missing} are not in the data", source=source,
                           fix=f"use columns of {list(frame.columns)}")
    train, test = _split(frame, test_fraction, seed)
    n = len(train) if n is None else int(n)
    if n < 2:
        raise ModelError(f"n must be >= 2 (found {n})")
    categorical = list((common or {}).get("categorical") or [])
    metric_options = {"seed": seed, "categorical": categorical, **(metrics or {})}
    given = None
    if conditions:
        pick = np.random.default_rng(seed + 1).integers(0, len(test), n)
        given = test[conditions].iloc[pick].reset_index(drop=True)
    rows, samples, generators = [], {}, {}
    if reference:
        rows.append({"model": REFERENCE, "status": "reference", "message": "train rows evaluated as generated rows",
                     "fit_time_s": 0.0, "sample_time_s": 0.0, **evaluate(test, train, **metric_options)})
    for name in models:
        if progress:
            print(f"compare_generators: {name} ...", file=sys.stderr, flush=True)
        kwargs = {**(common or {}), **((params or {}).get(name) or {})}
        kwargs.setdefault("seed", seed)
        try:
            gen = generator_class(name)(**kwargs)
            start = time.perf_counter()
            gen.fit(train, conditions=conditions or None, source=source)
            fit_time = time.perf_counter() - start
        except (PmxgenError, RuntimeError, ValueError) as exc:
            rows.append(_failure(name, "error", f"fit: {type(exc).__name__}: {exc}"))
            continue
        if gen.status_ == "failed":
            rows.append(_failure(name, "failed", gen.message_, fit_time_s=fit_time))
            continue
        try:
            start = time.perf_counter()
            sample = gen.sample(n, conditions=given, seed=seed)
            sample_time = time.perf_counter() - start
        except (PmxgenError, RuntimeError, ValueError) as exc:
            rows.append(_failure(name, "error", f"sample: {type(exc).__name__}: {exc}", fit_time_s=fit_time))
            continue
        try:
            values = evaluate(test, sample, generator=gen, **metric_options)
        except (PmxgenError, RuntimeError, ValueError) as exc:
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            rows.append(_failure(name, "error", f"evaluate: {last}", fit_time_s=fit_time, sample_time_s=sample_time))
            continue
        samples[name], generators[name] = sample, gen
        rows.append({"model": name, "status": gen.status_, "message": gen.message_, "fit_time_s": fit_time,
                     "sample_time_s": sample_time, **values})
    columns = ["model", "status", "message", "fit_time_s", "sample_time_s", "n_real", "n_generated",
               *METRIC_DESCRIPTIONS]
    table = pd.DataFrame(rows).reindex(columns=columns)
    for col in columns[3:]:
        table[col] = pd.to_numeric(table[col], errors="coerce")
    settings = {"n": n, "seed": seed, "test_fraction": test_fraction, "conditions": conditions, "source": source,
                "n_train": len(train), "n_test": len(test), "models": models, "categorical": categorical}
    return GeneratorComparison(table, train, test, samples, generators, settings)



def baseline_check(table: pd.DataFrame, baseline: str = "mvn") -> pd.DataFrame:
    """Does each model beat ``baseline`` on the classifier test and on correlation error?

    The classifier test is won by the accuracy closer to chance (``|accuracy − 0.5|`` smaller),
    correlation error by the smaller value. One row per model other than the baseline and the
    reference: ``model``, ``c2st_gap`` and the baseline's, ``correlation_error`` and the
    baseline's, ``beats_c2st``, ``beats_correlation``, ``beats_both`` (NaN metrics: ``False``).

    Examples
    --------
    >>> t = pd.DataFrame({"model": ["mvn", "flow"], "c2st_accuracy": [0.70, 0.55],
    ...                   "correlation_error": [0.30, 0.40]})
    >>> baseline_check(t)[["model", "beats_c2st", "beats_correlation", "beats_both"]].to_string(index=False)
    'model  beats_c2st  beats_correlation  beats_both\\n flow        True              False       False'
    """
    if baseline not in set(table["model"]):
        raise ModelError(f"the baseline {baseline!r} is not in the table (models {list(table['model'])})")
    base = table.loc[table["model"] == baseline].iloc[0]
    base_gap = abs(base["c2st_accuracy"] - 0.5)
    rows = []
    for _, row in table.iterrows():
        if row["model"] in (baseline, REFERENCE):
            continue
        gap = abs(row["c2st_accuracy"] - 0.5)
        beats_c2st = bool(gap < base_gap)
        beats_corr = bool(row["correlation_error"] < base["correlation_error"])
        rows.append({"model": row["model"], "c2st_gap": gap, "baseline_c2st_gap": base_gap,
                     "correlation_error": row["correlation_error"],
                     "baseline_correlation_error": base["correlation_error"], "beats_c2st": beats_c2st,
                     "beats_correlation": beats_corr, "beats_both": beats_c2st and beats_corr})
    return pd.DataFrame(rows, columns=["model", "c2st_gap", "baseline_c2st_gap", "correlation_error",
                                       "baseline_correlation_error", "beats_c2st", "beats_correlation",
                                       "beats_both"])
