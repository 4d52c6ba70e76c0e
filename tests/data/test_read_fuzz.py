"""Property-based tests of :func:`pmxgen.read_nonmem` (hypothesis; derandomized, so CI is reproducible).

* Random valid NONMEM files are read exactly: :meth:`Dataset.to_frame` is the table written,
  the counts of records, observations and doses are those written, and reading the frame
  again gives the same dataset.
* Random corruptions of valid files (bad numbers, missing or extra cells, shuffled or
  deleted lines, negative amounts, absurd values, stray bytes, ...) either raise
  :class:`DatasetError` or read with every data line kept (rows in == rows out); no other
  exception type and no warning other than :class:`DatasetWarning`.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pmxgen
import pmxgen.structural  # noqa: F401  (import at collection: torchdiffeq/scipy take ~1 s)
from pmxgen.errors import DatasetError, DatasetWarning

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------ valid files
numbers = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)
values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def valid_tables(draw) -> tuple[pd.DataFrame, dict]:
    """A valid NONMEM table as a typed DataFrame (NaN = '.'), and what it holds."""
    with_evid = draw(st.booleans())
    with_mdv = draw(st.booleans())
    with_cmt = draw(st.booleans())
    with_cov = draw(st.booleans())
    with_sex = draw(st.booleans())
    n_subjects = draw(st.integers(1, 4))
    ids = np.cumsum(draw(st.lists(st.integers(1, 500), min_size=n_subjects, max_size=n_subjects))).tolist()
    rows, n_obs, n_dose = [], 0, 0
    for sid in ids:
        wt = draw(st.floats(min_value=1.0, max_value=200.0, allow_nan=False))
        sex = draw(st.sampled_from(["M", "F"]))
        time = draw(numbers)
        kinds = ["dose"] + draw(st.lists(st.sampled_from(["obs", "obs", "dose", "other"]), min_size=1, max_size=6))
        for kind in kinds:
            time += draw(st.floats(min_value=0.0, max_value=100.0, allow_nan=False))
            row = {"ID": sid, "TIME": time, "DV": math.nan, "AMT": 0.0, "EVID": 0, "MDV": 1, "CMT": 1}
            if kind == "dose":
                row.update(AMT=draw(st.floats(min_value=1e-3, max_value=1e5, allow_nan=False)), EVID=1)
                n_dose += 1
            elif kind == "obs":
                row.update(DV=draw(values), MDV=0, CMT=2)
                n_obs += 1
            else:
                row.update(EVID=2)
            if not with_evid and kind == "other":
                continue                       # without EVID an 'other' record is spelled differently
            if with_cov:
                row["WT"] = wt if draw(st.booleans()) else draw(st.floats(min_value=1.0, max_value=200.0))
            if with_sex:
                row["SEX"] = sex
            rows.append(row)
    frame = pd.DataFrame(rows)
    keep = ["ID", "TIME", "DV", "AMT"] + (["EVID"] if with_evid else []) + (["MDV"] if with_mdv else []) \
        + (["CMT"] if with_cmt else []) + (["WT"] if with_cov else []) + (["SEX"] if with_sex else [])
    frame = frame[keep]
    for c in ("TIME", "DV", "AMT"):
        frame[c] = frame[c].astype(np.float64)
    for c in ("EVID", "MDV", "CMT"):
        if c in frame:
            frame[c] = frame[c].astype(np.float64)
    return frame, {"n_obs": n_obs, "n_dose": n_dose, "n_subjects": n_subjects}


def to_text(frame: pd.DataFrame, sep: str = ",") -> str:
    """The table as a NONMEM file: '.' for missing, floats written exactly (repr)."""
    def cell(v):
        if isinstance(v, str):
            return v
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        return "." if math.isnan(v) else repr(float(v))
    lines = [sep.join(frame.columns)]
    lines += [sep.join(cell(v) for v in row) for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def read(path_or_frame, **kwargs):
    """Read; fail on any warning that is not a DatasetWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pmxgen.read_nonmem(path_or_frame, **kwargs)
    others = [w for w in caught if not issubclass(w.category, DatasetWarning)]
    assert not others, [str(w.message) for w in others]
    return ds


@FUZZ
@given(table=valid_tables(), whitespace=st.booleans())
def test_valid_files_read_exactly(folder, table, whitespace):
    frame, facts = table
    path = folder / "valid.csv"
    path.write_text(to_text(frame, " " if whitespace else ","))
    ds = read(path)
    out = ds.to_frame()
    expected = frame.copy()
    expected["ID"] = expected["ID"].astype(np.int64)
    pd.testing.assert_frame_equal(out, expected, check_exact=True)
    assert ds.n_records == len(frame)
    assert ds.n_observations == facts["n_obs"] and ds.n_dose_records == facts["n_dose"]
    assert ds.n_subjects == facts["n_subjects"]
    # the observation tensors hold exactly the DVs written, in file order
    obs = ds.batch.obs
    written = frame.loc[(frame.get("EVID", 0) == 0) & frame["DV"].notna(), "DV"].to_numpy()
    assert obs.dv[obs.mask].numpy().tolist() == written.tolist()
    again = read(out)
    pd.testing.assert_frame_equal(again.to_frame(), out, check_exact=True)
    assert again.ids == ds.ids and again.n_observations == ds.n_observations


