"""Round trips through :func:`pmxgen.read_nonmem` and what the reader builds from the records.

``read_nonmem(ds.to_frame())`` must give the same frame and the same tensors; the frame
must be exactly the file's rows and columns; and the padded tensors must encode NONMEM's
record semantics (EVID/MDV derivation, ADDL expansion, resets, covariates, occasions).
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pmxgen
import pmxgen.structural  # noqa: F401  (import at collection: torchdiffeq/scipy take ~1 s)

DATASETS_DIR = Path(__file__).resolve().parents[2] / "datasets"
#: NONMEM event tables only (covariate panels such as diabetes are read by pmxgen.datasets.load_table)
BUNDLED = sorted(p for p in DATASETS_DIR.glob("*/*.csv") if pmxgen.datasets.kind(p.parent.name) == "nonmem")
NAN = float("nan")


def assert_batches_equal(a, b, path: str = "batch") -> None:
    """Walk the dataclass fields of two batches: every tensor equal (dtype, shape, values)."""
    assert type(a) is type(b), path
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        where = f"{path}.{f.name}"
        if is_dataclass(x):
            assert_batches_equal(x, y, where)
        elif isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor), where
            assert x.dtype == y.dtype, (where, x.dtype, y.dtype)
            assert x.shape == y.shape, (where, x.shape, y.shape)
            assert torch.equal(x, y), where
        else:
            assert x == y, (where, x, y)


def tensors(batch, path: str = "batch"):
    """(name, tensor) for every tensor in a batch."""
    for f in fields(batch):
        x = getattr(batch, f.name)
        if is_dataclass(x):
            yield from tensors(x, f"{path}.{f.name}")
        elif isinstance(x, torch.Tensor):
            yield f"{path}.{f.name}", x


def roundtrip(ds, **kwargs):
    ds2 = pmxgen.read_nonmem(ds.to_frame(), **kwargs)
    pd.testing.assert_frame_equal(ds.to_frame(), ds2.to_frame())
    assert_batches_equal(ds.batch, ds2.batch)
    assert ds2.ids == ds.ids
    assert ds2.categories == ds.categories
    assert ds2.columns == ds.columns
    return ds2


# ------------------------------------------------------------------ bundled datasets
def test_bundled_datasets_present():
    names = {p.parent.name for p in BUNDLED}
    assert {"theophylline", "indomethacin", "pheno", "moxo"} <= names


@pytest.mark.parametrize("path", BUNDLED, ids=[p.parent.name for p in BUNDLED])
def test_bundled_dataset_roundtrip(path):
    ds = pmxgen.read_nonmem(path)
    roundtrip(ds)
    frame = ds.to_frame()
    raw = pd.read_csv(path, na_values=["."])
    assert list(frame.columns) == list(raw.columns)
    assert len(frame) == len(raw) == ds.n_records
    pd.testing.assert_frame_equal(frame, raw, check_dtype=False)
    numeric = [c for c in raw.columns if pd.api.types.is_numeric_dtype(raw[c])]
    np.testing.assert_array_equal(frame[numeric].to_numpy(dtype=np.float64), raw[numeric].to_numpy(dtype=np.float64))
    # nothing is lost: observation and dose records counted from the file itself
    cols = ds.columns
    if "EVID" in cols and "MDV" in cols:
        assert ds.n_observations == int(((raw[cols["EVID"]] == 0) & (raw[cols["MDV"]] == 0)).sum())
        assert ds.n_dose_records == int(raw[cols["EVID"]].isin([1, 4]).sum())
    assert ds.n_subjects == raw[cols["ID"]].nunique()


# ------------------------------------------------------------------ column mapping
def theoph_frame() -> pd.DataFrame:
    """R's Theoph layout (two subjects) with a dose record (AMT, EVID) per subject."""
    return pd.DataFrame({
        "Subject": [1, 1, 1, 1, 2, 2, 2],
        "Wt": [79.6, 79.6, 79.6, 79.6, 72.4, 72.4, 72.4],
        "Dose": [4.02, 4.02, 4.02, 4.02, 4.4, 4.4, 4.4],
        "Time": [0.0, 0.0, 0.25, 0.57, 0.0, 0.27, 0.52],
        "conc": [NAN, 0.74, 2.84, 6.57, NAN, 1.72, 7.91],
        "AMT": [319.992, 0, 0, 0, 318.56, 0, 0],
        "EVID": [1, 0, 0, 0, 1, 0, 0],
    })


THEOPH_MAP = {"ID": "Subject", "TIME": "Time", "DV": "conc"}


