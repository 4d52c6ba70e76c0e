"""Reading NONMEM-style event tables into a :class:`~pmxgen.data.dataset.Dataset`.

Reading has three stages: the text is split into cells (``_read_cells``: columns of
plain numbers are parsed as one block, the NONMEM data items kept as text), every
record is validated with NONMEM's rules (``validate_records``: errors stop the read,
suspicious records give a :class:`~pmxgen.errors.DatasetWarning`), and the
records become padded per-subject tensors (:mod:`pmxgen.data.batching`).
Nothing is dropped: comment lines are kept in :attr:`Dataset.ignored_lines`
and every data row is returned by :meth:`Dataset.to_frame`.
"""
from __future__ import annotations

import csv
import io
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping as _MappingABC
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import DatasetError, DatasetWarning, dataset_message
from .columns import (ALIASES, MAX_ABS_VALUE, MISSING_TEXTS, STANDARD_COLUMNS, ColumnMap, column_list,
                      is_number_column, parse_numeric, resolve_columns)

__all__ = ["read_nonmem", "Records"]


@dataclass
class Records:
    """Validated, typed NONMEM records (one entry per data row, file order).

    All arrays have one element per data row. ``rows`` holds the row number used in
    messages (file line for files, index label for DataFrames).
    """

    source: str
    rows: np.ndarray
    subject: np.ndarray       # subject index 0..N-1
    ids: list
    time: np.ndarray
    dv: np.ndarray
    amt: np.ndarray
    evid: np.ndarray
    mdv: np.ndarray
    cmt: np.ndarray
    rate: np.ndarray
    ii: np.ndarray
    addl: np.ndarray
    ss: np.ndarray
    blq: np.ndarray
    lloq: np.ndarray
    covariate_names: tuple[str, ...]
    covariate_values: np.ndarray    # [records, covariates] float64 (categorical: codes)
    categories: dict[str, list]
    occasion: np.ndarray | None
    occasion_labels: list | None
    columns: ColumnMap

    @property
    def covariates(self) -> Mapping[str, np.ndarray]:
        """Covariate values by name (one per record), as a read-only view of :attr:`covariate_values`."""
        return _Columns(self.covariate_values, self.covariate_names)


class _Columns(_MappingABC):
    """Name → column of a 2-d array, made when looked up."""

    def __init__(self, values: np.ndarray, names: tuple[str, ...]) -> None:
        self._values, self._names = values, names
        self._index = {n: k for k, n in enumerate(names)}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._values[:, self._index[name]]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _split_fields(line: str, sep: str) -> list[str] | None:
    """The fields of one line (quotes respected), or None for a separator we cannot split simply."""
    if sep == r"\s+":
        return line.split()
    if len(sep) == 1:
        return next(csv.reader([line], delimiter=sep, skipinitialspace=True), [])
    return None


def _count_fields(line: str, sep: str) -> int | None:
    """Number of fields of one line (quotes respected), or None for a separator we cannot split simply."""
    if len(sep) == 1 and '"' not in line:
        return line.count(sep) + 1
    fields_ = _split_fields(line, sep)
    return None if fields_ is None else len(fields_)


