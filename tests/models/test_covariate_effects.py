"""Covariate relations: values against the formulas, gradients, and use inside a fit."""
import math

import numpy as np

import pytest
import torch

import pmxgen
from pmxgen.models import (NLMEModel, categorical_effect, exponential_effect, linear_effect, power_effect)


def test_effect_values():
    wt = torch.tensor([50.0, 70.0, 90.0], dtype=torch.float64)
    np.testing.assert_allclose(power_effect(wt, 70.0, 0.75).numpy(), (np.array([50, 70, 90]) / 70) ** 0.75)
    np.testing.assert_allclose(exponential_effect(wt, 70.0, 0.01).numpy(), np.exp(0.01 * (np.array([50, 70, 90]) - 70)))
    np.testing.assert_allclose(linear_effect(wt, 70.0, 0.02).numpy(), 1 + 0.02 * (np.array([50, 70, 90]) - 70))


def test_categorical_effect_gradient_and_errors():
    theta = torch.tensor([1.3, 0.7], dtype=torch.float64, requires_grad=True)
    codes = torch.tensor([0.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    out = categorical_effect(codes, [theta[0], theta[1]])
    out.sum().backward()
    assert theta.grad.tolist() == [1.0, 2.0]
    with pytest.raises(pmxgen.ModelError, match="codes run from 0 to 2"):
        categorical_effect(codes, [theta[0]])


def test_categorical_covariate_effect_is_recovered():
    """Simulate CL 40 % higher in category 'M' than 'F' and recover the ratio by FOCE-I."""
    rng = np.random.default_rng(3)
    sex = rng.choice(["F", "M"], size=60)
    design = pmxgen.design_frame(60, doses=[{"time": 0, "amt": 100}], obs_times=[0.5, 1, 2, 4, 8, 12], obs_cmt=2,
                                 covariates={"SEX": sex.tolist()})
    data0 = pmxgen.read_nonmem(design, categorical=["SEX"])
    assert data0.categories["SEX"] == ["F", "M"]

    def individual(theta, eta, cov):
        return {"KA": theta["KA"], "V": theta["V"] * torch.exp(eta["V"]),
                "CL": theta["CL"] * categorical_effect(cov["SEX"], [theta["CL_M"]]) * torch.exp(eta["CL"])}

    sim = pmxgen.simulate_dataset("1cmt_oral", data0, theta={"KA": 1.0, "CL": 3.0, "V": 30.0, "CL_M": 1.4},
                                  omega={"CL": 0.04, "V": 0.02}, error={"proportional": 0.1}, individual=individual,
                                  seed=8)
    model = NLMEModel(pmxgen.get_model("1cmt_oral"),
                      theta={"KA": (0, 1.5), "CL": (0, 2.0), "V": (0, 20.0), "CL_M": (0, 1.0)},
                      omega={"CL": 0.1, "V": 0.1}, error={"kind": "proportional", "init": {"PROP": 0.02}},
                      individual=individual)
    fit = pmxgen.fit(model, sim.dataset, method="focei")
    est, se = fit.estimates["CL_M"], fit.se["CL_M"]
    assert abs(est - 1.4) < 3 * se and se < 0.1
    assert not math.isnan(se)



def test_time_varying_covariate_read_by_the_model_is_flagged():
    """A covariate that changes within a subject is used at its first value: the fit says so."""
    import warnings

    import pandas as pd
    from pmxgen.errors import DatasetWarning

    rows = []
    for i, wt in ((1, 60.0), (2, 80.0)):
        rows.append({"ID": i, "TIME": 0.0, "AMT": 100.0, "DV": float("nan"), "WT": wt, "AGE": 40.0})
        for t in (1.0, 4.0, 8.0):
            rows.append({"ID": i, "TIME": t, "AMT": 0.0, "DV": 1.0 + t / 10, "WT": wt + (t if i == 2 else 0.0),
                         "AGE": 40.0 + t})
    data = pmxgen.read_nonmem(pd.DataFrame(rows))

    def by_weight(theta, eta, cov):
        return {"CL": theta["CL"] * (cov["WT"] / 70) * torch.exp(eta["CL"]), "V": theta["V"]}

    model = NLMEModel(pmxgen.get_model("1cmt_iv"), theta={"CL": 2.0, "V": 20.0}, omega={"CL": 0.1},
                      individual=by_weight)
    with pytest.warns(DatasetWarning, match=r"covariate WT changes within subjects \(ID 2: 80 on its first "
                                            r"record, 81 on data row 5\).*first value throughout"):
        model.check(data)
    # AGE changes too, but the model does not read it: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        NLMEModel(pmxgen.get_model("1cmt_iv"), theta={"CL": 2.0, "V": 20.0}, omega={"CL": 0.1}).check(data)
