"""VPC and pcVPC: coverage under the true model, failure under a misspecified one, binning, strata, BLQ.

Measured with the seeds below: share of the observed 5/50/95th percentiles (10 bins) inside the
simulated 95 % intervals: true model 0.97 (VPC) and 0.97 (pcVPC); CL x 2: 0.37 and 0.37.
`python tests/diagnostics/npde_vpc_calibration.py` repeats this over 20 simulated studies.
"""
import numpy as np
import pandas as pd
import pytest
from truth_model import TRUTH, values_of

import pmxgen
from pmxgen.diagnostics import auto_bins, compute_vpc, simulate_replicates, vpc_from_simulations
from pmxgen.errors import DatasetError


@pytest.fixture(scope="module")
def sims(known_truth):
    model, values, data = known_truth
    return simulate_replicates(model, values, data, 500, seed=3)


@pytest.mark.parametrize("pred_corr", [False, True])
def test_true_model_percentiles_fall_inside_intervals(known_truth, sims, pred_corr):
    model, values, data = known_truth
    r = compute_vpc(model, values, data, simulated=sims, pred_corr=pred_corr)
    assert len(r.table) == 10 and r.table["n"].sum() == data.n_observations
    assert r.coverage() >= 0.9, r.inside()
    assert r.pred_corrected is pred_corr and r.n_simulations == 500


@pytest.mark.parametrize("pred_corr", [False, True])
def test_misspecified_model_percentiles_fall_outside(known_truth, pred_corr):
    model, values, data = known_truth
    wrong = values_of(model, dict(TRUTH, CL=2 * TRUTH["CL"]))
    r = compute_vpc(model, wrong, data, n_simulations=500, seed=3, pred_corr=pred_corr)
    assert r.coverage() < 0.5, r.inside()


def test_percentiles_and_intervals_by_hand():
    """One bin: observed percentiles are numpy's; the interval is the 2.5/97.5 % of replicate percentiles."""
    rng = np.random.default_rng(0)
    time = np.ones((20, 2))
    y, ys = rng.normal(size=(20, 2)), rng.normal(size=(300, 20, 2))
    r = vpc_from_simulations(time, y, ys, np.ones((20, 2), bool), bins=[0, 2])
    row = r.table.iloc[0]
    assert row["obs_p50"] == pytest.approx(np.quantile(y, 0.5))
    per_rep = np.quantile(ys.reshape(300, -1), 0.95, axis=1)
    assert row["sim_p95_lo"] == pytest.approx(np.quantile(per_rep, 0.025))
    assert row["sim_p95_hi"] == pytest.approx(np.quantile(per_rep, 0.975))


def test_prediction_correction_is_bergstrands():
    """pcY = Y · median(PRED in bin) / PRED; a bin whose PREDs are all 0 stays uncorrected."""
    time = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    y = np.array([[0.5, 2.0, 3.0], [0.2, 4.0, 6.0]])
    pred = np.array([[0.0, 1.0, 2.0], [0.0, 2.0, 4.0]])
    r = vpc_from_simulations(time, y, np.stack([y] * 5), np.ones_like(y, bool), bins=[-1, 0.5, 2], pred=pred)
    pts = r.points.sort_values(["time", "dv"])
    # bin 2: PRED 1, 2, 2, 4 (median 2) -> 2*2/1, 3*2/2, 4*2/2, 6*2/4
    assert pts["dv"].tolist() == pytest.approx([0.2, 0.5, 3.0, 3.0, 4.0, 4.0])
    assert r.n_excluded == 0
    pred_bad = pred.copy()
    pred_bad[0, 1] = 0.0      # PRED 0 in a bin whose median PRED is positive: left out and counted
    r = vpc_from_simulations(time, y, np.stack([y] * 5), np.ones_like(y, bool), bins=[-1, 0.5, 2], pred=pred_bad)
    assert r.n_excluded == 1 and r.table["n"].tolist() == [2, 3]


