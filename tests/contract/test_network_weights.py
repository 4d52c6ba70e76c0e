"""Models whose population parameters include network weights: fitted, saved safely, reloaded identically."""
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pmxgen
from pmxgen.cli import main
from pmxgen.errors import ModelError
from pmxgen.models.weights import weights_state

HERE = Path(__file__).resolve().parent
MODEL_FILE = HERE / "mlp_model.py"
sys.path.insert(0, str(HERE))
from mlp_model import build  # noqa: E402


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp_run")
    code = main(["fit", "theophylline", "--model", str(MODEL_FILE), "--method", "focei", "--weight-decay", "1",
                 "--covariance", "R", "--quiet", "--output", str(out)])
    assert code == 0
    return out


def test_weights_are_fitted_with_the_named_parameters_and_improve_the_fit(saved_run):
    fit = pmxgen.FitResult.from_json(saved_run / "fit.json")
    data = pmxgen.datasets.load("theophylline")
    plain = pmxgen.fit(pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL")), data,
                       method="focei", covariance=None)
    assert fit.status == "converged" and fit.covariance_status == "ok"
    assert fit.n_network_weights == 13 and fit.network_weight_norm > 0.1      # moved from the zero last layer
    # AIC and BIC count the weights as parameters
    assert fit.n_parameters == fit.n_estimated + 13
    assert fit.aic == pytest.approx(fit.minus2ll + 2 * fit.n_parameters)
    assert fit.ofv < plain.ofv - 1.0                                          # the WT effect helps (no penalty in OFV)
    assert np.isfinite([fit.se[n] for n in fit.estimated_names]).all()        # named parameters keep their SEs
    assert "13 network weights fitted" in " ".join(fit.messages)
    assert "network weights: 13" in (saved_run / "summary.txt").read_text()
    results = json.loads((saved_run / "results.json").read_text())
    assert results["network_weights"]["count"] == 13


def test_the_gradient_of_the_weights_is_exact():
    """FOCE-I objective's gradient in the weights against central differences (weights enter like θ)."""
    from pmxgen.estimation.classical import approximate_objective
    from pmxgen.models.weights import assign_weights_vector, weight_tensors, weights_vector
    data = pmxgen.datasets.load("theophylline")
    model = build(data)
    gen = torch.Generator().manual_seed(0)
    w0 = weights_vector(model) + 0.3 * torch.randn(13, generator=gen, dtype=torch.float64)
    assign_weights_vector(model, w0)
    ps = model.parameter_set
    phi = ps.initial_natural()
    objective = approximate_objective(model, data.batch, "focei")
    eta0 = torch.zeros(data.n_subjects, 2, dtype=torch.float64)
    total, eta = objective(phi, eta0)
    grads = torch.autograd.grad(total, weight_tensors(model))
    g = torch.cat([d.reshape(-1) for d in grads])
    for j in (0, 5, 9, 12):
        h = 1e-5
        values = []
        for sign in (1, -1):
            w = w0.clone()
            w[j] += sign * h
            assign_weights_vector(model, w)
            values.append(float(objective(phi, eta)[0].detach()))
        assert float(g[j]) == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-5, abs=1e-6)


def test_a_saved_run_reloads_and_predicts_identically(saved_run):
    fit = pmxgen.FitResult.from_json(saved_run / "fit.json")
    assert (saved_run / "fit.weights.safetensors").is_file()
    run = pmxgen.load_run(saved_run)
    assert weights_state(run.model).keys() == fit.network_weights.keys()
    for name, value in weights_state(run.model).items():
        np.testing.assert_array_equal(value, fit.network_weights[name])
    with torch.no_grad():
        ipred = run.model.predict(run.eta, run.values, run.data.batch)
    mask = run.data.batch.obs.mask
    table = fit.observations.sort_values("ROW")
    np.testing.assert_allclose(ipred[mask].numpy(), table["IPRED"].to_numpy(), rtol=0, atol=1e-12)
    # a freshly built model (initial weights) predicts differently: the weights were really applied
    fresh = build(run.data)
    with torch.no_grad():
        assert not torch.allclose(fresh.predict(run.eta, run.values, run.data.batch)[mask], ipred[mask])


def test_a_tampered_weights_file_is_refused(saved_run, tmp_path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(saved_run, copy)
    path = copy / "fit.weights.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01                                          # one bit of one weight
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="changed after the fit"):
        pmxgen.load_run(copy)


def test_a_pickle_in_place_of_the_weights_is_never_executed(saved_run, tmp_path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(saved_run, copy)
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "pwned"))

    (copy / "fit.weights.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelError):
        pmxgen.load_run(copy)
    # even with the checksum in fit.json made to match, the safetensors parser refuses it
    fit_json = json.loads((copy / "fit.json").read_text())
    from pmxgen.models.weights import sha256
    fit_json["network_weights"]["sha256"] = sha256((copy / "fit.weights.safetensors").read_bytes())
    (copy / "fit.json").write_text(json.dumps(fit_json))
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        pmxgen.load_run(copy)
    assert not marker.exists()


def test_weights_survive_the_inline_json_round_trip_and_a_mismatched_model_is_refused(saved_run):
    fit = pmxgen.FitResult.from_json(saved_run / "fit.json")
    again = pmxgen.FitResult.from_json(fit.to_json())          # inline base64 safetensors
    for name, value in fit.network_weights.items():
        np.testing.assert_array_equal(again.network_weights[name], value)
    data = pmxgen.datasets.load("theophylline")
    other = build(data)
    other.networks = {"cl_wt": torch.nn.Linear(1, 1)}
    with pytest.raises(ModelError, match="do not fit this model"):
        pmxgen.load_run(fit, model=other, data=data)


def test_vem_fits_the_weights_too():
    data = pmxgen.datasets.load("theophylline")
    model = build(data)
    fit = pmxgen.fit(model, data, method="vem", max_iter=300, importance_samples=200, weight_decay=1.0, seed=2)
    assert fit.n_network_weights == 13 and fit.network_weight_norm > 0.05
    assert float(model.networks["cl_wt"][2].weight.detach().abs().sum()) == 0.0     # the model's own weights untouched


def test_zero_dimensional_weights_keep_their_shape():
    """A 0-d buffer or parameter (e.g. a scalar temperature) round-trips as 0-d, not as shape (1,)."""
    import numpy as np
    from pmxgen.models.weights import weights_from_bytes, weights_to_bytes
    back = weights_from_bytes(weights_to_bytes({"scale": np.asarray(2.5), "w": np.ones((2, 3)).T}))
    assert back["scale"].shape == () and float(back["scale"]) == 2.5
    assert back["w"].shape == (3, 2)
