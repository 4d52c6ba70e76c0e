"""Closed-form linear models against numerical integration of the same ODE system.

Every route (bolus into central, depot absorption, infusion into central and depot) ×
compartment count (1, 2, 3), with multiple doses, ADDL, infusions spanning other doses,
lag, bioavailability, steady state SS=1/SS=2 (bolus and infusion), resets, and the
record-order rule, must agree to 1e-6 relative.
"""

import numpy as np
import pandas as pd
import pytest
import torch

import pmxgen
from pmxgen.structural import get_model

NAN = float("nan")

# one row per record: ID, TIME, AMT, CMT, RATE, II, ADDL, SS, EVID
_DOSING = [
    # subject 1: boluses, ADDL, an observation before and after a dose at the same time
    (1, 0.0, 100, "D", 0, 0, 0, 0, 1), (1, 0.5, 0, "O", 0, 0, 0, 0, 0), (1, 2.0, 0, "O", 0, 0, 0, 0, 0),
    (1, 12.0, 0, "O", 0, 0, 0, 0, 0), (1, 12.0, 50, "D", 0, 12, 2, 0, 1), (1, 12.0, 0, "O", 0, 0, 0, 0, 0),
    (1, 13.0, 0, "O", 0, 0, 0, 0, 0), (1, 24.0, 0, "O", 0, 0, 0, 0, 0), (1, 30.0, 0, "O", 0, 0, 0, 0, 0),
    (1, 60.0, 0, "O", 0, 0, 0, 0, 0),
    # subject 2: an infusion spanning a bolus, a second infusion, an infusion into the central compartment
    (2, 0.0, 100, "D", 20, 0, 0, 0, 1), (2, 1.0, 0, "O", 0, 0, 0, 0, 0), (2, 2.0, 40, "D", 0, 0, 0, 0, 1),
    (2, 3.0, 0, "O", 0, 0, 0, 0, 0), (2, 5.0, 0, "O", 0, 0, 0, 0, 0), (2, 7.5, 0, "O", 0, 0, 0, 0, 0),
    (2, 10.0, 80, "C", 40, 0, 0, 0, 1), (2, 11.0, 0, "O", 0, 0, 0, 0, 0), (2, 14.0, 0, "O", 0, 0, 0, 0, 0),
    (2, 24.0, 0, "O", 0, 0, 0, 0, 0),
    # subject 3: SS=1 bolus with ADDL, SS=2 on top, reset, dose after the reset
    (3, 0.0, 100, "D", 0, 12, 2, 1, 1), (3, 0.0, 0, "O", 0, 0, 0, 0, 0), (3, 1.0, 0, "O", 0, 0, 0, 0, 0),
    (3, 11.9, 0, "O", 0, 0, 0, 0, 0), (3, 30.0, 0, "O", 0, 0, 0, 0, 0), (3, 48.0, 60, "D", 0, 8, 0, 2, 1),
    (3, 50.0, 0, "O", 0, 0, 0, 0, 0), (3, 58.0, 0, "O", 0, 0, 0, 0, 0), (3, 60.0, 0, "R", 0, 0, 0, 0, 3),
    (3, 61.0, 30, "D", 0, 0, 0, 0, 1), (3, 62.0, 0, "O", 0, 0, 0, 0, 0),
    # subject 4: SS=1 infusion (4 h every 12 h), then EVID 4 reset-and-dose
    (4, 0.0, 100, "D", 25, 12, 0, 1, 1), (4, 0.0, 0, "O", 0, 0, 0, 0, 0), (4, 2.0, 0, "O", 0, 0, 0, 0, 0),
    (4, 6.0, 0, "O", 0, 0, 0, 0, 0), (4, 11.0, 0, "O", 0, 0, 0, 0, 0), (4, 20.0, 0, "O", 0, 0, 0, 0, 0),
    (4, 30.0, 200, "D", 0, 0, 0, 0, 4), (4, 31.0, 0, "O", 0, 0, 0, 0, 0), (4, 40.0, 0, "O", 0, 0, 0, 0, 0),
]

