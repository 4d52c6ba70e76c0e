"""Bad input to :func:`pmxgen.read_nonmem`: every problem is a DatasetError naming where it is.

Each test writes a small file into ``tmp_path`` and checks that the message names the
file, ``row N`` with N the line of the file (header = line 1, comment lines count), the
column as written in the file and the offending value, and that the exception carries
the same ``row`` and ``column``.
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


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
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
        assert not re.search(r"\brow \d", msg.split(":")[0]), msg
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


# ------------------------------------------------------------------ missing columns
@pytest.mark.parametrize("missing", ["ID", "TIME", "DV"])
def test_missing_required_column(tmp_path, missing):
    header = [c for c in ("ID", "TIME", "DV", "AMT") if c != missing]
    values = {"ID": "1", "TIME": "0", "DV": ".", "AMT": "100"}
    text = ",".join(header) + "\n" + ",".join(values[c] for c in header) + "\n"
    path = write(tmp_path, text, f"no_{missing}.csv")
    msg = check(read_error(path), path.name, 1, missing)
    assert "missing" in msg


def test_missing_column_names_header_line_after_comment(tmp_path):
    path = write(tmp_path, "# study 101\n# second comment\nID,TIME,AMT\n1,0,100\n")
    check(read_error(path), path.name, 3, "DV")


# ------------------------------------------------------------------ non-numeric / NaN
def test_non_numeric_time(tmp_path):
    path = write(tmp_path, "id,time,dv,amt\n1,0,.,100\n1,abc,5,0\n")
    msg = check(read_error(path), path.name, 3, "time", "abc")
    assert "not a number" in msg


def test_non_numeric_amt_letter_o(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,Amt\n1,0,.,1O0\n1,1,5,0\n")
    check(read_error(path), path.name, 2, "Amt", "1O0")


def test_nan_amt(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n1,2,.,NaN\n")
    msg = check(read_error(path), path.name, 4, "AMT", "NaN")
    assert "NaN" in msg


def test_observation_without_dv(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,EVID,MDV\n1,0,.,100,1,1\n1,1,5,0,0,0\n1,2,.,0,0,0\n")
    msg = check(read_error(path), path.name, 4, "DV", ".")
    assert "observation" in msg


def test_missing_time(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,.,5,0\n")
    check(read_error(path), path.name, 3, "TIME", ".")


def test_missing_id(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n.,1,5,0\n")
    check(read_error(path), path.name, 3, "ID", ".")


# ------------------------------------------------------------------ record order
def test_time_decreasing_within_subject(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,2,5,0\n1,1,4,0\n2,0,.,100\n2,1,3,0\n")
    msg = check(read_error(path), path.name, 4, "TIME", 1)
    assert "decreases" in msg


@pytest.mark.parametrize("evid", [3, 4])
def test_time_may_decrease_at_reset(tmp_path, evid):
    amt = 100 if evid == 4 else 0
    path = write(tmp_path, f"ID,TIME,DV,AMT,EVID\n1,0,.,100,1\n1,10,5,0,0\n1,0,.,{amt},{evid}\n1,1,4,0,0\n")
    ds = pmxgen.read_nonmem(path)
    assert ds.n_records == 4
    assert ds.n_observations == 2
    assert ds.batch.obs.segment.tolist() == [[0, 1]]


def test_time_decrease_after_reset_is_still_checked(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,EVID\n1,0,.,100,1\n1,10,5,0,0\n1,0,.,0,3\n1,2,4,0,0\n1,1,4,0,0\n")
    check(read_error(path), path.name, 6, "TIME", 1)


def test_subject_not_contiguous(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n2,0,.,100\n2,1,4,0\n1,2,3,0\n")
    msg = check(read_error(path), path.name, 6, "ID", "1")
    assert "contiguous" in msg and "row 2" in msg


# ------------------------------------------------------------------ dose items
def test_negative_amt(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n1,2,.,-50\n")
    check(read_error(path), path.name, 4, "AMT", -50)


def test_amt_on_observation_record(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,EVID\n1,0,.,100,1\n1,1,5,20,0\n")
    msg = check(read_error(path), path.name, 3, "AMT", 20)
    assert "not a dose" in msg



@pytest.mark.parametrize("cell", [".", "", "0"])
def test_dose_record_without_amount(tmp_path, cell):
    path = write(tmp_path, f"ID,TIME,DV,AMT,EVID\n1,0,.,100,1\n1,1,5,0,0\n1,2,.,{cell},1\n")
    msg = check(read_error(path), path.name, 4, "AMT", cell)
    assert f"(found '{cell}')" in msg and "reads as 0" in msg and "dose amount" in msg

def test_addl_without_ii(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,ADDL,II\n1,0,.,100,3,0\n1,1,5,0,0,0\n")
    msg = check(read_error(path), path.name, 2, "II", 0)
    assert "ADDL" in msg


def test_addl_without_ii_column(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,ADDL\n1,0,.,100,0\n1,1,5,0,0\n2,0,.,100,2\n2,1,5,0,0\n")
    msg = check(read_error(path), path.name, 4, "II", 0)
    assert "ADDL" in msg


def test_ss_without_ii(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,SS,II\n1,0,.,100,0,0\n1,1,5,0,0,0\n1,12,.,100,1,.\n1,13,5,0,0,0\n")
    msg = check(read_error(path), path.name, 4, "II", 0)
    assert "SS" in msg


def test_ss_3(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,SS,II\n1,0,.,100,3,12\n1,1,5,0,0,0\n")
    check(read_error(path), path.name, 2, "SS", 3)


def test_negative_ii(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,ADDL,II\n1,0,.,100,2,-12\n1,1,5,0,0,0\n")
    msg = check(read_error(path), path.name, 2, "II", -12)
    assert "negative" in msg


def test_addl_on_observation_names_addl_column(tmp_path):
    # an SS=1 dose elsewhere in the file must not make the message name SS
    path = write(tmp_path, "ID,TIME,DV,AMT,SS,II,ADDL\n1,0,.,100,1,12,0\n1,1,5,0,0,12,2\n")
    check(read_error(path), path.name, 3, "ADDL", 2)


def test_ss_on_observation_names_ss_column(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,SS,II,ADDL\n1,0,.,100,0,12,2\n1,1,5,0,1,12,0\n")
    check(read_error(path), path.name, 3, "SS", 1)


@pytest.mark.parametrize("evid", ["5", "1.5"])
def test_unknown_evid(tmp_path, evid):
    path = write(tmp_path, f"ID,TIME,DV,AMT,evid\n1,0,.,100,1\n1,1,5,0,0\n1,2,.,0,{evid}\n")
    check(read_error(path), path.name, 4, "evid", float(evid) if "." in evid else int(evid))


def test_rate_on_observation_record(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,RATE\n1,0,.,100,50\n1,1,5,0,10\n")
    msg = check(read_error(path), path.name, 3, "RATE", 10)
    assert "RATE" in msg and "AMT" in msg


def test_rate_minus_3(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,Rate\n1,0,.,100,0\n1,1,5,0,0\n1,2,.,100,-3\n")
    check(read_error(path), path.name, 4, "Rate", -3)


def test_dose_into_compartment_the_model_lacks(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,CMT\n# day 1\n1,0,.,100,1\n1,0.5,.,100,3\n1,1,5,0,2\n")
    ds = pmxgen.read_nonmem(path)            # reading knows no model: no error yet
    model = pmxgen.get_model("1cmt_oral")
    with pytest.raises(DatasetError) as info:
        model.check_dataset(ds)
    msg = check(info.value, path.name, 4, "CMT", 3)
    assert "compartment 3" in msg


def test_compartments_the_model_has_pass(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,CMT\n1,0,.,100,1\n1,1,5,0,2\n")
    pmxgen.get_model("1cmt_oral").check_dataset(pmxgen.read_nonmem(path))


# ------------------------------------------------------------------ empty input
def test_empty_file(tmp_path):
    path = write(tmp_path, "")
    msg = check(read_error(path), path.name, None, None)
    assert "empty" in msg


def test_blank_lines_only(tmp_path):
    path = write(tmp_path, "\n  \n\n")
    assert "empty" in check(read_error(path), path.name, None, None)


def test_header_only(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n")
    msg = check(read_error(path), path.name, 1, None)
    assert "no data records" in msg


def test_header_only_after_comment(tmp_path):
    path = write(tmp_path, "# nothing yet\nID,TIME,DV,AMT\n\n")
    check(read_error(path), path.name, 2, None)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    assert "does not exist" in check(read_error(path), path.name, None, None)


def test_empty_dataframe():
    err = read_error(pd.DataFrame({"ID": [], "TIME": [], "DV": []}))
    assert "<DataFrame>" in str(err)


# ------------------------------------------------------------------ subjects without observations
def test_subject_without_observations_warns_and_is_kept(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n# subject 2: dose only\n2,0,.,100\n2,12,.,100\n")
    with pytest.warns(DatasetWarning) as record:
        ds = pmxgen.read_nonmem(path)
    msg = str(record[0].message)
    assert path.name in msg and "row 5" in msg and "column ID" in msg and "(2)" in msg
    assert ds.n_subjects == 2
    assert ds.ids == [1, 2]
    assert len(ds.to_frame()) == 4
    assert ds.to_frame()["ID"].tolist() == [1, 1, 2, 2]
    assert ds.observations_per_subject.tolist() == [1, 0]
    assert ds.batch.obs.mask.tolist() == [[True], [False]]
    assert ds.batch.doses.mask.sum(dim=1).tolist() == [1, 2]
    assert record[0].filename == __file__                 # the warning points at the caller


# ------------------------------------------------------------------ header and mapping
def test_duplicated_column(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,AMT\n1,0,.,100,100\n1,1,5,0,0\n")
    msg = check(read_error(path), path.name, 1, "AMT", "AMT")
    assert "twice" in msg


def test_duplicated_column_differing_case(tmp_path):
    path = write(tmp_path, "# header below\nID,Time,DV,TIME\n1,0,.,0\n1,1,5,1\n")
    check(read_error(path), path.name, 2, "TIME", "TIME")


def test_duplicated_column_whitespace_file(tmp_path):
    path = write(tmp_path, "ID TIME DV DV\n1 0 . .\n1 1 5 5\n")
    check(read_error(path), path.name, 1, "DV", "DV")


def test_duplicated_column_dataframe():
    df = pd.DataFrame([[1, 0.0, np.nan, 100.0, 100.0], [1, 1.0, 5.0, 0.0, 0.0]],
                      columns=["ID", "TIME", "DV", "AMT", "AMT"])
    err = read_error(df)
    check(err, "<DataFrame>", None, "AMT", "AMT")


def test_mapping_to_absent_column(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n")
    msg = check(read_error(path, columns={"DV": "conc"}), path.name, 1, "conc", "conc")
    assert "mapping" in msg


def test_mapping_to_unknown_item(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n")
    msg = str(read_error(path, columns={"FOO": "AMT"}))
    assert path.name in msg and "FOO" in msg


def test_occasion_column_absent(tmp_path):
    path = write(tmp_path, "# c\nID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n")
    check(read_error(path, occasion="OCC"), path.name, 2, "OCC")


def test_requested_covariate_absent(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,WT\n1,0,.,100,70\n1,1,5,0,70\n")
    check(read_error(path, covariates=["AGE"]), path.name, 1, "AGE", "AGE")


# ------------------------------------------------------------------ covariates
def test_missing_covariate_value(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,Wt\n1,0,.,100,70\n1,1,5,0,70\n2,0,.,100,.\n2,1,4,0,80\n")
    msg = check(read_error(path), path.name, 4, "Wt", ".")
    assert "covariate" in msg


def test_missing_covariate_value_empty_cell(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT,SEX\n1,0,.,100,M\n1,1,5,0,\n")
    check(read_error(path), path.name, 3, "SEX", "")


# ------------------------------------------------------------------ line numbers
def test_comment_line_before_bad_row_counts(tmp_path):
    path = write(tmp_path, "# header comment\nID,TIME,DV,AMT\n1,0,.,100\n# a comment\n\n1,1,x5,0\n")
    check(read_error(path), path.name, 6, "DV", "x5")


def test_comment_lines_kept(tmp_path):
    path = write(tmp_path, "# header comment\nID,TIME,DV,AMT\n1,0,.,100\n# a comment\n1,1,5,0\n")
    ds = pmxgen.read_nonmem(path)
    assert (1, "# header comment") in ds.ignored_lines
    assert (4, "# a comment") in ds.ignored_lines
    assert [ds.row_of(i) for i in range(ds.n_records)] == [3, 5]


def test_whitespace_separated_file(tmp_path):
    path = write(tmp_path, "ID  TIME   DV  AMT\n 1  0   .   100\n# comment\n\t1\t1\t5\t0\n 1  2   4   -1\n")
    check(read_error(path), path.name, 5, "AMT", -1)


def test_whitespace_separated_file_reads(tmp_path):
    path = write(tmp_path, "ID  TIME   DV  AMT\n 1  0   .   100\n# comment\n\t1\t1\t5\t0\n")
    ds = pmxgen.read_nonmem(path)
    assert ds.n_records == 2 and ds.n_observations == 1
    assert list(ds.to_frame().columns) == ["ID", "TIME", "DV", "AMT"]


def test_ignore_at_sign(tmp_path):
    text = "ID,TIME,DV,AMT\n1,0,.,100\nC this line is a comment\n@ so is this\n1,1,5,0\n1,2,bad,0\n"
    path = write(tmp_path, text)
    check(read_error(path, ignore="@"), path.name, 6, "DV", "bad")


def test_ignore_at_sign_keeps_lines(tmp_path):
    text = "ID,TIME,DV,AMT\n1,0,.,100\nC this line is a comment\n@ so is this\n1,1,5,0\n"
    ds = pmxgen.read_nonmem(write(tmp_path, text), ignore="@")
    assert ds.n_records == 2
    assert (3, "C this line is a comment") in ds.ignored_lines
    assert (4, "@ so is this") in ds.ignored_lines
    # without IGNORE=@ the letter line is a bad record
    err = read_error(tmp_path / "data.csv")
    assert err.row == 3


# ------------------------------------------------------------------ malformed records
def test_record_with_too_few_fields(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n# c\n1,1,5\n")
    msg = check(read_error(path), path.name, 4, None)
    assert "fields" in msg


def test_record_with_too_many_fields(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0,9\n")
    check(read_error(path), path.name, 3, None)


def test_trailing_separator_on_every_record(tmp_path):
    # pandas would silently make ID the index and shift every column
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100,\n1,1,5,0,\n")
    assert "fields" in check(read_error(path), path.name, 2, None)


def test_whitespace_record_with_too_few_fields(tmp_path):
    path = write(tmp_path, "ID TIME DV AMT\n1 0 . 100\n1 1 5\n")
    check(read_error(path), path.name, 3, None)


def test_quoted_value_with_comma(tmp_path):
    path = write(tmp_path, 'ID,TIME,DV,AMT\n1,0,.,"1,00"\n1,1,5,0\n')
    check(read_error(path), path.name, 2, "AMT", "1,00")


# ------------------------------------------------------------------ DataFrame input
def test_dataframe_bad_value_names_index_label():
    df = pd.DataFrame({"ID": [1, 1, 2, 2], "TIME": [0.0, 1.0, 0.0, 1.0], "DV": [np.nan, 5.0, np.nan, 4.0],
                       "AMT": [100.0, 0.0, -5.0, 0.0]}, index=[10, 11, 12, 13])
    err = read_error(df)
    check(err, "<DataFrame>", 12, "AMT", -5)


def test_dataframe_non_numeric_value():
    df = pd.DataFrame({"ID": [1, 1], "TIME": ["0", "one"], "DV": [np.nan, 5.0], "AMT": [100.0, 0.0]},
                      index=[7, 8])
    check(read_error(df), "<DataFrame>", 8, "TIME", "one")


def test_dataframe_missing_column_has_no_header_row():
    df = pd.DataFrame({"ID": [1], "TIME": [0.0], "AMT": [100.0]})
    err = read_error(df)
    check(err, "<DataFrame>", None, "DV")


def test_dataframe_pandas_na_is_missing():
    df = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 1.0], "DV": [np.nan, 5.0],
                       "AMT": pd.array([100, None], dtype="Int64"),
                       "SEX": pd.array(["M", "M"], dtype="string")})
    ds = pmxgen.read_nonmem(df)
    assert ds.n_observations == 1 and ds.n_dose_records == 1
    df["SEX"] = pd.array(["M", None], dtype="string")
    check(read_error(df), "<DataFrame>", 1, "SEX", ".")


def test_no_unexpected_warnings_on_good_file(tmp_path):
    path = write(tmp_path, "ID,TIME,DV,AMT\n1,0,.,100\n1,1,5,0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pmxgen.read_nonmem(path)
