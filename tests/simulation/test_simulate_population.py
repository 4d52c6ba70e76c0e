"""Virtual populations: reproducibility, common random numbers, chunking, uncertainty, covariates, exports.

The theophylline fit (1-cmt oral, IIV on KA and CL, additive error, FOCE) is the run. Steady-state
regimens make AUC over τ = Dose/CL_i exactly, with CL_i = θ_CL·exp(η_CL,i) from the subjects table:
this checks the whole path (η draws, regimen tensors, exact integration) per virtual subject.
"""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import pmxgen
from pmxgen.errors import ModelError
from pmxgen.simulation import RegimenError, simulate_population
from pmxgen.simulation import engine as engine_module


@pytest.fixture(scope="module")
def run():
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    fit = pmxgen.fit(model, data, method="foce", covariance="sandwich", cpu_threads=1)
    return pmxgen.load_run(fit)


def _ss_auc(res, label):
    e = res.exposures[(res.exposures["regimen"] == label) & (res.exposures["window"] == "first")]
    return e.set_index(["replicate", "subject"])["auc"]


def test_same_seed_same_results_whatever_the_chunk_size(run):
    regs = ["320 mg q12h x3", "1 g iv over 1 h q24h x2"]
    kw = dict(n=600, targets=["cmin[last]>=2"], threshold=4.0, residual_error=True, keep_profiles=20)
    a = simulate_population(run, regs, seed=7, chunk_size=256, **kw)
    b = simulate_population(run, regs, seed=7, chunk_size=100000, **kw)
    c = simulate_population(run, regs, seed=8, **kw)
    assert a.meta["chunk_size"] == 256 and b.meta["chunk_size"] > 600
    pd.testing.assert_frame_equal(a.exposures, b.exposures)
    pd.testing.assert_frame_equal(a.profiles, b.profiles)
    pd.testing.assert_frame_equal(a.attainment, b.attainment)
    assert not np.allclose(a.exposures["auc"], c.exposures["auc"])
    assert set(a.profiles.columns) == {"subject", "regimen", "replicate", "time", "value", "dv"}
    assert len(a.exposures) == 600 * 2 * 2 and a.profiles["subject"].max() == 20


def test_common_random_numbers_and_steady_state_auc(run):
    regs = ["320 mg q12h x2 ss", "640 mg q24h x1 ss", "160 mg q12h x2 ss"]
    res = simulate_population(run, regs, n=300, seed=3, residual_error=True)
    other = simulate_population(run, regs[:1], n=300, seed=3)
    # the same virtual patients whatever the other arms
    pd.testing.assert_frame_equal(res.subjects, other.subjects)
    cl = run.fit.estimates["CL"] * np.exp(res.subjects.set_index(["replicate", "subject"])["ETA(CL)"])
    for label, dose in (("320 mg q12h x2 ss", 320.0), ("640 mg q24h x1 ss", 640.0), ("160 mg q12h x2 ss", 160.0)):
        auc = _ss_auc(res, label)
        assert np.abs(auc / (dose / cl.loc[auc.index]) - 1).max() < 1e-8
    # identical η in every arm: per-subject AUC ratios are exactly the dose ratios
    np.testing.assert_allclose(_ss_auc(res, "640 mg q24h x1 ss") / _ss_auc(res, "320 mg q12h x2 ss"), 2.0,
                               rtol=1e-12)
    # identical residual draws: arms with the same grid get the same ε at each point (additive error)
    p = res.profiles
    eps = {r: (g["dv"] - g["value"]).to_numpy() for r, g in p.groupby("regimen")}
    np.testing.assert_allclose(eps["320 mg q12h x2 ss"], eps["160 mg q12h x2 ss"], rtol=0, atol=1e-12)
    sd = np.sqrt(run.fit.estimates["SIGMA(ADD)"])
    assert np.std(eps["320 mg q12h x2 ss"]) == pytest.approx(sd, rel=0.05)