def _decode(path: str, encoding: str | None) -> str:
    """The text of a file: UTF-8 (a byte-order mark is dropped) unless ``encoding`` is given."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode(encoding or "utf-8-sig")
    except LookupError as exc:
        raise DatasetError(f"unknown text encoding {encoding!r}", source=path,
                           fix="give a Python codec name such as 'utf-8' or 'latin-1'") from exc
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        if b"\x00" in raw[:65536]:
            raise DatasetError("the file is not text (it holds NUL bytes: a binary file such as .xlsx or .sas7bdat?)",
                               source=path, row=line,
                               fix="give a CSV or whitespace-separated text file (export the sheet as CSV)") from exc
        byte = raw[exc.start:exc.start + 1]
        start = raw.rfind(b"\n", 0, exc.start) + 1
        stop = raw.find(b"\n", exc.start)
        context = raw[start:stop if stop >= 0 else len(raw)].decode("latin-1").strip()
        raise DatasetError(f"the file is not {encoding or 'UTF-8'} text: byte 0x{byte.hex().upper()} "
                           f"({byte.decode('latin-1')!r} in Latin-1) cannot be decoded; the file looks "
                           f"Latin-1 / Windows-1252 encoded (as older Excel and SAS exports are)",
                           source=path, row=line, value=context,
                           fix=("save it as UTF-8 (Excel: 'CSV UTF-8'; iconv -f latin1 -t utf-8), or read it with "
                                "read_nonmem(path, encoding='latin-1')")) from exc


def _read_cells(path: str, sep: str | None, ignore: str | Sequence[str], text_columns: frozenset[str] = frozenset(),
                encoding: str | None = None) -> tuple[pd.DataFrame, np.ndarray, list, int, str]:
    """Split a text file into cells; returns (cells, file line of each row, ignored lines, header line, separator).

    Columns named in ``text_columns`` (upper case: the NONMEM data items, occasion and
    categorical columns) are kept as stripped text, so that messages show the cell as written.
    The other columns are numbers when they hold only numbers (all of them parsed at once by
    :func:`numpy.loadtxt` when possible, else column by column by pandas' C parser: float64 or
    int64), text otherwise; files with 100,000 columns read in seconds.
    Columns without a name whose cells are all empty (the trailing commas of a spreadsheet
    export) are ignored, as are lines holding only separators.
    """
    text = _decode(path, encoding)
    lines = text.splitlines()
    ignored: list[tuple[int, str]] = []
    header_line = None
    data: list[tuple[int, str]] = []
    at_sign = ignore == "@" or (not isinstance(ignore, str) and "@" in ignore)
    prefixes = tuple(c for c in ([ignore] if isinstance(ignore, str) else ignore) if c != "@")
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            ignored.append((number, line))
            continue
        if header_line is None:
            if prefixes and stripped.startswith(prefixes):
                ignored.append((number, line))
                continue
            header_line = (number, stripped)
            continue
        first = stripped[0]
        if (prefixes and stripped.startswith(prefixes)) or (at_sign and (first.isalpha() or first == "@")):
            ignored.append((number, line))
            continue
        data.append((number, line))
    if header_line is None:
        raise DatasetError("the file is empty", source=path, fix="give a file with a header line and data records")
    if sep is None:
        if "," not in header_line[1] and header_line[1].count(";") >= 1:
            raise DatasetError("the header is separated by ';' (a European-style CSV, whose numbers usually have "
                               "decimal commas such as '1,5')", source=path, row=header_line[0],
                               value=header_line[1][:200],
                               fix=("export the file with ',' as separator and '.' as decimal mark, or read it with "
                                    "pandas.read_csv(path, sep=';', decimal=',') and pass the DataFrame to "
                                    "read_nonmem (sep=';' reads it if the numbers have decimal points)"))
        sep = "," if "," in header_line[1] else r"\s+"
    if len(sep) == 1 and sep.strip():      # lines of separators only (blank spreadsheet rows) are blank lines
        blank = [(n, line) for n, line in data if not line.strip().replace(sep, "").strip().strip('"')]
        if blank:
            ignored = sorted(ignored + blank)
            blank_lines = {n for n, _ in blank}
            data = [d for d in data if d[0] not in blank_lines]
    if not data:
        raise DatasetError("the file has a header but no data records", source=path, row=header_line[0],
                           fix="add data records below the header")
    # Check the header and the field counts here: pandas silently renames a duplicated column
    # ('AMT' -> 'AMT.1'), pads a short record with empty cells and, when every record has one
    # field more than the header, turns the first column into the index.
    header_fields = _split_fields(header_line[1], sep)
    names: list[str] | None = None
    if header_fields is not None:
        names = [f.strip().strip('"') for f in header_fields]
        seen: set[str] = set()
        for name in names:
            if name and name.upper() in seen:
                raise DatasetError("the header names a column twice", source=path, row=header_line[0], column=name,
                                   value=name, fix="rename one of the two columns")
            seen.add(name.upper())
        for number, line in data:
            count = _count_fields(line.strip() if sep == r"\s+" else line, sep)
            if count != len(names):
                raise DatasetError(f"the record has {count} fields but the header has {len(names)}",
                                   source=path, row=number, fix="check the separators and empty fields on that line")
    body = "\n".join([header_line[1]] + [d[1].strip() if sep == r"\s+" else d[1] for d in data])
    rows = np.array([d[0] for d in data], dtype=np.int64)
    if names is None:
        dtype: dict | type = str
    else:
        dtype = {k: str for k, name in enumerate(names) if not name or name.upper() in text_columns}
    cells = _fast_cells(body, sep, dtype, names, len(data)) if names is not None and len(dtype) < len(names) else None
    if cells is None:
        cells = _parse_body(body, sep, dtype, path, data)
    if names is not None and not isinstance(dtype, type):
        # a column that is neither numbers nor text (bool 'True'/'False', integers beyond int64) is read as text
        other = [k for k, d in enumerate(cells.dtypes) if not _is_number_dtype(d) and not pd.api.types.is_string_dtype(d)]
        if other:
            cells = _parse_body(body, sep, {**dtype, **{k: str for k in other}}, path, data)
    if len(cells) != len(data):
        raise DatasetError("some records could not be split into fields", source=path,
                           fix="check for quotes or separators inside values")
    cells.columns = [str(c).strip().strip('"') for c in cells.columns]
    if names is not None:
        cells.columns = names
        nameless = [k for k, name in enumerate(names) if not name]
        keep = np.ones(len(names), dtype=bool)
        for k in nameless:
            col = cells.iloc[:, k].astype(str).str.strip()
            filled = np.flatnonzero(col.to_numpy() != "")
            if len(filled):
                raise DatasetError(f"column {k + 1} has no name in the header but holds values", source=path,
                                   row=int(rows[filled[0]]), column=f"#{k + 1}", value=col.iloc[filled[0]],
                                   fix="name the column in the header, or delete it")
            keep[k] = False
        if not keep.all():
            cells = cells.iloc[:, np.flatnonzero(keep)]
    text_cols = [c for c, d in zip(cells.columns, cells.dtypes) if not _is_number_dtype(d)]
    for c in text_cols:
        cells[c] = cells[c].astype(str).str.strip().str.strip('"')
    return cells, rows, ignored, header_line[0], sep


def _fast_cells(body: str, sep: str, text: dict, names: list[str], n_rows: int) -> pd.DataFrame | None:
    """The cells when every column outside ``text`` holds finite plain numbers, else None.

    The numeric columns are parsed by :func:`numpy.loadtxt` into one float64 block (pandas
    would build one array and one Series per column: minutes for 100,000 columns); the text
    columns by pandas. Any cell that is not a finite number sends the file to the general
    (column by column) reader, whose messages quote the cell as written.
    """
    if sep not in (",", "\t", ";", r"\s+") and len(sep) != 1:
        return None
    numeric = [k for k in range(len(names)) if k not in text]
    try:
        block = np.loadtxt(io.StringIO(body), delimiter=None if sep == r"\s+" else sep, skiprows=1, usecols=numeric,
                           dtype=np.float64, ndmin=2, comments=None, quotechar='"')
    except (ValueError, IndexError, TypeError):        # a cell that is not a number: the general reader says which
        return None
    if block.shape != (n_rows, len(numeric)) or not np.isfinite(block).all():
        return None
    parts = [pd.DataFrame(block, columns=[names[k] for k in numeric])]
    if text:
        try:
            parts.append(pd.read_csv(io.StringIO(body), sep=sep, usecols=sorted(text), dtype=str,
                                     keep_default_na=False, engine="c", skipinitialspace=True, header=0,
                                     names=None).set_axis([names[k] for k in sorted(text)], axis=1))
        except (pd.errors.ParserError, ValueError):
            return None
        if len(parts[1]) != n_rows:
            return None
    cells = pd.concat(parts, axis=1) if len(parts) > 1 else parts[0]
    return cells.iloc[:, np.argsort(np.r_[numeric, sorted(text)], kind="stable")]


def _parse_body(body: str, sep: str, dtype, path: str, data: list) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(body), sep=sep, dtype=dtype, keep_default_na=False, engine="c",
                           skipinitialspace=True, low_memory=False)
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        row = data[int(match.group(1)) - 2][0] if match and int(match.group(1)) - 2 < len(data) else None
        raise DatasetError(f"the record has a different number of fields than the header ({exc})", source=path,
                           row=row, fix="check the separators on that line") from exc


def _frame_to_cells(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The cells of a DataFrame: numeric columns stay float64 (NaN is NONMEM's '.'), others become text."""
    if len(frame) == 0:
        raise DatasetError("the DataFrame has no rows", fix="give a DataFrame with data records")
    names = [str(c) for c in frame.columns]
    seen: set[str] = set()
    for name in names:
        if name.upper() in seen:
            raise DatasetError("the DataFrame names a column twice", column=name, value=name,
                               fix="rename one of the two columns")
        seen.add(name.upper())
    dtypes = list(frame.dtypes)
    numeric = [j for j, d in enumerate(dtypes) if (pd.api.types.is_float_dtype(d) or pd.api.types.is_integer_dtype(d))
               and not pd.api.types.is_bool_dtype(d)]
    parts = []
    if numeric:
        block = frame.iloc[:, numeric]
        if all(isinstance(dtypes[j], np.dtype) for j in numeric):
            values = block.to_numpy(dtype=np.float64)
        else:   # nullable (extension) dtypes: pandas.NA -> NaN
            values = np.column_stack([block.iloc[:, k].to_numpy(dtype=np.float64, na_value=np.nan)
                                      for k in range(block.shape[1])])
        parts.append(pd.DataFrame(values, columns=[names[j] for j in numeric]))
    numeric_set = set(numeric)
    text = [j for j in range(len(names)) if j not in numeric_set]
    if text:
        parts.append(pd.DataFrame({names[j]: np.array(["." if _is_missing(v) else str(v).strip()
                                                       for v in frame.iloc[:, j].tolist()], dtype=object)
                                   for j in text}))
    cells = pd.concat(parts, axis=1) if len(parts) > 1 else parts[0]
    if len(parts) > 1:
        cells = cells[names]
    try:
        rows = np.asarray(frame.index, dtype=np.int64)
    except (TypeError, ValueError):
        rows = np.arange(len(frame), dtype=np.int64)
    return cells, rows


