"""Bad or unusual input a user makes (issue 21): every case is an error or a warning naming where it is.

Errors (:class:`DatasetError`) and warnings (:class:`DatasetWarning`) name the file, ``row N``
with N the file line (header = line 1), the column as written in the file, the value found and
what to do. Nothing is dropped: every record is in :meth:`Dataset.to_frame`.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pmxgen
import pmxgen.structural  # noqa: F401  (import at collection: torchdiffeq/scipy take ~1 s)
from pmxgen.errors import DatasetError, DatasetWarning

DATASETS_DIR = Path(__file__).resolve().parents[2] / "datasets"


def write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_error(path_or_frame, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        pmxgen.read_nonmem(path_or_frame, **kwargs)
    return info.value


def check(err: DatasetError, source: str, row: int | None, column: str | None, value: object = None) -> str:
    """The message and the attributes name source, row, column and value."""
    msg = str(err)
    assert source in msg, msg
    if row is None:
        assert err.row is None, msg
    else:
        assert re.search(rf"\brow {row}\b", msg), msg
        assert err.row == row, msg
    if column is not None:
        assert f"column {column}" in msg, msg
        assert err.column == column, msg
    if value is not None:
        assert repr(value) in msg, msg
        assert err.value == value, msg
    return msg


def read_warnings(path_or_frame, **kwargs) -> tuple[pmxgen.Dataset, list[str]]:
    """Read, returning the dataset and the text of every DatasetWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pmxgen.read_nonmem(path_or_frame, **kwargs)
    return ds, [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]


