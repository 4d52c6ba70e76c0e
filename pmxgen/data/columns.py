"""NONMEM column names, the column mapping and the typed parsing of raw cells.

This is the only module that knows NONMEM's names for data items. A user's
``columns`` mapping renames the file's columns to the canonical names, e.g.
``{"ID": "Subject", "TIME": "Time", "DV": "conc"}`` for R's ``Theoph``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import DatasetError

__all__ = ["STANDARD_COLUMNS", "REQUIRED_COLUMNS", "ColumnMap", "resolve_columns", "parse_numeric"]

#: Canonical NONMEM data items understood by pmxgen (upper case).
STANDARD_COLUMNS: tuple[str, ...] = (
    "ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS", "BLQ", "LLOQ",
)
#: Columns every dataset must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("ID", "TIME", "DV")
#: Alternative spellings accepted for a canonical column (case-insensitive).
ALIASES: dict[str, tuple[str, ...]] = {"BLQ": ("CENS",), "LLOQ": ("LOQ",)}
#: Cell texts read as "missing" (NONMEM writes '.').
MISSING_TEXTS = frozenset({".", "", "NA", "NAN", "NaN", "nan", "na"})
#: Of those, the ones that are explicit NaN rather than NONMEM's '.'/empty (which mean 0).
NAN_TEXTS = frozenset({"NA", "NAN", "NaN", "nan", "na"})


@dataclass(frozen=True)
class ColumnMap:
    """Which file column holds each canonical data item.

    Attributes
    ----------
    standard : dict
        Canonical name (e.g. ``"TIME"``) → column name as in the file.
    covariates : tuple of str
        File columns that are covariates (every column that is not a standard one,
        unless the user listed them explicitly).
    """

    standard: dict[str, str]
    covariates: tuple[str, ...]

    def has(self, name: str) -> bool:
        """Whether the canonical column ``name`` is present."""
        return name in self.standard


def resolve_columns(header: list[str], mapping: Mapping[str, str] | None, covariates: list[str] | None,
                    source: str, *, header_row: int | None = 1) -> ColumnMap:
    """Match a file header to canonical names (case-insensitively) and pick covariates.

    ``header_row`` is the row named in messages (the header's file line; None for a DataFrame).

    Raises
    ------
    DatasetError
        For a duplicated column, a mapping to a column that is absent, or a missing required column.
    """
    seen: dict[str, str] = {}
    for col in header:
        key = col.upper()
        if key in seen:
            raise DatasetError("the header names a column twice", source=source, row=header_row, column=col,
                               value=col, fix="rename one of the two columns")
        seen[key] = col
    standard: dict[str, str] = {}
    for canon, target in (mapping or {}).items():
        canon_u = canon.upper()
        if canon_u not in STANDARD_COLUMNS:
            raise DatasetError(f"the column mapping names an unknown data item {canon!r}", source=source,
                               column=target, fix=f"use one of {', '.join(STANDARD_COLUMNS)}")
        if target.upper() not in seen:
            raise DatasetError(f"the column mapping sends {canon_u} to a column that is not in the file",
                               source=source, row=header_row, column=target, value=target,
                               fix=f"the file's columns are {', '.join(header)}")
        standard[canon_u] = seen[target.upper()]
    mapped_targets = {v.upper() for v in standard.values()}
    for canon in STANDARD_COLUMNS:
        if canon in standard:
            continue
        for name in (canon, *ALIASES.get(canon, ())):
            if name in seen and name not in mapped_targets:
                standard[canon] = seen[name]
                break
    for canon in REQUIRED_COLUMNS:
        if canon not in standard:
            raise DatasetError(f"required column {canon} is missing", source=source, row=header_row, column=canon,
                               fix=(f"add a {canon} column, or map an existing one with "
                                    f"columns={{'{canon}': 'your_name'}}; the file's columns are "
                                    f"{', '.join(header)}"))
    used = {v.upper() for v in standard.values()}
    if covariates is None:
        covs = tuple(c for c in header if c.upper() not in used)
    else:
        covs = []
        for c in covariates:
            if c.upper() not in seen:
                raise DatasetError("a requested covariate is not a column of the file", source=source, row=header_row,
                                   column=c, value=c, fix=f"the file's columns are {', '.join(header)}")
            covs.append(seen[c.upper()])
        covs = tuple(covs)
    return ColumnMap(standard=standard, covariates=covs)


def parse_numeric(raw: pd.Series, column: str, source: str, rows: np.ndarray, *,
                  missing_as: float | None, allow_nan: bool = False) -> np.ndarray:
    """Parse a column of cell texts into float64, naming the first bad cell.

    Parameters
    ----------
    raw : pandas.Series of str
        The cells as text.
    column : str
        Column name as in the file (for messages).
    source : str
        File name (for messages).
    rows : ndarray of int
        File row number of each cell (for messages).
    missing_as : float or None
        Value used for NONMEM's missing marks ``'.'`` and empty cells; ``None`` keeps them NaN.
    allow_nan : bool
        Whether explicit NaN/NA texts are allowed (kept as NaN).
    """
    text = raw.astype(str).str.strip()
    values = pd.to_numeric(text.where(~text.isin(MISSING_TEXTS)), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & ~text.isin(MISSING_TEXTS).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError("a value is not a number", source=source, row=int(rows[i]), column=column,
                           value=text.iloc[i], fix="write a plain number (or '.' for missing)")
    inf = np.isinf(values)
    if inf.any():
        i = int(np.flatnonzero(inf)[0])
        raise DatasetError("a value is infinite", source=source, row=int(rows[i]), column=column,
                           value=text.iloc[i], fix="write a finite number")
    is_nan_text = text.isin(NAN_TEXTS).to_numpy()
    if is_nan_text.any() and not allow_nan:
        i = int(np.flatnonzero(is_nan_text)[0])
        raise DatasetError("NaN where a number is needed", source=source, row=int(rows[i]), column=column,
                           value=text.iloc[i], fix="write a number; NONMEM's '.' means 0 for this item")
    if missing_as is not None:
        values = np.where(np.isnan(values) & ~is_nan_text, missing_as, values)
    return values
