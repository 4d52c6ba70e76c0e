"""Reading NONMEM-style event tables into a :class:`~pmxgen.data.dataset.Dataset`.

Reading has three stages: the text is split into cells (``_read_cells``), every
record is validated with NONMEM's rules (``validate_records``), and the
records become padded per-subject tensors (:mod:`pmxgen.data.batching`).
Nothing is dropped: comment lines are kept in :attr:`Dataset.ignored_lines`
and every data row is returned by :meth:`Dataset.to_frame`.
"""
from __future__ import annotations

import csv
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import DatasetError, DatasetWarning
from .columns import MISSING_TEXTS, ColumnMap, parse_numeric, resolve_columns

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
    covariates: dict[str, np.ndarray]
    categories: dict[str, list]
    occasion: np.ndarray | None
    occasion_labels: list | None
    columns: ColumnMap


def _split_fields(line: str, sep: str) -> list[str] | None:
    """The fields of one line (quotes respected), or None for a separator we cannot split simply."""
    if sep == r"\s+":
        return line.split()
    if len(sep) == 1:
        return next(csv.reader([line], delimiter=sep, skipinitialspace=True), [])
    return None


def _read_cells(path: str, sep: str | None,
                ignore: str | Sequence[str]) -> tuple[pd.DataFrame, np.ndarray, list, int]:
    """Split a text file into string cells; returns (cells, file line of each row, ignored lines, header line)."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as exc:
        raise DatasetError("the file is not text", source=path, fix="give a CSV or whitespace-separated text file") from exc
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
    if not data:
        raise DatasetError("the file has a header but no data records", source=path, row=header_line[0],
                           fix="add data records below the header")
    if sep is None:
        sep = "," if "," in header_line[1] else r"\s+"
    # Check the header and the field counts here: pandas silently renames a duplicated column
    # ('AMT' -> 'AMT.1'), pads a short record with empty cells and, when every record has one
    # field more than the header, turns the first column into the index.
    header_fields = _split_fields(header_line[1], sep)
    if header_fields is not None:
        names = [f.strip().strip('"') for f in header_fields]
        seen: set[str] = set()
        for name in names:
            if name.upper() in seen:
                raise DatasetError("the header names a column twice", source=path, row=header_line[0], column=name,
                                   value=name, fix="rename one of the two columns")
            seen.add(name.upper())
        for number, line in data:
            fields_ = _split_fields(line.strip() if sep == r"\s+" else line, sep)
            if len(fields_) != len(names):
                raise DatasetError(f"the record has {len(fields_)} fields but the header has {len(names)}",
                                   source=path, row=number, fix="check the separators and empty fields on that line")
    body = "\n".join([header_line[1]] + [d[1].strip() if sep == r"\s+" else d[1] for d in data])
    try:
        cells = pd.read_csv(io.StringIO(body), sep=sep, dtype=str, keep_default_na=False,
                            engine="python" if sep == r"\s+" else "c", skipinitialspace=True)
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        row = data[int(match.group(1)) - 2][0] if match and int(match.group(1)) - 2 < len(data) else None
        raise DatasetError(f"the record has a different number of fields than the header ({exc})", source=path,
                           row=row, fix="check the separators on that line") from exc
    if len(cells) != len(data):
        raise DatasetError("some records could not be split into fields", source=path,
                           fix="check for quotes or separators inside values")
    cells.columns = [str(c).strip().strip('"') for c in cells.columns]
    for c in cells.columns:
        cells[c] = cells[c].str.strip().str.strip('"')
    rows = np.array([d[0] for d in data], dtype=np.int64)
    return cells, rows, ignored, header_line[0]


def _frame_to_cells(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Turn a typed DataFrame into string cells; NaN becomes NONMEM's '.' (missing)."""
    if len(frame) == 0:
        raise DatasetError("the DataFrame has no rows", fix="give a DataFrame with data records")
    names = [str(c) for c in frame.columns]
    seen: set[str] = set()
    for name in names:
        if name.upper() in seen:
            raise DatasetError("the DataFrame names a column twice", column=name, value=name,
                               fix="rename one of the two columns")
        seen.add(name.upper())
    cells = pd.DataFrame(index=range(len(frame)))
    for j, name in enumerate(names):
        values = frame.iloc[:, j]
        if pd.api.types.is_float_dtype(values):
            arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
            cells[name] = [("." if np.isnan(v) else repr(float(v))) for v in arr]
        else:
            cells[name] = ["." if _is_missing(v) else str(v).strip() for v in values.tolist()]
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
    return int(x) if float(x).is_integer() else float(x)


def _fail(mask: np.ndarray, problem: str, records_source: str, rows: np.ndarray, column: str, values: np.ndarray,
          fix: str) -> None:
    if mask.any():
        i = int(np.flatnonzero(mask)[0])
        raise DatasetError(problem, source=records_source, row=int(rows[i]), column=column,
                           value=_plain(values[i]) if np.issubdtype(np.asarray(values).dtype, np.number) else values[i],
                           fix=fix)