PARAMS = {
    "1cmt_iv": {"CL": [2.0, 3.0, 1.5, 2.5], "V": [20.0, 30.0, 15.0, 25.0]},
    "1cmt_oral": {"KA": [1.2, 0.8, 2.0, 1.5], "CL": [2.0, 3.0, 1.5, 2.5], "V": [20.0, 30.0, 15.0, 25.0]},
    "2cmt_iv": {"CL": [2.0, 3.0, 1.5, 2.5], "V1": [20.0, 30.0, 15.0, 25.0], "Q": [4.0, 2.0, 5.0, 3.0],
                "V2": [40.0, 50.0, 30.0, 60.0]},
    "2cmt_oral": {"KA": [1.2, 0.8, 2.0, 1.5], "CL": [2.0, 3.0, 1.5, 2.5], "V1": [20.0, 30.0, 15.0, 25.0],
                  "Q": [4.0, 2.0, 5.0, 3.0], "V2": [40.0, 50.0, 30.0, 60.0]},
    "3cmt_iv": {"CL": [2.0, 3.0, 1.5, 2.5], "V1": [20.0, 30.0, 15.0, 25.0], "Q2": [4.0, 2.0, 5.0, 3.0],
                "V2": [40.0, 50.0, 30.0, 60.0], "Q3": [0.5, 0.8, 0.3, 0.6], "V3": [80.0, 60.0, 100.0, 70.0]},
    "3cmt_oral": {"KA": [1.2, 0.8, 2.0, 1.5], "CL": [2.0, 3.0, 1.5, 2.5], "V1": [20.0, 30.0, 15.0, 25.0],
                  "Q2": [4.0, 2.0, 5.0, 3.0], "V2": [40.0, 50.0, 30.0, 60.0], "Q3": [0.5, 0.8, 0.3, 0.6],
                  "V3": [80.0, 60.0, 100.0, 70.0]},
}


def dosing_frame(model) -> pd.DataFrame:
    """The scenario above for ``model``: 'D' = default dose compartment, 'C' = central, 'O' observation."""
    central = model.default_obs_cmt
    rows = []
    for (i, t, amt, cmt, rate, ii, addl, ss, evid) in _DOSING:
        is_obs = cmt == "O"
        rows.append({"ID": i, "TIME": t, "DV": 1.0 if is_obs else NAN, "AMT": float(amt), "EVID": evid,
                     "MDV": 0 if is_obs else 1,
                     "CMT": {"D": model.default_dose_cmt, "C": central, "O": central, "R": 0}[cmt],
                     "RATE": float(rate), "II": float(ii), "ADDL": addl, "SS": ss})
    return pd.DataFrame(rows)


def params_for(name, dose_extras: bool):
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in PARAMS[name].items()}
    if dose_extras:
        p["F1"] = torch.tensor([0.8, 0.7, 0.9, 0.6], dtype=torch.float64)
        p["ALAG1"] = torch.tensor([0.3, 0.5, 0.25, 0.4], dtype=torch.float64)
    return p


@pytest.mark.parametrize("name", list(PARAMS))
@pytest.mark.parametrize("dose_extras", [False, True], ids=["plain", "lag_and_F"])
def test_closed_form_matches_ode(name, dose_extras):
    model = get_model(name)
    ds = pmxgen.read_nonmem(dosing_frame(model))
    model.check_dataset(ds)
    p = params_for(name, dose_extras)
    closed = model.predict(p, ds.batch)
    ode = model.as_ode(rtol=1e-9, atol=1e-12, ss_rtol=1e-12).predict(p, ds.batch)
    mask = ds.batch.obs.mask
    assert bool(mask.any())
    torch.testing.assert_close(closed[mask], ode[mask], rtol=1e-6, atol=1e-9)
    # the scenario produces non-trivial concentrations everywhere except where the rule says zero
    assert float(closed[mask].abs().max()) > 0.5


