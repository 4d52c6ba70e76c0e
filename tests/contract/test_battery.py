"""The contract battery (in the spirit of scikit-learn's ``check_estimator``).

Every model type × every registered estimator: where the estimator's declared needs are met by
the model (its capability tiers, network weights, random effects), a small fit runs, its status
is one of the documented values, the result round-trips through JSON, the same seed gives the
same numbers, and the tensors follow the data's dtype and device; where they are not, the fit
is refused before any work with a ModelError/EstimationError naming what is missing.
"""
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import pmxgen
from pmxgen.errors import EstimationError, ModelError
from pmxgen.estimation.registry import estimator_classes
from pmxgen.estimation.results import STATUSES, FitResult
from pmxgen.models import NLMEModel, PPCAModel, capabilities, ppca_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlp_model import build as build_mlp_model  # noqa: E402

#: Small settings per method: enough to exercise every code path, not to converge.
FAST = {
    "fo": dict(max_iter=15, covariance=None),
    "foce": dict(max_iter=15, covariance=None),
    "focei": dict(max_iter=15, covariance="sandwich", importance_samples=20),
    "laplace": dict(max_iter=10, covariance=None),
    "saem": dict(n_explore=6, n_smooth=6, n_chains=2, importance_samples=20, posterior_draws=6, posterior_burn_in=2,
                 covariance=None),
    "mcem": dict(max_iter=2, n_chains=2, initial_draws=2, max_draws=4, burn_in=1, importance_samples=20, posterior_draws=6,
                 posterior_burn_in=2, covariance=None),
    "score": dict(iterations=8, n_chains=2, importance_samples=20, posterior_draws=6, posterior_burn_in=2, covariance=None),
    "vem": dict(max_iter=25, n_samples=2, elbo_samples=8, importance_samples=20, posterior_draws=6, covariance=None),
    "energyem": dict(n_explore=4, n_smooth=4, n_chains=2, energy_steps=2, importance_samples=20, posterior_draws=6,
                     posterior_burn_in=2),
}
WEIGHT_DECAY = {"fo": 1.0, "foce": 1.0, "focei": 1.0, "laplace": 1.0, "vem": 1.0}


def _theophylline():
    return pmxgen.datasets.load("theophylline")


def _nlme_closed_form():
    data = _theophylline()
    return pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL")), data


def _nlme_ode():
    # four subjects: ODE solves cost the battery most of its time
    frame = _theophylline().to_frame()
    data = pmxgen.read_nonmem(frame[frame["ID"].isin(sorted(frame["ID"].unique())[:4])])
    closed = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    ode = NLMEModel(pmxgen.get_model("1cmt_oral").as_ode(rtol=1e-6, atol=1e-8), theta={t.name: (0, t.init) for t in closed.parameter_set.theta},
                    omega={"KA": 0.4, "CL": 0.1}, error={"kind": "additive", "init": {"ADD": 0.5}}, name="1cmt_oral ODE")
    return ode, data


def _ppca():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2)) @ rng.normal(size=(2, 4)) + 0.5 * rng.normal(size=(30, 4))
    data = ppca_dataset(x)
    return PPCAModel.from_data(data, 2, perturb=0.2, seed=1, identify=True), data


def _mlp():
    data = _theophylline()
    return build_mlp_model(data), data


MODELS = {"nlme_closed_form": _nlme_closed_form, "nlme_ode": _nlme_ode, "ppca": _ppca, "nlme_mlp": _mlp}


def _claims(cls, model, data) -> bool:
    """Whether the estimator class says it handles this model (its declared needs)."""
    tiers = capabilities(model)
    if not set(cls.requires) <= tiers:
        return False
    if "network_weights" in tiers and not cls.supports_network_weights:
        return False
    if model.iov_names and not cls.supports_occasions:
        return False
    return not (cls.needs_random_effects and not model.eta_names(data.batch))


def _options(method: str, model) -> dict:
    options = dict(FAST.get(method, {}))
    if "network_weights" in capabilities(model) and method in WEIGHT_DECAY:
        options["weight_decay"] = WEIGHT_DECAY[method]
    return options


