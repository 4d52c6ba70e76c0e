"""Regimens: constructors, the text form, units, scenario grids, dose tensors; doctests of the dosing modules."""
import doctest
import importlib

import numpy as np
import pandas as pd
import pytest
import torch

import pmxgen
from pmxgen.simulation.regimen import (DoseEvent, Regimen, RegimenError, body_size, dose_compartment,
                                       parse_regimen, regimen_grid)
from pmxgen.simulation.schedule import arm_batch, regimen_arm

MODULES = ["regimen", "schedule", "exposure", "engine", "population", "counterfactual", "result", "command"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"pmxgen.simulation.{name}")
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0


def test_text_forms():
    r = parse_regimen("500 mg q12h x14")
    assert [e.time for e in r.events] == [12.0 * k for k in range(14)]
    assert {e.amount for e in r.events} == {500.0} and r.interval == 12.0 and r.label == "500 mg q12h x14"
    r = parse_regimen("1 g iv over 1 h q8h x6")
    assert r.n_doses == 6 and r.events[0].amount == 1000.0 and r.events[0].route == "iv"
    assert r.events[0].duration == 1.0 and r.events[-1].time == 40.0
    r = parse_regimen("10 mg/kg po q24h for 7 d")
    assert r.n_doses == 7 and r.events[0].per == "kg" and r.events[0].route == "oral"
    r = parse_regimen("loading 1 g then 500 mg q12h x13")
    assert r.n_doses == 14 and r.events[0].amount == 1000.0 and r.events[1].amount == 500.0
    r = parse_regimen("250mg bid for 3 days ss")
    assert r.interval == 12.0 and r.n_doses == 6 and r.steady_state and r.events[0].interval == 12.0
    r = parse_regimen("200 mg once at 2 h")
    assert r.n_doses == 1 and r.events[0].time == 2.0 and r.interval is None
    assert regimen_arm(r).windows == {"total": (2.0, 26.0)}
    r = parse_regimen("100 mcg iv over 30 min q6h x4")
    assert r.events[0].amount == pytest.approx(0.1) and r.events[0].duration == pytest.approx(0.5)
    # other data units: amounts in µg, times in days
    r = parse_regimen("1 mg q12h x2", amount_unit="ug", time_unit="d")
    assert r.events[0].amount == pytest.approx(1000.0) and r.interval == pytest.approx(0.5)
    # a loading dose with its own route gives explicit events
    r = parse_regimen("loading 1 g iv over 1 h then 500 mg po q12h x2")
    assert [(e.route, e.duration, e.amount) for e in r.events] == [("iv", 1.0, 1000.0), ("oral", 0.0, 500.0),
                                                                    ("oral", 0.0, 500.0)]


@pytest.mark.parametrize("text, message", [
    ("500 mgg q12h", "unknown amount unit 'mgg'"),
    ("500 mg q12x x3", "unknown time unit 'x'"),
    ("500 mg x14", "need an interval"),
    ("500 mg q12h x0", "whole number >= 1"),
    ("500 mg/lb q12h", "per kg or per m2"),
    ("500 mg q12h x3 for 2 d", "either 'x N' or 'for DURATION'"),
    ("500 mg q12h $", "unexpected character '$'"),
    ("", "non-empty"),
    ("mg 500", "expected a number"),
    ("loading 1 g 500 mg q12h", "followed by 'then'"),
    ("500 mg q12h x3 banana", "unexpected 'banana'"),
])
def test_bad_text_is_refused_with_the_reason(text, message):
    with pytest.raises(RegimenError, match=message.replace("(", r"\(").replace("$", r"\$")):
        parse_regimen(text)


