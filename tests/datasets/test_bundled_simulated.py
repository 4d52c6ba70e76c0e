"""The bundled data sets through pmxgen.datasets, and the simulated ones against their truth.json."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pmxgen
import pmxgen.datasets as datasets

REPO = Path(__file__).resolve().parents[2]
REAL = ["theophylline", "indomethacin", "pheno", "moxo"]
SIMULATED = {  # name: (model, subjects, observations per subject)
    "sim_1cmt_oral_wt": ("1cmt_oral", 100, 11),
    "sim_2cmt_iv_infusion": ("2cmt_iv", 200, 12),
    "sim_mm_oral": ("1cmt_oral_mm", 100, 11),
    "sim_1cmt_oral_1000": ("1cmt_oral", 1000, 8),
}
TRUTH_KEYS = {"name", "description", "model", "parameters", "theta", "omega", "omega_matrix", "error", "seed",
              "n_subjects", "n_observations", "individual_model", "design", "units", "generated_by"}


def make_simulated():
    """datasets/make_simulated.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_simulated", REPO / "datasets" / "make_simulated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_list_has_real_then_simulated():
    names = datasets.list()
    assert names[:4] == REAL
    assert set(SIMULATED) <= set(names)
    assert isinstance(names, list)           # the module's `list` did not shadow the builtin


@pytest.mark.parametrize("name", list(SIMULATED))
def test_simulated_dataset_loads_and_matches_truth(name):
    model_name, n_subjects, per_subject = SIMULATED[name]
    truth = datasets.truth(name)
    assert TRUTH_KEYS <= set(truth)
    assert truth["name"] == name and truth["model"] == model_name and truth["n_subjects"] == n_subjects
    model = pmxgen.get_model(model_name)
    assert truth["parameters"] == list(model.parameter_names)
    assert set(model.parameter_names) <= set(truth["theta"])
    assert set(truth["omega"]) <= set(truth["theta"])
    assert all(v >= 0 for v in truth["omega"].values())
    assert set(truth["error"]) <= {"additive", "proportional"}
    om = truth["omega_matrix"]
    matrix = np.asarray(om["matrix"])
    assert om["names"] == list(truth["omega"]) and np.allclose(np.diag(matrix), list(truth["omega"].values()))
    assert np.all(np.linalg.eigvalsh(matrix) > 0)

    ds = datasets.load(name)
    assert ds.n_subjects == n_subjects
    assert ds.n_observations == truth["n_observations"] == n_subjects * per_subject
    assert (ds.observations_per_subject == per_subject).all()
    assert datasets.path(name) == datasets.path(name).parent / f"{name}.csv"
    text = datasets.describe(name)
    assert text.startswith(f"# {name}") and "make_simulated.py" in text
    model.check_dataset(ds)


def test_sizes_are_modest():
    total = sum(datasets.path(name).stat().st_size for name in SIMULATED)
    assert total < 2_000_000


def test_moxo_has_occasions_and_real_sets_have_no_truth():
    assert datasets.load("moxo").occasion_labels == [3, 8]
    assert datasets.load("moxo", occasion=None).occasion_labels is None
    assert datasets.load("theophylline").n_subjects == 12
    for name in REAL:
        with pytest.raises(KeyError, match="no known true parameters"):
            datasets.truth(name)
        assert datasets.describe(name).startswith(f"# {name}")


def test_unknown_name_lists_the_available_ones():
    for fn in (datasets.load, datasets.path, datasets.truth, datasets.describe):
        with pytest.raises(KeyError, match="available: theophylline, indomethacin"):
            fn("no_such_data")


def test_regenerating_from_truth_reproduces_the_csv():
    script = make_simulated()
    name = "sim_1cmt_oral_wt"
    truth = datasets.truth(name)
    sim = script.simulate_from_truth(truth)
    bundled = pd.read_csv(datasets.path(name), na_values=["."])
    regenerated = sim.dataset.to_frame()
    assert list(regenerated.columns) == list(bundled.columns)
    for col in ("ID", "TIME", "AMT", "EVID", "CMT", "WT"):
        np.testing.assert_array_equal(regenerated[col].to_numpy(float), bundled[col].to_numpy(float))
    obs = bundled["EVID"].to_numpy() == 0
    # the CSV holds DV to 6 significant digits
    np.testing.assert_allclose(regenerated["DV"].to_numpy()[obs], bundled["DV"].to_numpy()[obs], rtol=6e-6, atol=0)
    assert bundled["DV"][~obs].isna().all()
    # the truth in the folder is what the script would write
    expected = script.truth_of(name)
    expected["n_observations"] = truth["n_observations"]
    assert expected == truth
