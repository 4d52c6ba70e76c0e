"""Exposure metrics against closed forms and an independent ODE integration (scipy solve_ivp).

References: steady-state AUC over τ = F·Dose/CL (any linear model, any input); accumulation
ratio 1/(1 − e^{−kτ}) for a one-compartment IV bolus; the one-compartment oral peak
tmax = ln(ka/k)/(ka − k); time above a threshold after an IV bolus = ln(C0/thr)/k; and AUCs of
multiple-dose / infusion / lagged regimens by solve_ivp with an AUC state (rtol 1e-11).
"""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import pmxgen
from pmxgen.models import NLMEModel
from pmxgen.simulation.engine import arm_exposures
from pmxgen.simulation.exposure import exact_auc, grid_metrics
from pmxgen.simulation.regimen import DoseEvent, Regimen
from pmxgen.simulation.schedule import arm_batch, regimen_arm

F64 = torch.float64

# (structural model, parameters of 3 subjects, route, infusion duration, interval)
CASES = {
    "1cmt_iv bolus": ("1cmt_iv", {"CL": [2.0, 0.7, 5.0], "V": [10.0, 30.0, 8.0]}, "iv", 0.0, 12.0),
    "1cmt_iv infusion T<tau": ("1cmt_iv", {"CL": [2.0, 0.7, 5.0], "V": [10.0, 30.0, 8.0]}, "iv", 2.0, 12.0),
    "1cmt_iv infusion T>tau": ("1cmt_iv", {"CL": [2.0, 0.7, 5.0], "V": [10.0, 30.0, 8.0]}, "iv", 10.0, 8.0),
    "1cmt_oral F lag": ("1cmt_oral", {"KA": [1.2, 0.3, 3.0], "CL": [2.0, 0.7, 5.0], "V": [10.0, 30.0, 8.0],
                                      "F1": [0.7, 0.4, 1.0], "ALAG1": [0.5, 0.0, 1.25]}, "oral", 0.0, 12.0),
    "2cmt_oral": ("2cmt_oral", {"KA": [1.2, 0.3, 3.0], "CL": [2.0, 0.7, 5.0], "V1": [10.0, 30.0, 8.0],
                                "Q": [3.0, 1.0, 0.5], "V2": [40.0, 20.0, 5.0], "F1": [0.6, 0.9, 1.0]},
                  "oral", 0.0, 24.0),
    "2cmt_iv infusion": ("2cmt_iv", {"CL": [2.0, 0.7, 5.0], "V1": [10.0, 30.0, 8.0], "Q": [3.0, 1.0, 0.5],
                                     "V2": [40.0, 20.0, 5.0]}, "iv", 1.0, 8.0),
    "3cmt_oral": ("3cmt_oral", {"KA": [1.2, 0.3, 3.0], "CL": [2.0, 0.7, 5.0], "V1": [10.0, 30.0, 8.0],
                                "Q2": [3.0, 1.0, 0.5], "V2": [40.0, 20.0, 5.0], "Q3": [0.3, 0.2, 1.0],
                                "V3": [100.0, 50.0, 20.0]}, "oral", 0.0, 12.0),
}


