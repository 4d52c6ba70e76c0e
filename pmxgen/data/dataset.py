"""The :class:`Dataset`: validated NONMEM records plus their padded tensors."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from ..errors import DatasetWarning
from .batching import SubjectBatch, build_batch
from .reader import Records, warn_subjects_without_observations

__all__ = ["Dataset"]

#: Covariates listed one by one in :meth:`Dataset.summary` (the rest are counted).
SUMMARY_COVARIATES = 30


class Dataset:
    """A population dataset: every original record, and per-subject padded tensors.

    Create one with :func:`pmxgen.read_nonmem` or :func:`pmxgen.datasets.load`.

    Attributes
    ----------
    ids : list
        Subject IDs in file order.
    batch : SubjectBatch
        Observations, dose events (ADDL expanded), resets and covariates as tensors.
    source : str
        File name, or ``"<DataFrame>"``.
    ignored_lines : list of (int, str)
        Comment and blank lines skipped while reading (line number, text).
    categories : dict
        Labels of each categorical covariate (code k ↔ ``categories[name][k]``).
    occasion_labels : list or None
        Occasion labels (code k ↔ label) when an occasion column was given.

    Examples
    --------
    >>> import pmxgen
    >>> ds = pmxgen.datasets.load("theophylline")
    >>> ds.n_subjects, ds.n_observations
    (12, 132)
    >>> ds.batch.obs.time.shape
    torch.Size([12, 11])
    """

    def __init__(self, records: Records, frame: pd.DataFrame, batch: SubjectBatch, ignored_lines: list,
                 n_obs_per_subject: np.ndarray, options: dict) -> None:
        self._records = records
        self._frame = frame
        self.batch = batch
        self.ignored_lines = list(ignored_lines)
        self._n_obs_per_subject = n_obs_per_subject
        self._options = options

    @classmethod
    def _from_records(cls, records: Records, frame: pd.DataFrame, ignored_lines: list, *, dtype: torch.dtype,
                      device, options: dict | None = None) -> "Dataset":
        batch, n_obs = build_batch(records, dtype, device)
        warn_subjects_without_observations(records, n_obs)
        return cls(records, frame, batch, ignored_lines, n_obs, options or {})

    # ------------------------------------------------------------------ facts
    @property
    def ids(self) -> list:
        return list(self._records.ids)

    @property
    def source(self) -> str:
        return self._records.source

    @property
    def n_subjects(self) -> int:
        return len(self._records.ids)

    @property
    def n_records(self) -> int:
        return len(self._records.time)

    @property
    def n_observations(self) -> int:
        """Observation records (EVID 0 and MDV 0)."""
        return int(self._n_obs_per_subject.sum())

    @property
    def n_dose_records(self) -> int:
        """Dose records in the file (EVID 1 or 4), before ADDL expansion."""
        return int(np.isin(self._records.evid, (1, 4)).sum())

    @property
    def n_dose_events(self) -> int:
        """Dose events after ADDL expansion."""
        return int(self.batch.doses.mask.sum())

    @property
    def n_blq(self) -> int:
        """Observation records flagged below the limit of quantification."""
        return int((self.batch.obs.blq & self.batch.obs.mask).sum())

    @property
    def observations_per_subject(self) -> np.ndarray:
        return self._n_obs_per_subject.copy()

    @property
    def covariate_names(self) -> tuple[str, ...]:
        return self.batch.covariate_names

    @property
    def categories(self) -> dict[str, list]:
        return {k: list(v) for k, v in self._records.categories.items()}

    @property
    def occasion_labels(self) -> list | None:
        return None if self._records.occasion_labels is None else list(self._records.occasion_labels)

    @property
    def columns(self) -> dict[str, str]:
        """Canonical NONMEM name → column name in the data."""
        return dict(self._records.columns.standard)

    @property
    def device(self) -> torch.device:
        return self.batch.device

    @property
    def dtype(self) -> torch.dtype:
        return self.batch.dtype

    def row_of(self, position: int) -> int:
        """The row number used in messages (file line, or DataFrame index) of frame row ``position``."""
        return int(self._records.rows[position])

    # ------------------------------------------------------------ conversions
    def to(self, device=None, dtype: torch.dtype | None = None) -> "Dataset":
        """A copy whose tensors live on ``device`` with floating dtype ``dtype``."""
        moved = Dataset(self._records, self._frame, self.batch.to(device, dtype), self.ignored_lines,
                        self._n_obs_per_subject, {**self._options})
        if hasattr(self, "bundled_name"):
            moved.bundled_name = self.bundled_name
        return moved

    def to_frame(self) -> pd.DataFrame:
        """Every original row and column, in file order ('.' read as NaN).

        ``read_nonmem(ds.to_frame())`` gives the same dataset again.
        """
        return self._frame.copy()

    def observation_frame(self, values: torch.Tensor | np.ndarray, name: str = "PRED") -> pd.DataFrame:
        """Observation records of the frame with a ``[N, J]`` tensor of per-observation values added."""
        obs = self.batch.obs
        rows = obs.row[obs.mask].cpu().numpy()
        vals = torch.as_tensor(values)[obs.mask.cpu()].detach().cpu().numpy() if isinstance(values, torch.Tensor) \
            else np.asarray(values)[obs.mask.cpu().numpy()]
        out = self._frame.iloc[rows].copy()
        out[name] = vals
        return out

    def with_dv(self, dv: torch.Tensor) -> "Dataset":
        """A new dataset whose observation DVs are ``dv`` (``[N, J]``); everything else unchanged.

        The records were checked when this dataset was read: reading them again gives no
        :class:`~pmxgen.errors.DatasetWarning`.
        """
        obs = self.batch.obs
        mask = obs.mask.cpu()
        rows = obs.row.cpu()[mask].numpy()
        values = torch.as_tensor(dv).detach().cpu()[mask].numpy().astype(np.float64)
        frame = self._frame.copy()
        dv_col = self._records.columns.standard["DV"]
        column = frame[dv_col].to_numpy(dtype=np.float64, copy=True)
        column[rows] = values
        frame[dv_col] = column
        from .reader import read_nonmem
        with warnings.catch_warnings():        # the records are those read (and warned about) before
            warnings.simplefilter("ignore", DatasetWarning)
            new = read_nonmem(frame, **self._read_options())
        new._records.source = self.source if self.source == "<DataFrame>" else f"{self.source} (simulated DV)"
        return new

    def subset(self, ids: Iterable) -> "Dataset":
        """The subjects ``ids`` (in this dataset's order) as a new dataset.

        No :class:`~pmxgen.errors.DatasetWarning` is repeated, and a subset without dose records
        (e.g. placebo subjects) is allowed.
        """
        wanted = set(ids)
        unknown = wanted - set(self._records.ids)
        if unknown:
            raise KeyError(f"subjects not in the data: {sorted(map(str, unknown))[:10]}")
        id_col = self._records.columns.standard["ID"]
        keep = self._frame[id_col].map(lambda v: v in wanted).to_numpy()
        frame = self._frame.loc[keep]
        from .reader import read_nonmem
        # a subset of records read (and warned about) before; it may hold only undosed subjects
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DatasetWarning)
            return read_nonmem(frame, **{**self._read_options(), "require_doses": False})

    @property
    def recipe(self) -> dict:
        """How to read this dataset again: file (or bundled name) and the JSON-safe read options.

        Stored in a FitResult so that a results folder can be reloaded (:func:`pmxgen.load_run`).
        """
        opts = {k: v for k, v in self._read_options().items() if k not in ("dtype", "device")}
        opts["ignore"] = list(opts["ignore"]) if isinstance(opts.get("ignore"), (list, tuple)) else opts.get("ignore")
        source = self.source
        return {"source": source if source == "<DataFrame>" else str(Path(source).resolve()),
                "dataset": getattr(self, "bundled_name", None), "read_options": opts}

    def _read_options(self) -> dict:
        opts = dict(self._options)
        opts.setdefault("columns", self._records.columns.standard)
        opts.setdefault("covariates", list(self._records.columns.covariates))
        opts.setdefault("categorical", list(self._records.categories))
        opts.setdefault("dtype", self.dtype)
        opts.setdefault("device", self.device)
        return opts

    # ---------------------------------------------------------------- display
    def summary(self) -> str:
        """A short text description: counts, dosing, covariates."""
        rec = self._records
        n_obs = self._n_obs_per_subject
        lines = [
            f"Dataset {self.source}",
            f"  subjects            {self.n_subjects}",
            f"  records             {self.n_records} ({len(self.ignored_lines)} comment/blank lines skipped)",
            f"  observations        {self.n_observations} (per subject {n_obs.min()}-{n_obs.max()}, "
            f"median {np.median(n_obs):g}); BLQ {self.n_blq}",
            f"  dose records        {self.n_dose_records} -> {self.n_dose_events} dose events after ADDL",
            f"  infusions           {int(((rec.rate != 0) & np.isin(rec.evid, (1, 4))).sum())}; steady-state doses "
            f"{int((rec.ss > 0).sum())}; resets {int(np.isin(rec.evid, (3, 4)).sum())}",
            f"  time range          {rec.time.min():g} - {rec.time.max():g}",
        ]
        if self.covariate_names:
            lines.append("  covariates")
            shown = self.covariate_names[:SUMMARY_COVARIATES]
            for name in shown:
                v = rec.covariates[name]
                if name in rec.categories:
                    labels = rec.categories[name]
                    counts = np.bincount(v.astype(int), minlength=len(labels))
                    lines.append(f"    {name:<16}  categorical: " +
                                 ", ".join(f"{lab} ({c} rec)" for lab, c in zip(labels, counts)))
                else:
                    lines.append(f"    {name:<16}  median {np.median(v):g} (range {v.min():g}-{v.max():g})")
            if len(self.covariate_names) > len(shown):
                lines.append(f"    ... and {len(self.covariate_names) - len(shown):,} more")
        if self.occasion_labels is not None:
            lines.append(f"  occasions           {', '.join(map(str, self.occasion_labels))}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Dataset(source={self.source!r}, subjects={self.n_subjects}, observations={self.n_observations}, "
                f"dose_events={self.n_dose_events}, device={self.device}, dtype={self.dtype})")
