"""NLMEModel likelihood, prior, BLQ (M3), log-scale error, covariates, IOV, checks and sampling.

Expected values are computed by hand: the one-compartment oral (Bateman) solution written out with
numpy, and scipy.stats densities.
"""
import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from scipy import stats

import pmxgen
from pmxgen.errors import DatasetError, ModelError
from pmxgen.models import NLMEModel, OmegaBlock, build_model
from pmxgen.structural import get_model

T = torch.float64
NAN = float("nan")


def bateman(t, dose, ka, cl, v):
    """Concentration after an oral bolus ``dose`` at time 0 (F = 1)."""
    t = np.asarray(t, dtype=float)
    k = cl / v
    return dose * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))


@pytest.fixture(scope="module")
def theoph():
    return pmxgen.datasets.load("theophylline")


def subjects(ds):
    """Per subject (dataset order): dose amount, observation times and DVs, baseline WT, from the raw frame."""
    frame = ds.to_frame()
    out = []
    for sid in ds.ids:
        rows = frame[frame.ID == sid]
        obs = rows[(rows.EVID == 0) & (rows.MDV == 0)]
        out.append({"dose": float(rows.loc[rows.EVID == 1, "AMT"].sum()), "t": obs.TIME.to_numpy(),
                    "dv": obs.DV.to_numpy(), "wt": float(rows.WT.iloc[0])})
    return out


def theoph_model(error, omega=None, **kw):
    omega = {"KA": 0.4, "CL": 0.07, "V": 0.02} if omega is None else omega
    return NLMEModel(get_model("1cmt_oral"), theta={"KA": (0, 1.5), "CL": (0, 2.8), "V": (0, 32.0)},
                     omega=omega, error=error, **kw)


# ------------------------------------------------------------------------------------------ likelihood
@pytest.mark.parametrize("error, sd", [
    ({"kind": "additive", "init": {"ADD": 0.5}}, lambda f: np.sqrt(0.5) + 0 * f),
    ({"kind": "combined", "init": {"ADD": 0.09, "PROP": 0.02}}, lambda f: np.sqrt(0.09 + 0.02 * f ** 2)),
    ({"kind": "combined_sd", "init": {"ADD": 0.09, "PROP": 0.02}}, lambda f: 0.3 + math.sqrt(0.02) * np.abs(f)),
])
def test_log_likelihood_by_hand_theophylline(theoph, error, sd):
    model = theoph_model(error)
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    rng = np.random.default_rng(42)
    eta = rng.normal(scale=0.3, size=(theoph.n_subjects, 3))
    got = model.log_likelihood(torch.as_tensor(eta, dtype=T), values, theoph.batch).numpy()
    assert got.shape == (12,)
    expected = []
    for i, s in enumerate(subjects(theoph)):
        ka, cl, v = 1.5 * math.exp(eta[i, 0]), 2.8 * math.exp(eta[i, 1]), 32.0 * math.exp(eta[i, 2])
        f = bateman(s["t"], s["dose"], ka, cl, v)
        expected.append(stats.norm.logpdf(s["dv"], loc=f, scale=sd(f)).sum())
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_predict_and_moments(theoph):
    model = theoph_model({"kind": "combined", "init": {"ADD": 0.09, "PROP": 0.02}})
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = torch.zeros(12, 3, dtype=T)
    f = model.predict(eta, values, theoph.batch)
    for i, s in enumerate(subjects(theoph)):
        np.testing.assert_allclose(f[i].numpy(), bateman(s["t"], s["dose"], 1.5, 2.8, 32.0), rtol=1e-10, atol=1e-14)
    mean, var = model.moments(eta, values, theoph.batch)
    np.testing.assert_array_equal(mean.numpy(), f.numpy())
    np.testing.assert_allclose(var.numpy(), 0.09 + 0.02 * f.numpy() ** 2, rtol=1e-13)
    # variance_at: the variance is evaluated at other predictions
    at = torch.full_like(f, 3.0)
    _, var_at = model.moments(eta + 0.5, values, theoph.batch, variance_at=at)
    np.testing.assert_allclose(var_at.numpy(), 0.09 + 0.02 * 9.0, rtol=1e-13)