def _params(spec):
    return {k: torch.tensor(v, dtype=F64) for k, v in spec.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_steady_state_auc_over_tau_is_f_dose_over_cl(case):
    name, spec, route, infusion, tau = CASES[case]
    model = pmxgen.get_model(name)
    reg = Regimen.every(tau, dose=100, n=4, route=route, infusion=infusion).at_steady_state()
    arm = regimen_arm(reg)
    batch = arm_batch(arm, model, torch.zeros(3, 0, dtype=F64), ())
    p = _params(spec)
    # the steady-state interval, and a later one after three regular doses
    auc = exact_auc(model, p, batch, torch.tensor([[0.0, tau], [3 * tau, 4 * tau]], dtype=F64))
    f = p.get("F1", torch.ones(3, dtype=F64)) if route == "oral" else torch.ones(3, dtype=F64)
    expected = (f * 100 / p["CL"]).unsqueeze(-1)
    rel = (auc / expected - 1).abs().max().item()
    assert rel < 1e-8, rel


def test_accumulation_ratio_one_compartment():
    cl, v, tau = np.array([2.0, 0.5, 6.0]), np.array([10.0, 20.0, 12.0]), 12.0
    k = cl / v
    ratio = 1 / (1 - np.exp(-k * tau))
    model = NLMEModel(pmxgen.get_model("1cmt_iv"), theta={"CL": (0, 1.0), "V": (0, 10.0)},
                      omega={"CL": 0.1, "V": 0.1}, error="additive")
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = torch.tensor(np.log(np.stack([cl / 1.0, v / 10.0], axis=1)), dtype=F64)   # P_i = θ exp(η_i)

    def metrics(reg):
        arm = regimen_arm(reg)
        batch = arm_batch(arm, model.structural, torch.zeros(3, 0, dtype=F64), ())
        return {key: val.numpy() for key, val in arm_exposures(model, values, eta, batch, arm)[1]["first"].items()}
    single = metrics(Regimen.every(tau, dose=100, n=1))
    steady = metrics(Regimen.every(tau, dose=100, n=1).at_steady_state())
    for key in ("auc", "ctrough", "cmax", "cavg"):
        np.testing.assert_allclose(steady[key] / single[key], ratio, rtol=1e-8, err_msg=key)
    np.testing.assert_allclose(single["auc"], 100 / cl * (1 - np.exp(-k * tau)), rtol=1e-12)
    np.testing.assert_allclose(steady["auc"], 100 / cl, rtol=1e-12)


# --------------------------------------------------------------- independent reference: solve_ivp
def _ode_reference(name, p, events, windows, horizon):
    """AUC of the central concentration over windows by solve_ivp (doses as jumps / rate inputs)."""
    oral = name.endswith("oral")
    n_per = {"1cmt": 0, "2cmt": 1, "3cmt": 2}[name[:4]]
    v1 = p.get("V1", p.get("V"))
    q = [p.get("Q", p.get("Q2"))] if n_per >= 1 else []
    vp = [p.get("V2")] if n_per >= 1 else []
    if n_per == 2:
        q.append(p["Q3"])
        vp.append(p["V3"])
    n_state = 1 + oral + n_per + 1      # [depot], central, peripherals, AUC

    def rhs(t, a, rate):
        d = np.zeros_like(a)
        c = int(oral)
        if oral:
            d[0] = -p["KA"] * a[0]
            d[c] += p["KA"] * a[0]
        d[c] += -p["CL"] / v1 * a[c] + rate
        for j in range(n_per):
            flow = q[j] / v1 * a[c] - q[j] / vp[j] * a[c + 1 + j]
            d[c] -= flow
            d[c + 1 + j] += flow
        d[-1] = a[c] / v1
        return d
    f, lag = p.get("F1", 1.0), p.get("ALAG1", 0.0)
    boluses, infusions = [], []
    for e in events:
        arrive = e.time + (lag if e.route == "oral" else 0.0)
        amt = e.amount * (f if e.route == "oral" else 1.0)
        if e.duration > 0:
            infusions.append((arrive, arrive + e.duration, amt / e.duration))
        else:
            boluses.append((arrive, amt, 0 if e.route == "oral" else int(oral)))
    cuts = sorted({0.0, horizon, *[b[0] for b in boluses], *[i[0] for i in infusions], *[i[1] for i in infusions],
                   *[w for ab in windows for w in ab]})
    a = np.zeros(n_state)
    auc_at = {0.0: 0.0}
    for t0, t1 in zip(cuts[:-1], cuts[1:]):
        for tb, amt, cmt in boluses:
            if tb == t0:
                a[cmt] += amt
        rate = sum(r for s, e_, r in infusions if s <= t0 < e_)
        sol = solve_ivp(rhs, (t0, t1), a, args=(rate,), method="LSODA", rtol=1e-11, atol=1e-13)
        a = sol.y[:, -1]
        auc_at[t1] = a[-1]
    return np.array([auc_at[b] - auc_at[a_] for a_, b in windows])


@pytest.mark.parametrize("name, spec, events", [
    ("2cmt_oral", {"KA": 0.9, "CL": 2.0, "V1": 10.0, "Q": 3.0, "V2": 40.0, "F1": 0.6, "ALAG1": 0.75},
     [DoseEvent(0, 400, route="oral"), DoseEvent(7, 200, route="oral"), DoseEvent(19.5, 200, route="oral")]),
    ("1cmt_oral", {"KA": 1.5, "CL": 3.0, "V": 20.0},
     [DoseEvent(0, 300, route="iv", duration=1.5), DoseEvent(8, 100, route="oral"), DoseEvent(12, 100, route="oral")]),
    ("3cmt_iv", {"CL": 2.0, "V1": 10.0, "Q2": 3.0, "V2": 40.0, "Q3": 0.5, "V3": 90.0},
     [DoseEvent(0, 500, route="iv", duration=3.0), DoseEvent(6, 500, route="iv", duration=3.0),
      DoseEvent(13, 250, route="iv")]),
])
def test_exact_auc_matches_ode_integration(name, spec, events):
    model = pmxgen.get_model(name)
    reg = Regimen(tuple(events), interval=12.0)
    windows = [(0.0, 30.0), (2.0, 7.0), (6.5, 13.0), (13.0, 25.0)]
    arm = regimen_arm(reg, horizon=30.0)
    batch = arm_batch(arm, model, torch.zeros(1, 0, dtype=F64), ())
    ours = exact_auc(model, {k: torch.tensor([v], dtype=F64) for k, v in spec.items()}, batch,
                     torch.tensor(windows, dtype=F64))[0].numpy()
    ref = _ode_reference(name, spec, events, windows, 30.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-7)


def test_infusion_longer_than_tau_at_steady_state_matches_a_long_course():
    """SS infusion of 10 h every 8 h vs 60 real cycles integrated by solve_ivp (e^{-0.2·472} ≈ 0)."""
    model = pmxgen.get_model("1cmt_iv")
    p = {"CL": 2.0, "V": 10.0}
    ss = Regimen.every(8, dose=100, n=1, route="iv", infusion=10.0).at_steady_state()
    arm = regimen_arm(ss, horizon=8.0)
    batch = arm_batch(arm, model, torch.zeros(1, 0, dtype=F64), ())
    windows = [(0.0, 8.0), (0.0, 3.0), (3.0, 8.0)]
    ours = exact_auc(model, {k: torch.tensor([v], dtype=F64) for k, v in p.items()}, batch,
                     torch.tensor(windows, dtype=F64))[0].numpy()
    long = Regimen.every(8, dose=100, n=60, route="iv", infusion=10.0)
    t0 = 59 * 8.0
    ref = _ode_reference("1cmt_iv", p, long.events, [(t0 + a, t0 + b) for a, b in windows], t0 + 8.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-7)
    assert ours[0] == pytest.approx(100 / 2.0, rel=1e-12)


def test_cmax_tmax_and_time_above_against_closed_forms():
    model = NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": (0, 1.3), "CL": (0, 2.0), "V": (0, 30.0)},
                      omega={"CL": 0.1}, error="additive")
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    arm = regimen_arm(Regimen.single(100), follow_up=24.0)
    batch = arm_batch(arm, model.structural, torch.zeros(1, 0, dtype=F64), ())
    _, m = arm_exposures(model, values, torch.zeros(1, 1, dtype=F64), batch, arm, threshold=1.0)
    ka, k, v = 1.3, 2.0 / 30.0, 30.0
    tmax = math.log(ka / k) / (ka - k)
    cmax = 100 / v * ka / (ka - k) * (math.exp(-k * tmax) - math.exp(-ka * tmax))
    assert float(m["total"]["cmax"][0]) == pytest.approx(cmax, rel=1e-9)
    assert float(m["total"]["tmax"][0]) == pytest.approx(tmax, abs=1e-4)
    # two crossings of C = 1 (rise and fall), by brentq on the closed form
    from scipy.optimize import brentq

    def conc(t):
        return 100 / v * ka / (ka - k) * (math.exp(-k * t) - math.exp(-ka * t)) - 1.0
    rise, fall = brentq(conc, 1e-9, tmax, xtol=1e-14), brentq(conc, tmax, 24.0, xtol=1e-14)
    assert float(m["total"]["t_above"][0]) == pytest.approx(fall - rise, rel=1e-10)
    # AUC over [0, 24] in closed form
    auc = 100 / v * ka / (ka - k) * ((1 - math.exp(-k * 24)) / k - (1 - math.exp(-ka * 24)) / ka)
    assert float(m["total"]["auc"][0]) == pytest.approx(auc, rel=1e-12)
    # IV bolus: C = C0 e^{-kt} is above thr until ln(C0/thr)/k
    iv = NLMEModel(pmxgen.get_model("1cmt_iv"), theta={"CL": (0, 2.0), "V": (0, 10.0)}, omega={"CL": 0.1},
                   error="additive")
    arm = regimen_arm(Regimen.single(100), follow_up=24.0)
    batch = arm_batch(arm, iv.structural, torch.zeros(1, 0, dtype=F64), ())
    _, m = arm_exposures(iv, iv.parameter_set.unpack(iv.parameter_set.initial_natural()), torch.zeros(1, 1, dtype=F64),
                         batch, arm, threshold=2.0)
    t_above = math.log(10.0 / 2.0) / 0.2
    assert float(m["total"]["t_above"][0]) == pytest.approx(t_above, rel=1e-10)   # crossing solved on the model
    assert float(m["total"]["ft_above"][0]) == pytest.approx(t_above / 24.0, rel=1e-10)
    assert float(m["total"]["cmax"][0]) == pytest.approx(10.0, rel=1e-14)
    assert float(m["total"]["ctrough"][0]) == pytest.approx(10 * math.exp(-0.2 * 24), rel=1e-12)