def _is_missing(v: object) -> bool:
    """None, NaN, pandas.NA or NaT (the missing marks of a DataFrame cell)."""
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _integer_check(values: np.ndarray, column: str, source: str, rows: np.ndarray, allowed: Sequence[int] | None,
                   fix: str) -> None:
    bad = (values != np.round(values)) | (values < 0)
    if allowed is not None:
        bad |= ~np.isin(values, allowed)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"invalid {column} value", source=source, row=int(rows[i]), column=column,
                           value=_plain(values[i]), fix=fix)


def _plain(x: float) -> object:
    """A number as a user wrote it: int when whole (and not huge), else float."""
    x = float(x)
    return int(x) if x.is_integer() and abs(x) < 1e15 else x


def _fail(mask: np.ndarray, problem: str, records_source: str, rows: np.ndarray, column: str, values: np.ndarray,
          fix: str) -> None:
    if mask.any():
        i = int(np.flatnonzero(mask)[0])
        raise DatasetError(problem, source=records_source, row=int(rows[i]), column=column,
                           value=_plain(values[i]) if np.issubdtype(np.asarray(values).dtype, np.number) else values[i],
                           fix=fix)


def _is_number_dtype(dtype) -> bool:
    """Float or integer dtype, not bool (see :func:`~pmxgen.data.columns.is_number_column`)."""
    if isinstance(dtype, np.dtype):
        return dtype.kind in "fiu"
    return (pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype)) \
        and not pd.api.types.is_bool_dtype(dtype)


def _cell(cells: pd.DataFrame, column: str, i: int) -> object:
    """Cell ``i`` of ``column`` as found: the text, or for a numeric column the number ('.' for NaN)."""
    values = cells[column]
    if is_number_column(values):
        v = values.iloc[i]
        return "." if pd.isna(v) else _plain(v)
    return values.iloc[i]


#: Largest ADDL accepted: more implied doses than this on one record is an entry error (and the padded
#: dose table would not fit in memory).
MAX_ADDL = 100_000

#: Largest compartment number accepted (a larger CMT is an entry error; it would not fit an int64 either).
MAX_CMT = 10_000

#: Text of each EVID in messages.
_EVID_NAMES = {0: "observation", 1: "dose", 2: "other event", 3: "reset", 4: "reset and dose"}


