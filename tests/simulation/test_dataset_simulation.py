"""simulate_dataset: reproducibility, exactness without noise, IIV and residual error statistics, validation,
and the population-model contract (sample_eta / sample_y, NLMEModel's residual error and likelihood)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import pmxgen
from pmxgen.errors import ModelError
from pmxgen.models import ERROR_MODELS, NLMEModel, OmegaBlock, PPCAModel, ResidualError
from pmxgen.simulation import SimulatedData, design_frame, simulate_dataset

THETA = {"KA": 1.2, "CL": 4.0, "V": 30.0}
TIMES = [0.5, 1, 2, 4, 8, 12, 24]


def oral_design(n: int = 20, times=TIMES, **kwargs):
    return design_frame(n, doses=[{"time": 0, "amt": 100}], obs_times=times, obs_cmt=2, **kwargs)


def dv(sim: SimulatedData) -> torch.Tensor:
    return sim.dataset.batch.obs.dv


def test_same_seed_same_data_different_seed_different_data():
    design = oral_design()
    kw = dict(theta=THETA, omega={"CL": 0.09, "V": 0.04}, error={"proportional": 0.1, "additive": 0.05})
    a = simulate_dataset("1cmt_oral", design, seed=7, **kw)
    b = simulate_dataset(pmxgen.get_model("1cmt_oral"), pmxgen.read_nonmem(design), seed=7, **kw)
    c = simulate_dataset("1cmt_oral", design, seed=8, **kw)
    assert torch.equal(dv(a), dv(b))
    assert a.eta.equals(b.eta) and a.individual.equals(b.individual)
    assert not torch.equal(dv(a), dv(c))
    assert (dv(a) != dv(c))[a.dataset.batch.obs.mask].all()


@pytest.mark.parametrize("name, theta, design", [
    ("1cmt_oral", THETA, oral_design(5)),
    ("2cmt_iv", {"CL": 5.0, "V1": 20.0, "Q": 8.0, "V2": 50.0},
     design_frame(4, doses=[{"time": 0, "amt": 500, "rate": 500, "ii": 12, "addl": 3}],
                  obs_times=[0.5, 1, 11.5, 37, 48])),
])
def test_no_variability_no_error_gives_the_model_prediction_exactly(name, theta, design):
    sim = simulate_dataset(name, design, theta=theta, omega={k: 0.0 for k in theta}, error={}, seed=3)
    ds = pmxgen.read_nonmem(design)
    expected = pmxgen.get_model(name).predict({k: torch.tensor(v, dtype=torch.float64) for k, v in theta.items()},
                                              ds.batch)
    assert torch.equal(dv(sim), expected)
    assert torch.equal(sim.ipred, expected)
    assert (sim.eta.drop(columns="ID").to_numpy() == 0).all()
    # dose records keep DV missing; everything but DV is unchanged
    frame, original = sim.dataset.to_frame(), ds.to_frame()
    assert frame.drop(columns="DV").equals(original.drop(columns="DV"))
    assert frame.DV[frame.EVID == 1].isna().all()


def test_iiv_variance_of_log_parameters():
    omega = {"KA": 0.16, "CL": 0.09, "V": 0.04}
    sim = simulate_dataset("1cmt_oral", oral_design(4000, times=[2.0]), theta=THETA, omega=omega, seed=11)
    for name, var in omega.items():
        sd = np.log(sim.individual[name] / THETA[name]).std()
        assert sd == pytest.approx(np.sqrt(var), rel=0.05), name
        assert np.allclose(np.log(sim.individual[name] / THETA[name]), sim.eta[name], rtol=0, atol=1e-12)
    assert sim.truth["omega"] == omega and sim.truth["theta"] == THETA


def test_correlated_omega_matrix():
    names = ["CL", "V"]
    cov = np.array([[0.09, 0.036], [0.036, 0.04]])       # correlation 0.6
    sim = simulate_dataset("1cmt_oral", oral_design(4000, times=[2.0]), theta=THETA, omega=(names, cov), seed=5)
    eta = sim.eta[names].to_numpy()
    assert np.corrcoef(eta.T)[0, 1] == pytest.approx(0.6, abs=0.03)
    assert eta.std(axis=0) == pytest.approx(np.sqrt(np.diag(cov)), rel=0.05)
    assert sim.truth["omega_matrix"]["names"] == names
    assert sim.truth["omega"] == {"CL": 0.09, "V": 0.04}


def test_proportional_and_additive_error_sd():
    design = pmxgen.read_nonmem(oral_design(2500, times=[1.0, 4.0, 12.0]))    # read once, simulate thrice
    prop = simulate_dataset("1cmt_oral", design, theta=THETA, error={"proportional": 0.2}, seed=1)
    mask = prop.dataset.batch.obs.mask
    rel = ((dv(prop) - prop.ipred) / prop.ipred)[mask]
    assert float(rel.std()) == pytest.approx(0.2, rel=0.05)
    add = simulate_dataset("1cmt_oral", design, theta=THETA, error={"additive": 0.3}, seed=1)
    assert float((dv(add) - add.ipred)[mask].std()) == pytest.approx(0.3, rel=0.05)
    both = simulate_dataset("1cmt_oral", design, theta=THETA, error={"additive": 0.3, "proportional": 0.2}, seed=1)
    # variance adds: standardised residuals have SD 1
    z = ((dv(both) - both.ipred) / torch.sqrt((0.2 * both.ipred) ** 2 + 0.3 ** 2))[mask]
    assert float(z.std()) == pytest.approx(1.0, rel=0.05)


def test_lower_bound_clamps():
    sim = simulate_dataset("1cmt_oral", oral_design(200), theta=THETA, error={"additive": 1.0}, seed=2,
                           lower_bound=0.0)
    values = dv(sim)[sim.dataset.batch.obs.mask]
    assert float(values.min()) == 0.0


def test_custom_individual_model_with_covariate():
    wt = np.linspace(40, 120, 30)
    design = oral_design(30, covariates={"WT": wt})

    def individual(theta, eta, cov):
        return {"KA": theta["KA"], "CL": theta["CL"] * (cov["WT"] / 70) ** theta["WT_CL"] * torch.exp(eta["CL"]),
                "V": theta["V"]}

    sim = simulate_dataset("1cmt_oral", design, theta={**THETA, "WT_CL": 0.75}, omega={"CL": 0.0},
                           individual=individual, seed=0)
    assert np.allclose(sim.individual["CL"], 4.0 * (wt / 70) ** 0.75, rtol=1e-14)
    assert (sim.individual["KA"] == 1.2).all()
    obs = sim.observation_frame()
    assert {"DV", "IPRED"} <= set(obs.columns) and len(obs) == 30 * len(TIMES)


def test_ode_model_and_lazy_exports():
    design = design_frame(6, doses=[{"time": 0, "amt": [100, 100, 100, 800, 800, 800]}], obs_times=[1, 4, 12],
                          obs_cmt=2)
    sim = pmxgen.simulate_dataset("1cmt_oral_mm", design, theta={"KA": 1.0, "VM": 20.0, "KM": 5.0, "V": 40.0},
                                  omega={"VM": 0.09}, error={"proportional": 0.1}, seed=4)
    assert sim.ipred.shape == (6, 3) and bool((sim.ipred > 0).all())
    assert pmxgen.design_frame is design_frame


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_the_data_device(device):
    ds = pmxgen.read_nonmem(oral_design(10), device=device)
    sim = simulate_dataset("1cmt_oral", ds, theta=THETA, omega={"CL": 0.09}, error={"proportional": 0.1}, seed=2)
    again = simulate_dataset("1cmt_oral", ds, theta=THETA, omega={"CL": 0.09}, error={"proportional": 0.1}, seed=2)
    assert sim.ipred.device.type == device and sim.dataset.device.type == device
    assert sim.ipred.dtype == torch.float64
    assert torch.equal(dv(sim), dv(again))


DESIGN = oral_design(5)


@pytest.mark.parametrize("kwargs, match", [
    ({"theta": {**THETA, "CLX": 1.0}}, "CLX"),
    ({"theta": {"KA": 1.0, "CL": 1.0}}, "lacks parameters V"),
    ({"theta": {**THETA, "V": -1.0}}, "must be > 0"),
    ({"omega": {"Q": 0.1}}, "omega names Q"),
    ({"omega": {"CL": -0.1}}, "negative for CL"),
    ({"omega": (["CL", "V"], [[0.09, 0.1], [0.1, 0.04]])}, "not positive definite: it fails at V"),
    ({"omega": (["CL", "V"], [[0.09, 0.01], [0.02, 0.04]])}, "not symmetric"),
    ({"omega": (["CL", "V"], [[0.09, 0.0], [0.0, -0.04]])}, "negative on the diagonal for V"),
    ({"omega": (["CL"], [[0.09, 0.0], [0.0, 0.04]])}, "shape"),
    ({"error": {"proportional": -0.1}}, "negative for proportional"),
    ({"error": {"exponential": 0.1}}, "unknown residual error keys"),
    ({"individual": lambda th, eta, cov: {"KA": th["KA"], "CL": th["CL"]}}, "returned no V"),
    ({"individual": lambda th, eta, cov: {"KA": th["KA"], "CL": th["CL"], "V": torch.ones(3)}}, "shape"),
    ({"individual": lambda th, eta, cov: {"KA": th["KA"], "CL": th["CL"], "V": th["V"] * float("nan")}},
     "not finite"),
])
def test_bad_inputs_raise_model_error(kwargs, match):
    kwargs = {"theta": THETA, **kwargs}
    with pytest.raises(ModelError, match=match):
        simulate_dataset("1cmt_oral", DESIGN, seed=0, **kwargs)


def test_bad_model_and_design():
    with pytest.raises(ModelError, match="unknown model"):
        simulate_dataset("4cmt", DESIGN, theta=THETA)
    with pytest.raises(ModelError, match="design must be"):
        simulate_dataset("1cmt_oral", "file.csv", theta=THETA)


# ------------------------------------------------------------------------- the population-model contract
T = torch.float64
NAN = float("nan")


def _nlme(kind: str, sigma: dict | None = None, omega=None) -> NLMEModel:
    omega = omega if omega is not None else [OmegaBlock(["KA"], [0.16]),
                                             OmegaBlock(["CL", "V"], [[0.09, 0.036], [0.036, 0.04]])]
    return NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": (0, 1.2), "CL": (0, 4.0), "V": (0, 30.0)},
                     omega=omega, error=ResidualError(kind, sigma))


def _eta_tensor(sim: SimulatedData) -> torch.Tensor:
    names = list(sim.model.eta_names(sim.dataset.batch))
    return torch.tensor(sim.eta[names].to_numpy(), dtype=T)


@pytest.mark.parametrize("spec", [{"additive": 0.3}, {"proportional": 0.2}, {"additive": 0.3, "proportional": 0.2}])
def test_eta_and_residual_moments_match_omega_and_sigma(spec):
    """Closed-form model: η mean and covariance match Ω, residuals match σ² (the SDs squared), within MC error."""
    names = ["KA", "CL", "V"]
    cov = np.array([[0.16, 0.0, 0.0], [0.0, 0.09, 0.036], [0.0, 0.036, 0.04]])
    n = 4000
    sim = simulate_dataset("1cmt_oral", oral_design(n, times=[1.0, 4.0, 12.0]), theta=THETA, omega=(names, cov),
                           error=spec, seed=21)
    eta = sim.eta[names].to_numpy()
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(eta.mean(0)) < 4.5 * sd / math.sqrt(n))
    empirical = np.cov(eta.T, ddof=0)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / n)      # SE of each sample covariance
    assert np.all(np.abs(empirical - cov) < 4.5 * se), (empirical, cov)

    add, prop = spec.get("additive", 0.0), spec.get("proportional", 0.0)
    assert sim.truth["sigma"] == {k: v * v for k, v in (("ADD", add), ("PROP", prop)) if v > 0}
    mask = sim.dataset.batch.obs.mask
    f = sim.ipred[mask]
    r = (dv(sim) - sim.ipred)[mask]
    m = r.numel()
    if prop == 0:                                         # additive alone: Var(r) = σ²_ADD
        assert float(r.var()) == pytest.approx(add * add, abs=4.5 * add * add * math.sqrt(2 / m))
    if add == 0:                                          # proportional alone: Var(r / f) = σ²_PROP
        assert float((r / f).var()) == pytest.approx(prop * prop, abs=4.5 * prop * prop * math.sqrt(2 / m))
    z = r / torch.sqrt((prop * f) ** 2 + add ** 2)        # the documented SD formula, independent of pmxgen
    assert abs(float(z.mean())) < 4.5 / math.sqrt(m)
    assert float(z.var()) == pytest.approx(1.0, abs=4.5 * math.sqrt(2 / m))


def test_structural_form_draws_eta_then_proportional_then_additive_error():
    """The documented order of the random numbers (the bundled simulated data sets were made with it)."""
    names = ["CL", "V"]
    cov = np.array([[0.09, 0.036], [0.036, 0.04]])
    design = pmxgen.read_nonmem(oral_design(30))
    sim = simulate_dataset("1cmt_oral", design, theta=THETA, omega=(names, cov),
                           error={"additive": 0.05, "proportional": 0.1}, seed=9)
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(30, 2, generator=gen, dtype=T)
    eta = z @ torch.linalg.cholesky(torch.as_tensor(cov)).T
    np.testing.assert_allclose(sim.eta[names].to_numpy(), eta.numpy(), rtol=1e-14, atol=1e-15)
    params = {"KA": torch.tensor(1.2, dtype=T), "CL": 4.0 * torch.exp(eta[:, 0]), "V": 30.0 * torch.exp(eta[:, 1])}
    f = pmxgen.get_model("1cmt_oral").predict(params, design.batch)
    eps_prop = torch.randn(f.shape, generator=gen, dtype=T)
    eps_add = torch.randn(f.shape, generator=gen, dtype=T)
    mask = design.batch.obs.mask
    expected = (f + f * (0.1 * eps_prop) + 0.05 * eps_add)[mask]
    torch.testing.assert_close(dv(sim)[mask], expected, rtol=1e-13, atol=1e-14)


def _iov_design():
    rows = []
    for sid in range(1, 7):
        for occ, start in ((1, 0.0), (2, 48.0)):
            rows.append({"ID": sid, "TIME": start, "DV": NAN, "AMT": 100.0, "EVID": 4, "MDV": 1, "CMT": 1,
                         "OCC": occ})
            rows += [{"ID": sid, "TIME": start + t, "DV": 0.0, "AMT": 0.0, "EVID": 0, "MDV": 0, "CMT": 2,
                      "OCC": occ} for t in (1.0, 4.0, 12.0)]
    return pmxgen.read_nonmem(pd.DataFrame(rows), occasion="OCC")


def _ppca_case():
    rng = np.random.default_rng(0)
    model = PPCAModel(mean=[1.0, -1.0, 0.5, 2.0], components=rng.normal(size=(4, 2)), noise_variance=0.3)
    return model, pmxgen.models.ppca_dataset(np.zeros((25, 4)))


@pytest.mark.parametrize("case", ["nlme_block", "nlme_iov", "ppca"])
def test_population_model_gives_the_numbers_of_sample_eta_and_sample_y(case):
    if case == "nlme_block":
        model, data = _nlme("combined", {"ADD": 0.01, "PROP": 0.02}), pmxgen.read_nonmem(oral_design(40))
    elif case == "nlme_iov":
        model = NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": (0, 1.2), "CL": (0, 4.0), "V": (0, 30.0)},
                          omega={"KA": 0.2, "CL": 0.1}, iov=OmegaBlock(["IOV_CL"], [0.05]),
                          error={"kind": "exponential", "init": {"EXP": 0.04}})
        data = _iov_design()
    else:
        model, data = _ppca_case()
    sim = simulate_dataset(model, data, seed=17)
    batch = data.batch
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    gen = torch.Generator().manual_seed(17)
    eta = model.sample_eta(values, batch, gen)
    y = model.sample_y(eta, values, batch, gen)
    assert sim.model is model
    assert torch.equal(dv(sim), y)
    assert torch.equal(_eta_tensor(sim), eta)
    assert list(sim.eta.columns) == ["ID", *model.eta_names(batch)]
    mask = batch.obs.mask
    assert torch.equal(sim.ipred[mask], model.predict(eta, values, batch)[mask])
    if case == "nlme_iov":     # individual parameters per occasion, IOV on CL only
        assert list(sim.individual.columns) == ["ID", "KA[occ 1]", "CL[occ 1]", "V[occ 1]", "KA[occ 2]",
                                                "CL[occ 2]", "V[occ 2]"]
        ratio = sim.individual["CL[occ 2]"] / sim.individual["CL[occ 1]"]
        np.testing.assert_allclose(np.log(ratio), sim.eta["IOV_CL[occ 2]"] - sim.eta["IOV_CL[occ 1]"], rtol=1e-12)
    elif case == "ppca":
        assert list(sim.individual.columns) == ["ID"] and sim.truth["error_model"] == "additive"
    # other seed, other data
    assert not torch.equal(dv(simulate_dataset(model, data, seed=18)), y)


def test_population_model_at_given_values():
    model = _nlme("additive", {"ADD": 0.5})
    data = pmxgen.read_nonmem(oral_design(3000, times=[2.0]))
    sim = simulate_dataset(model, data, values={"CL": 5.0, "OMEGA(KA)": 0.25, "SIGMA(ADD)": 0.01}, seed=4)
    assert float(sim.values.theta["CL"]) == 5.0 and float(sim.values.sigma["ADD"]) == 0.01
    assert sim.truth["theta"] == {"KA": 1.2, "CL": 5.0, "V": 30.0}
    assert sim.truth["omega"] == pytest.approx({"KA": 0.25, "CL": 0.09, "V": 0.04})
    assert sim.truth["sigma"] == {"ADD": 0.01} and sim.truth["error"] is None
    assert float(sim.eta["KA"].var()) == pytest.approx(0.25, rel=0.1)
    assert np.log(sim.individual["CL"] / 5.0).to_numpy() == pytest.approx(sim.eta["CL"].to_numpy(), abs=1e-12)
    mask = data.batch.obs.mask
    assert float((dv(sim) - sim.ipred)[mask].std()) == pytest.approx(0.1, rel=0.1)
    # a PopulationValues is used as given
    again = simulate_dataset(model, data, values=sim.values, seed=4)
    assert torch.equal(dv(again), dv(sim))


CALIBRATION_CASES = [("model", kind) for kind in ERROR_MODELS] + [
    ("spec", {"additive": 0.2}), ("spec", {"proportional": 0.2}), ("spec", {"additive": 0.2, "proportional": 0.2})]


@pytest.mark.parametrize("form, error", CALIBRATION_CASES, ids=[str(e) for _, e in CALIBRATION_CASES])
def test_simulated_data_are_calibrated_under_the_nlme_likelihood(form, error):
    """Simulated observations standardised by NLMEModel.moments are N(0, 1), and −2 log p(y | η) is χ²-calibrated.

    σ are chosen so that the error models differ (e.g. combined vs combined_sd at f ≈ 2-3), so a
    sampler that drew from another variance than the likelihood's would fail.
    """
    design = pmxgen.read_nonmem(oral_design(1500, times=[1.0, 4.0, 12.0]))
    if form == "model":
        sigma = {"additive": {"ADD": 0.04}, "proportional": {"PROP": 0.04}, "combined": {"ADD": 0.04, "PROP": 0.04},
                 "combined_sd": {"ADD": 0.04, "PROP": 0.04}, "exponential": {"EXP": 0.04}}[error]
        sim = simulate_dataset(_nlme(error, sigma), design, seed=31)
    else:
        sim = simulate_dataset("1cmt_oral", design, theta=THETA, omega={"KA": 0.16, "CL": 0.09, "V": 0.04},
                               error=error, seed=31)
        assert sim.model.error.kind == {1: "additive" if "additive" in error else "proportional", 2: "combined"}[
            len(error)]
    model, values, batch = sim.model, sim.values, sim.dataset.batch
    eta = _eta_tensor(sim)
    mean, var = model.moments(eta, values, batch)
    torch.testing.assert_close(var, torch.where(batch.obs.mask, model.error.variance(sim.ipred, values.sigma),
                                                torch.ones_like(var)))
    obs = model.observed(batch)
    mask = obs.mask
    z = ((obs.y - mean) / torch.sqrt(var))[mask]
    m = z.numel()
    assert abs(float(z.mean())) < 4.5 / math.sqrt(m)
    assert float(z.var()) == pytest.approx(1.0, abs=4.5 * math.sqrt(2 / m))
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    # −2 log p(y_i | η_i) − Σ_j (log 2π + log v_ij) = Σ_j z_ij² ~ χ²(J_i)
    neg2ll = -2.0 * model.log_likelihood(eta, values, batch)
    chi2 = neg2ll - torch.where(mask, math.log(2 * math.pi) + torch.log(var), torch.zeros_like(var)).sum(-1)
    j = mask.sum(-1).to(T)
    assert float(chi2.sum() / j.sum()) == pytest.approx(1.0, abs=4.5 * math.sqrt(2 / float(j.sum())))


def test_zero_variance_effect_inside_an_omega_matrix():
    names = ["KA", "CL", "V"]
    cov = np.array([[0.16, 0.0, 0.02], [0.0, 0.0, 0.0], [0.02, 0.0, 0.04]])
    sim = simulate_dataset("1cmt_oral", oral_design(50), theta=THETA, omega=(names, cov), error={}, seed=2)
    assert (sim.eta["CL"] == 0).all() and (sim.individual["CL"] == 4.0).all()
    assert list(sim.eta.columns) == ["ID", *names]
    assert sim.model.eta_names(sim.dataset.batch) == ("KA", "V")
    assert sim.truth["omega_matrix"]["matrix"] == cov.tolist() and sim.truth["sigma"] == {"ADD": 0.0}
    assert torch.equal(dv(sim), sim.ipred)            # no error: the predictions exactly

    def individual(theta, eta, cov):                   # a custom model still gets η_CL (= 0)
        return {"KA": theta["KA"] * torch.exp(eta["KA"]), "CL": theta["CL"] * torch.exp(eta["CL"]),
                "V": theta["V"] * torch.exp(eta["V"])}

    custom = simulate_dataset("1cmt_oral", oral_design(50), theta=THETA, omega=(names, cov), error={}, seed=2,
                              individual=individual)
    assert custom.individual.equals(sim.individual) and torch.equal(dv(custom), dv(sim))


def test_iiv_on_a_dose_parameter():
    design = oral_design(400, times=[2.0])
    sim = simulate_dataset("1cmt_oral", design, theta={**THETA, "F1": 0.8}, omega={"F1": 0.04}, seed=6)
    assert np.log(sim.individual["F1"] / 0.8).std() == pytest.approx(0.2, rel=0.15)
    base = simulate_dataset("1cmt_oral", design, theta=THETA, seed=6)
    np.testing.assert_allclose(sim.ipred.numpy(), base.ipred.numpy() * sim.individual["F1"].to_numpy()[:, None],
                               rtol=1e-12)


@pytest.mark.parametrize("model, kwargs, match", [
    ("nlme", {"theta": THETA}, "theta describe a structural model"),
    ("nlme", {"omega": {"CL": 0.1}, "error": {"additive": 1.0}}, "omega, error describe"),
    ("nlme", {"values": {"CLX": 1.0}}, "unknown parameters"),
    ("nlme", {"values": {"CL": "fast"}}, "must be a number"),
    ("nlme", {"values": [1.0, 2.0]}, "values must be None"),
    ("1cmt_oral", {"theta": THETA, "values": {"CL": 1.0}}, "values= is for a population model"),
    ("1cmt_oral", {}, "theta must be a non-empty dict"),
    (3.0, {"theta": THETA}, "model must be a population model"),
])
def test_form_mismatches_raise_model_error(model, kwargs, match):
    model = _nlme("additive", {"ADD": 0.1}) if model == "nlme" else model
    with pytest.raises(ModelError, match=match):
        simulate_dataset(model, DESIGN, seed=0, **kwargs)