def test_trapezoid_grid_for_models_without_closed_form_is_close_and_exact_at_jumps():
    """An ODE model gets grid AUCs; the pre/post pairs at bolus times make jumps exact, the rest is O(h²)."""
    ode = pmxgen.get_model("1cmt_iv").as_ode(rtol=1e-10, atol=1e-12)
    model = NLMEModel(ode, theta={"CL": (0, 2.0), "V": (0, 10.0)}, omega={"CL": 0.1}, error="additive")
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    reg = Regimen.every(6, dose=100, n=3)
    arm = regimen_arm(reg, points_per_interval=48)
    batch = arm_batch(arm, model.structural, torch.zeros(1, 0, dtype=F64), ())
    _, m = arm_exposures(model, values, torch.zeros(1, 1, dtype=F64), batch, arm)
    exact = 100 / 2.0 * (1 - math.exp(-0.2 * 6))
    exact_last = 100 / 2.0 * (1 - math.exp(-0.2 * 18))     # ∫_12^18 of the three doses' sum
    assert float(m["first"]["auc"][0]) == pytest.approx(exact, rel=2e-4)
    assert float(m["last"]["auc"][0]) == pytest.approx(exact_last, rel=2e-4)
    # the jump at the last dose: Cmax of the last interval is the post-dose level
    c_last = 10 * (1 + math.exp(-1.2) + math.exp(-2.4))
    assert float(m["last"]["cmax"][0]) == pytest.approx(c_last, rel=1e-6)


def test_grid_time_above_threshold_crossings():
    conc = torch.tensor([[0.0, 2.0, 4.0, 2.0, 0.0]], dtype=F64)
    time = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    m = grid_metrics(conc, time, (0, 4), threshold=3.0)
    # above 3 between t = 1.5 and 2.5 (linear interpolation)
    assert float(m["t_above"][0]) == pytest.approx(1.0, rel=1e-14)
    assert float(m["auc"][0]) == pytest.approx(8.0, rel=1e-14)
