"""Checks on the four real data sets bundled under ``datasets/``.

The CSVs were produced by ``datasets/convert_shared_data.py`` from source files
that are not part of the repository; these tests read only the bundled files.
The expected numbers below were counted once from the source files and are
hard-coded, with the command that produced them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS_DIR = REPO_ROOT / "datasets"

DATASET_NAMES = ["theophylline", "indomethacin", "pheno", "moxo"]

NONMEM_COLUMNS = ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT"]

EXPECTED_COLUMNS = {
    "theophylline": NONMEM_COLUMNS + ["WT", "DOSE"],
    "indomethacin": NONMEM_COLUMNS,
    "pheno": NONMEM_COLUMNS + ["WGT", "APGR", "FA1", "FA2"],
    "moxo": NONMEM_COLUMNS + ["SS", "II", "VISI", "AGE", "SEX", "WT", "COMP", "CRCL"],
}

# Counts from the SOURCE files (subjects, observation records, dose records, total rows
# of the converted file = source rows + one added dose record per subject for Theoph and
# Indometh, which have no dose rows in the source).  Counted from the repository root with:
#
# python -c "
# import pandas as pd; d = '../shared/data/'
# t = pd.read_csv(d + 'r_Theoph.csv'); i = pd.read_csv(d + 'r_Indometh.csv')
# p = pd.read_csv(d + 'pheno.dta', sep=r'\s+'); m = pd.read_csv(d + 'moxo.csv')
# print('theophylline', t.Subject.nunique(), len(t), t.Subject.nunique(), len(t) + t.Subject.nunique())
# print('indomethacin', i.Subject.nunique(), len(i), i.Subject.nunique(), len(i) + i.Subject.nunique())
# print('pheno', p.ID.nunique(), (p.AMT == 0).sum(), (p.AMT > 0).sum(), len(p))
# print('moxo', m.ID.nunique(), (m.EVID == 0).sum(), m.EVID.isin([1, 4]).sum(), len(m))
# "
SOURCE_COUNTS = {
    # name: (subjects, observation records, dose records, total rows)
    "theophylline": (12, 132, 12, 144),
    "indomethacin": (6, 66, 6, 72),
    "pheno": (59, 155, 589, 744),
    "moxo": (73, 1006, 142, 1148),
}

# Source Wt (kg) and Dose (mg/kg) of three theophylline subjects, from:
# python -c "
# import pandas as pd
# print(pd.read_csv('../shared/data/r_Theoph.csv').groupby('Subject')[['Wt', 'Dose']].first().loc[[1, 5, 9]])"
THEOPH_SOURCE_WT_DOSE = {
    1: (79.6, 4.02),
    5: (54.6, 5.86),
    9: (86.4, 3.10),
}


def load(name: str) -> pd.DataFrame:
    return pd.read_csv(DATASETS_DIR / name / f"{name}.csv", na_values=["."])


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_columns(name):
    df = load(name)
    assert list(df.columns) == EXPECTED_COLUMNS[name]


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_counts_match_source(name):
    df = load(name)
    n_subjects, n_obs, n_dose, n_rows = SOURCE_COUNTS[name]
    assert df["ID"].nunique() == n_subjects
    assert int((df["EVID"] == 0).sum()) == n_obs
    assert int(df["EVID"].isin([1, 4]).sum()) == n_dose
    assert len(df) == n_rows
    # every record is either an observation or a dose
    assert set(df["EVID"].unique()) <= {0, 1, 4}


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_record_conventions(name):
    df = load(name)
    obs = df["EVID"] == 0
    dose = df["EVID"].isin([1, 4])
    assert (df.loc[obs, "MDV"] == 0).all()
    assert (df.loc[dose, "MDV"] == 1).all()
    assert (df.loc[obs, "AMT"] == 0).all()
    assert (df.loc[dose, "AMT"] > 0).all()
    # rows of one subject are contiguous and time never decreases within a subject
    starts = df["ID"].ne(df["ID"].shift())
    assert int(starts.sum()) == df["ID"].nunique()
    assert (df.groupby("ID", sort=False)["TIME"].diff().fillna(0) >= 0).all()


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_no_nan_except_dv_on_dose_rows(name):
    df = load(name)
    other = df.drop(columns="DV")
    assert not other.isna().any().any()
    dv_missing = df["DV"].isna()
    dose = df["EVID"].isin([1, 4])
    assert not (dv_missing & ~dose).any(), "observation with missing DV"
    if name == "moxo":
        # moxo keeps the source DV on dose rows (unused: MDV=1)
        assert not dv_missing.any()
    else:
        assert (dv_missing == dose).all()


def test_theophylline_doses():
    df = load("theophylline")
    for sid, sub in df.groupby("ID", sort=True):
        sub = sub.reset_index(drop=True)
        # first record: the dose into the depot at time 0
        first = sub.iloc[0]
        assert first["EVID"] == 1 and first["MDV"] == 1 and first["CMT"] == 1
        assert first["TIME"] == 0 and np.isnan(first["DV"])
        # second record: the time-0 (pre-dose carry-over) observation, central
        second = sub.iloc[1]
        assert second["EVID"] == 0 and second["CMT"] == 2 and second["TIME"] == 0
        assert not np.isnan(second["DV"])
        # exactly one dose; AMT (mg) = DOSE (mg/kg) x WT (kg)
        assert int((sub["EVID"] == 1).sum()) == 1
        assert sub["WT"].nunique() == 1 and sub["DOSE"].nunique() == 1
        assert first["AMT"] == pytest.approx(first["DOSE"] * first["WT"], rel=1e-9)
        assert (sub.loc[sub["EVID"] == 0, "CMT"] == 2).all()
    doses = df[df["EVID"] == 1].set_index("ID")
    for sid, (wt, dose_mgkg) in THEOPH_SOURCE_WT_DOSE.items():
        assert doses.loc[sid, "WT"] == wt
        assert doses.loc[sid, "DOSE"] == dose_mgkg
        assert doses.loc[sid, "AMT"] == pytest.approx(dose_mgkg * wt, rel=1e-9)
    assert list(df["ID"].drop_duplicates()) == sorted(df["ID"].unique())


def test_indomethacin_doses():
    df = load("indomethacin")
    doses = df[df["EVID"] == 1]
    assert (doses["AMT"] == 25).all() and (doses["TIME"] == 0).all()
    assert (df["CMT"] == 1).all()
    assert (df.groupby("ID", sort=False)["EVID"].first() == 1).all()


def test_moxo_dose_records():
    df = load("moxo")
    evid1 = df[df["EVID"] == 1]
    evid4 = df[df["EVID"] == 4]
    assert ((evid1["SS"] == 0) & (evid1["II"] == 0)).all()
    assert ((evid4["SS"] == 1) & (evid4["II"] == 12)).all()
    obs = df[df["EVID"] == 0]
    assert ((obs["SS"] == 0) & (obs["II"] == 0) & (obs["CMT"] == 2)).all()
    assert (df.loc[df["EVID"] != 0, "CMT"] == 1).all()


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_readme_has_source_and_units(name):
    readme = DATASETS_DIR / name / "README.md"
    assert readme.is_file()
    text = readme.read_text(encoding="utf-8")
    assert "Source" in text
    assert "Units" in text
