"""simulate_dataset: reproducibility, exactness without noise, IIV and residual error statistics, validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pmxgen
from pmxgen.errors import ModelError
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
