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