def test_automatic_and_user_bins(known_truth, sims):
    assert auto_bins(np.repeat([0.5, 1, 2, 4], 3)).tolist() == [-np.inf, 0.75, 1.5, 3.0, np.inf]
    many = auto_bins(np.random.default_rng(0).uniform(0, 24, 1000), max_bins=6)
    counts = np.histogram(np.random.default_rng(0).uniform(0, 24, 1000), bins=np.r_[0, many[1:-1], 24])[0]
    assert len(counts) == 6 and counts.min() > 150       # equal-count quantile bins
    model, values, data = known_truth
    r = compute_vpc(model, values, data, simulated=sims, bins=[0, 1, 3, 8, 24])
    assert r.table["upper"].tolist() == [1, 3, 8, 24] and r.table["n"].tolist() == [200, 300, 300, 300]
    with pytest.raises(DatasetError, match="outside the VPC bins"):
        compute_vpc(model, values, data, simulated=sims, bins=[1, 24])
    with pytest.raises(DatasetError, match="increasing bin edges"):
        compute_vpc(model, values, data, simulated=sims, bins=[0, 5, 2])


def test_stratification_by_covariate(known_truth, sims):
    model, values, data = known_truth
    r = compute_vpc(model, values, data, simulated=sims, stratify="wt")
    wt = data.batch.baseline[:, 0].numpy()
    median = np.median(wt)
    assert sorted(r.table["stratum"].unique()) == [f"WT <= {median:g}", f"WT > {median:g}"]
    n_low = int((wt <= median).sum()) * 11
    assert r.table.groupby("stratum")["n"].sum().loc[f"WT <= {median:g}"] == n_low
    assert r.coverage() >= 0.9
    with pytest.raises(DatasetError, match="covariate 'AGE' is not in the data"):
        compute_vpc(model, values, data, simulated=sims, stratify="AGE")


def test_blq_fraction_panel_and_censored_percentiles(known_truth):
    """Data censored at an LLOQ: the observed fraction BLQ per bin lies in its simulated interval under the
    true model, and percentiles below the LLOQ are NaN (censored)."""
    model, values, data = known_truth
    lloq = 0.4
    frame = data.to_frame()
    obs = frame["EVID"] == 0
    frame["BLQ"] = (obs & (frame["DV"] < lloq)).astype(int)
    frame["LLOQ"] = np.where(obs, lloq, np.nan)
    censored = pmxgen.read_nonmem(frame)
    r = compute_vpc(model, values, censored, n_simulations=300, seed=4)
    t = r.table
    assert {"obs_fblq", "sim_fblq_lo", "sim_fblq_hi"} <= set(t.columns) and r.lloq == lloq
    inside = (t["obs_fblq"] >= t["sim_fblq_lo"]) & (t["obs_fblq"] <= t["sim_fblq_hi"])
    assert inside.mean() >= 0.9, t[["bin", "obs_fblq", "sim_fblq_lo", "sim_fblq_hi"]]
    first = t.iloc[0]                                     # 0.25 h: most samples below 0.4
    assert first["obs_fblq"] > 0.05 and np.isnan(first["obs_p5"]) and np.isnan(first["sim_p5_lo"])
    assert (t[["obs_p50", "obs_p95"]].dropna().to_numpy() >= lloq).all()
    assert r.coverage() >= 0.85          # 26 of 29 informative (bin, percentile) pairs with these seeds
    fig = pmxgen.diagnostics.vpc_figure(r)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "fraction < LLOQ"


def test_inside_table_flags_each_percentile():
    table = pd.DataFrame({"stratum": ["all"], "bin": [0], "obs_p50": [1.0], "sim_p50_lo": [0.0], "sim_p50_hi": [2.0]})
    r = pmxgen.diagnostics.VPCResult(table=table, points=pd.DataFrame(), quantiles=(0.5,), interval=0.9,
                                     pred_corrected=False, lloq=None, n_simulations=1)
    assert r.inside()["p50"].tolist() == [True] and r.coverage() == 1.0
