"""The bundled pmxNODE example 1 data set: counts, records and a lossless round trip.

Expected numbers were read once from the SOURCE file (not part of the repository), from the
repository root, with::

    python -c "
    import pandas as pd; s = pd.read_csv('../shared/data/pmxnode_example1.csv', na_values=['.'])
    print(s.ID.nunique(), (s.EVID == 0).sum(), (s.EVID == 1).sum(), len(s), round(s.DV.sum(), 6), s.AMT.sum().round(6))
    print(s[s.ID == 7].to_dict('list'))"

which printed ``20 120 20 140 321.71 203.3`` and subject 7's rows (below).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

import pmxgen

CSV = Path(__file__).resolve().parents[2] / "datasets" / "pmxnode_example1" / "pmxnode_example1.csv"
SUBJECT_7 = {"TIME": [0.0, 0.0, 1.9, 5.9, 10.5, 16.6, 23.9], "DV": [6.41, 3.63, 2.85, 1.46, 1.08, 0.49],
             "AMT": 10.8}


def test_counts_and_columns_match_the_source():
    raw = pd.read_csv(CSV, na_values=["."])
    assert list(raw.columns) == ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "DOSE"]
    ds = pmxgen.datasets.load("pmxnode_example1")
    assert ds.n_subjects == 20 and ds.n_observations == 120 and ds.n_dose_records == 20 and len(raw) == 140
    assert abs(raw["DV"].sum() - 321.71) < 1e-9
    assert abs(raw["AMT"].sum() - 203.3) < 1e-9
    assert "pmxnode_example1" in pmxgen.datasets.list() and "pmxnode_example1" in pmxgen.datasets.REAL


def test_one_bolus_per_subject_and_dose_covariate():
    raw = pd.read_csv(CSV, na_values=["."])
    doses = raw[raw["EVID"] == 1]
    assert doses["ID"].tolist() == list(range(1, 21))                       # one per subject, in order
    assert (doses["TIME"] == 0).all() and (doses["CMT"] == 1).all() and (doses["MDV"] == 1).all()
    assert doses["DV"].isna().all()
    obs = raw[raw["EVID"] == 0]
    assert (obs["AMT"] == 0).all() and (obs["MDV"] == 0).all() and obs["DV"].notna().all()
    assert (obs.groupby("ID").size() == 6).all()
    # DOSE repeats the subject's dose amount on every row
    assert (raw.groupby("ID")["DOSE"].nunique() == 1).all()
    np.testing.assert_array_equal(doses.set_index("ID")["AMT"], raw.groupby("ID")["DOSE"].first())
    sub = raw[raw["ID"] == 7]
    assert sub["TIME"].tolist() == SUBJECT_7["TIME"]
    assert sub["DV"].dropna().tolist() == SUBJECT_7["DV"] and sub["AMT"].iloc[0] == SUBJECT_7["AMT"]
    # the batch sees bolus doses (no infusion) and the covariate
    batch = pmxgen.datasets.load("pmxnode_example1").batch
    assert int(batch.doses.mask.sum()) == 20 and not bool((batch.doses.rate[batch.doses.mask] != 0).any())
    assert batch.covariate_names == ("DOSE",)
    assert torch.equal(batch.baseline[:, 0], torch.as_tensor(doses["AMT"].to_numpy().copy(), dtype=batch.dtype))


def test_round_trip_loses_nothing():
    ds = pmxgen.datasets.load("pmxnode_example1")
    frame = ds.to_frame()
    raw = pd.read_csv(CSV, na_values=["."])
    pd.testing.assert_frame_equal(frame, raw, check_dtype=False)
    again = pmxgen.read_nonmem(frame)
    for name in ("time", "dv", "mask"):
        assert torch.equal(getattr(again.batch.obs, name), getattr(ds.batch.obs, name))
    assert torch.equal(again.batch.doses.amt, ds.batch.doses.amt)


def test_readme_states_source_units_and_conversion():
    text = (CSV.parent / "README.md").read_text(encoding="utf-8")
    assert text.startswith("# pmxnode_example1")
    for needed in ("## Source", "pmxNODE", "## Units", "not stated", "## Conversion", "convert_shared_data.py"):
        assert needed in text
