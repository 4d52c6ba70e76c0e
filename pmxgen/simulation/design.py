"""Study designs as NONMEM-format tables: who gets which doses, and when samples are taken.

:func:`design_frame` writes the records a simulation needs (dose records and observation
records with a placeholder DV) in the column layout that :func:`pmxgen.read_nonmem` reads.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.columns import STANDARD_COLUMNS
from ..errors import DatasetError

__all__ = ["design_frame", "DESIGN_COLUMNS", "DOSE_FIELDS"]

#: Columns of a design, in order (covariates follow).
DESIGN_COLUMNS: tuple[str, ...] = ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS")
#: Keys of a dose dict and their defaults (``time`` and ``amt`` are required).
DOSE_FIELDS: dict[str, float | None] = {"time": None, "amt": None, "cmt": 1, "rate": 0.0, "ii": 0.0, "addl": 0,
                                        "ss": 0}
_SOURCE = "design_frame"


def _dose_field(dose: Mapping, key: str, k: int, n_subjects: int) -> np.ndarray:
    """One field of dose ``k`` as an array of one value per subject."""
    default = DOSE_FIELDS[key]
    if key not in dose:
        if default is None:
            raise DatasetError(f"dose {k} has no {key!r}", source=_SOURCE, column=key.upper(),
                               fix=f"give every dose a {key!r}, e.g. {{'time': 0, 'amt': 100}}")
        return np.full(n_subjects, float(default))
    value = np.asarray(dose[key], dtype=np.float64)
    if value.ndim == 0:
        value = np.full(n_subjects, float(value))
    if value.shape != (n_subjects,):
        raise DatasetError(f"dose {k}: {key!r} has shape {value.shape}", source=_SOURCE, column=key.upper(),
                           fix=f"give a number, or one value per subject ({n_subjects})")
    if not np.isfinite(value).all():
        raise DatasetError(f"dose {k}: {key!r} is not finite", source=_SOURCE, column=key.upper(),
                           fix="give finite numbers")
    return value


def _observation_times(obs_times, n_subjects: int, rng: np.random.Generator) -> list[np.ndarray]:
    if callable(obs_times):
        out = []
        for i in range(n_subjects):     # design construction only: not a hot path
            t = np.sort(np.atleast_1d(np.asarray(obs_times(rng), dtype=np.float64)))
            out.append(t)
    else:
        t = np.sort(np.atleast_1d(np.asarray(obs_times, dtype=np.float64)))
        out = [t] * n_subjects
    for i, t in enumerate(out):
        if t.ndim != 1 or not np.isfinite(t).all() or (t < 0).any():
            raise DatasetError(f"observation times of subject {i + 1} are not finite times >= 0 (found {t!r})",
                               source=_SOURCE, column="TIME", fix="give a 1-d sequence of times >= 0")
    return out


def design_frame(n_subjects: int, *, doses: Sequence[Mapping], obs_times: Sequence[float] | Callable,
                 covariates: Mapping[str, Sequence | np.ndarray | float] | None = None, start_id: int = 1,
                 obs_cmt: int = 0, seed: int | np.random.Generator | None = None) -> pd.DataFrame:
    """A NONMEM-format design: dose records and observation records (DV placeholder 0).

    Parameters
    ----------
    n_subjects : int
        Number of subjects; their IDs are ``start_id, start_id + 1, ...``.
    doses : list of dict
        The doses every subject gets, each a dict with keys ``time`` and ``amt`` (required)
        and ``cmt`` (default 1), ``rate`` (0: bolus; > 0: infusion rate), ``ii``, ``addl``, ``ss``
        (default 0), NONMEM's meanings. A value may also be an array of one value per
        subject (e.g. different dose levels across subjects).
    obs_times : sequence of float, or callable
        Sampling times, the same for every subject; or ``obs_times(rng) -> times`` called
        once per subject (in ID order) with a :class:`numpy.random.Generator` made from ``seed``.
    covariates : dict, optional
        Covariate name → one value per subject (or a single value for all); written on
        every record of the subject, after the NONMEM columns.
    start_id : int
        ID of the first subject.
    obs_cmt : int
        CMT of the observation records; 0 (default) means the model's default observation
        compartment (e.g. 2, the central compartment, for ``1cmt_oral``).
    seed : int or numpy.random.Generator, optional
        Randomness for a callable ``obs_times``.

    Returns
    -------
    pandas.DataFrame
        Columns ``ID TIME DV AMT EVID MDV CMT RATE II ADDL SS`` then the covariates; one
        row per dose (EVID 1, MDV 1, DV NaN) and per sample (EVID 0, MDV 0, AMT 0, DV 0),
        sorted by ID and time, dose records before observation records at the same time
        (so a sample at a dose time sees the dose), doses in the order given.

    Raises
    ------
    DatasetError
        For a dose without ``time`` or ``amt``, an unknown dose key, AMT <= 0, negative
        times, or covariates of the wrong length or with a NONMEM column's name.

    Examples
    --------
    >>> import pmxgen
    >>> df = pmxgen.design_frame(2, doses=[{"time": 0, "amt": 100}], obs_times=[1, 4],
    ...                          covariates={"WT": [60.0, 80.0]})
    >>> df.shape
    (6, 12)
    >>> df.loc[df.ID == 2, ["TIME", "AMT", "EVID", "WT"]].values.tolist()
    [[0.0, 100.0, 1.0, 80.0], [1.0, 0.0, 0.0, 80.0], [4.0, 0.0, 0.0, 80.0]]
    >>> ds = pmxgen.read_nonmem(df)
    >>> ds.n_subjects, ds.n_observations, ds.n_dose_events
    (2, 4, 2)
    """
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise DatasetError(f"n_subjects must be a whole number >= 1 (found {n_subjects!r})", source=_SOURCE,
                           fix="give the number of subjects")
    n = int(n_subjects)
    if isinstance(doses, Mapping):
        doses = [doses]
    doses = list(doses)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    # ---- dose records: [n_doses, n] per field
    fields: dict[str, list[np.ndarray]] = {k: [] for k in DOSE_FIELDS}
    for k, dose in enumerate(doses):
        if not isinstance(dose, Mapping):
            raise DatasetError(f"dose {k} is not a dict (found {type(dose).__name__})", source=_SOURCE,
                               fix="give doses as dicts such as {'time': 0, 'amt': 100}")
        unknown = set(dose) - set(DOSE_FIELDS)
        if unknown:
            raise DatasetError(f"dose {k} has unknown keys {sorted(unknown)}", source=_SOURCE,
                               fix=f"dose keys are {', '.join(DOSE_FIELDS)}")
        for key in DOSE_FIELDS:
            fields[key].append(_dose_field(dose, key, k, n))
    d = {k: (np.stack(v, axis=1) if v else np.zeros((n, 0))) for k, v in fields.items()}   # [n, n_doses]
    if (d["amt"] <= 0).any():
        raise DatasetError("a dose has amt <= 0", source=_SOURCE, column="AMT", fix="give dose amounts > 0")
    if (d["time"] < 0).any():
        raise DatasetError("a dose has a negative time", source=_SOURCE, column="TIME", fix="give times >= 0")
    for key in ("cmt", "addl", "ss"):
        if (d[key] != np.round(d[key])).any() or (d[key] < 0).any():
            raise DatasetError(f"dose {key!r} must be a whole number >= 0", source=_SOURCE, column=key.upper(),
                               fix=f"correct {key!r}")

    # ---- observation records
    times = _observation_times(obs_times, n, rng)
    n_obs = np.array([len(t) for t in times], dtype=np.int64)
    obs_time = np.concatenate(times) if len(times) else np.zeros(0)
    obs_subject = np.repeat(np.arange(n), n_obs)

    n_doses = d["time"].shape[1]
    dose_subject = np.repeat(np.arange(n), n_doses)
    subject = np.concatenate([dose_subject, obs_subject])
    kind = np.concatenate([np.zeros(len(dose_subject), dtype=np.int64), np.ones(len(obs_subject), dtype=np.int64)])
    rank = np.concatenate([np.tile(np.arange(n_doses), n), np.zeros(len(obs_subject), dtype=np.int64)])
    is_dose = kind == 0
    n_rows = len(subject)

    def col(dose_values: np.ndarray, obs_value: float) -> np.ndarray:
        return np.concatenate([dose_values.reshape(-1), np.full(len(obs_subject), obs_value, dtype=np.float64)])

    time = np.concatenate([d["time"].reshape(-1), obs_time])
    frame = {
        "ID": (start_id + subject).astype(np.int64),
        "TIME": time,
        "DV": np.where(is_dose, np.nan, 0.0),
        "AMT": col(d["amt"], 0.0),
        "EVID": np.where(is_dose, 1, 0).astype(np.int64),
        "MDV": np.where(is_dose, 1, 0).astype(np.int64),
        "CMT": np.concatenate([d["cmt"].reshape(-1), np.full(len(obs_subject), obs_cmt, dtype=np.float64)]
                              ).astype(np.int64),
        "RATE": col(d["rate"], 0.0),
        "II": col(d["ii"], 0.0),
        "ADDL": col(d["addl"], 0.0).astype(np.int64),
        "SS": col(d["ss"], 0.0).astype(np.int64),
    }
    for name, values in (covariates or {}).items():
        if str(name).upper() in STANDARD_COLUMNS or str(name).upper() in DESIGN_COLUMNS:
            raise DatasetError(f"covariate {name!r} has the name of a NONMEM data item", source=_SOURCE,
                               column=str(name), fix="rename the covariate")
        v = np.asarray(values)
        if v.ndim == 0:
            v = np.full(n, v.item())
        if v.shape != (n,):
            raise DatasetError(f"covariate {name!r} has shape {v.shape}", source=_SOURCE, column=str(name),
                               fix=f"give one value per subject ({n})")
        frame[str(name)] = v[subject]
    # sort by subject, time, doses first, then dose order (lexsort: last key is primary)
    order = np.lexsort((rank, kind, time, subject)) if n_rows else np.zeros(0, dtype=np.int64)
    return pd.DataFrame({k: v[order] for k, v in frame.items()}).reset_index(drop=True)