def test_chunking_bounds_memory_for_a_large_population(run, monkeypatch):
    """10^5 virtual subjects in chunks of 1000 (rounded to 1024): no chunk is larger, only summaries kept."""
    sizes = []
    original = engine_module.arm_batch

    def recording(arm, structural, baseline, *args, **kwargs):
        sizes.append(baseline.shape[0])
        return original(arm, structural, baseline, *args, **kwargs)
    monkeypatch.setattr(engine_module, "arm_batch", recording)
    n = 100_000
    res = simulate_population(run, "100 mg q12h x1 ss", n=n, seed=11, chunk_size=1000, keep_profiles=False,
                              keep_exposures=500, points_per_interval=4, targets=["auc>=40"],
                              windows=["first"])
    assert max(sizes) == 1024 and sum(sizes) == n and res.meta["chunk_size"] == 1024
    assert res.profiles is None and len(res.exposures) == 500 and len(res.subjects) == 500
    mom = res.moments.set_index(["window", "metric"])
    assert int(mom.loc[("first", "auc"), "n"]) == n and int(res.attainment["n"].iloc[0]) == n
    # E[Dose / CL_i] = Dose / θ_CL · exp(ω²/2) for log-normal CL (independent of the simulator)
    theta, omega = run.fit.estimates["CL"], run.fit.estimates["OMEGA(CL)"]
    expected = 100 / theta * np.exp(omega / 2)
    mean, sd = mom.loc[("first", "auc"), "mean"], mom.loc[("first", "auc"), "sd"]
    assert abs(mean - expected) < 4 * sd / np.sqrt(n)
    assert sd == pytest.approx(100 / theta * np.sqrt((np.exp(omega) - 1) * np.exp(omega)), rel=0.02)


def test_parameter_uncertainty_replicates(run):
    n, reps = 50, 30
    res = simulate_population(run, "320 mg q12h x1 ss", n=n, replicates=reps, uncertainty=True, seed=5,
                              targets=["auc>=100"])
    fixed = simulate_population(run, "320 mg q12h x1 ss", n=n, replicates=3, seed=5)
    # θ_CL of each replicate recovered exactly from AUC_i = Dose / (θ_CL,r · exp(η_i))
    for r_, expect_spread in ((res, True), (fixed, False)):
        auc = _ss_auc(r_, "320 mg q12h x1 ss")
        eta = r_.subjects.set_index(["replicate", "subject"])["ETA(CL)"].loc[auc.index]
        theta_r = np.exp(np.log(320 / auc) - eta).groupby(level="replicate")
        assert (theta_r.max() / theta_r.min()).max() - 1 < 1e-10          # one θ per replicate
        thetas = theta_r.mean().to_numpy()
        if expect_spread:
            assert np.std(thetas, ddof=1) == pytest.approx(run.fit.se["CL"], rel=0.4)
        else:
            np.testing.assert_allclose(thetas, run.fit.estimates["CL"], rtol=1e-10)
    pta = res.pta()
    assert pta["interval"].iloc[0] == "replicates"
    assert pta["lower"].iloc[0] <= pta["pta"].iloc[0] <= pta["upper"].iloc[0]
    assert isinstance(res.meta["rejected_parameter_draws"], int)
    # draws with non-PD Ω or negative θ are rejected and counted
    wide = replace(run, fit=replace(run.fit, covariance=np.asarray(run.fit.covariance) * 400))
    res = simulate_population(wide, "320 mg q12h x1 ss", n=5, replicates=10, uncertainty=True, seed=1)
    assert res.meta["rejected_parameter_draws"] > 0
    with pytest.raises(ModelError, match="no covariance matrix"):
        simulate_population(replace(run, fit=replace(run.fit, covariance=None)), "320 mg once", uncertainty=True)


def test_supplied_covariates_and_weight_based_dosing(run):
    cov = pd.DataFrame({"WT": [50.0, 100.0, 75.0], "DOSE": [4.0, 4.0, 4.0]})
    res = simulate_population(run, ["5 mg/kg q12h x1 ss", "400 mg q12h x1 ss"], n=3, covariates=cov, seed=2)
    ratio = (_ss_auc(res, "5 mg/kg q12h x1 ss") / _ss_auc(res, "400 mg q12h x1 ss")).to_numpy()
    np.testing.assert_allclose(ratio, 5 * cov["WT"].to_numpy() / 400, rtol=1e-12)
    assert res.subjects["WT"].tolist() == [50.0, 100.0, 75.0]
    # resampled covariates come from the data's subjects
    res = simulate_population(run, "400 mg once", n=50, seed=2)
    assert set(res.subjects["WT"]) <= set(run.data.batch.baseline[:, 0].tolist())
    with pytest.raises(RegimenError, match="lacks"):
        simulate_population(run, "400 mg once", n=3, covariates={"WT": [1.0, 2.0, 3.0]})


