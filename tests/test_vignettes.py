"""The vignettes run and show what their text says."""
import importlib.util
from pathlib import Path

import pytest

VIGNETTES = Path(__file__).resolve().parents[1] / "vignettes"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, VIGNETTES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_classical_estimators_vignette():
    table = _load("classical_estimators").compare(n_samples=1000).set_index("method")
    assert (table["status"] == "converged").all()
    assert table.loc["FOCE", "ofv"] == pytest.approx(table.loc["FOCEI", "ofv"], abs=1e-8)
    err = table["approximation_error"].abs()
    assert err["FO"] > 5 and err["FO"] > err["FOCEI"] > err["LAPLACE"]
    assert err["LAPLACE"] < 3 * table.loc["LAPLACE", "is_se"] + 0.1
    assert abs(table.loc["FO", "KA"] / table.loc["FOCEI", "KA"] - 1) > 0.2


def test_variational_estimators_vignette():
    table = _load("variational_estimators").compare(quick=True).set_index("method")
    assert (table["status"] == "converged").all(), table["status"]
    focei = table.loc["FOCEI"]
    good = ["SAEM", "SCORE", "VEM_GAUSSIAN", "VEM_FLOW", "VEM_AMORTIZED_REFINED"]
    for method in good:
        row = table.loc[method]
        # the same importance-sampled −2LL within Monte Carlo error ...
        assert abs(row["is_minus2ll"] - focei["is_minus2ll"]) < 0.5, method
        # ... and the same estimates within one FOCE-I standard error
        for name in ("KA", "CL", "V", "OMEGA(KA)", "OMEGA(CL)", "SIGMA(ADD)"):
            assert abs(row[name] - focei[name]) < focei[f"se_{name}"], (method, name)
    variational = table.loc[["VEM_GAUSSIAN", "VEM_FLOW", "VEM_AMORTIZED", "VEM_AMORTIZED_REFINED"]]
    gap = variational["minus2elbo"] - variational["is_minus2ll"]
    assert (gap > -3 * variational["is_se"]).all(), gap          # −2·ELBO ≥ −2LL
    assert gap["VEM_GAUSSIAN"] < 1.5 and gap["VEM_FLOW"] < 1.5
    assert gap["VEM_AMORTIZED"] < 3 and gap["VEM_AMORTIZED_REFINED"] < 1.5
    # refinement can only tighten the encoder's posteriors
    assert variational.loc["VEM_AMORTIZED_REFINED", "minus2elbo"] < variational.loc["VEM_AMORTIZED", "minus2elbo"] + 0.3


def test_score_estimator_on_a_simulated_set_in_the_vignette():
    """sim_1cmt_oral_wt: the score estimator within 1 SAEM SE of SAEM (measured: at most 0.37 SE,
    SIGMA(ADD)), and the same parameters covered by the 95 % intervals."""
    table = _load("variational_estimators").compare_simulated().set_index("method")
    assert (table["status"] == "converged").all(), table["status"]
    saem, score = table.loc["SAEM"], table.loc["SCORE"]
    names = [c[3:] for c in table.columns if c.startswith("se_")]
    for name in names:
        assert abs(score[name] - saem[name]) < saem[f"se_{name}"], name
        assert (abs(score[f"z_{name}"]) < 1.959964) == (abs(saem[f"z_{name}"]) < 1.959964), name
    assert abs(score["is_minus2ll"] - saem["is_minus2ll"]) < 1.0