def test_log_prior_full_block_matches_scipy(theoph):
    m = np.array([[0.4, 0.05, -0.02], [0.05, 0.07, 0.01], [-0.02, 0.01, 0.02]])
    model = theoph_model("additive", omega=OmegaBlock(["KA", "CL", "V"], m))
    assert model.parameter_set.names[3:9] == ("OMEGA(KA)", "OMEGA(CL,KA)", "OMEGA(CL)", "OMEGA(V,KA)", "OMEGA(V,CL)",
                                           "OMEGA(V)")
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = np.random.default_rng(3).normal(scale=0.3, size=(12, 3))
    got = model.log_prior(torch.as_tensor(eta, dtype=T), values, theoph.batch).numpy()
    np.testing.assert_allclose(got, stats.multivariate_normal(mean=np.zeros(3), cov=m).logpdf(eta), rtol=1e-12)


def test_log_prior_with_per_subject_omega(theoph):
    """φ with a leading subject dimension gives each subject its own Ω."""
    model = theoph_model("additive", omega=OmegaBlock(["KA", "CL"], [[0.4, 0.05], [0.05, 0.07]]))
    ps = model.parameter_set
    n = theoph.n_subjects
    phi = ps.initial_natural().expand(n, -1).clone()
    scale = np.linspace(0.5, 2.0, n)
    for name in ("OMEGA(KA)", "OMEGA(CL,KA)", "OMEGA(CL)"):
        phi[:, ps.names.index(name)] *= torch.as_tensor(scale, dtype=T)
    values = ps.unpack(phi)
    eta = np.random.default_rng(4).normal(scale=0.3, size=(n, 2))
    got = model.log_prior(torch.as_tensor(eta, dtype=T), values, theoph.batch).numpy()
    base = np.array([[0.4, 0.05], [0.05, 0.07]])
    expected = [stats.multivariate_normal(cov=base * scale[i]).logpdf(eta[i]) for i in range(n)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# ------------------------------------------------------------------------------------------------- BLQ
def blq_frame():
    """Two subjects, oral dose 100; subject 1: LLOQ in its column; subject 2: LLOQ '.' so DV holds it."""
    rows = []
    design = {1: [(0.5, 1.8, 0, NAN), (1.0, 2.6, 0, NAN), (4.0, 1.9, 0, NAN), (12.0, 0.6, 0, NAN),
                  (24.0, 0.0, 1, 0.25)],
              2: [(1.0, 2.2, 0, NAN), (2.0, 2.4, 0, NAN), (24.0, 0.1, 1, NAN)]}
    for sid, obs in design.items():
        rows.append({"ID": sid, "TIME": 0.0, "DV": NAN, "AMT": 100.0, "EVID": 1, "MDV": 1, "CMT": 1, "BLQ": 0,
                     "LLOQ": NAN})
        for t, dv, blq, lloq in obs:
            rows.append({"ID": sid, "TIME": t, "DV": dv, "AMT": 0.0, "EVID": 0, "MDV": 0, "CMT": 2, "BLQ": blq,
                         "LLOQ": lloq})
    return pd.DataFrame(rows)


BLQ_SUBJECTS = [  # times, DV, BLQ flags, LLOQ (independent of the reader)
    (np.array([0.5, 1.0, 4.0, 12.0, 24.0]), np.array([1.8, 2.6, 1.9, 0.6, 0.0]), np.array([0, 0, 0, 0, 1]), 0.25),
    (np.array([1.0, 2.0, 24.0]), np.array([2.2, 2.4, 0.1]), np.array([0, 0, 1]), 0.1),
]


def blq_model(error):
    return NLMEModel(get_model("1cmt_oral"), theta={"KA": (0, 1.0), "CL": (0, 3.0), "V": (0, 30.0)},
                     omega={"CL": 0.1, "V": 0.1}, error=error)


def test_blq_dataset_reads_m3_fields():
    ds = pmxgen.read_nonmem(blq_frame())
    assert ds.n_blq == 2
    obs = ds.batch.obs
    assert obs.blq[0].tolist() == [False] * 4 + [True]
    assert obs.blq[1].tolist() == [False, False, True, False, False]
    assert float(obs.lloq[0, 4]) == 0.25 and float(obs.lloq[1, 2]) == pytest.approx(0.1)
    assert obs.mask[1].tolist() == [True, True, True, False, False]


def test_blq_observations_contribute_log_cdf():
    ds = pmxgen.read_nonmem(blq_frame())
    model = blq_model({"kind": "combined", "init": {"ADD": 0.04, "PROP": 0.03}})
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = np.array([[0.2, -0.1], [-0.3, 0.15]])
    got = model.log_likelihood(torch.as_tensor(eta, dtype=T), values, ds.batch).numpy()
    expected = []
    for i, (t, dv, blq, lloq) in enumerate(BLQ_SUBJECTS):
        f = bateman(t, 100.0, 1.0, 3.0 * math.exp(eta[i, 0]), 30.0 * math.exp(eta[i, 1]))
        sd = np.sqrt(0.04 + 0.03 * f ** 2)
        dens = stats.norm.logpdf(dv, f, sd)
        cens = stats.norm.logcdf((lloq - f) / sd)
        expected.append(np.where(blq == 1, cens, dens).sum())
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # the DV on a BLQ record with its own LLOQ is not used
    frame = blq_frame()
    frame.loc[(frame.ID == 1) & (frame.BLQ == 1), "DV"] = 0.2
    other = model.log_likelihood(torch.as_tensor(eta, dtype=T), values, pmxgen.read_nonmem(frame).batch).numpy()
    np.testing.assert_array_equal(other, got)


def test_exponential_error_uses_logs():
    ds = pmxgen.read_nonmem(blq_frame())
    model = blq_model({"kind": "exponential", "init": {"EXP": 0.05}})
    model.check(ds)      # DV = 0 on a BLQ record is fine for log-scale error
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = np.array([[0.1, 0.2], [-0.2, -0.1]])
    et = torch.as_tensor(eta, dtype=T)
    got = model.log_likelihood(et, values, ds.batch).numpy()
    expected = []
    for i, (t, dv, blq, lloq) in enumerate(BLQ_SUBJECTS):
        f = bateman(t, 100.0, 1.0, 3.0 * math.exp(eta[i, 0]), 30.0 * math.exp(eta[i, 1]))
        sd = math.sqrt(0.05)
        total = 0.0
        for k in range(len(t)):
            if blq[k]:
                total += stats.norm.logcdf((math.log(lloq) - math.log(f[k])) / sd)
            else:
                total += stats.norm.logpdf(math.log(dv[k]), math.log(f[k]), sd)
        expected.append(total)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    mean, var = model.moments(et, values, ds.batch)
    f0 = bateman(BLQ_SUBJECTS[0][0], 100.0, 1.0, 3.0 * math.exp(0.1), 30.0 * math.exp(0.2))
    np.testing.assert_allclose(mean[0].numpy(), np.log(f0), rtol=1e-12)
    assert torch.allclose(var[ds.batch.obs.mask], torch.tensor(0.05, dtype=T))


# ------------------------------------------------------------------------------------------ covariates
def allometric(theta, eta, cov):
    return {"KA": theta["KA"] * torch.exp(eta["KA"]),
            "CL": theta["CL"] * (cov["WT"] / 70.0) ** theta["CL_WT"] * torch.exp(eta["CL"]),
            "V": theta["V"] * torch.exp(eta["V"])}


def test_custom_individual_with_covariate(theoph):
    model = NLMEModel(get_model("1cmt_oral"),
                      theta={"KA": (0, 1.5), "CL": (0, 2.8), "V": (0, 32.0), "CL_WT": 0.75},
                      omega={"KA": 0.4, "CL": 0.07, "V": 0.02}, error={"kind": "additive", "init": {"ADD": 0.4}},
                      individual=allometric)
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = np.random.default_rng(8).normal(scale=0.2, size=(12, 3))
    et = torch.as_tensor(eta, dtype=T)
    params = model.individual_parameters(et, values, theoph.batch)
    subj = subjects(theoph)
    wt = np.array([s["wt"] for s in subj])
    np.testing.assert_allclose(params["CL"].numpy(), 2.8 * (wt / 70) ** 0.75 * np.exp(eta[:, 1]), rtol=1e-13)
    got = model.log_likelihood(et, values, theoph.batch).numpy()
    expected = []
    for i, s in enumerate(subj):
        f = bateman(s["t"], s["dose"], 1.5 * math.exp(eta[i, 0]), 2.8 * (s["wt"] / 70) ** 0.75 * math.exp(eta[i, 1]),
                    32.0 * math.exp(eta[i, 2]))
        expected.append(stats.norm.logpdf(s["dv"], f, math.sqrt(0.4)).sum())
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_covariate_lookup_is_case_insensitive(theoph):
    def lower_case(theta, eta, cov):
        return {"KA": theta["KA"], "CL": theta["CL"] * cov["wt"] / 70.0, "V": theta["V"]}

    model = NLMEModel(get_model("1cmt_oral"), theta={"KA": 1.5, "CL": 2.8, "V": 32.0}, individual=lower_case)
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    cl = model.individual_parameters(torch.zeros(12, 0, dtype=T), values, theoph.batch)["CL"].numpy()
    np.testing.assert_allclose(cl, 2.8 * np.array([s["wt"] for s in subjects(theoph)]) / 70, rtol=1e-14)


def test_covariate_get_is_case_insensitive_too(theoph):
    """The covariate mapping promises case-insensitive lookups; ``.get`` must not silently fall back."""
    def with_get(theta, eta, cov):
        return {"KA": theta["KA"], "CL": theta["CL"] * cov.get("wt", 70.0) / 70.0, "V": theta["V"]}

    model = NLMEModel(get_model("1cmt_oral"), theta={"KA": 1.5, "CL": 2.8, "V": 32.0}, individual=with_get)
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    cl = model.individual_parameters(torch.zeros(12, 0, dtype=T), values, theoph.batch)["CL"].numpy()
    np.testing.assert_allclose(cl, 2.8 * np.array([s["wt"] for s in subjects(theoph)]) / 70, rtol=1e-14)


def test_missing_covariate_names_the_available_ones(theoph):
    def uses_crcl(theta, eta, cov):
        return {"KA": theta["KA"], "CL": theta["CL"] * cov["CRCL"], "V": theta["V"]}

    model = NLMEModel(get_model("1cmt_oral"), theta={"KA": 1.5, "CL": 2.8, "V": 32.0}, individual=uses_crcl)
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    with pytest.raises(ModelError, match="'CRCL'") as info:
        model.log_likelihood(torch.zeros(12, 0, dtype=T), values, theoph.batch)
    assert "covariates: WT, DOSE" in str(info.value)


def test_individual_returning_wrong_things():
    ds = pmxgen.read_nonmem(blq_frame())
    for fn, text in [(lambda th, e, c: {"KA": th["KA"], "CL": th["CL"]}, "returned no V"),
                     (lambda th, e, c: [1, 2], "must return a dict"),
                     (lambda th, e, c: {"KA": th["KA"], "CL": th["CL"], "V": torch.ones(5, dtype=T)}, "shape")]:
        model = NLMEModel(get_model("1cmt_oral"), theta={"KA": 1.0, "CL": 3.0, "V": 30.0}, individual=fn)
        values = model.parameter_set.unpack(model.parameter_set.initial_natural())
        with pytest.raises(ModelError, match=text):
            model.individual_parameters(torch.zeros(2, 0, dtype=T), values, ds.batch)


@pytest.mark.parametrize("kwargs, text", [
    (dict(theta={"KA": 1.0, "CL": 3.0, "V": 30.0, "WT_CL": 0.75}), "not parameters of 1cmt_oral"),
    (dict(theta={"KA": 1.0, "CL": 3.0}), "theta lacks \\['V'\\]"),
    (dict(theta={"KA": 1.0, "CL": 3.0, "V": 30.0}, omega={"KE": 0.1}), "do not match a parameter"),
    (dict(theta={"KA": 1.0, "CL": 3.0, "V": 30.0}, iov={"CL": 0.1}), "do not match a parameter"),
    (dict(theta={"KA": 1.0, "CL": 3.0, "V": 30.0}, omega={"IOV_CL": 0.1}, iov={"IOV_CL": 0.1}),
     "both IIV and IOV"),
    (dict(theta=[1.0, 2.0]), "theta must be a dict"),
])
def test_constructor_errors(kwargs, text):
    with pytest.raises(ModelError, match=text):
        NLMEModel(get_model("1cmt_oral"), **kwargs)


def test_structural_must_be_a_structural_model():
    with pytest.raises(ModelError, match="structural must be a StructuralModel"):
        NLMEModel("1cmt_oral", theta={"KA": 1.0, "CL": 3.0, "V": 30.0})



def test_with_initial_replaces_only_the_named_starting_values(theoph):
    model = NLMEModel(get_model("1cmt_oral"), theta={"KA": (0, 1.5), "CL": (0, 2.8, 10.0), "V": 32.0},
                      omega=[OmegaBlock(["KA", "CL"], [[0.4, 0.01], [0.01, 0.07]])],
                      error={"kind": "combined", "init": {"ADD": 0.1, "PROP": 0.02}})
    new = model.with_initial({"CL": 5.0, "OMEGA(CL,KA)": 0.02, "OMEGA(KA)": 0.3, "SIGMA(PROP)": 0.04})
    start = dict(zip(new.parameter_set.names, new.parameter_set.initial_natural().tolist()))
    assert start == pytest.approx({"KA": 1.5, "CL": 5.0, "V": 32.0, "OMEGA(KA)": 0.3, "OMEGA(CL,KA)": 0.02,
                                   "OMEGA(CL)": 0.07, "SIGMA(ADD)": 0.1, "SIGMA(PROP)": 0.04})
    cl = new.parameter_set.theta[1]
    assert (cl.lower, cl.upper) == (0.0, 10.0)
    # the original is untouched, and both evaluate the same data
    assert model.parameter_set.theta[1].init == 2.8 and model.parameter_set.omega[0].init[0, 0] == 0.4
    values = new.parameter_set.unpack(new.parameter_set.initial_natural())
    eta = torch.zeros(theoph.n_subjects, 2, dtype=T)
    assert torch.isfinite(new.log_likelihood(eta, values, theoph.batch)).all()


def test_with_initial_refuses_unknown_names_and_values_outside_bounds():
    model = NLMEModel(get_model("1cmt_oral"), theta={"KA": (0, 1.5), "CL": (0, 2.8, 10.0), "V": 32.0},
                      omega={"CL": 0.1}, error="additive")
    with pytest.raises(ModelError, match="unknown parameters"):
        model.with_initial({"CLEARANCE": 3.0})
    with pytest.raises(ModelError, match="strictly inside its bounds"):
        model.with_initial({"CL": 30.0})
    with pytest.raises(ModelError, match="mapping"):
        model.with_initial([("CL", 3.0)])


def test_with_initial_is_kept_in_the_recipe(theoph):
    model = build_model("1cmt_oral", theoph, error="additive", iiv=("KA", "CL"))
    new = model.with_initial({"CL": 9.0}).with_initial({"OMEGA(KA)": 0.2})
    assert new.recipe["initial"] == {"CL": 9.0, "OMEGA(KA)": 0.2}
    assert "initial" not in model.recipe
    rebuilt = pmxgen.runs.model_from_recipe(new.recipe, theoph)
    assert rebuilt.parameter_set.initial_natural().tolist() == new.parameter_set.initial_natural().tolist()


# ------------------------------------------------------------------------------------------------- IOV
IOV_DOSES = {1: (100.0, 150.0), 2: (200.0, 80.0)}
IOV_TIMES = {1: ([0.5, 1, 2, 4, 8], 48.0, [48.5, 49, 50, 52, 56]),    # occasion 2 starts at t = 48
             2: ([1, 3, 6], 0.0, [0.25, 2, 5, 12])}                  # time goes back to 0 at the EVID 4 record


def iov_frame():
    rows = []
    for sid in (1, 2):
        occ1_t, start2, occ2_t = IOV_TIMES[sid]
        d1, d2 = IOV_DOSES[sid]
        rows.append({"ID": sid, "TIME": 0.0, "DV": NAN, "AMT": d1, "EVID": 4, "MDV": 1, "CMT": 1, "OCC": 1})
        rows += [{"ID": sid, "TIME": float(t), "DV": 1.0, "AMT": 0.0, "EVID": 0, "MDV": 0, "CMT": 2, "OCC": 1}
                 for t in occ1_t]
        rows.append({"ID": sid, "TIME": start2, "DV": NAN, "AMT": d2, "EVID": 4, "MDV": 1, "CMT": 1, "OCC": 2})
        rows += [{"ID": sid, "TIME": float(t), "DV": 2.0, "AMT": 0.0, "EVID": 0, "MDV": 0, "CMT": 2, "OCC": 2}
                 for t in occ2_t]
    return pd.DataFrame(rows)


def iov_model():
    iov = OmegaBlock(["IOV_CL", "IOV_V"], [[0.05, 0.01], [0.01, 0.03]])
    return NLMEModel(get_model("1cmt_oral"), theta={"KA": (0, 1.2), "CL": (0, 4.0), "V": (0, 35.0)},
                     omega={"KA": 0.2, "CL": 0.1}, iov=iov, error={"kind": "additive", "init": {"ADD": 0.3}})


def test_iov_layout():
    ds = pmxgen.read_nonmem(iov_frame(), occasion="OCC")
    model = iov_model()
    assert model.n_occasions(ds.batch) == 2
    assert model.eta_names(ds.batch) == ("KA", "CL", "IOV_CL[occ 1]", "IOV_V[occ 1]", "IOV_CL[occ 2]",
                                         "IOV_V[occ 2]")
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    om = model.omega_matrix(values, ds.batch).numpy()
    iov = np.array([[0.05, 0.01], [0.01, 0.03]])
    np.testing.assert_array_equal(om, scipy.linalg.block_diag(np.diag([0.2, 0.1]), iov, iov))
    eta = np.random.default_rng(5).normal(scale=0.2, size=(2, 6))
    got = model.log_prior(torch.as_tensor(eta, dtype=T), values, ds.batch).numpy()
    np.testing.assert_allclose(got, stats.multivariate_normal(cov=om).logpdf(eta), rtol=1e-12)
    # batched values give a batched block-diagonal Ω
    phi = model.parameter_set.initial_natural().expand(3, -1)
    assert model.omega_matrix(model.parameter_set.unpack(phi), ds.batch).shape == (3, 6, 6)


def test_iov_predictions_use_each_occasions_parameters():
    ds = pmxgen.read_nonmem(iov_frame(), occasion="OCC")
    model = iov_model()
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = np.array([[0.1, -0.2, 0.3, -0.1, -0.25, 0.2],
                    [-0.3, 0.15, -0.1, 0.2, 0.35, -0.15]])
    f = model.predict(torch.as_tensor(eta, dtype=T), values, ds.batch).numpy()
    for i, sid in enumerate((1, 2)):
        occ1_t, start2, occ2_t = IOV_TIMES[sid]
        d1, d2 = IOV_DOSES[sid]
        ka = 1.2 * math.exp(eta[i, 0])
        p1 = (4.0 * math.exp(eta[i, 1] + eta[i, 2]), 35.0 * math.exp(eta[i, 3]))
        p2 = (4.0 * math.exp(eta[i, 1] + eta[i, 4]), 35.0 * math.exp(eta[i, 5]))
        n1, n2 = len(occ1_t), len(occ2_t)
        np.testing.assert_allclose(f[i, :n1], bateman(occ1_t, d1, ka, *p1), rtol=1e-10)
        np.testing.assert_allclose(f[i, n1:n1 + n2], bateman(np.array(occ2_t) - start2, d2, ka, *p2), rtol=1e-10)
    # individual parameters of occasion 2 (0-based 1)
    params = model.individual_parameters(torch.as_tensor(eta, dtype=T), values, ds.batch, occasion=1)
    np.testing.assert_allclose(params["CL"].numpy(), 4.0 * np.exp(eta[:, 1] + eta[:, 4]), rtol=1e-14)
    np.testing.assert_allclose(params["V"].numpy(), 35.0 * np.exp(eta[:, 5]), rtol=1e-14)


def test_occasions_are_numbered_in_numeric_label_order():
    """With occasions 1..11, η ``IOV_CL[occ k]`` must belong to OCC = k (not to the k-th label in text order)."""
    rows = []
    for occ in range(1, 12):
        rows.append({"ID": 1, "TIME": 0.0, "DV": NAN, "AMT": 100.0, "EVID": 4, "MDV": 1, "CMT": 1, "OCC": occ})
        rows.append({"ID": 1, "TIME": 2.0, "DV": 1.0, "AMT": 0.0, "EVID": 0, "MDV": 0, "CMT": 2, "OCC": occ})
    ds = pmxgen.read_nonmem(pd.DataFrame(rows), occasion="OCC")
    model = NLMEModel(get_model("1cmt_oral"), theta={"KA": 1.0, "CL": 3.0, "V": 30.0}, iov={"IOV_CL": 0.1})
    names = model.eta_names(ds.batch)
    assert names == tuple(f"IOV_CL[occ {k}]" for k in range(1, 12))
    eta = torch.zeros(1, 11, dtype=T)
    eta[0, names.index("IOV_CL[occ 10]")] = 0.5
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    f = model.predict(eta, values, ds.batch).numpy()[0]
    expected = bateman([2.0] * 11, 100.0, 1.0, 3.0, 30.0)
    expected[9] = bateman(2.0, 100.0, 1.0, 3.0 * math.exp(0.5), 30.0)     # the 10th sample has OCC = 10
    np.testing.assert_allclose(f, expected, rtol=1e-10)


def test_build_model_with_iov_names_effects():
    ds = pmxgen.read_nonmem(iov_frame(), occasion="OCC")
    model = build_model("1cmt_oral", ds, iov=("CL",))
    assert model.eta_names(ds.batch) == ("KA", "CL", "V", "IOV_CL[occ 1]", "IOV_CL[occ 2]")
    assert "OMEGA(IOV_CL)" in model.parameter_set.names


# ------------------------------------------------------------------------------------------------ check
def test_check_rejects_proportional_error_with_zero_prediction(theoph):
    model = build_model("1cmt_oral", theoph, error="proportional")
    with pytest.raises(DatasetError, match="proportional error") as info:
        model.check(theoph)
    # subject 1's sample at the time of its oral dose: file line 3 (header line 1, dose line 2)
    assert info.value.row == 3 and "row 3" in str(info.value)
    assert info.value.column == "DV"


def test_check_rejects_exponential_error_with_nonpositive_dv(theoph):
    model = build_model("1cmt_oral", theoph, error="exponential")
    frame = theoph.to_frame()
    first_zero = int(np.flatnonzero(((frame.EVID == 0) & (frame.DV <= 0)).to_numpy())[0])
    with pytest.raises(DatasetError, match="DV > 0") as info:
        model.check(theoph)
    assert info.value.row == first_zero + 2       # file line: header is line 1
    assert info.value.value == 0.0


def test_check_passes_for_combined_error(theoph):
    build_model("1cmt_oral", theoph, error="combined").check(theoph)


def test_check_rejects_nonfinite_individual_parameters(theoph):
    def bad(theta, eta, cov):
        return {"KA": theta["KA"], "CL": theta["CL"] * torch.log(cov["WT"] - 70.5), "V": theta["V"]}

    model = NLMEModel(get_model("1cmt_oral"), theta={"KA": 1.5, "CL": 2.8, "V": 32.0}, individual=bad)
    with pytest.raises(ModelError, match="individual parameter CL is not finite"):
        model.check(theoph)


# --------------------------------------------------------------------------------------------- sampling
def test_sample_y_reproducible_and_zero_on_padding():
    ds = pmxgen.read_nonmem(blq_frame())
    model = blq_model({"kind": "combined", "init": {"ADD": 0.04, "PROP": 0.03}})
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = torch.zeros(2, 2, dtype=T)
    a = model.sample_y(eta, values, ds.batch, generator=torch.Generator().manual_seed(11))
    b = model.sample_y(eta, values, ds.batch, generator=torch.Generator().manual_seed(11))
    c = model.sample_y(eta, values, ds.batch, generator=torch.Generator().manual_seed(12))
    mask = ds.batch.obs.mask
    assert a.shape == (2, 5)
    assert torch.equal(a, b) and not torch.equal(a[mask], c[mask])
    assert torch.all(a[~mask] == 0) and torch.all(a[mask] != 0)


def test_sample_y_distribution():
    ds = pmxgen.read_nonmem(blq_frame())
    model = blq_model({"kind": "combined", "init": {"ADD": 0.04, "PROP": 0.03}})
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    big = ds.batch.repeat(8_000)
    eta = torch.zeros(big.n_subjects, 2, dtype=T)
    y = model.sample_y(eta, values, big, generator=torch.Generator().manual_seed(2)).reshape(8_000, 2, 5).numpy()
    f = bateman(BLQ_SUBJECTS[0][0], 100.0, 1.0, 3.0, 30.0)
    assert np.all(np.abs(y[:, 0].mean(0) - f) < 5 * np.sqrt((0.04 + 0.03 * f ** 2) / 8_000))
    np.testing.assert_allclose(y[:, 0].var(0), 0.04 + 0.03 * f ** 2, rtol=0.08)


def test_sample_eta_covariance():
    ds = pmxgen.read_nonmem(iov_frame(), occasion="OCC")
    model = iov_model()
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    big = ds.batch.repeat(20_000)
    eta = model.sample_eta(values, big, generator=torch.Generator().manual_seed(4)).numpy()
    om = model.omega_matrix(values, ds.batch).numpy()
    np.testing.assert_allclose(np.cov(eta.T), om, atol=0.006)


def test_with_fixed_fixes_theta_sigma_and_omega_by_blocks():
    model = NLMEModel(get_model("1cmt_oral"), theta={"KA": (0, 1.5), "CL": (0, 2.8), "V": 32.0},
                      omega=[OmegaBlock(["KA", "V"], [0.4, 0.05]), OmegaBlock(["CL"], [0.07])],
                      error={"kind": "combined", "init": {"ADD": 0.1, "PROP": 0.02}})
    fixed = model.with_fixed({"CL": 3.0, "OMEGA(V)": 0.04, "SIGMA(ADD)": 0.2})
    ps = fixed.parameter_set
    assert ps.names == ("KA", "V", "OMEGA(KA)", "OMEGA(CL)", "SIGMA(PROP)")
    assert ps.all_names == model.parameter_set.all_names and ps.eta_names == ("KA", "V", "CL")
    # the diagonal block was split; Ω itself is unchanged apart from the fixed value
    values = ps.unpack(ps.initial_natural())
    assert np.allclose(values.omega.numpy(), np.diag([0.4, 0.04, 0.07]))
    assert float(values.theta["CL"]) == 3.0 and float(values.sigma["ADD"]) == 0.2
    assert model.parameter_set.n_estimated == 8          # the original is untouched
    full = NLMEModel(get_model("1cmt_oral"), theta={"KA": (0, 1.5), "CL": (0, 2.8), "V": 32.0},
                     omega=[OmegaBlock(["KA", "CL"], [[0.4, 0.01], [0.01, 0.07]])], error="additive")
    with pytest.raises(ModelError, match="fixed by whole blocks.*OMEGA\\(KA\\), OMEGA\\(CL,KA\\), OMEGA\\(CL\\)"):
        full.with_fixed({"OMEGA(CL)": 0.05})
    whole = full.with_fixed({"OMEGA(KA)": 0.3, "OMEGA(CL,KA)": 0.0, "OMEGA(CL)": 0.05})
    assert whole.parameter_set.names == ("KA", "CL", "V", "SIGMA(ADD)")
    assert np.allclose(whole.parameter_set.omega[0].init, [[0.3, 0.0], [0.0, 0.05]])
    with pytest.raises(ModelError, match="unknown parameters"):
        model.with_fixed({"CLEARANCE": 3.0})
    with pytest.raises(ModelError, match="mapping"):
        model.with_fixed(["CL"])


def test_fixing_a_parameter_at_its_estimate_keeps_the_optimum_and_profiles(theoph):
    model = build_model("1cmt_oral", theoph, error="additive", iiv=("KA", "CL"))
    free = pmxgen.fit(model, theoph, method="focei", covariance=None)
    at_estimate = pmxgen.fit(model.with_fixed({"V": free.estimates["V"]}).with_initial(free.estimates), theoph,
                             method="focei", covariance=None)
    assert at_estimate.status == "converged" and "V" not in at_estimate.estimated_names
    assert at_estimate.fixed["V"] and at_estimate.estimates["V"] == free.estimates["V"]
    assert abs(at_estimate.ofv - free.ofv) < 1e-6
    # Away from the estimate the profile rises: by about z² = ((V - V̂) / SE)² near the optimum.
    away = pmxgen.fit(model.with_fixed({"V": 0.8 * free.estimates["V"]}), theoph, method="focei", covariance=None)
    assert away.status == "converged" and away.ofv > free.ofv + 3.84


def test_with_fixed_is_kept_in_the_recipe(theoph):
    model = build_model("1cmt_oral", theoph, error="additive", iiv=("KA", "CL")).with_fixed({"KA": 1.2})
    assert model.recipe["fixed"] == ["KA"] and model.recipe["initial"]["KA"] == 1.2
    rebuilt = pmxgen.runs.model_from_recipe(model.recipe, theoph)
    assert rebuilt.parameter_set.names == model.parameter_set.names
    assert rebuilt.parameter_set.theta[0].fixed and rebuilt.parameter_set.theta[0].init == 1.2
