"""Neural-ODE NLME models fitted by FOCE-I, Laplace and variational EM.

The reproduction check compares, on held-out subjects, the population predictions (η = 0)
of a purely neural elimination model and of the closed-form one-compartment model that
generated the data, both fitted by FOCE-I to the same training subjects: the network must
learn first-order elimination well enough that the two agree within 1 %.
"""
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import pmxgen
from pmxgen.estimation import VariationalEM
from pmxgen.models import NLMEModel
from pmxgen.models.weights import weights_vector
from pmxgen.structural.neural import linear_neural_elimination

sys.path.insert(0, str(Path(__file__).resolve().parent))
import neural_models as nm  # noqa: E402


def _population_predictions(model: NLMEModel, fit, data) -> torch.Tensor:
    ps = model.parameter_set
    values = ps.unpack(torch.tensor([fit.estimates[n] for n in ps.names], dtype=torch.float64))
    eta = torch.zeros(data.n_subjects, len(model.eta_names(data.batch)), dtype=torch.float64)
    with torch.no_grad():
        return model.predict(eta, values, data.batch)


def test_neural_elimination_reproduces_the_one_compartment_model_on_held_out_subjects():
    train, test = nm.one_compartment_split()
    neural = nm.neural_elimination_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # a capped FOCE-I warns; the check is on its predictions
        fit = nm.fit_with_pretraining(neural, train.dataset, pretrain_iter=60, max_iter=120)
    reference_model = nm.one_compartment_model()
    reference = pmxgen.fit(reference_model, train.dataset, method="focei", covariance=None)
    assert fit.status != "failed" and reference.status == "converged"
    assert fit.n_network_weights == 19 and np.isfinite(fit.ofv)
    assert fit.ofv < reference.ofv + 5.0                      # as good a fit of the training data
    mask = test.dataset.batch.obs.mask
    neural_pred = _population_predictions(neural, fit, test.dataset)[mask]
    reference_pred = _population_predictions(reference_model, reference, test.dataset)[mask]
    rel = ((neural_pred - reference_pred).abs() / reference_pred).max()
    assert float(rel) < 0.01, float(rel)


def test_laplace_and_vem_fit_network_weights_of_a_neural_ode():
    data = pmxgen.datasets.load("indomethacin")
    for label in ("laplace", "vem"):
        model = NLMEModel(linear_neural_elimination(hidden=3, rtol=1e-5, atol=1e-8, concentration_scale=2.0),
                          theta={"CL": (0, 8.0), "V": (0, 10.0), "S_N": 1.0}, omega={"CL": 0.1},
                          error={"kind": "proportional", "init": {"PROP": 0.1}})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if label == "laplace":
                fit = pmxgen.fit(model, data, method="laplace", covariance=None, max_iter=8)
            else:
                fit = VariationalEM(posterior="gaussian", max_iter=30, n_samples=2, importance_samples=0,
                                    elbo_samples=20, posterior_draws=0, covariance=None, seed=1).fit(model, data)
        assert fit.n_network_weights == 10, label
        assert float(weights_vector(model).abs().sum()) > 0, label          # the zero last layer moved
        assert fit.status != "failed" and all(np.isfinite(v) for v in fit.estimates.values()), label
    assert fit.elbo is not None