def validate_records(cells: pd.DataFrame, rows: np.ndarray, source: str, columns: Mapping[str, str] | None,
                     covariates: list[str] | None, categorical: Sequence[str] | None,
                     occasion: str | None, header_row: int | None = 1, require_doses: bool = False) -> Records:
    """Type and check every record (NONMEM rules); raise :class:`DatasetError` on the first problem.

    ``header_row`` is the row named in messages about the header (its file line; None for a DataFrame).
    ``require_doses``: the data must have an AMT column and at least one dose record (files).
    Unusual but usable data give a :class:`DatasetWarning` (see :func:`warn_unusual_records`).
    """
    cmap = resolve_columns(list(cells.columns), columns, covariates, source, header_row=header_row,
                           require_doses=require_doses)
    col = cmap.standard
    n = len(cells)
    _check_units_row(cells, rows, source, col)

    def num(name: str, missing_as: float | None, allow_nan: bool = False, default: float = 0.0) -> np.ndarray:
        if name not in col:
            return np.full(n, default)
        return parse_numeric(cells[col[name]], col[name], source, rows, missing_as=missing_as, allow_nan=allow_nan)

    id_text = cells[col["ID"]].astype(str).str.strip()
    _fail(id_text.isin(MISSING_TEXTS).to_numpy(), "a record has no subject ID", source, rows, col["ID"],
          id_text.to_numpy(), "give every record the ID of its subject")
    time = num("TIME", missing_as=None)
    if np.isnan(time).any():
        i = int(np.flatnonzero(np.isnan(time))[0])
        raise DatasetError("TIME is missing", source=source, row=int(rows[i]), column=col["TIME"],
                           value=_cell(cells, col["TIME"], i), fix="give every record a time")
    dv = num("DV", missing_as=None, allow_nan=True)
    amt = num("AMT", missing_as=0.0)
    rate = num("RATE", missing_as=0.0)
    ii = num("II", missing_as=0.0)
    addl = num("ADDL", missing_as=0.0)
    ss = num("SS", missing_as=0.0)
    cmt = num("CMT", missing_as=0.0)
    blq = num("BLQ", missing_as=0.0)
    lloq = num("LLOQ", missing_as=None, allow_nan=True, default=np.nan)
    mdv_given = "MDV" in col
    mdv = num("MDV", missing_as=0.0)

    _fail(amt < 0, "AMT is negative", source, rows, col.get("AMT", "AMT"), amt,
          "doses must have AMT > 0; observations AMT 0 or '.'")
    if "EVID" in col:
        evid = num("EVID", missing_as=0.0)
        _integer_check(evid, col["EVID"], source, rows, (0, 1, 2, 3, 4),
                       "EVID must be 0 (observation), 1 (dose), 2 (other), 3 (reset) or 4 (reset and dose)")
    else:
        evid = np.where(amt > 0, 1.0, np.where(mdv_given & (mdv == 1), 2.0, 0.0))
    is_dose = np.isin(evid, (1, 4))
    if mdv_given:
        _integer_check(mdv, col["MDV"], source, rows, (0, 1), "MDV must be 0 (DV used) or 1 (DV not used)")
        # NONMEM (PREDPP) requires MDV=1 on EVID 1-4 records and ignores their DV: a DV marked as used
        # (MDV 0) on such a record would be dropped without a word, so it is an error.
        lost = (evid != 0) & (mdv == 0) & ~np.isnan(dv)
        if lost.any():
            i = int(np.flatnonzero(lost)[0])
            e = int(evid[i])
            how = f"EVID {e} ({_EVID_NAMES[e]})" if "EVID" in col else f"a dose (AMT > 0, so EVID {e})"
            raise DatasetError(f"MDV 0 with a DV value ({_plain(dv[i])}) on {how}: NONMEM requires MDV=1 on "
                               f"EVID 1-4 records and ignores their DV, so this value would not be used",
                               source=source, row=int(rows[i]), column=col["MDV"], value=_plain(mdv[i]),
                               fix=("set MDV=1 if the DV is not an observation, or put the observation on its own "
                                    "record with EVID=0 (NONMEM does not observe and dose on one record)"))
        mdv = np.where(evid != 0, 1.0, mdv)
    else:
        mdv = np.where((evid == 0) & ~np.isnan(dv), 0.0, 1.0)
    is_obs = (evid == 0) & (mdv == 0)
    if (is_obs & np.isnan(dv)).any():
        i = int(np.flatnonzero(is_obs & np.isnan(dv))[0])
        raise DatasetError("NaN where a number is needed: an observation record has no DV", source=source,
                           row=int(rows[i]), column=col["DV"], value=_cell(cells, col["DV"], i),
                           fix="give the observed value, or set MDV=1 if it is not an observation")
    _fail(~is_dose & (amt > 0), "AMT > 0 on a record that is not a dose", source, rows, col.get("AMT", "AMT"), amt,
          "set EVID to 1 (dose) or 4 (reset and dose), or AMT to 0")
    _integer_check(ss, col.get("SS", "SS"), source, rows, (0, 1, 2), "SS must be 0, 1 (reset to steady state) or 2 "
                   "(add steady state)")
    _integer_check(addl, col.get("ADDL", "ADDL"), source, rows, None, "ADDL must be a whole number >= 0")
    _fail(addl > MAX_ADDL, f"ADDL is implausibly large (pmxgen accepts up to {MAX_ADDL:,} additional doses on one "
          f"record)", source, rows, col.get("ADDL", "ADDL"), addl,
          "check the value; for a long treatment at steady state use SS=1 with II instead")
    _integer_check(cmt, col.get("CMT", "CMT"), source, rows, None,
                   "CMT must be a whole compartment number >= 1 (0 or '.' means the model's default)")
    _fail(cmt > MAX_CMT, f"CMT is not a compartment number (pmxgen accepts up to {MAX_CMT:,})", source, rows,
          col.get("CMT", "CMT"), cmt, "give the compartment number of the model (1 depot, 2 central, ...)")
    _fail(ii < 0, "II is negative", source, rows, col.get("II", "II"), ii, "II is the dosing interval, > 0")
    const_ss_infusion = is_dose & (ss > 0) & (amt == 0) & (rate > 0)
    _fail(const_ss_infusion, "steady-state constant infusion (AMT 0, RATE > 0, SS > 0) is not supported", source,
          rows, col.get("SS", "SS"), ss, "give the infusion as AMT and RATE with an II, or as a long infusion record")
    if (is_dose & (amt == 0)).any():
        i = int(np.flatnonzero(is_dose & (amt == 0))[0])
        raise DatasetError("a dose record has AMT 0 (a '.' or empty AMT reads as 0)", source=source, row=int(rows[i]),
                           column=col.get("AMT", "AMT"), value=_cell(cells, col["AMT"], i) if "AMT" in col else 0,
                           fix="give the dose amount, or make the record EVID 2 (other)")
    _fail((addl > 0) & (ii <= 0), "ADDL without II: additional doses need a dosing interval", source, rows,
          col.get("II", "II"), ii, "set II > 0 on that record, or ADDL to 0")
    _fail((ss > 0) & (ii <= 0), "SS without II: a steady-state dose needs its dosing interval", source, rows,
          col.get("II", "II"), ii, "set II > 0 on that record, or SS to 0")
    ss_addl = ~is_dose & ((ss > 0) | (addl > 0))
    if ss_addl.any():   # name the column set on the first offending record itself
        i = int(np.flatnonzero(ss_addl)[0])
        name, values = ("SS", ss) if ss[i] > 0 else ("ADDL", addl)
        _fail(np.arange(n) == i, "SS or ADDL on a record that is not a dose", source, rows, col.get(name, name),
              values, "set them to 0, or make the record a dose")
    bad_rate = (rate < 0) & ~np.isin(rate, (-1, -2))
    _fail(bad_rate, "RATE must be > 0 (infusion), 0 (bolus), -1 (modelled rate R) or -2 (modelled duration D)", source,
          rows, col.get("RATE", "RATE"), rate, "correct the RATE value")
    _fail(~is_dose & (rate != 0), "RATE inconsistent with AMT: RATE is set on a record without a dose amount",
          source, rows, col.get("RATE", "RATE"), rate, "set RATE to 0 on records that are not doses")
    _integer_check(blq, col.get("BLQ", "BLQ"), source, rows, (0, 1), "BLQ must be 0 or 1 (1: below LLOQ)")
    lloq = np.where(np.isnan(lloq) & (blq == 1), dv, lloq)
    _fail((blq == 1) & is_obs & ~(lloq > 0), "a BLQ observation has no positive LLOQ", source, rows,
          col.get("LLOQ", col.get("BLQ", "BLQ")), lloq, "give the LLOQ in an LLOQ column or in DV")
    if require_doses and not is_dose.any():
        raise DatasetError("no dose records (AMT > 0 with EVID 1 or 4, or AMT > 0 without an EVID column)",
                           source=source, row=header_row, column=col.get("AMT", "AMT"),
                           fix=("add the dosing records (a NONMEM data set for a PK model gives every dose as a "
                                "record); data without doses (e.g. for a non-PK model) can be read with "
                                "require_doses=False"))

    # Subjects: contiguous blocks, time non-decreasing except at reset records (EVID 3/4), as NONMEM.
    # numeric IDs are keyed by value, so '1' and '1.0' are the same subject
    id_numeric = pd.to_numeric(id_text, errors="coerce")
    id_key = id_text.where(id_numeric.isna(), id_numeric.map(repr))
    codes, _ = pd.factorize(id_key)
    first_index = id_text.iloc[np.unique(codes, return_index=True)[1]].to_numpy()
    change = np.r_[True, codes[1:] != codes[:-1]]
    starts = np.flatnonzero(change)
    block_codes = codes[starts]
    if len(np.unique(block_codes)) != len(block_codes):
        seen: set[int] = set()
        for s, c in zip(starts, block_codes):
            if c in seen:
                first_row = rows[int(np.flatnonzero(codes == c)[0])]
                raise DatasetError(f"the records of subject {id_text.iloc[s]} are not contiguous (its earlier records "
                                   f"start at row {first_row})", source=source, row=int(rows[s]), column=col["ID"],
                                   value=id_text.iloc[s], fix="sort the file by ID, keeping each subject's record order")
            seen.add(int(c))
    same_subject = ~change
    back = np.r_[False, time[1:] < time[:-1]] & same_subject & ~np.isin(evid, (3, 4))
    _fail(back, "TIME decreases within a subject", source, rows, col["TIME"], time,
          "sort each subject's records by time (time may go back only at a reset record, EVID 3 or 4)")
    _check_fractional_ids(id_text, id_numeric.to_numpy(dtype=np.float64), codes, rows, source, col["ID"])

    ids = [_id_value(v) for v in first_index]
    cov_names, cov_values, categories = _covariates(cells, cmap, rows, source, categorical, header_row)
    occ, occ_labels = (None, None)
    if occasion is not None:
        if occasion.upper() not in {c.upper() for c in cells.columns}:
            raise DatasetError("the occasion column is not in the file", source=source, row=header_row,
                               column=occasion,
                               fix=f"the file's columns are {column_list(cells.columns)}")
        occ_col = next(c for c in cells.columns if c.upper() == occasion.upper())
        occ_text = cells[occ_col].astype(str).str.strip()
        numeric_occ = pd.to_numeric(occ_text, errors="coerce")
        # Numeric labels in numeric order (2 before 10), text labels alphabetically.
        labels = sorted(occ_text.unique(), key=float) if not numeric_occ.isna().any() else sorted(occ_text.unique())
        lookup = {lab: k for k, lab in enumerate(labels)}
        occ_labels = [_id_value(v) for v in labels]
        occ = np.array([lookup[v] for v in occ_text], dtype=np.int64)
    records = Records(source=source, rows=rows, subject=codes.astype(np.int64), ids=ids, time=time, dv=dv, amt=amt,
                      evid=evid.astype(np.int64), mdv=mdv.astype(np.int64), cmt=cmt.astype(np.int64), rate=rate, ii=ii,
                      addl=addl.astype(np.int64), ss=ss.astype(np.int64), blq=blq.astype(bool), lloq=lloq,
                      covariate_names=cov_names, covariate_values=cov_values, categories=categories, occasion=occ,
                      occasion_labels=occ_labels, columns=cmap)
    _warn_unusual_records(records, dv_used_without_mdv=not mdv_given)
    return records