# ------------------------------------------------------------------ corrupted files
TOKENS = ["abc", "", ".", "NaN", "NA", "-5", "-1", "0", "1", "2.5", "1e400", "-1e300", "1e101", "1,5", "inf",
          "1O0", "\"", "#", "@", " ", "3", "4", "100000000", "-0", "1e-400", "True", "２", "9" * 30]


@st.composite
def corrupted_files(draw) -> str:
    frame, _ = draw(valid_tables())
    lines = to_text(frame).splitlines()
    header, data = lines[0], lines[1:]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cell", "cell", "cell", "drop_cell", "extra_cell", "swap", "delete", "duplicate",
                                     "negate_amt", "blank", "comment", "separators", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        fields = data[i].split(",")
        if kind == "cell":
            fields[draw(st.integers(0, len(fields) - 1))] = draw(st.sampled_from(TOKENS))
            data[i] = ",".join(fields)
        elif kind == "drop_cell":
            del fields[draw(st.integers(0, len(fields) - 1))]
            data[i] = ",".join(fields)
        elif kind == "extra_cell":
            data[i] = data[i] + "," + draw(st.sampled_from(TOKENS))
        elif kind == "swap":
            j = draw(st.integers(0, len(data) - 1))
            data[i], data[j] = data[j], data[i]
        elif kind == "delete":
            del data[i]
        elif kind == "duplicate":
            data.insert(i, data[i])
        elif kind == "negate_amt":
            k = header.split(",").index("AMT")
            fields[k] = "-" + fields[k]
            data[i] = ",".join(fields)
        elif kind == "blank":
            data.insert(i, "")
        elif kind == "comment":
            data.insert(i, "# " + data[i])
        elif kind == "separators":
            data.insert(i, "," * (len(fields) - 1))
        else:
            data[i] = data[i][:draw(st.integers(0, len(data[i])))]
    return "\n".join([header] + data) + "\n"


def data_lines(text: str) -> int:
    """Data records of a comma-separated file: the lines after the header that are not blank, comments or separators."""
    lines = text.splitlines()[1:]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#")
               and line.replace(",", "").strip().strip('"'))


@FUZZ
@given(text=corrupted_files())
def test_corrupted_files_raise_dataset_error_or_keep_every_record(folder, text):
    path = folder / "corrupted.csv"
    path.write_text(text)
    try:
        ds = read(path)
    except DatasetError as err:
        assert str(path) in str(err)
        event(f"DatasetError: {err.problem[:40]}")
        return
    event("read")
    expected = data_lines(text)
    assert ds.n_records == expected
    assert len(ds.to_frame()) == expected
    assert int(ds.batch.obs.mask.sum()) == ds.n_observations
    assert ds.n_observations + ds.n_dose_records <= ds.n_records


@FUZZ
@given(text=corrupted_files(), data=st.data())
def test_corrupted_bytes_raise_dataset_error_or_read(folder, text, data):
    raw = bytearray(text.encode())
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position:position] = data.draw(st.sampled_from([b"\xff", b"\xe9", b"\x00", b";", b"\r", b"\t", b"\xc3\xa9"]))
    path = folder / "bytes.csv"
    path.write_bytes(bytes(raw))
    try:
        ds = read(path)
    except DatasetError as err:
        assert str(path) in str(err)
        event(f"DatasetError: {err.problem[:40]}")
        return
    event("read")
    assert ds.n_records == len(ds.to_frame())


@FUZZ
@given(table=valid_tables(), data=st.data())
def test_corrupted_frames_raise_dataset_error_or_keep_every_row(table, data):
    frame, _ = table
    frame = frame.astype(object)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(frame) - 1))
        j = (data.draw(st.integers(0, frame.shape[1] - 1)) + 1) % frame.shape[1]      # ID the least often
        frame.iat[i, j] = data.draw(st.sampled_from([None, math.nan, math.inf, -1.0, -1e300, 1e300, "x", 0, 1.5,
                                                     True, "", 7]))
    try:
        ds = read(frame)
    except DatasetError as err:
        assert "<DataFrame>" in str(err)
        event(f"DatasetError: {err.problem[:40]}")
        return
    event("read")
    assert ds.n_records == len(frame) == len(ds.to_frame())