def test_exports_summary_and_figure(run, tmp_path):
    res = simulate_population(run, ["320 mg q12h x3", "640 mg q24h x2"], n=40, seed=1, targets=["cmin[last]>=2"],
                              threshold=3.0)
    ds = res.to_xarray()
    assert set(ds["auc"].dims) == {"regimen", "replicate", "subject", "window"}
    assert ds["auc"].sizes["subject"] == 40 and "concentration" in ds and "time" in ds.coords
    e = res.exposures
    sel = e[(e.regimen == "640 mg q24h x2") & (e.window == "last") & (e.subject == 3)]["cmax"].item()
    assert float(ds["cmax"].sel(regimen="640 mg q24h x2", window="last", subject=3, replicate=0)) == sel
    s = res.summary().set_index(["regimen", "window", "metric"])
    row = s.loc[("320 mg q12h x3", "last", "auc")]
    auc = e[(e.regimen == "320 mg q12h x3") & (e.window == "last")]["auc"]
    assert row["mean"] == pytest.approx(auc.mean(), rel=1e-12) and row["q50"] == pytest.approx(auc.median())
    assert row["sd"] == pytest.approx(auc.std(), rel=1e-10)
    pta = res.pta(goal=0.9)
    cm = e[e.window == "last"].groupby("regimen")["cmin"].apply(lambda v: (v >= 2).mean())
    assert pta.set_index("regimen")["pta"].to_dict() == pytest.approx(cm.to_dict())
    assert "meets_goal" in pta
    # a target evaluated afterwards on the kept exposures
    later = res.pta("ft_above[last]>=0.5")
    assert len(later) == 2 and later["n"].tolist() == [40, 40]
    text = res.summary_text()
    assert "Probability of target attainment" in text and "320 mg q12h x3" in text
    paths = res.write(tmp_path)
    names = {p.name for p in paths}
    assert {"profiles.csv", "exposures.csv", "summary.csv", "pta.csv", "summary.png"} <= names
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_bad_inputs_are_refused_clearly(run):
    with pytest.raises(RegimenError, match="n must be"):
        simulate_population(run, "100 mg once", n=0)
    with pytest.raises(RegimenError, match="unknown window"):
        simulate_population(run, "100 mg q12h x2", n=2, windows=["steady"])
    with pytest.raises(RegimenError, match="need threshold"):
        simulate_population(run, "100 mg q12h x2", n=2, targets=["ft_above>=0.5"])
    with pytest.raises(RegimenError, match="labels must be distinct"):
        simulate_population(run, ["100 mg q12h x2", "100 mg q12h x2"], n=2)
    with pytest.raises(RegimenError, match="METRIC"):
        simulate_population(run, "100 mg q12h x2", n=2, targets=["auc is big"])
    with pytest.raises(RegimenError, match="needs a BSA covariate or WT and HT"):
        simulate_population(run, "5 mg/m2 q12h x2", n=2)


def test_window_evaluator_path_matches_the_full_profile_path(run):
    """Exposures-only runs fold completed doses into mode amplitudes; they must equal the full-grid path."""
    regs = ["loading 640 mg then 320 mg q12h x3", "1 g iv over 13 h q12h x3", "320 mg q12h x2 ss",
            "100 mg iv q6h x4"]
    kw = dict(n=64, seed=9, threshold=3.0, windows=["first", "last"])
    full = simulate_population(run, regs, keep_profiles=True, **kw).exposures
    fast = simulate_population(run, regs, keep_profiles=False, **kw).exposures
    assert list(full.columns) == list(fast.columns) and len(full) == 64 * 4 * 2
    for col in ("auc", "cmax", "cmin", "ctrough", "t_above", "cavg"):
        np.testing.assert_allclose(fast[col], full[col], rtol=1e-9, atol=1e-12, err_msg=col)