def validate_records(cells: pd.DataFrame, rows: np.ndarray, source: str, columns: Mapping[str, str] | None,
                     covariates: list[str] | None, categorical: Sequence[str] | None,
                     occasion: str | None, header_row: int | None = 1) -> Records:
    """Type and check every record (NONMEM rules); raise :class:`DatasetError` on the first problem.

    ``header_row`` is the row named in messages about the header (its file line; None for a DataFrame).
    """
    cmap = resolve_columns(list(cells.columns), columns, covariates, source, header_row=header_row)
    col = cmap.standard
    n = len(cells)

    def num(name: str, missing_as: float | None, allow_nan: bool = False, default: float = 0.0) -> np.ndarray:
        if name not in col:
            return np.full(n, default)
        return parse_numeric(cells[col[name]], col[name], source, rows, missing_as=missing_as, allow_nan=allow_nan)

    id_text = cells[col["ID"]].astype(str).str.strip()
    _fail(id_text.isin(MISSING_TEXTS).to_numpy(), "a record has no subject ID", source, rows, col["ID"],
          id_text.to_numpy(), "give every record the ID of its subject")
    time = num("TIME", missing_as=None)
    _fail(np.isnan(time), "TIME is missing", source, rows, col["TIME"], cells[col["TIME"]].to_numpy(),
          "give every record a time")
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
        mdv = np.where(evid != 0, 1.0, mdv)
    else:
        mdv = np.where((evid == 0) & ~np.isnan(dv), 0.0, 1.0)
    is_obs = (evid == 0) & (mdv == 0)
    _fail(is_obs & np.isnan(dv), "NaN where a number is needed: an observation record has no DV", source, rows,
          col["DV"], cells[col["DV"]].to_numpy(), "give the observed value, or set MDV=1 if it is not an observation")
    _fail(~is_dose & (amt > 0), "AMT > 0 on a record that is not a dose", source, rows, col.get("AMT", "AMT"), amt,
          "set EVID to 1 (dose) or 4 (reset and dose), or AMT to 0")
    _integer_check(ss, col.get("SS", "SS"), source, rows, (0, 1, 2), "SS must be 0, 1 (reset to steady state) or 2 "
                   "(add steady state)")
    _integer_check(addl, col.get("ADDL", "ADDL"), source, rows, None, "ADDL must be a whole number >= 0")
    _integer_check(cmt, col.get("CMT", "CMT"), source, rows, None,
                   "CMT must be a whole compartment number >= 1 (0 or '.' means the model's default)")
    _fail(ii < 0, "II is negative", source, rows, col.get("II", "II"), ii, "II is the dosing interval, > 0")
    const_ss_infusion = is_dose & (ss > 0) & (amt == 0) & (rate > 0)
    _fail(const_ss_infusion, "steady-state constant infusion (AMT 0, RATE > 0, SS > 0) is not supported", source,
          rows, col.get("SS", "SS"), ss, "give the infusion as AMT and RATE with an II, or as a long infusion record")
    _fail(is_dose & (amt == 0), "a dose record has AMT 0 (a '.' or empty AMT reads as 0)", source, rows,
          col.get("AMT", "AMT"), cells[col["AMT"]].to_numpy() if "AMT" in col else amt,
          "give the dose amount, or make the record EVID 2 (other)")
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

    ids = [_id_value(v) for v in first_index]
    covs, categories = _covariates(cells, cmap, rows, source, categorical, header_row)
    occ, occ_labels = (None, None)
    if occasion is not None:
        if occasion.upper() not in {c.upper() for c in cells.columns}:
            raise DatasetError("the occasion column is not in the file", source=source, row=header_row,
                               column=occasion,
                               fix=f"the file's columns are {', '.join(cells.columns)}")
        occ_col = next(c for c in cells.columns if c.upper() == occasion.upper())
        occ_text = cells[occ_col].astype(str).str.strip()
        numeric_occ = pd.to_numeric(occ_text, errors="coerce")
        # Numeric labels in numeric order (2 before 10), text labels alphabetically.
        labels = sorted(occ_text.unique(), key=float) if not numeric_occ.isna().any() else sorted(occ_text.unique())
        lookup = {lab: k for k, lab in enumerate(labels)}
        occ_labels = [_id_value(v) for v in labels]
        occ = np.array([lookup[v] for v in occ_text], dtype=np.int64)
    return Records(source=source, rows=rows, subject=codes.astype(np.int64), ids=ids, time=time, dv=dv, amt=amt,
                   evid=evid.astype(np.int64), mdv=mdv.astype(np.int64), cmt=cmt.astype(np.int64), rate=rate, ii=ii,
                   addl=addl.astype(np.int64), ss=ss.astype(np.int64), blq=blq.astype(bool), lloq=lloq,
                   covariates=covs, categories=categories, occasion=occ, occasion_labels=occ_labels, columns=cmap)