def test_column_mapping_theoph_layout():
    df = theoph_frame()
    ds = pmxgen.read_nonmem(df, columns=THEOPH_MAP)
    assert ds.columns == {"ID": "Subject", "TIME": "Time", "DV": "conc", "AMT": "AMT", "EVID": "EVID"}
    assert ds.ids == [1, 2]
    assert ds.covariate_names == ("Wt", "Dose")
    assert ds.n_observations == 5 and ds.n_dose_records == 2
    obs = ds.batch.obs
    assert obs.dv[obs.mask].tolist() == [0.74, 2.84, 6.57, 1.72, 7.91]
    assert obs.time[0].tolist() == [0.0, 0.25, 0.57]
    assert ds.batch.doses.amt[:, 0].tolist() == [319.992, 318.56]
    assert ds.batch.baseline.tolist() == [[79.6, 4.02], [72.4, 4.4]]
    frame = ds.to_frame()
    assert list(frame.columns) == list(df.columns)
    pd.testing.assert_frame_equal(frame, df, check_dtype=False)
    roundtrip(ds, columns=THEOPH_MAP)


def test_column_mapping_from_file(tmp_path):
    path = tmp_path / "theoph.csv"
    theoph_frame().to_csv(path, index=False, na_rep=".")
    ds = pmxgen.read_nonmem(path, columns={"id": "subject", "time": "TIME", "dv": "Conc"})   # any case
    assert ds.columns["ID"] == "Subject" and ds.columns["DV"] == "conc"
    assert ds.n_observations == 5
    assert_batches_equal(ds.batch, pmxgen.read_nonmem(theoph_frame(), columns=THEOPH_MAP).batch)
    with pytest.raises(pmxgen.errors.DatasetError) as info:    # without the mapping: no ID
        pmxgen.read_nonmem(path)
    assert info.value.column == "ID"


# ------------------------------------------------------------------ EVID / MDV / CMT defaults
def test_evid_mdv_derived_when_absent():
    df = pd.DataFrame({"ID": [1, 1, 1, 1, 1], "TIME": [0.0, 1.0, 2.0, 3.0, 4.0],
                       "DV": [NAN, 5.0, NAN, 3.0, 2.0], "AMT": [100.0, 0.0, 0.0, 0.0, 50.0]})
    ds = pmxgen.read_nonmem(df)
    assert ds.n_records == 5 and len(ds.to_frame()) == 5          # the DV '.' record is kept
    assert ds.n_dose_records == 2                                  # AMT > 0 -> dose
    assert ds.n_observations == 2                                  # DV '.' without MDV -> not an observation
    obs = ds.batch.obs
    assert obs.time.tolist() == [[1.0, 3.0]]
    assert obs.row.tolist() == [[1, 3]]
    assert obs.order.tolist() == [[1.0, 3.0]]
    assert ds.batch.doses.time.tolist() == [[0.0, 4.0]]
    assert ds.batch.doses.amt.tolist() == [[100.0, 50.0]]
    assert ds.to_frame()["DV"].isna().tolist() == [True, False, True, False, False]
    roundtrip(ds)


def test_cmt_absent_is_model_default():
    df = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0.0, 1.0, 2.0], "DV": [NAN, 5.0, 3.0],
                       "AMT": [100.0, 0.0, 0.0]})
    ds = pmxgen.read_nonmem(df)
    assert "CMT" not in ds.columns
    assert ds.batch.obs.cmt.tolist() == [[0, 0]]
    assert ds.batch.doses.cmt.tolist() == [[0]]
    assert ds.batch.obs.cmt.dtype == torch.int64
    pmxgen.get_model("1cmt_oral").check_dataset(ds)                 # 0 -> default compartment


# ------------------------------------------------------------------ covariates and occasions
def cov_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "ID": [1, 1, 1, 2, 2, 2],
        "TIME": [0.0, 1.0, 24.0, 0.0, 1.0, 24.0],
        "DV": [NAN, 5.0, 4.0, NAN, 3.0, 2.5],
        "AMT": [100.0, 0.0, 0.0, 100.0, 0.0, 0.0],
        "SEX": ["M", "M", "M", "F", "F", "F"],
        "WT": [70.0, 71.0, 72.5, 60.0, 60.5, 61.0],
        "OCC": [5, 5, 9, 5, 9, 9],
    })


