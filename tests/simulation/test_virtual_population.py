"""Simulating a fitted model's regimens on a generated virtual population: covariate effects, strata, CRN.

The run: 1-cmt oral with CL = θ_CL·(WT/70)^0.75·exp(η_CL), FOCE on 30 subjects of
sim_1cmt_oral_wt. The virtual population: a Gaussian copula fitted to a panel whose weight
depends on sex. At steady state the AUC over τ is Dose/CL_i exactly, so each virtual subject's
AUC checks that its own weight (from the population table) and its η are used, and the mean
log-AUC difference between the sexes has the closed form −0.75·Δ mean log WT (η independent of WT).
"""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import pmxgen
from pmxgen.errors import DatasetError, ModelError
from pmxgen.generative import generate_population
from pmxgen.models import NLMEModel
from pmxgen.simulation import needed_covariates, simulate_virtual_population


def _individual(theta, eta, cov):
    return {"KA": theta["KA"] * torch.exp(eta["KA"]),
            "CL": theta["CL"] * (cov["WT"] / 70) ** 0.75 * torch.exp(eta["CL"]), "V": theta["V"] * torch.exp(eta["V"])}


@pytest.fixture(scope="module")
def run():
    data = pmxgen.datasets.load("sim_1cmt_oral_wt")
    data = data.subset(list(data.ids)[:30])
    model = NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": (0, 1.2), "CL": (0, 4.0), "V": (0, 35.0)},
                      omega={"KA": 0.16, "CL": 0.09, "V": 0.04},
                      error={"kind": "combined", "init": {"PROP": 0.0144, "ADD": 0.0009}}, individual=_individual)
    fit = pmxgen.fit(model, data, method="foce", covariance=None, cpu_threads=1)
    assert fit.status == "converged"
    return pmxgen.load_run(fit, model=model, data=data)


@pytest.fixture(scope="module")
def vpop():
    rng = np.random.default_rng(4)
    sex = rng.choice(["F", "M"], 600)
    panel = pd.DataFrame({"WT": np.exp(np.log(62) + 0.25 * (sex == "M") + 0.15 * rng.standard_normal(600)),
                          "SEX": sex, "AGE": rng.integers(18, 85, 600)})
    return generate_population(panel, model="gaussian_copula", n=3000, seed=1).frame


def test_covariate_effects_are_applied_per_virtual_subject(run, vpop):
    assert needed_covariates(run) == ("WT",)
    regs = ["100 mg q24h x2 ss", "200 mg q24h x2 ss"]
    res = simulate_virtual_population(run, vpop, regs, seed=3, strata="SEX", targets=["auc[first]>=25"],
                                      keep_profiles=False, keep_exposures=True)
    subjects = res.subjects.set_index("subject")
    assert len(subjects) == len(vpop) and res.meta["n_subjects"] == len(vpop)
    # the subjects carry the population's own weights and strata, row by row
    np.testing.assert_array_equal(subjects["WT"].to_numpy(), vpop["WT"].to_numpy())
    np.testing.assert_array_equal(subjects["SEX"].to_numpy(), vpop["SEX"].to_numpy())
    theta_cl = run.fit.estimates["CL"]
    cl = theta_cl * (subjects["WT"] / 70) ** 0.75 * np.exp(subjects["ETA(CL)"])
    e = res.exposures[res.exposures["window"] == "first"]
    for label, dose in zip(regs, (100.0, 200.0)):
        auc = e[e["regimen"] == label].set_index("subject")["auc"]
        np.testing.assert_allclose(auc.to_numpy(), dose / cl.loc[auc.index].to_numpy(), rtol=1e-8)
    # common random numbers: per subject, the AUC ratio is exactly the dose ratio
    a = e[e["regimen"] == regs[0]].set_index("subject")["auc"]
    b = e[e["regimen"] == regs[1]].set_index("subject")["auc"]
    np.testing.assert_allclose((b / a).to_numpy(), 2.0, rtol=1e-12)
    # exposure ratio between strata: closed form of the allometric model
    log_auc = np.log(a)
    sex = subjects.loc[a.index, "SEX"]
    log_wt = np.log(subjects.loc[a.index, "WT"])
    diff = log_auc[sex == "M"].mean() - log_auc[sex == "F"].mean()
    expected = -0.75 * (log_wt[sex == "M"].mean() - log_wt[sex == "F"].mean())
    omega_cl = math.sqrt(run.fit.estimates["OMEGA(CL)"])
    se = omega_cl * math.sqrt(1 / (sex == "M").sum() + 1 / (sex == "F").sum())
    assert abs(diff - expected) < 4 * se
    assert expected < -0.1        # the population's sex effect on weight is there (generated, not lost)


def test_pta_per_stratum_counts_every_subject(run, vpop):
    res = simulate_virtual_population(run, vpop, ["100 mg q24h x2 ss", "50 mg q12h x4 ss"], seed=5,
                                      strata="AGE:40,65", targets=["auc[first]>=25", "cmax[first]>=2"],
                                      keep_profiles=False, keep_exposures=True, chunk_size=256)
    by = res.pta_by_stratum()
    assert set(by["stratum"]) == {"<40", "40-<65", ">=65"}
    overall = res.pta().set_index(["regimen", "target"])
    # independent count from the per-subject exposures and the population's ages
    age = vpop["AGE"].to_numpy()
    band = np.where(age < 40, "<40", np.where(age < 65, "40-<65", ">=65"))
    for (reg, tgt), g in by.groupby(["regimen", "target"]):
        t = pmxgen.simulation.parse_target(tgt)
        e = res.exposures[(res.exposures["regimen"] == reg) & (res.exposures["window"] == "first")]
        hit = t.attained(e.sort_values("subject")[t.metric].to_numpy())
        for _, row in g.iterrows():
            sel = band == row["stratum"]
            assert row["n"] == sel.sum() and row["pta"] == pytest.approx(hit[sel].mean(), abs=1e-12)
        assert g["n"].sum() == len(vpop)
        assert (g["pta"] * g["n"]).sum() / g["n"].sum() == pytest.approx(overall.loc[(reg, tgt), "pta"], abs=1e-12)
        assert ((g["lower"] <= g["pta"]) & (g["pta"] <= g["upper"])).all()
    text = res.summary_text()
    assert "Probability of target attainment by AGE band" in text


def test_missing_covariates_and_bad_strata_are_named(run, vpop):
    with pytest.raises(ModelError, match=r"needs the covariate\(s\) \['WT'\].*lacks"):
        simulate_virtual_population(run, vpop[["SEX", "AGE"]], "100 mg q24h x2 ss")
    with pytest.raises(DatasetError, match="strata column 'RACE'"):
        simulate_virtual_population(run, vpop, "100 mg q24h x2 ss", strata="RACE")
    bad = vpop.head(10).copy()
    bad.loc[3, "WT"] = np.nan
    with pytest.raises(DatasetError, match="row 3, column WT: missing value"):
        simulate_virtual_population(run, bad, "100 mg q24h x2 ss")
    # the same seed gives the same virtual patients
    a = simulate_virtual_population(run, vpop.head(300), "100 mg q24h x2 ss", seed=1)
    b = simulate_virtual_population(run, vpop.head(300), "100 mg q24h x2 ss", seed=1)
    pd.testing.assert_frame_equal(a.exposures, b.exposures)