def _check_units_row(cells: pd.DataFrame, rows: np.ndarray, source: str, col: Mapping[str, str]) -> None:
    """A first record whose numeric data items hold words ('h', 'mg/L') is a units line under the header."""
    found = []
    for canon in ("TIME", "DV", "AMT", "RATE", "II", "ADDL", "SS", "EVID", "MDV", "CMT", "LLOQ"):
        if canon not in col or is_number_column(cells[col[canon]]):
            continue
        text = str(cells[col[canon]].iloc[0]).strip()
        if text in MISSING_TEXTS:
            continue
        try:
            float(text)
        except ValueError:
            found.append((col[canon], text))
    if len(found) >= 2:
        raise DatasetError(f"the first record looks like a units line ({', '.join(f'{c}: {t!r}' for c, t in found)}), "
                           f"not data", source=source, row=int(rows[0]), column=found[0][0], value=found[0][1],
                           fix=("delete that line or comment it out with '#' (a comment line is kept in "
                                "Dataset.ignored_lines); units belong in the data set's documentation"))


def _check_fractional_ids(id_text: pd.Series, id_numeric: np.ndarray, codes: np.ndarray, rows: np.ndarray,
                          source: str, column: str) -> None:
    """Non-integer numeric IDs: NONMEM truncates them (1.5 -> 1). Error when that merges two subjects, else warn."""
    frac = ~np.isnan(id_numeric) & (id_numeric != np.trunc(id_numeric))
    if not frac.any():
        return
    truncated = np.trunc(id_numeric[frac])
    whole = set(id_numeric[~np.isnan(id_numeric) & ~frac].tolist())
    merged_ids = {float(id_numeric[frac][k]) for k in range(len(truncated)) if truncated[k] in whole}
    firsts = np.flatnonzero(frac & np.r_[True, codes[1:] != codes[:-1]])
    labels = [f"{id_text.iloc[i]} (row {rows[i]})" for i in firsts]
    shown = ", ".join(labels[:10]) + (f" and {len(labels) - 10} more" if len(labels) > 10 else "")
    # a fractional ID whose truncation is another subject's ID, or two fractional IDs with one truncation
    collide = bool(merged_ids) or len(set(np.trunc(id_numeric[firsts]).tolist())) < len(firsts)
    i = int(firsts[0])
    if collide:
        raise DatasetError(f"non-integer subject IDs ({shown}): NONMEM truncates IDs to integers, which merges "
                           f"subjects here (e.g. {id_text.iloc[i]} would become {int(np.trunc(id_numeric[i]))}, "
                           f"an ID already in the data)", source=source, row=int(rows[i]), column=column,
                           value=id_text.iloc[i], fix="give every subject a distinct integer ID")
    _warn(f"non-integer subject IDs ({shown}); pmxgen keeps each as its own subject, but NONMEM truncates IDs to "
          f"integers ({id_text.iloc[i]} -> {int(np.trunc(id_numeric[i]))}), so the file means something else there",
          source, int(rows[i]), column, id_text.iloc[i], "renumber the subjects with integer IDs")


