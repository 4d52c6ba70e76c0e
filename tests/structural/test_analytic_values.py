"""Closed-form models reproduce textbook formulas to 1e-10, and their gradients are exact."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import pmxgen
from pmxgen.errors import IntegrationError, ModelError
from pmxgen.structural import ODEModel, get_model
from pmxgen.structural.closed_form import disposition_eigenvalues

NAN = float("nan")
T = torch.float64


def one_subject(times, dose_rows):
    """Dose rows (TIME, AMT, extra dict) first, then observations at ``times``."""
    rows = [{"ID": 1, "TIME": t, "AMT": a, "DV": NAN, **extra} for t, a, extra in dose_rows]
    rows += [{"ID": 1, "TIME": t, "AMT": 0.0, "DV": 1.0} for t in times]
    frame = pd.DataFrame(rows).fillna({"RATE": 0.0, "II": 0.0, "SS": 0, "ADDL": 0, "CMT": 0})
    return pmxgen.read_nonmem(frame.sort_values("TIME", kind="stable").reset_index(drop=True))


def test_bateman_function():
    times = [0.25, 0.5, 1, 2, 3.5, 6, 12, 24]
    ds = one_subject(times, [(0.0, 320.0, {})])
    ka, cl, v, f = 1.7, 2.8, 31.0, 0.85
    p = {"KA": torch.tensor(ka, dtype=T), "CL": torch.tensor(cl, dtype=T), "V": torch.tensor(v, dtype=T),
         "F1": torch.tensor(f, dtype=T)}
    got = get_model("1cmt_oral").predict(p, ds.batch)[0].numpy()
    k = cl / v
    expected = [f * 320 * ka / (v * (ka - k)) * (math.exp(-k * t) - math.exp(-ka * t)) for t in times]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_iv_steady_state_trough_and_peak():
    dose, cl, v, tau = 500.0, 3.0, 40.0, 12.0
    ds = one_subject([0.0, tau], [(0.0, dose, {"II": tau, "SS": 1})])
    p = {"CL": torch.tensor(cl, dtype=T), "V": torch.tensor(v, dtype=T)}
    got = get_model("1cmt_iv").predict(p, ds.batch)[0].numpy()
    k = cl / v
    trough = dose * math.exp(-k * tau) / (v * (1 - math.exp(-k * tau)))
    peak = dose / (v * (1 - math.exp(-k * tau)))
    np.testing.assert_allclose(got, [peak, trough], rtol=1e-10)


def test_infusion_plateau_and_washout():
    rate, dur, cl, v = 50.0, 4.0, 2.0, 20.0
    times = [1.0, 4.0, 6.0]
    ds = one_subject(times, [(0.0, rate * dur, {"RATE": rate})])
    p = {"CL": torch.tensor(cl, dtype=T), "V": torch.tensor(v, dtype=T)}
    got = get_model("1cmt_iv").predict(p, ds.batch)[0].numpy()
    k = cl / v
    during = lambda t: rate / cl * (1 - math.exp(-k * t))
    np.testing.assert_allclose(got, [during(1.0), during(4.0), during(4.0) * math.exp(-k * 2.0)], rtol=1e-10)


def test_record_order_at_dose_time():
    """An observation before a dose record at the same time sees the pre-dose level, after it the post-dose one."""
    frame = pd.DataFrame({"ID": 1, "TIME": [0.0, 5.0, 5.0, 5.0], "AMT": [100.0, 0.0, 100.0, 0.0],
                          "DV": [NAN, 1.0, NAN, 1.0]})
    ds = pmxgen.read_nonmem(frame)
    p = {"CL": torch.tensor(2.0, dtype=T), "V": torch.tensor(10.0, dtype=T)}
    closed = get_model("1cmt_iv").predict(p, ds.batch)[0]
    before = 10 * math.exp(-0.2 * 5)
    np.testing.assert_allclose(closed.numpy(), [before, before + 10.0], rtol=1e-12)
    ode = get_model("1cmt_iv").as_ode(rtol=1e-11, atol=1e-12).predict(p, ds.batch)[0]
    np.testing.assert_allclose(ode.numpy(), [before, before + 10.0], rtol=1e-8)


def test_addl_dose_at_observation_time_comes_after_the_observation():
    frame = pd.DataFrame({"ID": 1, "TIME": [0.0, 12.0, 12.5], "AMT": [100.0, 0.0, 0.0], "II": [12.0, 0, 0],
                          "ADDL": [1, 0, 0], "DV": [NAN, 1.0, 1.0]})
    ds = pmxgen.read_nonmem(frame)
    p = {"CL": torch.tensor(2.0, dtype=T), "V": torch.tensor(10.0, dtype=T)}
    c = get_model("1cmt_iv").predict(p, ds.batch)[0].numpy()
    k = 0.2
    np.testing.assert_allclose(c, [10 * math.exp(-k * 12), 10 * math.exp(-k * 12.5) + 10 * math.exp(-k * 0.5)],
                               rtol=1e-12)


def test_two_compartment_biexponential():
    cl, v1, q, v2, dose = 3.0, 10.0, 5.0, 40.0, 100.0
    times = [0.1, 1.0, 5.0, 20.0]
    ds = one_subject(times, [(0.0, dose, {})])
    p = {"CL": torch.tensor(cl, dtype=T), "V1": torch.tensor(v1, dtype=T), "Q": torch.tensor(q, dtype=T),
         "V2": torch.tensor(v2, dtype=T)}
    got = get_model("2cmt_iv").predict(p, ds.batch)[0].numpy()
    k10, k12, k21 = cl / v1, q / v1, q / v2
    s = k10 + k12 + k21
    alpha = (s + math.sqrt(s * s - 4 * k10 * k21)) / 2
    beta = k10 * k21 / alpha
    a = dose / v1 * (alpha - k21) / (alpha - beta)
    b = dose / v1 * (k21 - beta) / (alpha - beta)
    np.testing.assert_allclose(got, [a * math.exp(-alpha * t) + b * math.exp(-beta * t) for t in times], rtol=1e-10)


def test_three_compartment_eigenvalues_match_numpy():
    k10, k12, k21, k13, k31 = 0.3, 0.4, 0.1, 0.05, 0.01
    lam = disposition_eigenvalues(torch.tensor([k10], dtype=T), [torch.tensor([k12], dtype=T),
                                                                 torch.tensor([k13], dtype=T)],
                                  [torch.tensor([k21], dtype=T), torch.tensor([k31], dtype=T)])[0].numpy()
    k = np.array([[-(k10 + k12 + k13), k21, k31], [k12, -k21, 0], [k13, 0, -k31]])
    np.testing.assert_allclose(np.sort(lam), np.sort(-np.linalg.eigvals(k).real), rtol=1e-10)


def test_coincident_absorption_and_elimination_rates_stay_finite():
    """ka == k makes the partial fractions 0/0; the limit t·exp(-kt) must come out (to 1e-6)."""
    ds = one_subject([1.0, 4.0], [(0.0, 100.0, {})])
    k, v = 0.5, 10.0
    p = {"KA": torch.tensor(k, dtype=T), "CL": torch.tensor(k * v, dtype=T), "V": torch.tensor(v, dtype=T)}
    got = get_model("1cmt_oral").predict(p, ds.batch)[0].numpy()
    expected = [100 / v * k * t * math.exp(-k * t) for t in (1.0, 4.0)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["1cmt_oral", "2cmt_oral", "3cmt_iv"])
def test_closed_form_gradients_match_finite_differences(name):
    """gradcheck over every parameter, with infusion, SS, lag and F in the dose history."""
    model = get_model(name)
    frame = pd.DataFrame({"ID": 1, "TIME": [0.0, 1.0, 3.0, 6.0, 24.0, 25.0, 30.0],
                          "AMT": [100.0, 0, 50.0, 0, 80.0, 0, 0], "RATE": [0.0, 0, 20.0, 0, 0, 0, 0],
                          "II": [0.0, 0, 0, 0, 12.0, 0, 0], "SS": [0, 0, 0, 0, 2, 0, 0],
                          "CMT": [model.default_dose_cmt, model.default_obs_cmt, model.default_dose_cmt,
                                  model.default_obs_cmt, model.default_dose_cmt, model.default_obs_cmt,
                                  model.default_obs_cmt],
                          "DV": [NAN, 1, NAN, 1, NAN, 1, 1.0]})
    ds = pmxgen.read_nonmem(frame)
    base = {"KA": 1.3, "CL": 2.0, "V": 20.0, "V1": 20.0, "Q": 3.0, "V2": 40.0, "Q2": 3.0, "Q3": 0.7, "V3": 70.0}
    names = list(model.parameter_names) + ["F1", "ALAG1"]
    values = [torch.tensor([base.get(n, {"F1": 0.8, "ALAG1": 0.4}.get(n))], dtype=T, requires_grad=True)
              for n in names]

    def f(*vals):
        return model.predict(dict(zip(names, vals)), ds.batch)

    assert torch.autograd.gradcheck(f, values, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_ode_gradients_match_finite_differences():
    """The ODE path (fixed-step rk4) is differentiable through events, infusion ends and steady state."""
    model = get_model("1cmt_oral_mm")
    model.method, model.fixed_steps = "rk4", 40
    frame = pd.DataFrame({"ID": 1, "TIME": [0.0, 1.0, 4.0, 8.0, 9.0], "AMT": [100.0, 0, 0, 60.0, 0],
                          "RATE": [0.0, 0, 0, 30.0, 0], "II": [12.0, 0, 0, 0, 0], "SS": [1, 0, 0, 0, 0],
                          "CMT": [1, 2, 2, 2, 2], "DV": [NAN, 1, 1, NAN, 1.0]})
    ds = pmxgen.read_nonmem(frame)
    names = ["KA", "VM", "KM", "V"]
    values = [torch.tensor([v], dtype=T, requires_grad=True) for v in (1.1, 20.0, 2.0, 15.0)]

    def f(*vals):
        return model.predict(dict(zip(names, vals)), ds.batch)

    assert torch.autograd.gradcheck(f, values, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_stiff_system_raises_integration_error():
    def stiff(t, a, p):
        return -p["K"].unsqueeze(-1) * a * (1 + a * a)

    model = ODEModel(stiff, ("central",), ("K",), rtol=1e-10, atol=1e-12, max_steps=50)
    ds = one_subject([1.0, 10.0], [(0.0, 100.0, {})])
    with pytest.raises(IntegrationError, match="stiff"):
        model.predict({"K": torch.tensor(1e4, dtype=T)}, ds.batch)


def test_missing_parameter_and_peripheral_dose_are_model_errors():
    ds = one_subject([1.0], [(0.0, 100.0, {"CMT": 2})])
    with pytest.raises(ModelError, match="CL"):
        get_model("2cmt_iv").predict({"V1": 1.0, "Q": 1.0, "V2": 1.0}, ds.batch)
    with pytest.raises(ModelError, match="peripheral"):
        get_model("2cmt_iv").predict({"CL": 1.0, "V1": 1.0, "Q": 1.0, "V2": 1.0}, ds.batch)


def test_batch_moves_to_float32_and_predictions_follow():
    ds = one_subject([1.0, 2.0], [(0.0, 100.0, {})]).to(dtype=torch.float32)
    c = get_model("1cmt_oral").predict({"KA": 1.0, "CL": 2.0, "V": 20.0}, ds.batch)
    assert c.dtype == torch.float32