def test_categorical_covariate_from_strings():
    ds = pmxgen.read_nonmem(cov_frame())
    assert ds.categories["SEX"] == ["F", "M"]
    k = ds.batch.covariate_index("SEX")
    obs = ds.batch.obs
    assert obs.covariates[..., k].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert ds.batch.baseline[:, k].tolist() == [1.0, 0.0]
    assert ds.to_frame()["SEX"].tolist() == ["M", "M", "M", "F", "F", "F"]
    roundtrip(ds)


def test_numeric_categorical_covariate():
    df = cov_frame().assign(RACE=[3, 3, 3, 1, 1, 1])
    ds = pmxgen.read_nonmem(df, categorical=["RACE"])
    assert ds.categories["RACE"] == [1, 3]
    assert ds.batch.baseline[:, ds.batch.covariate_index("RACE")].tolist() == [1.0, 0.0]
    roundtrip(ds, categorical=["RACE"])


def test_occasion_codes():
    ds = pmxgen.read_nonmem(cov_frame(), occasion="OCC")
    assert ds.occasion_labels == [5, 9]
    assert ds.batch.obs.occasion.tolist() == [[0, 1], [1, 1]]
    assert ds.batch.doses.occasion.tolist() == [[0], [0]]
    roundtrip(ds, occasion="OCC")


def test_time_varying_covariate_per_observation():
    df = cov_frame()
    ds = pmxgen.read_nonmem(df)
    k = ds.batch.covariate_index("WT")
    obs = ds.batch.obs
    own = torch.tensor(df["WT"].to_numpy())[obs.row[obs.mask]]
    assert torch.equal(obs.covariates[..., k][obs.mask], own)
    assert obs.covariates[..., k].tolist() == [[71.0, 72.5], [60.5, 61.0]]
    assert ds.batch.baseline[:, k].tolist() == [70.0, 60.0]           # first record
    assert ds.batch.doses.covariates[..., k].tolist() == [[70.0], [60.0]]


# ------------------------------------------------------------------ ADDL and resets
def test_addl_expansion_and_order():
    df = pd.DataFrame({"ID": [1, 1, 1, 1], "TIME": [0.0, 12.0, 24.0, 40.0], "DV": [NAN, 5.0, 4.0, 3.0],
                       "AMT": [100.0, 0.0, 0.0, 0.0], "ADDL": [3, 0, 0, 0], "II": [12.0, 0.0, 0.0, 0.0]})
    ds = pmxgen.read_nonmem(df)
    d, obs = ds.batch.doses, ds.batch.obs
    assert ds.n_dose_records == 1 and ds.n_dose_events == 4
    assert d.time.tolist() == [[0.0, 12.0, 24.0, 36.0]]
    assert d.amt.tolist() == [[100.0] * 4]
    assert d.implied.tolist() == [[False, True, True, True]]
    assert d.row.tolist() == [[0, 0, 0, 0]]                            # all from the record at frame row 0
    obs_at_24 = int(torch.nonzero(obs.time[0] == 24.0)[0])
    dose_at_24 = int(torch.nonzero(d.time[0] == 24.0)[0])
    assert obs.order[0, obs_at_24].item() == 2.0                       # position of the record in its subject
    # the implied dose at 24 comes after the record at 24 (a trough sees the pre-dose level)
    assert d.order[0, dose_at_24].item() == obs.order[0, obs_at_24].item() + 0.5
    assert d.order[0, 0].item() == 0.0
    assert len(ds.to_frame()) == 4                                     # expansion adds no rows to the frame
    roundtrip(ds)


def test_reset_segments():
    df = pd.DataFrame({"ID": [1] * 7, "TIME": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                       "DV": [NAN, 5.0, NAN, 3.0, NAN, 2.0, 1.0],
                       "AMT": [100.0, 0.0, 0.0, 0.0, 100.0, 0.0, 0.0],
                       "EVID": [1, 0, 3, 0, 1, 0, 0], "SS": [0, 0, 0, 0, 1, 0, 0],
                       "II": [0.0, 0.0, 0.0, 0.0, 12.0, 0.0, 0.0]})
    ds = pmxgen.read_nonmem(df)
    assert ds.batch.obs.segment.tolist() == [[0, 1, 2, 2]]             # EVID 3 -> 1; SS=1 dose -> 2
    assert ds.batch.doses.segment.tolist() == [[0, 2]]
    r = ds.batch.resets
    assert r.time.tolist() == [[2.0, 4.0]]
    assert r.segment.tolist() == [[1, 2]]
    assert r.order.tolist() == [[2.0, 4.0]]
    assert r.mask.tolist() == [[True, True]]
    roundtrip(ds)


