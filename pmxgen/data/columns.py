"""NONMEM column names, the column mapping and the typed parsing of raw cells.

This is the only module that knows NONMEM's names for data items. A user's
``columns`` mapping renames the file's columns to the canonical names, e.g.
``{"ID": "Subject", "TIME": "Time", "DV": "conc"}`` for R's ``Theoph``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import DatasetError

__all__ = ["STANDARD_COLUMNS", "REQUIRED_COLUMNS", "DOSING_COLUMNS", "MAX_ABS_VALUE", "ColumnMap", "resolve_columns",
           "parse_numeric", "column_list", "is_number_column"]

#: Canonical NONMEM data items understood by pmxgen (upper case).
STANDARD_COLUMNS: tuple[str, ...] = (
    "ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS", "BLQ", "LLOQ",
)
#: Columns every dataset must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("ID", "TIME", "DV")
#: Columns a dosing (PK) dataset must have as well (NONMEM's PREDPP needs AMT); required when
#: ``read_nonmem(..., require_doses=True)``, the default for files.
DOSING_COLUMNS: tuple[str, ...] = ("AMT",)
#: Largest magnitude accepted for a data value. Beyond it a square or a sum of a few hundred
#: terms overflows double precision (1.8e308), so such a value is always an entry or unit error.
MAX_ABS_VALUE: float = 1e100
#: Alternative spellings accepted for a canonical column (case-insensitive).
ALIASES: dict[str, tuple[str, ...]] = {"BLQ": ("CENS",), "LLOQ": ("LOQ",)}
#: Cell texts read as "missing" (NONMEM writes '.').
MISSING_TEXTS = frozenset({".", "", "NA", "NAN", "NaN", "nan", "na"})
#: Of those, the ones that are explicit NaN rather than NONMEM's '.'/empty (which mean 0).
NAN_TEXTS = frozenset({"NA", "NAN", "NaN", "nan", "na"})


def column_list(names, limit: int = 20) -> str:
    """``'A, B, C'``; a long list is cut after ``limit`` names with the total count."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(map(str, names))
    return ", ".join(map(str, names[:limit])) + f", ... ({len(names):,} columns in all)"


def is_number_column(values: pd.Series) -> bool:
    """Whether a column holds numbers already (float or integer dtype, not bool): NaN is NONMEM's '.'."""
    dtype = values.dtype
    return (pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype)) \
        and not pd.api.types.is_bool_dtype(dtype)


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
                    source: str, *, header_row: int | None = 1, require_doses: bool = False) -> ColumnMap:
    """Match a file header to canonical names (case-insensitively) and pick covariates.

    ``header_row`` is the row named in messages (the header's file line; None for a DataFrame).
    ``require_doses`` adds :data:`DOSING_COLUMNS` (AMT) to the required columns.

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
                               fix=f"the file's columns are {column_list(header)}")
        standard[canon_u] = seen[target.upper()]
    mapped_targets = {v.upper() for v in standard.values()}
    for canon in STANDARD_COLUMNS:
        if canon in standard:
            continue
        for name in (canon, *ALIASES.get(canon, ())):
            if name in seen and name not in mapped_targets:
                standard[canon] = seen[name]
                break
    for canon in REQUIRED_COLUMNS + (DOSING_COLUMNS if require_doses else ()):
        if canon not in standard:
            why = (" (the dose amounts: NONMEM's PREDPP needs AMT on every dosing data set)" if canon == "AMT"
                   else "")
            extra = ("; data without doses (e.g. for a non-PK model) can be read with require_doses=False"
                     if canon == "AMT" else "")
            raise DatasetError(f"required column {canon} is missing{why}", source=source, row=header_row,
                               column=canon,
                               fix=(f"add the {canon} column, or map an existing one with "
                                    f"columns={{'{canon}': 'your_name'}}{extra}; the file's columns are "
                                    f"{column_list(header)}"))
    used = {v.upper() for v in standard.values()}
    if covariates is None:
        covs = tuple(c for c in header if c.upper() not in used)
    else:
        covs = []
        for c in covariates:
            if c.upper() not in seen:
                raise DatasetError("a requested covariate is not a column of the file", source=source, row=header_row,
                                   column=c, value=c, fix=f"the file's columns are {column_list(header)}")
            covs.append(seen[c.upper()])
        covs = tuple(covs)
    return ColumnMap(standard=standard, covariates=covs)


def parse_numeric(raw: pd.Series, column: str, source: str, rows: np.ndarray, *,
                  missing_as: float | None, allow_nan: bool = False) -> np.ndarray:
    """Parse a column of cells into float64, naming the first bad cell.

    Parameters
    ----------
    raw : pandas.Series
        The cells: text, or numbers already (a numeric column of a DataFrame or of a file
        column that held only numbers); NaN in a numeric column is NONMEM's missing mark '.'.
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

    Returns
    -------
    numpy.ndarray
        float64 values, one per cell.

    Raises
    ------
    DatasetError
        For text that is not a number (a decimal comma is named as such), an explicit NaN
        where a number is needed, an infinite value, or a magnitude above
        :data:`MAX_ABS_VALUE` (1e100).
    """
    if is_number_column(raw):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        text = None
        is_missing = np.isnan(values)
        is_nan_text = np.zeros(len(values), dtype=bool)
    else:
        text = raw.astype(str).str.strip()
        is_missing = text.isin(MISSING_TEXTS).to_numpy()
        values = pd.to_numeric(text.where(~is_missing), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(values) & ~is_missing
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            found = text.iloc[i]
            if _DECIMAL_COMMA.match(found):
                raise DatasetError("a value is not a number: it has a decimal comma", source=source,
                                   row=int(rows[i]), column=column, value=found,
                                   fix=(f"write '.' as the decimal mark ({found.replace(',', '.')}); from a "
                                        f"spreadsheet in a European locale, export with '.' decimals or read it with "
                                        f"pandas.read_csv(path, sep=';', decimal=',') and pass the DataFrame"))
            raise DatasetError("a value is not a number", source=source, row=int(rows[i]), column=column,
                               value=found, fix="write a plain number (or '.' for missing)")
        is_nan_text = text.isin(NAN_TEXTS).to_numpy()

    def found(i: int) -> object:
        return text.iloc[i] if text is not None else float(values[i])

    inf = np.isinf(values)
    if inf.any():
        i = int(np.flatnonzero(inf)[0])
        raise DatasetError("a value is infinite (or too large for double precision)", source=source,
                           row=int(rows[i]), column=column, value=found(i), fix="write a finite number")
    huge = np.abs(np.nan_to_num(values)) > MAX_ABS_VALUE
    if huge.any():
        i = int(np.flatnonzero(huge)[0])
        raise DatasetError(f"a value is absurdly large: pmxgen rejects magnitudes above {MAX_ABS_VALUE:g}, where "
                           f"squares and sums overflow double precision", source=source, row=int(rows[i]),
                           column=column, value=found(i),
                           fix="correct the value (an entry, unit or export error?) or rescale the column")
    if is_nan_text.any() and not allow_nan:
        i = int(np.flatnonzero(is_nan_text)[0])
        raise DatasetError("NaN where a number is needed", source=source, row=int(rows[i]), column=column,
                           value=text.iloc[i], fix="write a number; NONMEM's '.' means 0 for this item")
    if missing_as is not None:
        values = np.where(is_missing & ~is_nan_text, missing_as, values)
    return values


#: A number written with a decimal comma ('1,5', '-0,25'), as European spreadsheets export.
_DECIMAL_COMMA = re.compile(r"^[+-]?\d*,\d+$")
