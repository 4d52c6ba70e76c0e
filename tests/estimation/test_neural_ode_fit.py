"""Neural-ODE NLME models fitted by Laplace and variational EM, and FOCE-I refusing adjoint gradients.

(FOCE-I fits of neural ODEs are checked by ``tests/test_neural_ode_vignette.py`` on the pmxNODE data.)
"""
import warnings

import numpy as np
import pytest

import pmxgen
from pmxgen.errors import EstimationError
from pmxgen.estimation import VariationalEM
from pmxgen.models import NLMEModel
from pmxgen.models.weights import weights_vector
from pmxgen.structural.neural import linear_neural_elimination


def test_focei_with_adjoint_gradients_fails_clearly_at_the_start():
    data = pmxgen.datasets.load("indomethacin")
    model = NLMEModel(linear_neural_elimination(hidden=3, gradient="adjoint", rtol=1e-5, atol=1e-8),
                      theta={"CL": (0, 8.0), "V": (0, 10.0), "S_N": 1.0}, omega={"CL": 0.1},
                      error={"kind": "proportional", "init": {"PROP": 0.1}})
    with pytest.raises(EstimationError, match="first derivatives only.*gradient='backprop'"):
        pmxgen.fit(model, data, method="focei", covariance=None)


def test_laplace_and_vem_fit_network_weights_of_a_neural_ode():
    data = pmxgen.datasets.load("indomethacin")
    for label in ("laplace", "vem"):
        model = NLMEModel(linear_neural_elimination(hidden=3, rtol=1e-5, atol=1e-8, concentration_scale=2.0),
                          theta={"CL": (0, 8.0), "V": (0, 10.0), "S_N": 1.0}, omega={"CL": 0.1},
                          error={"kind": "proportional", "init": {"PROP": 0.1}})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if label == "laplace":
                fit = pmxgen.fit(model, data, method="laplace", covariance=None, max_iter=1)
            else:
                fit = VariationalEM(posterior="gaussian", max_iter=15, n_samples=2, importance_samples=0,
                                    elbo_samples=20, posterior_draws=2, covariance=None, seed=1).fit(model, data)
        assert fit.n_network_weights == 10, label
        assert float(weights_vector(model).abs().sum()) > 0, label          # the zero last layer moved
        assert fit.status != "failed" and all(np.isfinite(v) for v in fit.estimates.values()), label
    assert fit.elbo is not None