def read_quietly(path_or_frame, **kwargs) -> pmxgen.Dataset:
    """Read; any warning is a test failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return pmxgen.read_nonmem(path_or_frame, **kwargs)


def one_warning(messages: list[str], needle: str) -> str:
    hits = [m for m in messages if needle in m]
    assert len(hits) == 1, messages
    return hits[0]


# ------------------------------------------------------------------ 1. DV on non-observation records
def test_evid2_with_mdv0_and_dv_is_an_error(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,EVID,MDV\n1,0,.,100,1,1\n1,1,5,0,0,0\n1,2,4.2,0,2,0\n")
    msg = check(read_error(path), path.name, 4, "MDV", 0)
    assert "EVID 2" in msg and "4.2" in msg and "would not be used" in msg
    assert "MDV=1" in msg and "EVID=0" in msg                          # what to do


def test_dose_with_mdv0_and_dv_is_an_error_evid_inferred(tmp_path):
    # no EVID column: AMT > 0 makes the record a dose, whose DV NONMEM ignores
    path = write(tmp_path, "ID,TIME,DV,AMT,MDV\n1,0,3.5,100,0\n1,1,5,0,0\n")
    msg = check(read_error(path), path.name, 2, "MDV", 0)
    assert "AMT > 0" in msg and "3.5" in msg


def test_evid2_with_mdv1_or_without_dv_reads(tmp_path):
    text = "ID,TIME,DV,AMT,EVID,MDV\n1,0,.,100,1,1\n1,1,5,0,0,0\n1,2,4.2,0,2,1\n1,3,.,0,2,0\n1,4,3,0,0,0\n"
    ds = read_quietly(write(tmp_path, text))
    assert ds.n_records == 5 and ds.n_observations == 2
    assert ds.to_frame()["DV"].tolist()[2] == 4.2                      # kept in the frame, not an observation


def test_dv_on_dose_record_without_mdv_column_warns(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,EVID\n1,0,7,100,1\n1,1,5,0,0\n1,2,4,0,0\n")
    ds, messages = read_warnings(path)
    msg = one_warning(messages, "not observations")
    assert path.name in msg and "row 2" in msg and "column DV" in msg and "(found 7)" in msg
    assert ds.n_observations == 2 and ds.n_records == 3
    # DV 0 or '.' on a dose record is the usual placeholder: no warning
    read_quietly(write(tmp_path, "ID,TIME,DV,AMT,EVID\n1,0,0,100,1\n1,1,5,0,0\n", "zero.csv"))


# ------------------------------------------------------------------ 2. absurd values
@pytest.mark.parametrize("column, cell, value", [
    ("TIME", "1e300", "1e300"),
    ("DV", "-1e300", "-1e300"),
    ("AMT", "1e101", "1e101"),
    ("AMT", "1e400", "1e400"),          # overflows to inf when parsed
    ("RATE", "1e200", "1e200"),
    ("II", "5e150", "5e150"),
])
def test_absurd_values_are_rejected(tmp_path, column, cell, value):
    row = {"ID": "1", "TIME": "2", "DV": "4", "AMT": "0", "RATE": "0", "II": "0", "ADDL": "0"}
    if column in ("AMT", "RATE", "II"):
        row.update(DV=".", AMT="100", ADDL="1", II="12")
    row[column] = cell
    header = "ID,TIME,DV,AMT,RATE,II,ADDL"
    text = f"{header}\n1,0,.,100,0,0,0\n1,1,5,0,0,0,0\n" + ",".join(row[c] for c in header.split(",")) + "\n"
    path = write(tmp_path, text)
    msg = check(read_error(path), path.name, 4, column, value)
    assert ("1e+100" in msg and "overflow" in msg) or "infinite" in msg


def test_absurd_covariate_value_is_rejected(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,WT\n1,0,.,100,70\n1,1,5,0,7e200\n")
    msg = check(read_error(path), path.name, 3, "WT", 7e200)
    assert "1e+100" in msg


def test_large_but_sane_values_read(tmp_path):
    ds = read_quietly(write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,1e50\n1,1,1e99,0\n"))
    assert ds.batch.obs.dv.max().item() == 1e99


def test_huge_addl_is_rejected(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,II,ADDL\n1,0,.,100,24,5000000\n1,1,5,0,0,0\n")
    msg = check(read_error(path), path.name, 2, "ADDL", 5000000)
    assert "implausibly large" in msg


# ------------------------------------------------------------------ 3. dose records
def test_file_without_any_dose_is_an_error(tmp_path):
    path = write(tmp_path, "# no doses\nID,TIME,DV,AMT\n1,0,.,0\n1,1,5,0\n2,1,4,.\n")
    msg = check(read_error(path), path.name, 2, "AMT")
    assert "no dose records (AMT > 0 with EVID 1 or 4" in msg and "require_doses=False" in msg


def test_file_without_doses_reads_with_require_doses_false(tmp_path):
    path = write(tmp_path, "ID,TIME,DV\n1,1,5\n1,2,4\n")
    ds = read_quietly(path, require_doses=False)
    assert ds.n_observations == 2 and ds.n_dose_records == 0


def test_dataframe_without_doses_reads_for_non_pk_models():
    df = pd.DataFrame({"ID": [1, 1, 2, 2], "TIME": [1.0, 2.0, 1.0, 2.0], "DV": [5.0, 4.0, 3.0, 2.0]})
    ds = read_quietly(df)
    assert ds.n_observations == 4 and ds.n_dose_records == 0
    err = read_error(df, require_doses=True)
    check(err, "<DataFrame>", None, "AMT")
    assert "required column AMT is missing" in str(err)


def test_ppca_dataset_has_no_doses_and_no_warnings():
    x = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 6.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = pmxgen.ppca_dataset(x)
    assert data.n_dose_records == 0 and data.n_observations == 5


def test_subject_without_dose_while_others_have_warns(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n2,1,4,0\n2,2,3,0\n3,0,.,100\n3,1,5,0\n")
    ds, messages = read_warnings(path)
    msg = one_warning(messages, "no dose record")
    assert path.name in msg and "row 4" in msg and "column ID" in msg and "(ID 2)" in msg
    assert ds.n_subjects == 3 and ds.n_records == 6


def test_subset_and_with_dv_do_not_repeat_warnings_or_require_doses(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n2,1,4,0\n2,2,3,0\n")
    ds, messages = read_warnings(path)
    assert len(messages) == 1                                           # subject 2 has no dose
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        undosed = ds.subset([2])                                        # a file needs doses; its subset need not
        again = ds.with_dv(ds.batch.obs.dv * 2)
    assert undosed.n_dose_records == 0 and undosed.n_observations == 2
    assert again.n_records == 4


def test_observations_all_before_first_dose_warn(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n2,0,1,0\n2,0.5,2,0\n2,1,.,100\n")
    ds, messages = read_warnings(path)
    msg = one_warning(messages, "before the first dose")
    assert "row 4" in msg and "column TIME" in msg and "ID 2" in msg and "rows 4, 5" in msg
    assert "every observation of subject(s) 2" in msg
    assert ds.n_observations == 3


# ------------------------------------------------------------------ 5. file formats
def test_european_csv_is_detected(tmp_path):
    path = write(tmp_path, "ID;TIME;DV;AMT\n1;0;.;100\n1;0,5;5,1;0\n")
    msg = check(read_error(path), path.name, 1, None, "ID;TIME;DV;AMT")
    assert "';'" in msg and "decimal comma" in msg and "decimal=','" in msg


def test_decimal_comma_with_explicit_separator(tmp_path):
    path = write(tmp_path, "ID;TIME;DV;AMT\n1;0;.;100\n1;0,5;5.1;0\n")
    msg = check(read_error(path, sep=";"), path.name, 3, "TIME", "0,5")
    assert "decimal comma" in msg and "0.5" in msg
    ok = write(tmp_path, "ID;TIME;DV;AMT\n1;0;.;100\n1;0.5;5.1;0\n", "ok.csv")
    assert read_quietly(ok, sep=";").n_observations == 1


def test_units_row_under_header(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n,h,mg/L,mg\n1,0,.,100\n1,1,5,0\n")
    msg = check(read_error(path), path.name, 2, "TIME", "h")
    assert "units" in msg and "'mg/L'" in msg and "'#'" in msg
    commented = write(tmp_path, "ID,TIME,DV,AMT\n#,h,mg/L,mg\n1,0,.,100\n1,1,5,0\n", "commented.csv")
    ds = read_quietly(commented)
    assert (2, "#,h,mg/L,mg") in ds.ignored_lines and ds.n_records == 2


def test_trailing_empty_columns_are_ignored(tmp_path):
    text = "ID,TIME,DV,AMT,WT,,,\n1,0,.,100,70,,,\n1,1,5,0,70,,,\n,,,,,,,\n"
    ds = read_quietly(write(tmp_path, text))
    frame = ds.to_frame()
    assert list(frame.columns) == ["ID", "TIME", "DV", "AMT", "WT"]
    assert ds.n_records == 2 and ds.covariate_names == ("WT",)
    assert (4, ",,,,,,,") in ds.ignored_lines                          # an empty spreadsheet row


def test_nameless_column_with_values_is_an_error(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,\n1,0,.,100,\n1,1,5,0,x\n")
    msg = check(read_error(path), path.name, 3, "#5", "x")
    assert "no name" in msg


def test_latin1_file(tmp_path):
    raw = "ID,TIME,DV,AMT,SITE\n1,0,.,100,Zürich\n1,1,5,0,Zürich\n".encode("latin-1")
    path = write(tmp_path, raw)
    msg = check(read_error(path), path.name, 2, None)
    assert "0xFC" in msg and "Latin-1" in msg and "encoding='latin-1'" in msg and "UTF-8" in msg
    ds = read_quietly(path, encoding="latin-1")
    assert ds.to_frame()["SITE"].tolist() == ["Zürich", "Zürich"]
    assert ds.categories["SITE"] == ["Zürich"]


def test_utf8_with_byte_order_mark(tmp_path):
    path = write(tmp_path, "\ufeffID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n".encode("utf-8"))
    assert list(read_quietly(path).to_frame().columns) == ["ID", "TIME", "DV", "AMT"]


def test_binary_file(tmp_path):
    path = write(tmp_path, b"PK\x03\x04\x00\x00\xff\xfe binary spreadsheet")
    msg = str(read_error(path))
    assert "not text" in msg and "NUL" in msg


# ------------------------------------------------------------------ 6. required columns
def test_missing_amt_column_names_the_columns_found(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,WT\n1,0,3,70\n1,1,5,70\n")
    msg = check(read_error(path), path.name, 1, "AMT")
    assert "required column AMT is missing" in msg and "ID, TIME, DV, WT" in msg


def test_missing_column_message_of_a_wide_file_is_short(tmp_path):
    header = ",".join(["ID", "TIME", "AMT"] + [f"X{j}" for j in range(500)])
    path = write(tmp_path, header + "\n" + ",".join(["1", "0", "100"] + ["0"] * 500) + "\n")
    msg = check(read_error(path), path.name, 1, "DV")
    assert "X16" in msg and "X17" not in msg and "503 columns in all" in msg and len(msg) < 600


# ------------------------------------------------------------------ 7. warnings
def test_ii_without_addl_or_ss_warns(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,II,ADDL\n1,0,.,100,12,0\n1,1,5,0,0,0\n1,12,.,100,12,2\n")
    ds, messages = read_warnings(path)
    msg = one_warning(messages, "II > 0 without ADDL or SS")
    assert "row 2" in msg and "column II" in msg and "(found 12)" in msg and "rows 2)" in msg
    assert ds.n_dose_events == 4                                        # 1 + (1 + 2 ADDL)


def test_duplicated_records_warn(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,WT\n1,0,.,100,70\n1,1,5,0,70\n1,1,5,0,70\n1,2,4,0,70\n1,2,4,0,71\n")
    ds, messages = read_warnings(path)
    msg = one_warning(messages, "repeat an earlier record")
    assert "row 4 = row 3" in msg and "row 6" not in msg and msg.startswith(f"{path}, row 4:")
    assert ds.n_observations == 4 and len(ds.to_frame()) == 5            # both copies are used


def test_fractional_id_warns(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1.5,0,.,100\n1.5,1,5,0\n2,0,.,100\n2,1,4,0\n")
    ds, messages = read_warnings(path)
    msg = one_warning(messages, "non-integer subject IDs")
    assert "row 2" in msg and "column ID" in msg and "1.5 -> 1" in msg
    assert ds.ids == [1.5, 2]


def test_fractional_id_that_truncates_onto_another_subject_is_an_error(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n1.5,0,.,100\n1.5,1,4,0\n")
    msg = check(read_error(path), path.name, 4, "ID", "1.5")
    assert "truncates" in msg and "merges" in msg


# ------------------------------------------------------------------ no false alarms
@pytest.mark.parametrize("path", sorted(p for p in DATASETS_DIR.glob("*/*.csv")
                                     if pmxgen.datasets.kind(p.parent.name) == "nonmem"),
                         ids=lambda p: p.parent.name)
def test_bundled_datasets_read_without_warnings(path):
    ds = read_quietly(path)
    assert ds.n_records == len(pd.read_csv(path))