def _id_value(v: str) -> object:
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() else f


def _covariates(cells: pd.DataFrame, cmap: ColumnMap, rows: np.ndarray, source: str,
                categorical: Sequence[str] | None,
                header_row: int | None = 1) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    cat_upper = {c.upper() for c in (categorical or [])}
    missing = cat_upper - {c.upper() for c in cmap.covariates}
    if missing:
        raise DatasetError("a categorical column is not a covariate of the file", source=source, row=header_row,
                           column=sorted(missing)[0], fix=f"covariates are {', '.join(cmap.covariates)}")
    covs: dict[str, np.ndarray] = {}
    categories: dict[str, list] = {}
    for name in cmap.covariates:
        text = cells[name].astype(str).str.strip()
        miss = text.isin(MISSING_TEXTS).to_numpy()
        if miss.any():
            i = int(np.flatnonzero(miss)[0])
            raise DatasetError("a covariate value is missing", source=source, row=int(rows[i]), column=name,
                               value=text.iloc[i], fix=("impute it in the file, or leave the column out of the "
                                                        "covariates with covariates=[...]"))
        numeric = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        if name.upper() in cat_upper or np.isnan(numeric).any():
            if np.isnan(numeric).any():
                labels = sorted(text.unique())
            else:
                labels = sorted(text.unique(), key=float)
            lookup = {lab: k for k, lab in enumerate(labels)}
            covs[name] = np.array([lookup[v] for v in text], dtype=np.float64)
            categories[name] = [_id_value(lab) if not np.isnan(numeric).any() else lab for lab in labels]
        else:
            covs[name] = numeric
    return covs, categories


def _typed_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """The data as the user wrote them, typed: numeric columns float64 ('.' → NaN), ID int when integral."""
    out = {}
    for name in cells.columns:
        text = cells[name].astype(str).str.strip()
        missing = text.isin(MISSING_TEXTS)
        numeric = pd.to_numeric(text.where(~missing), errors="coerce")
        if (numeric.notna() | missing).all():
            values = numeric.to_numpy(dtype=np.float64)
            if name.upper() == "ID" and not np.isnan(values).any() and np.all(values == np.round(values)):
                out[name] = values.astype(np.int64)
            else:
                out[name] = values
        else:
            out[name] = text.to_numpy(dtype=object)
    return pd.DataFrame(out)


def read_nonmem(data: str | os.PathLike | pd.DataFrame, *, columns: Mapping[str, str] | None = None,
                covariates: list[str] | None = None, categorical: Sequence[str] | None = None,
                occasion: str | None = None, sep: str | None = None, ignore: str | Sequence[str] = "#",
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
        Covariate columns; by default every column that is not a standard data item.
    categorical : list of str, optional
        Covariates kept as categories (codes 0..K-1, labels in :attr:`Dataset.categories`).
        Non-numeric covariates are always categorical.
    occasion : str, optional
        Column of occasion labels (for inter-occasion variability).
    sep : str, optional
        Field separator; by default ',' when the header has a comma, else whitespace.
    ignore : str or list of str
        Lines starting with one of these characters are comments (kept in
        :attr:`Dataset.ignored_lines`). ``'@'`` is NONMEM's ``IGNORE=@``: any data line whose
        first non-blank character is a letter or '@'.
    dtype, device
        Floating dtype (float64 by default) and torch device of the tensors.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        On bad input, naming the file, row, column, value found and what to do.

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
    else:
        source = str(data)
        if not Path(source).exists():
            raise DatasetError("the file does not exist", source=source, fix="check the path")
        cells, rows, ignored, header_row = _read_cells(source, sep, ignore)
        frame_columns = list(cells.columns)
    records = validate_records(cells, rows, source, columns, covariates, categorical, occasion, header_row)
    frame = _typed_frame(cells)
    frame.columns = frame_columns
    options = {"columns": dict(records.columns.standard), "covariates": list(records.columns.covariates),
               "categorical": list(records.categories), "occasion": occasion, "dtype": dtype, "device": device,
               "sep": sep, "ignore": ignore}
    return Dataset._from_records(records, frame, ignored, dtype=dtype, device=device, options=options)


def warn_subjects_without_observations(records: Records, n_obs_per_subject: np.ndarray) -> None:
    """Warn (never drop) when a subject has no observation records."""
    empty = np.flatnonzero(n_obs_per_subject == 0)
    if len(empty):
        names = ", ".join(str(records.ids[i]) for i in empty[:10])
        first_row = int(records.rows[np.flatnonzero(records.subject == empty[0])[0]])
        warnings.warn(DatasetWarning(
            f"{records.source}, row {first_row}, column {records.columns.standard['ID']}: {len(empty)} subject(s) "
            f"have no observations ({names}); they are kept (they add nothing to a likelihood but are simulated)"),
            stacklevel=4)