def _fit(method, model, data, seed=3):
    options = _options(method, model)
    if "seed" in estimator_classes()[method]._param_names():
        options["seed"] = seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # short runs warn that they did not converge
        return pmxgen.fit(model, data, method=method, **options)


CASES = [(m, e) for m in MODELS for e in FAST]


def test_every_registered_estimator_is_in_the_battery():
    assert set(estimator_classes()) == set(FAST), "give each registered estimator small settings in FAST"


@pytest.mark.parametrize("model_name,method", CASES)
def test_contract(model_name, method):
    model, data = MODELS[model_name]()
    cls = estimator_classes()[method]
    if not _claims(cls, model, data):
        with pytest.raises((ModelError, EstimationError)) as info:
            pmxgen.fit(model, data, method=method, **_options(method, model))
        message = str(info.value)
        assert method.upper() in message and ("needs" in message or "does not" in message), message
        return
    initial_weights = {k: v.detach().clone() for k, v in model.networks.state_dict().items()}
    fit = _fit(method, model, data)
    # a documented status, with a message when not converged
    assert fit.status in STATUSES
    assert fit.method == method and fit.messages
    # estimates for every named parameter; likelihood fields present or absent with a reason
    assert set(fit.estimates) == set(model.parameter_set.all_names)
    assert all(math.isfinite(v) for v in fit.estimates.values()) or fit.status == "failed"
    for name in ("ofv", "minus2ll", "ebe", "shrinkage"):
        assert getattr(fit, name) is not None or fit.unavailable.get(name)
    # network weights: reported, and the model's own weights are left as they were
    if "network_weights" in capabilities(model):
        assert fit.n_network_weights == sum(p.numel() for p in model.networks.parameters())
        assert all(torch.equal(initial_weights[k], v) for k, v in model.networks.state_dict().items())
    else:
        assert fit.network_weights is None
    # JSON round trip, lossless
    again = FitResult.from_json(fit.to_json())
    assert again.estimates == fit.estimates and again.status == fit.status and again.method == fit.method
    assert (again.ofv == fit.ofv) or (again.ofv is None and fit.ofv is None)
    if fit.network_weights:
        assert all(np.array_equal(again.network_weights[k], v) for k, v in fit.network_weights.items())
    if fit.ebe is not None:
        np.testing.assert_array_equal(again.ebe, fit.ebe)
    # the same seed gives the same numbers
    twin = _fit(method, model, data)
    assert twin.estimates == fit.estimates
    assert (twin.ofv == fit.ofv) or (twin.ofv is None and fit.ofv is None)
    # arrays are float64 like the data; the model predicts on the data's device and dtype
    assert np.asarray(fit.ebe).dtype == np.float64
    values = model.parameter_set.unpack(model.parameter_set.initial_natural(dtype=data.dtype, device=data.device))
    eta = torch.zeros(data.n_subjects, len(model.eta_names(data.batch)), dtype=data.dtype, device=data.device)
    with torch.no_grad():
        pred = model.predict(eta, values, data.batch)
    assert pred.dtype == data.dtype and pred.device == data.device
    assert torch.get_default_dtype() == torch.float32       # no estimator changes the global default


def test_unsupported_combinations_say_what_is_missing():
    model, data = _mlp()
    with pytest.raises(ModelError, match="SAEM does not optimise network weights .*focei"):
        pmxgen.fit(model, data, method="saem")

    class NoResiduals(PPCAModel):
        """PPCA without the Gaussian-residual tier (as a model that only gives log p(y|η) would be)."""

        log_scale_observations = None

    bare, ppca_data = _ppca()
    bare.__class__ = NoResiduals
    with pytest.raises(ModelError, match="FOCEI needs a model with gaussian residual"):
        pmxgen.fit(bare, ppca_data, method="focei")
    # VEM needs only the base contract (with init='prior' and no linearisation SEs)
    fit = pmxgen.fit(bare, ppca_data, method="vem", init="prior", covariance=None, max_iter=30, n_samples=2,
                     importance_samples=0, posterior_draws=5, elbo_samples=5)
    assert fit.ofv is None and "ELBO only" in fit.unavailable["ofv"] and fit.aic is None
    assert "not available" in fit.summary()
    assert "CWRES" not in fit.observations.columns and "IPRED" in fit.observations.columns