def _warn(problem: str, source: str, row: int | None, column: str | None, value: object = None,
          fix: str = "") -> None:
    """Emit a :class:`DatasetWarning` in the DatasetError layout, pointing at the first caller outside pmxgen."""
    warnings.warn(DatasetWarning(dataset_message(problem, source=source, row=row, column=column, value=value,
                                                 fix=fix)), stacklevel=_caller_level())


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside the pmxgen package (counted from :func:`_warn`'s caller)."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(2), 2
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _row_list(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _warn_unusual_records(rec: Records, dv_used_without_mdv: bool) -> None:
    """DatasetWarnings for usable but suspicious records (nothing is changed or dropped)."""
    col = rec.columns.standard
    id_col = col["ID"]
    is_dose = np.isin(rec.evid, (1, 4))
    is_obs = (rec.evid == 0) & (rec.mdv == 0)
    # II without ADDL or SS: the interval has no effect
    lone_ii = (rec.ii > 0) & (rec.addl == 0) & (rec.ss == 0)
    if lone_ii.any():
        where = rec.rows[lone_ii]
        _warn(f"II > 0 without ADDL or SS on {len(where)} record(s) (rows {_row_list(where)}): II has no effect "
              f"there (one dose is given)", rec.source, int(where[0]), col.get("II", "II"),
              _plain(rec.ii[lone_ii][0]),
              "set ADDL (additional doses every II) or SS=1 (steady state), or II to 0 if a single dose is meant")
    # DV values on non-observation records of a file without MDV: NONMEM ignores them
    if dv_used_without_mdv:
        unused = (rec.evid != 0) & ~np.isnan(rec.dv) & (rec.dv != 0)
        if unused.any():
            where = rec.rows[unused]
            _warn(f"DV values on {len(where)} record(s) that are not observations (EVID 1-4; rows "
                  f"{_row_list(where)}): NONMEM ignores the DV of such records and so does pmxgen",
                  rec.source, int(where[0]), col["DV"], _plain(rec.dv[unused][0]),
                  "put '.' (or 0) in DV there, or make the record an observation (EVID=0) if it is one")
    if is_dose.any():
        n = len(rec.ids)
        has_dose = np.bincount(rec.subject[is_dose], minlength=n) > 0
        no_dose = np.flatnonzero(~has_dose)
        if len(no_dose):
            firsts = np.array([int(rec.rows[np.flatnonzero(rec.subject == s)[0]]) for s in no_dose[:10]])
            names = ", ".join(str(rec.ids[s]) for s in no_dose[:10]) + (
                f" and {len(no_dose) - 10} more" if len(no_dose) > 10 else "")
            _warn(f"{len(no_dose)} subject(s) have no dose record while others do (ID {names}); their predictions "
                  f"are those of an undosed system (zero for a PK model)", rec.source, int(firsts[0]), id_col,
                  rec.ids[no_dose[0]], "add their dose records, or remove the subjects if they were not dosed")
        # observations before the subject's first dose record (file order)
        position = np.arange(len(rec.time))
        first_dose = np.full(n, np.iinfo(np.int64).max)
        np.minimum.at(first_dose, rec.subject[is_dose], position[is_dose])
        early = is_obs & (position < first_dose[rec.subject]) & has_dose[rec.subject]
        if early.any():
            subjects = np.unique(rec.subject[early])
            names = ", ".join(str(rec.ids[s]) for s in subjects[:10]) + (
                f" and {len(subjects) - 10} more" if len(subjects) > 10 else "")
            all_early = [rec.ids[s] for s in subjects if not (is_obs & ~early & (rec.subject == s)).any()]
            note = (f"; every observation of subject(s) {', '.join(map(str, all_early[:10]))} comes before its first "
                    f"dose" if all_early else "")
            where = rec.rows[early]
            _warn(f"{len(where)} observation(s) come before the first dose of their subject (ID {names}; rows "
                  f"{_row_list(where)}){note}: a model predicts the pre-dose amounts there (zero for a PK model "
                  f"without baseline)", rec.source, int(where[0]), col["TIME"], _plain(rec.time[early][0]),
                  "check the record order and times; exclude pre-dose samples with MDV=1 if the model cannot "
                  "describe them")


def _warn_duplicates(frame: pd.DataFrame, rows: np.ndarray, source: str) -> None:
    """Warn about records identical in every column (each is used: a copied dose is given twice).

    Rows are hashed on at most 256 columns (all text columns first); rows whose hashes agree are
    then compared on every column, so wide files cost little.
    """
    if len(frame) < 2:
        return
    names = list(frame.columns)
    dtypes = list(frame.dtypes)
    numeric = [k for k, d in enumerate(dtypes) if _is_number_dtype(d)]
    other = [k for k in range(len(names)) if not _is_number_dtype(dtypes[k])]

    def keys(columns_num: list[int], columns_text: list[int]) -> np.ndarray:
        parts = []
        if columns_num:
            block = frame.iloc[:, columns_num].to_numpy(dtype=np.float64) + 0.0   # -0.0 -> 0.0
            block[np.isnan(block)] = np.nan                                       # one NaN bit pattern
            parts.append(np.ascontiguousarray(block).view(np.uint64))
        if columns_text:
            parts.append(np.column_stack([pd.util.hash_array(frame.iloc[:, k].astype(str).to_numpy(dtype=object))
                                          for k in columns_text]))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    key = keys(numeric[:max(0, 256 - len(other))], other)
    weights = np.random.default_rng(20240521).integers(1, 2**63, size=key.shape[1], dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        row_hash = (key * weights).sum(axis=1, dtype=np.uint64)
    candidates = np.flatnonzero(pd.Series(row_hash).duplicated(keep=False).to_numpy())
    if not len(candidates):
        return
    full = keys(numeric, other)[candidates] if key.shape[1] < len(names) else key[candidates]
    groups: dict[int, list[int]] = {}
    for pos, i in enumerate(candidates):
        groups.setdefault(int(row_hash[i]), []).append(pos)
    pairs = []
    for members in groups.values():
        for k, a in enumerate(members[1:], start=1):
            for b in members[:k]:
                if np.array_equal(full[a], full[b]):
                    pairs.append((int(candidates[a]), int(candidates[b])))
                    break
    if not pairs:
        return
    pairs.sort()
    shown = ", ".join(f"row {rows[i]} = row {rows[j]}" for i, j in pairs[:10]) + (
        f" and {len(pairs) - 10} more" if len(pairs) > 10 else "")
    _warn(f"{len(pairs)} record(s) repeat an earlier record exactly ({shown}); each copy is used (a repeated dose is "
          f"given twice, a repeated observation counts twice)", source, int(rows[pairs[0][0]]), None, None,
          "remove the copies if they are export or merge errors")


def _id_value(v: str) -> object:
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() else f


def _covariates(cells: pd.DataFrame, cmap: ColumnMap, rows: np.ndarray, source: str,
                categorical: Sequence[str] | None,
                header_row: int | None = 1) -> tuple[tuple[str, ...], np.ndarray, dict[str, list]]:
    """Covariate names, values ``[records, C]`` (categorical: codes 0..K-1) and category labels.

    Numeric columns are checked all at once (missing, infinite, beyond :data:`MAX_ABS_VALUE`),
    so thousands of covariate columns cost little.
    """
    cat_upper = {c.upper() for c in (categorical or [])}
    missing = cat_upper - {c.upper() for c in cmap.covariates}
    if missing:
        raise DatasetError("a categorical column is not a covariate of the file", source=source, row=header_row,
                           column=sorted(missing)[0], fix=f"covariates are {column_list(cmap.covariates)}")
    names = tuple(cmap.covariates)
    values = np.empty((len(cells), len(names)), dtype=np.float64)
    categories: dict[str, list] = {}
    dtypes = dict(zip(cells.columns, cells.dtypes))
    numeric = [k for k, name in enumerate(names) if name.upper() not in cat_upper and _is_number_dtype(dtypes[name])]
    if numeric:
        block = cells[[names[k] for k in numeric]].to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(block) <= MAX_ABS_VALUE)             # NaN, inf and absurd values
        if bad.any():
            j = int(np.flatnonzero(bad.any(axis=0))[0])
            i = int(np.flatnonzero(bad[:, j])[0])
            name, v = names[numeric[j]], block[i, j]
            if np.isnan(v):
                raise DatasetError("a covariate value is missing", source=source, row=int(rows[i]), column=name,
                                   value=".", fix=("impute it in the file, or leave the column out of the "
                                                   "covariates with covariates=[...]"))
            raise DatasetError(f"a covariate value is infinite or absurdly large (pmxgen rejects magnitudes above "
                               f"{MAX_ABS_VALUE:g})", source=source, row=int(rows[i]), column=name, value=_plain(v),
                               fix="correct the value, or leave the column out of the covariates with covariates=[...]")
        values[:, numeric] = block
    numeric_set = set(numeric)
    for k, name in enumerate(names):
        if k in numeric_set:
            continue
        raw = cells[name]
        if is_number_column(raw):          # a numeric column declared categorical
            number = raw.to_numpy(dtype=np.float64, na_value=np.nan)
            text = pd.Series(["." if np.isnan(v) else repr(float(v)) for v in number], dtype=object)
        else:
            text = raw.astype(str).str.strip()
        miss = text.isin(MISSING_TEXTS).to_numpy()
        if miss.any():
            i = int(np.flatnonzero(miss)[0])
            raise DatasetError("a covariate value is missing", source=source, row=int(rows[i]), column=name,
                               value=text.iloc[i], fix=("impute it in the file, or leave the column out of the "
                                                        "covariates with covariates=[...]"))
        number = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        if name.upper() in cat_upper or np.isnan(number).any():
            if np.isnan(number).any():
                labels = sorted(text.unique())
            else:
                labels = sorted(text.unique(), key=float)
            lookup = {lab: c for c, lab in enumerate(labels)}
            values[:, k] = np.array([lookup[v] for v in text], dtype=np.float64)
            categories[name] = [_id_value(lab) if not np.isnan(number).any() else lab for lab in labels]
        else:
            bad = ~np.isfinite(number) | (np.abs(np.nan_to_num(number)) > MAX_ABS_VALUE)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DatasetError(f"a covariate value is infinite or absurdly large (pmxgen rejects magnitudes above "
                                   f"{MAX_ABS_VALUE:g})", source=source, row=int(rows[i]), column=name,
                                   value=text.iloc[i], fix=("correct the value, or leave the column out of the "
                                                            "covariates with covariates=[...]"))
            values[:, k] = number
    return names, values, categories


def _typed_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """The data as the user wrote them, typed: numeric columns float64 ('.' → NaN), ID int when integral."""
    names = list(cells.columns)
    numeric = [c for c, d in zip(names, cells.dtypes) if _is_number_dtype(d)]
    numeric_set = set(numeric)
    parts = []
    if numeric:
        parts.append(pd.DataFrame(cells[numeric].to_numpy(dtype=np.float64, na_value=np.nan), columns=numeric))
    text = {}
    for name in names:
        if name in numeric_set:
            continue
        t = cells[name].astype(str).str.strip()
        missing = t.isin(MISSING_TEXTS)
        number = pd.to_numeric(t.where(~missing), errors="coerce")
        if (number.notna() | missing).all():
            text[name] = number.to_numpy(dtype=np.float64)
        else:
            text[name] = t.to_numpy(dtype=object)
    if text:
        parts.append(pd.DataFrame(text))
    out = pd.concat(parts, axis=1) if len(parts) > 1 else parts[0]
    if len(parts) > 1:
        out = out[names]
    for name in [n for n in names if n.upper() == "ID"]:
        if pd.api.types.is_float_dtype(out[name].dtype):
            values = out[name].to_numpy()
            if not np.isnan(values).any() and np.all(values == np.round(values)) and np.all(np.abs(values) < 2**53):
                out[name] = values.astype(np.int64)
    return out


def read_nonmem(data: str | os.PathLike | pd.DataFrame, *, columns: Mapping[str, str] | None = None,
                covariates: list[str] | None = None, categorical: Sequence[str] | None = None,
                occasion: str | None = None, sep: str | None = None, ignore: str | Sequence[str] = "#",
                require_doses: bool | None = None, encoding: str | None = None,
                dtype: torch.dtype = torch.float64, device: str | torch.device | None = None):
    """Read a NONMEM-style dosing/observation table.

    Parameters
    ----------
    data : path or pandas.DataFrame
        A comma- or whitespace-separated text file with a header line, or a DataFrame
        (NaN cells are NONMEM's missing mark '.').
    columns : dict, optional
        Canonical name → column in the data, for data with other names,
        e.g. ``{"ID": "Subject", "TIME": "Time", "DV": "conc"}``. Names are matched
        case-insensitively; unmapped canonical columns are looked up by their own name.
    covariates : list of str, optional
        Covariate columns; by default every column that is not a standard data item. Every
        column is kept in :meth:`Dataset.to_frame` either way; covariate tensors are gathered
        column by column when a model reads them, so many columns do not slow a fit.
    categorical : list of str, optional
        Covariates kept as categories (codes 0..K-1, labels in :attr:`Dataset.categories`).
        Non-numeric covariates are always categorical.
    occasion : str, optional
        Column of occasion labels (for inter-occasion variability).
    sep : str, optional
        Field separator; by default ',' when the header has a comma, else whitespace. A header
        separated by ';' (European CSV) is an error unless ``sep=';'`` is given.
    ignore : str or list of str
        Lines starting with one of these characters are comments (kept in
        :attr:`Dataset.ignored_lines`). ``'@'`` is NONMEM's ``IGNORE=@``: any data line whose
        first non-blank character is a letter or '@'.
    require_doses : bool, optional
        Whether the data must have an AMT column and at least one dose record (EVID 1 or 4), as
        NONMEM's PREDPP requires. Default: True for a file, False for a DataFrame (data made in
        code, e.g. for a non-PK model such as :func:`pmxgen.ppca_dataset`).
    encoding : str, optional
        Text encoding of a file; by default UTF-8 (with or without a byte-order mark). A
        Latin-1 file gives an error suggesting ``encoding='latin-1'``.
    dtype, device
        Floating dtype (float64 by default) and torch device of the tensors.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        On bad input, naming the file, row, column, value found and what to do.

    Warns
    -----
    DatasetWarning
        For usable but suspicious records (nothing is dropped): subjects without observations
        or without doses, observations before a subject's first dose, II without ADDL or SS,
        records repeated exactly, non-integer subject IDs, DV values on non-observation
        records of a file without MDV.

    Examples
    --------
    >>> import pandas as pd, pmxgen
    >>> df = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0.0, 1.0, 2.0], "AMT": [100.0, 0, 0],
    ...                    "DV": [float("nan"), 5.1, 3.2]})
    >>> ds = pmxgen.read_nonmem(df)
    >>> ds.n_subjects, ds.n_observations, ds.n_dose_records
    (1, 2, 1)
    """
    from .dataset import Dataset

    if isinstance(data, pd.DataFrame):
        cells, rows = _frame_to_cells(data)
        source, ignored, header_row = "<DataFrame>", [], None
        frame_columns = list(map(str, data.columns))
        require = bool(require_doses) if require_doses is not None else False
    else:
        source = str(data)
        if not Path(source).exists():
            raise DatasetError("the file does not exist", source=source, fix="check the path")
        cells, rows, ignored, header_row, _ = _read_cells(source, sep, ignore,
                                                          _text_columns(columns, occasion, categorical), encoding)
        frame_columns = list(cells.columns)
        require = bool(require_doses) if require_doses is not None else True
    records = validate_records(cells, rows, source, columns, covariates, categorical, occasion, header_row,
                               require_doses=require)
    frame = _typed_frame(cells)
    frame.columns = frame_columns
    _warn_duplicates(frame, rows, source)
    options = {"columns": dict(records.columns.standard), "covariates": list(records.columns.covariates),
               "categorical": list(records.categories), "occasion": occasion, "dtype": dtype, "device": device,
               "sep": sep, "ignore": ignore, "require_doses": require, "encoding": encoding}
    return Dataset._from_records(records, frame, ignored, dtype=dtype, device=device, options=options)


def _text_columns(columns: Mapping[str, str] | None, occasion: str | None,
                  categorical: Sequence[str] | None) -> frozenset[str]:
    """Upper-case names of the file columns read as text: NONMEM data items (and aliases), mapped, occasion, categorical."""
    names = set(STANDARD_COLUMNS) | {a for aliases in ALIASES.values() for a in aliases}
    names |= {str(v).upper() for v in (columns or {}).values()}
    names |= {str(c).upper() for c in (categorical or [])}
    if occasion is not None:
        names.add(str(occasion).upper())
    return frozenset(names)


def warn_subjects_without_observations(records: Records, n_obs_per_subject: np.ndarray) -> None:
    """Warn (never drop) when a subject has no observation records."""
    empty = np.flatnonzero(n_obs_per_subject == 0)
    if len(empty):
        names = ", ".join(str(records.ids[i]) for i in empty[:10]) + (
            f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        first_row = int(records.rows[np.flatnonzero(records.subject == empty[0])[0]])
        _warn(f"{len(empty)} subject(s) have no observations ({names}); they are kept (they add nothing to a "
              f"likelihood but are simulated)", records.source, first_row, records.columns.standard["ID"])