@pytest.mark.parametrize("name", ["1cmt_oral", "2cmt_iv", "3cmt_oral"])
def test_modelled_rate_and_duration_match_ode(name):
    model = get_model(name)
    df = pd.DataFrame({"ID": [1, 1, 1, 1, 1, 2, 2, 2, 2], "TIME": [0, 1, 2, 6, 10, 0, 1, 3, 8.0],
                       "AMT": [100, 0, 0, 0, 0, 100, 0, 0, 0.0], "RATE": [-1, 0, 0, 0, 0, -2, 0, 0, 0.0],
                       "CMT": [model.default_dose_cmt] + [model.default_obs_cmt] * 4 + [model.default_dose_cmt]
                       + [model.default_obs_cmt] * 3,
                       "DV": [NAN, 1, 1, 1, 1, NAN, 1, 1, 1]})
    ds = pmxgen.read_nonmem(df)
    p = params_for(name, False)
    p = {k: v[:2] for k, v in p.items()}
    p["R1"] = torch.tensor([30.0, 30.0], dtype=torch.float64)
    p["D1"] = torch.tensor([2.5, 2.5], dtype=torch.float64)
    closed = model.predict(p, ds.batch)
    ode = model.as_ode(rtol=1e-9, atol=1e-12).predict(p, ds.batch)
    m = ds.batch.obs.mask
    torch.testing.assert_close(closed[m], ode[m], rtol=1e-6, atol=1e-9)


def test_steady_state_is_limit_of_repeated_doses():
    """SS=1 (bolus and infusion, with lag) equals the last interval of many doses (ADDL).

    The 3-compartment slow mode (λ ≈ 0.005/h) needs 1500 doses to converge to 1e-9.
    """
    for name, n in (("1cmt_oral", 300), ("2cmt_iv", 300), ("3cmt_iv", 1500)):
        model = get_model(name)
        tau = 12.0
        t_obs = [0.5, 2.0, 5.0, 11.0]
        last = tau * (n - 1)
        for rate in (0.0, 25.0):
            ss = pd.DataFrame({"ID": 1, "TIME": [0.0] + t_obs, "AMT": [100.0, 0, 0, 0, 0],
                               "RATE": [rate, 0, 0, 0, 0], "II": [tau, 0, 0, 0, 0], "SS": [1, 0, 0, 0, 0],
                               "DV": [NAN, 1, 1, 1, 1]})
            rep = pd.DataFrame({"ID": 1, "TIME": [0.0] + [last + t for t in t_obs], "AMT": [100.0, 0, 0, 0, 0],
                                "RATE": [rate, 0, 0, 0, 0], "II": [tau, 0, 0, 0, 0], "ADDL": [n - 1, 0, 0, 0, 0],
                                "DV": [NAN, 1, 1, 1, 1]})
            p = {k: torch.tensor(v[:1], dtype=torch.float64) for k, v in PARAMS[name].items()}
            p["ALAG1"] = torch.tensor([0.7], dtype=torch.float64)
            a = model.predict(p, pmxgen.read_nonmem(ss).batch)
            b = model.predict(p, pmxgen.read_nonmem(rep).batch)
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_steady_state_infusion_longer_than_interval_matches_repeated_doses():
    """Infusions lasting 20 h given every 12 h overlap; SS must still equal the long-run limit."""
    model = get_model("1cmt_iv")
    tau, n = 12.0, 200
    t_obs = [1.0, 8.0, 11.5, 15.0, 30.0]
    ss = pd.DataFrame({"ID": 1, "TIME": [0.0] + t_obs, "AMT": [100.0] + [0] * 5, "RATE": [5.0] + [0] * 5,
                       "II": [tau] + [0] * 5, "SS": [1] + [0] * 5, "DV": [NAN] + [1] * 5})
    rep = pd.DataFrame({"ID": 1, "TIME": [0.0] + [tau * (n - 1) + t for t in t_obs], "AMT": [100.0] + [0] * 5,
                        "RATE": [5.0] + [0] * 5, "II": [tau] + [0] * 5, "ADDL": [n - 1] + [0] * 5,
                        "DV": [NAN] + [1] * 5})
    p = {"CL": torch.tensor([2.0], dtype=torch.float64), "V": torch.tensor([20.0], dtype=torch.float64)}
    a = model.predict(p, pmxgen.read_nonmem(ss).batch)
    b = model.predict(p, pmxgen.read_nonmem(rep).batch)
    # the SS record stands for the infinite past only: after t = 12 no further dose is given,
    # whereas the repeated-dose series continues; compare within the first interval
    torch.testing.assert_close(a[:, :3], b[:, :3], rtol=1e-9, atol=1e-12)


