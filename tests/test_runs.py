"""Reloading a fitted run (FitResult + model + data) from a results folder: pmxgen.load_run."""
import numpy as np
import pytest
import torch

import pmxgen
from pmxgen.errors import DatasetError, ModelError
from pmxgen.runs import Run, fitted_values, load_run


@pytest.fixture(scope="module")
def theoph_fit(tmp_path_factory):
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    fit = pmxgen.fit(model, data, method="foce", covariance=None, cpu_threads=1)
    folder = tmp_path_factory.mktemp("run")
    pmxgen.report.write_fit(fit, folder)
    return fit, folder


def test_reloaded_run_reproduces_the_fit(theoph_fit):
    fit, folder = theoph_fit
    run = load_run(folder)
    assert isinstance(run, Run)
    assert run.fit.model_recipe["library"] == "1cmt_oral" and run.fit.data_recipe["dataset"] == "theophylline"
    # the reloaded model at the fitted values with the stored EBEs gives the stored IPRED
    ipred = run.model.predict(run.eta, run.values, run.data.batch)
    mask = run.data.batch.obs.mask
    np.testing.assert_allclose(ipred[mask].numpy(), fit.observations["IPRED"].to_numpy(), rtol=1e-10)
    assert float(run.values.omega[0, 0]) == pytest.approx(fit.estimates["OMEGA(KA)"], rel=1e-12)


def test_model_file_recipe(tmp_path):
    src = ('import pmxgen\n'
           'def build(data):\n'
           '    return pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("CL",))\n')
    path = tmp_path / "model.py"
    path.write_text(src)
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.models.loader.load_model_file(path, data)
    fit = pmxgen.fit(model, data, method="fo", covariance=None, cpu_threads=1)
    assert fit.model_recipe == {"file": str(path.resolve())}
    run = load_run(fit)
    assert run.model.parameter_set.names == model.parameter_set.names


def test_data_file_recipe(tmp_path):
    frame = pmxgen.datasets.load("theophylline").to_frame()
    csv = tmp_path / "theo.csv"
    frame.to_csv(csv, index=False)
    data = pmxgen.read_nonmem(csv)
    assert data.recipe["dataset"] is None and data.recipe["source"] == str(csv.resolve())
    again = pmxgen.runs.data_from_recipe(data.recipe)
    assert again.n_observations == data.n_observations
    csv.unlink()
    with pytest.raises(DatasetError, match="cannot be found"):
        pmxgen.runs.data_from_recipe(data.recipe)


def test_model_made_in_python_needs_the_model(theoph_fit):
    fit, _ = theoph_fit
    bare = pmxgen.estimation.results.FitResult.from_dict({**fit.to_dict(), "model_recipe": None})
    with pytest.raises(ModelError, match="does not record how its model was built"):
        load_run(bare)
    model = pmxgen.build_model("1cmt_oral", error="additive", iiv=("KA", "CL"))
    assert load_run(bare, model=model).model is model


def test_mismatched_model_or_data_is_refused(theoph_fit):
    fit, _ = theoph_fit
    other = pmxgen.build_model("1cmt_oral", error="additive", iiv=("KA", "CL", "V"))
    with pytest.raises(ModelError, match="no estimates of"):
        fitted_values(other, fit)
    with pytest.raises(ModelError, match="not the fitted data"):
        load_run(fit, data=pmxgen.datasets.load("sim_1cmt_oral_wt"))


def test_fitted_values_device_and_dtype(theoph_fit):
    fit, _ = theoph_fit
    model = pmxgen.build_model("1cmt_oral", error="additive", iiv=("KA", "CL"))
    values = fitted_values(model, fit, dtype=torch.float32)
    assert values.omega.dtype == torch.float32
