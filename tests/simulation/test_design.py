"""design_frame: NONMEM layout, record order, per-subject doses, covariates and errors."""
from __future__ import annotations

import numpy as np
import pytest

import pmxgen
from pmxgen.errors import DatasetError
from pmxgen.simulation import design_frame


def test_columns_and_record_order():
    df = design_frame(3, doses=[{"time": 0, "amt": 100}, {"time": 12, "amt": 50}], obs_times=[12, 1, 0],
                      covariates={"WT": [50.0, 60.0, 70.0]}, start_id=10, obs_cmt=2)
    assert list(df.columns) == ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS", "WT"]
    sub = df[df.ID == 11]
    # dose before observation at the same time, sorted by time
    assert sub.TIME.tolist() == [0, 0, 1, 12, 12]
    assert sub.EVID.tolist() == [1, 0, 0, 1, 0]
    assert sub.MDV.tolist() == [1, 0, 0, 1, 0]
    assert np.isnan(sub.DV[sub.EVID == 1]).all() and (sub.DV[sub.EVID == 0] == 0).all()
    assert sub.CMT.tolist() == [1, 2, 2, 1, 2]
    assert (sub.WT == 60.0).all()
    assert sorted(df.ID.unique()) == [10, 11, 12]
    ds = pmxgen.read_nonmem(df)
    assert ds.n_subjects == 3 and ds.n_observations == 9 and ds.n_dose_events == 6


def test_per_subject_amounts_addl_and_callable_times():
    rng_times = lambda rng: np.sort(rng.uniform(0, 24, size=4))  # noqa: E731
    df1 = design_frame(4, doses=[{"time": 0, "amt": [100, 200, 300, 400], "ii": 12, "addl": 2, "rate": 100}],
                       obs_times=rng_times, seed=5)
    df2 = design_frame(4, doses=[{"time": 0, "amt": [100, 200, 300, 400], "ii": 12, "addl": 2, "rate": 100}],
                       obs_times=rng_times, seed=5)
    assert df1.equals(df2)
    doses = df1[df1.EVID == 1]
    assert doses.AMT.tolist() == [100, 200, 300, 400]
    assert (doses.ADDL == 2).all() and (doses.II == 12).all() and (doses.RATE == 100).all()
    times = df1[df1.EVID == 0].groupby("ID").TIME.apply(list)
    assert times.iloc[0] != times.iloc[1]          # drawn per subject
    ds = pmxgen.read_nonmem(df1)
    assert ds.n_dose_events == 12


@pytest.mark.parametrize("kwargs, match", [
    ({"doses": [{"amt": 100}]}, "no 'time'"),
    ({"doses": [{"time": 0, "amt": 0}]}, "amt <= 0"),
    ({"doses": [{"time": 0, "amt": 10, "dose": 1}]}, "unknown keys"),
    ({"doses": [{"time": 0, "amt": [1, 2]}]}, "one value per subject"),
    ({"doses": [{"time": 0, "amt": 10}], "covariates": {"WT": [1.0]}}, "one value per subject"),
    ({"doses": [{"time": 0, "amt": 10}], "covariates": {"AMT": [1.0, 2.0, 3.0]}}, "name of a NONMEM"),
    ({"doses": [{"time": 0, "amt": 10}], "obs_times": [-1.0]}, "times >= 0"),
])
def test_bad_designs(kwargs, match):
    kwargs = {"obs_times": [1.0], **kwargs}
    with pytest.raises(DatasetError, match=match):
        design_frame(3, **kwargs)