def test_evid4_starts_segment():
    df = pd.DataFrame({"ID": [1, 1, 1, 1], "TIME": [0.0, 10.0, 0.0, 1.0], "DV": [NAN, 5.0, NAN, 4.0],
                       "AMT": [100.0, 0.0, 80.0, 0.0], "EVID": [1, 0, 4, 0]})
    ds = pmxgen.read_nonmem(df)
    assert ds.batch.obs.segment.tolist() == [[0, 1]]
    assert ds.batch.doses.segment.tolist() == [[0, 1]]
    assert ds.batch.doses.amt.tolist() == [[100.0, 80.0]]
    roundtrip(ds)


# ------------------------------------------------------------------ conversions
@pytest.fixture(scope="module")
def theoph():
    return pmxgen.read_nonmem(DATASETS_DIR / "theophylline" / "theophylline.csv")


def test_to_float32_changes_float_tensors_only(theoph):
    ds32 = theoph.to(dtype=torch.float32)
    assert ds32.dtype == torch.float32 and theoph.dtype == torch.float64
    before, after = dict(tensors(theoph.batch)), dict(tensors(ds32.batch))
    assert before.keys() == after.keys()
    for name, x in before.items():
        y = after[name]
        assert y.shape == x.shape, name
        if x.is_floating_point():
            assert x.dtype == torch.float64 and y.dtype == torch.float32, name
            assert torch.equal(y, x.to(torch.float32)), name
        else:
            assert y.dtype == x.dtype, name
            assert torch.equal(y, x), name
    pd.testing.assert_frame_equal(ds32.to_frame(), theoph.to_frame())


def test_read_with_dtype_float32(theoph):
    ds = pmxgen.read_nonmem(DATASETS_DIR / "theophylline" / "theophylline.csv", dtype=torch.float32)
    assert_batches_equal(ds.batch, theoph.to(dtype=torch.float32).batch)


def test_subset(theoph):
    sub = theoph.subset([5, 1])
    assert sub.ids == [1, 5]                                           # this dataset's order
    assert sub.n_subjects == 2
    frame = theoph.to_frame()
    expected = frame[frame["ID"].isin([1, 5])]
    pd.testing.assert_frame_equal(sub.to_frame().reset_index(drop=True), expected.reset_index(drop=True))
    for k, sid in enumerate(sub.ids):
        i = theoph.ids.index(sid)
        for name in ("time", "dv", "order", "segment", "cmt"):
            a = getattr(theoph.batch.obs, name)[i][theoph.batch.obs.mask[i]]
            b = getattr(sub.batch.obs, name)[k][sub.batch.obs.mask[k]]
            assert torch.equal(a, b), name
        assert torch.equal(theoph.batch.doses.amt[i][theoph.batch.doses.mask[i]],
                           sub.batch.doses.amt[k][sub.batch.doses.mask[k]])
        assert torch.equal(theoph.batch.baseline[i], sub.batch.baseline[k])
    with pytest.raises(KeyError):
        theoph.subset([999])


def test_with_dv_replaces_only_observation_dvs(theoph):
    obs = theoph.batch.obs
    new_dv = torch.where(obs.mask, obs.dv * 2.0 + 1.0, torch.zeros_like(obs.dv))
    ds2 = theoph.with_dv(new_dv)
    assert torch.equal(ds2.batch.obs.dv[obs.mask], new_dv[obs.mask])
    # every other tensor is unchanged
    for name, x in tensors(theoph.batch):
        if name != "batch.obs.dv":
            assert torch.equal(dict(tensors(ds2.batch))[name], x), name
    # the frame: observation DVs replaced, everything else (incl. '.' on dose records) kept
    f1, f2 = theoph.to_frame(), ds2.to_frame()
    rows = obs.row[obs.mask].numpy()
    np.testing.assert_array_equal(f2["DV"].to_numpy()[rows], new_dv[obs.mask].numpy())
    others = np.setdiff1d(np.arange(len(f1)), rows)
    np.testing.assert_array_equal(f2["DV"].to_numpy()[others], f1["DV"].to_numpy()[others])
    pd.testing.assert_frame_equal(f2.drop(columns="DV"), f1.drop(columns="DV"))
    assert theoph.batch.obs.dv.equal(obs.dv)                           # the original is untouched


def test_numeric_ids_written_differently_are_one_subject():
    ds = pmxgen.read_nonmem(pd.DataFrame({"ID": ["1", "1.0", "2"], "TIME": [0.0, 1.0, 0.0], "DV": [1.0, 2.0, 3.0]}))
    assert ds.ids == [1, 2] and ds.n_subjects == 2 and ds.observations_per_subject.tolist() == [2, 1]