def test_constructors_and_grid():
    r = Regimen.every(8, dose=1, unit="g", duration=24, route="iv", infusion=0.5)
    assert r.n_doses == 3 and r.events[0].amount == 1000.0 and r.end == 24.0
    assert str(r) == "1000 mg iv over 0.5 h q8h x3"
    assert r.at_steady_state().events[0].steady_state and not r.events[0].steady_state
    table = Regimen.from_table(pd.DataFrame({"TIME": [0, 6, 30], "AMT": [100, 50, 50], "route": ["iv", "po", "po"]}),
                               interval=24)
    assert [e.route for e in table.events] == ["iv", "oral", "oral"] and table.end == 54.0
    grid = regimen_grid([100, 200], [12, 24], n=2)
    assert [g.label for g in grid] == ["100 mg q12h x2", "100 mg q24h x2", "200 mg q12h x2", "200 mg q24h x2"]
    with pytest.raises(RegimenError, match="unknown column"):
        Regimen.from_table({"time": [0], "amount": [1], "dose_mg": [1]})
    with pytest.raises(RegimenError, match="only the first dose"):
        Regimen((DoseEvent(0, 1), DoseEvent(1, 1, steady_state=True, interval=1)))
    with pytest.raises(RegimenError, match="amount must be > 0"):
        DoseEvent(0, 0)
    with pytest.raises(RegimenError, match="unknown amount unit"):
        Regimen.every(12, dose=1, n=2, unit="lb")


def test_routes_map_to_compartments():
    oral, iv = pmxgen.get_model("2cmt_oral"), pmxgen.get_model("2cmt_iv")
    assert dose_compartment(DoseEvent(0, 1, route="oral"), oral) == 1
    assert dose_compartment(DoseEvent(0, 1, route="iv"), oral) == 2
    assert dose_compartment(DoseEvent(0, 1), oral) == 1
    assert dose_compartment(DoseEvent(0, 1, route="iv"), iv) == 1
    with pytest.raises(RegimenError, match="needs a depot"):
        dose_compartment(DoseEvent(0, 1, route="oral"), iv)


def test_weight_and_bsa_based_amounts():
    wt, ht = np.array([50.0, 80.0]), np.array([160.0, 190.0])
    assert body_size("kg", {"wt": wt}).tolist() == [50.0, 80.0]
    # Mosteller: sqrt(WT * HT / 3600)
    np.testing.assert_allclose(body_size("m2", {"WT": wt, "HT": ht}), np.sqrt(wt * ht / 3600), rtol=1e-15)
    assert body_size("m2", {"BSA": np.array([1.5])}).tolist() == [1.5]
    with pytest.raises(RegimenError, match="needs a BSA covariate or WT and HT"):
        body_size("m2", {"WT": wt})
    reg = Regimen.every(12, dose=5, n=2, per="kg", route="oral")
    arm = regimen_arm(reg)
    baseline = torch.tensor([[50.0, 1.0], [80.0, 2.0]], dtype=torch.float64)
    batch = arm_batch(arm, pmxgen.get_model("1cmt_oral"), baseline, ("WT", "DOSE"))
    assert batch.doses.amt.tolist() == [[250.0, 250.0], [400.0, 400.0]]
    with pytest.raises(RegimenError, match="needs a WT"):
        arm_batch(arm, pmxgen.get_model("1cmt_oral"), baseline[:, 1:], ("DOSE",))


def test_dose_tensors_match_read_nonmem_of_the_same_design():
    """The directly-built tensors predict as the design table read by read_nonmem (an independent route)."""
    model = pmxgen.get_model("2cmt_oral")
    reg = parse_regimen("loading 400 mg then 200 mg q8h x4")
    arm = regimen_arm(reg, points_per_interval=6)
    batch = arm_batch(arm, model, torch.zeros(1, 0, dtype=torch.float64), ())
    params = {"KA": torch.tensor(1.1), "CL": torch.tensor(3.0), "V1": torch.tensor(20.0), "Q": torch.tensor(2.0),
              "V2": torch.tensor(40.0)}
    ours = model.predict(params, batch)[0].numpy()
    post = ~arm.pre
    frame = pmxgen.design_frame(1, doses=[{"time": e.time, "amt": e.amount} for e in reg.events],
                                obs_times=arm.time[post], obs_cmt=2)
    theirs = model.predict(params, pmxgen.read_nonmem(frame).batch)[0].numpy()
    np.testing.assert_allclose(ours[post], theirs, rtol=1e-13, atol=1e-13)