def test_michaelis_menten_ode_converges_to_linear_when_km_large():
    """With KM ≫ C, Michaelis-Menten elimination is linear with CL = VM/KM (a second-algorithm check)."""
    frame = dosing_frame(get_model("1cmt_oral"))
    frame = frame[frame["SS"] == 0]
    frame = frame[~frame["ID"].isin([3, 4])]
    ds = pmxgen.read_nonmem(frame.reset_index(drop=True))
    km = 1e7
    mm = get_model("1cmt_oral_mm")
    mm.rtol, mm.atol = 1e-11, 1e-12
    p = {"KA": torch.tensor([1.2, 0.8], dtype=torch.float64), "VM": torch.tensor([2.0 * km, 3.0 * km],
                                                                               dtype=torch.float64),
         "KM": torch.tensor([km, km], dtype=torch.float64), "V": torch.tensor([20.0, 30.0], dtype=torch.float64)}
    lin = {"KA": p["KA"], "CL": torch.tensor([2.0, 3.0], dtype=torch.float64), "V": p["V"]}
    m = ds.batch.obs.mask
    torch.testing.assert_close(mm.predict(p, ds.batch)[m], get_model("1cmt_oral").predict(lin, ds.batch)[m],
                               rtol=1e-5, atol=1e-9)


def test_indirect_response_baseline_and_inhibition():
    """Without drug the response stays at KIN/KOUT; with drug it dips below and recovers."""
    model = get_model("idr_inhibit_kin")
    df = pd.DataFrame({"ID": [1, 1, 1, 1, 2, 2, 2, 2], "TIME": [0, 2, 10, 200, 0, 2, 10, 200.0],
                       "AMT": [100, 0, 0, 0, 0, 0, 0, 0.0], "EVID": [1, 0, 0, 0, 2, 0, 0, 0],
                       "CMT": [1, 2, 2, 2, 2, 2, 2, 2], "DV": [NAN, 1, 1, 1, NAN, 1, 1, 1]})
    ds = pmxgen.read_nonmem(df)
    p = {k: torch.tensor([v, v], dtype=torch.float64) for k, v in
         {"CL": 2.0, "V": 20.0, "KIN": 10.0, "KOUT": 0.5, "IMAX": 0.9, "IC50": 1.0}.items()}
    r = model.predict(p, ds.batch)
    torch.testing.assert_close(r[1], torch.full((3,), 20.0, dtype=torch.float64), rtol=1e-8, atol=1e-8)
    # subject 1 against an independent integrator (scipy LSODA) of the same equations
    from scipy.integrate import solve_ivp

    def f(t, y):
        c = y[0] / 20.0
        return [-0.1 * y[0], 10.0 * (1 - 0.9 * c / (1.0 + c)) - 0.5 * y[1]]

    ref = solve_ivp(f, (0.0, 200.0), [100.0, 20.0], method="LSODA", t_eval=[2.0, 10.0, 200.0], rtol=1e-11,
                    atol=1e-12).y[1]
    np.testing.assert_allclose(r[0].numpy(), ref, rtol=1e-6)
    assert float(r[0, 0]) < 19.0 and float(r[0, 1]) < 19.0 and abs(float(r[0, 2]) - 20.0) < 1e-3
