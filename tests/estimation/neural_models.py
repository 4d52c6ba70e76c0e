"""Neural-ODE NLME models and simulated train / held-out splits, shared by the neural-ODE fit tests.

* :func:`one_compartment_split` — data from a one-compartment IV model (known truth), for
  checking that a purely neural elimination term learns it;
* :func:`michaelis_menten_fits` — data with Michaelis–Menten elimination (``michaelis_menten_rhs``),
  fitted on a train split by (a) the misspecified linear mechanistic model (FOCE-I) and (b) linear
  elimination times a neural factor, ``CL(C) = CL·exp(NN(C/10))``: weights, θ and σ by
  :func:`pmxgen.estimation.pretrain.pretrain_population` (η = 0, L-BFGS, weight decay 1), then the
  weights frozen and θ, Ω, σ by FOCE-I. (FOCE-I over the weights too was tried and was far too
  slow: 278 s capped at 20 iterations without overtaking the linear model.)
* :func:`one_compartment_neural_fit` — a purely neural elimination ``dA/dt = −0.1·A·exp(NN(C))``
  trained at η = 0 on one-compartment IV data without IIV (population predictions).
"""
from __future__ import annotations

import numpy as np
import torch

import pmxgen
from pmxgen.estimation.pretrain import pretrain_population
from pmxgen.models import NLMEModel
from pmxgen.structural import NeuralODEModel, ODEModel, michaelis_menten_rhs, mlp

OBS_TIMES = (0.5, 2.0, 6.0, 12.0, 24.0)
SOLVER = dict(rtol=1e-6, atol=1e-8, max_steps=500)   # extreme trial weights fail fast (penalised)


def _design(n: int, start_id: int, seed: int):
    rng = np.random.default_rng(seed)
    doses = rng.choice([50.0, 100.0, 200.0], size=n)
    return pmxgen.design_frame(n, doses=[{"time": 0.0, "amt": doses}], obs_times=OBS_TIMES, start_id=start_id)


def _split(structural, theta, omega, prop, n_train, n_test, seed):
    train = pmxgen.simulate_dataset(structural, _design(n_train, 1, seed), theta=theta, omega=omega,
                                    error={"proportional": prop}, seed=seed)
    test = pmxgen.simulate_dataset(structural, _design(n_test, 1001, seed + 1), theta=theta, omega=omega,
                                   error={"proportional": prop}, seed=seed + 1)
    return train, test


def one_compartment_split(n_train: int = 24, n_test: int = 8, seed: int = 11):
    """Train and held-out :class:`SimulatedData` of ``1cmt_iv`` (CL 2, V 20; ω² 0.1 on both; 5 % proportional)."""
    return _split("1cmt_iv", {"CL": 2.0, "V": 20.0}, {"CL": 0.1, "V": 0.1}, 0.05, n_train, n_test, seed)


def neural_elimination_model(hidden: int = 6, seed: int = 0) -> NLMEModel:
    """``dA/dt = V·exp(η_K)·(NN(C/5) − NN(0))``: elimination by a network only (no mechanistic term), η on its
    output and on V; subtracting NN(0) keeps "no drug, no elimination" whatever the weights."""
    net = mlp((1, hidden, 1), seed=seed)

    def rhs(t, a, p, nn):
        v = p["V"].unsqueeze(-1)
        out = nn["elimination"](torch.cat([a / v / 5.0, torch.zeros_like(a[:1])], dim=0))
        return v * p["S_K"].unsqueeze(-1) * (out[:-1] - out[-1:])

    structural = NeuralODEModel(rhs, ("central",), ("V", "S_K"), networks={"elimination": net}, scale={1: "V"},
                                name="1cmt_iv_neural_elimination", **SOLVER)

    def individual(theta, eta, cov):
        return {"V": theta["V"] * torch.exp(eta["V"]), "S_K": torch.exp(eta["S_K"])}

    return NLMEModel(structural, theta={"V": (0, 15.0)}, omega={"V": 0.1, "S_K": 0.1},
                     error={"kind": "proportional", "init": {"PROP": 0.01}}, individual=individual)


def one_compartment_model() -> NLMEModel:
    """The closed-form model that generated :func:`one_compartment_split`."""
    return NLMEModel(pmxgen.get_model("1cmt_iv"), theta={"CL": (0, 1.5), "V": (0, 15.0)},
                     omega={"CL": 0.1, "V": 0.1}, error={"kind": "proportional", "init": {"PROP": 0.01}})


# ------------------------------------------------------------------ one compartment, network-only elimination
ONE_CMT_THETA = {"CL": 2.0, "V": 20.0}
DENSE_TIMES = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0)


def _dose_design(doses, start_id: int):
    return pmxgen.design_frame(len(doses), doses=[{"time": 0.0, "amt": np.asarray(doses, dtype=float)}],
                               obs_times=DENSE_TIMES, start_id=start_id)


def one_compartment_neural_fit(*, train_doses=(50.0, 100.0, 200.0, 50.0, 100.0, 200.0),
                               test_doses=(30.0, 70.0, 140.0, 250.0), prop: float = 0.01, max_iter: int = 200,
                               seed: int = 3) -> dict:
    """Train a network-only elimination on ``1cmt_iv`` data (CL 2, V 20, **no IIV**, ``prop`` proportional error).

    Model ``dA/dt = −0.1·A·exp(NN(C))``, ``C = A/V`` (NN 1-8-1 tanh, last layer zero, so it
    starts at k = 0.1/h; no mechanistic elimination term), θ = V, proportional error, fitted
    by :func:`pretrain_population` (L-BFGS at η = 0, i.e. population predictions).
    Returns ``{"model", "structural", "fitted" (re-initialised NLMEModel), "V" (fitted),
    "test" (SimulatedData of the held-out doses, error-free ``ipred`` = the true predictions)}``.
    """
    train = pmxgen.simulate_dataset("1cmt_iv", _dose_design(train_doses, 1), theta=ONE_CMT_THETA,
                                    error={"proportional": prop}, seed=seed)
    test = pmxgen.simulate_dataset("1cmt_iv", _dose_design(test_doses, 101), theta=ONE_CMT_THETA, seed=seed + 1)
    net = mlp((1, 8, 1), seed=0)

    def rhs(t, a, p, nn):
        c = a / p["V"].unsqueeze(-1)
        return -0.1 * a * torch.exp(nn["k"](c))

    structural = NeuralODEModel(rhs, ("central",), ("V",), networks={"k": net}, scale={1: "V"}, rtol=1e-8,
                                atol=1e-10, name="1cmt_iv_network_elimination")
    model = NLMEModel(structural, theta={"V": (0, 10.0)}, omega={},
                      error={"kind": "proportional", "init": {"PROP": 0.05}})
    fitted = pretrain_population(model, train.dataset, max_iter=max_iter)
    v = fitted.parameter_set.theta[0].init
    return {"model": model, "structural": structural, "fitted": fitted, "V": v, "test": test}


# ------------------------------------------------------------------ Michaelis–Menten
MM_THETA = {"VM": 8.0, "KM": 2.0, "V": 10.0}
MM_OMEGA = {"VM": 0.1, "V": 0.1}
MM_TIMES = (0.5, 2.0, 4.0, 8.0, 12.0)
MM_SOLVER = dict(rtol=1e-5, atol=1e-7, max_steps=300)
CONC_SCALE = 10.0


def _mm_design(n: int, start_id: int, seed: int):
    doses = np.random.default_rng(seed).choice([25.0, 100.0, 300.0], size=n)
    return pmxgen.design_frame(n, doses=[{"time": 0.0, "amt": doses}], obs_times=MM_TIMES, start_id=start_id)


def michaelis_menten_data(n_train: int = 16, n_test: int = 12, seed: int = 5):
    """Train / held-out SimulatedData: MM elimination (VM 8, KM 2, V 10; ω² 0.1 on VM and V; 10 % proportional).

    Doses 25, 100, 300 (C0 ≈ 2.5, 10, 30 against KM 2: strong saturation)."""
    mm = ODEModel(michaelis_menten_rhs, ("central",), ("VM", "KM", "V"), scale={1: "V"}, name="1cmt_iv_mm",
                  **MM_SOLVER)
    train = pmxgen.simulate_dataset(mm, _mm_design(n_train, 1, seed), theta=MM_THETA, omega=MM_OMEGA,
                                    error={"proportional": 0.1}, seed=seed)
    test = pmxgen.simulate_dataset(mm, _mm_design(n_test, 1001, seed + 1), theta=MM_THETA, omega=MM_OMEGA,
                                   error={"proportional": 0.1}, seed=seed + 1)
    return train, test


def michaelis_menten_fits(*, n_train: int = 16, n_test: int = 12, seed: int = 5, hidden: int = 4,
                          pretrain_iter: int = 150, weight_decay: float = 1.0, max_iter: int = 30) -> dict:
    """Fits of the linear model and of linear × neural elimination on a Michaelis–Menten train split.

    (a) ``1cmt_iv`` (η on CL and V), FOCE-I. (b) ``dA/dt = −CL·C·exp(NN(C/10))`` (NN
    1-``hidden``-1, zero last layer: exactly the linear model at first; η on CL and V):
    :func:`pretrain_population` of CL, V, σ and the weights (``weight_decay`` on the weights),
    then the weights frozen (a plain :class:`ODEModel` closing over the trained network) and
    θ, Ω, σ by FOCE-I from the linear fit's Ω (``max_iter``).

    Returns ``{"linear", "neural" (FitResult), "linear_model", "neural_model" (NLMEModel of the
    frozen network), "network", "train", "test" (SimulatedData)}``.
    """
    train, test = michaelis_menten_data(n_train, n_test, seed)
    error = {"kind": "proportional", "init": {"PROP": 0.02}}
    linear = NLMEModel(pmxgen.get_model("1cmt_iv"), theta={"CL": (0, 2.0), "V": (0, 10.0)},
                       omega={"CL": 0.1, "V": 0.1}, error=error)
    linear_fit = pmxgen.fit(linear, train.dataset, method="focei", covariance=None)
    net = mlp((1, hidden, 1), seed=0)

    def neural_rhs(t, a, p, nn):
        c = a / p["V"].unsqueeze(-1)
        return -p["CL"].unsqueeze(-1) * c * torch.exp(nn["nn"](c / CONC_SCALE))

    structural = NeuralODEModel(neural_rhs, ("central",), ("CL", "V"), networks={"nn": net}, scale={1: "V"},
                                name="1cmt_iv_linear_times_nn", **MM_SOLVER)
    start = {"CL": (0, linear_fit.estimates["CL"]), "V": (0, linear_fit.estimates["V"])}
    pretrained = pretrain_population(NLMEModel(structural, theta=start, omega={"CL": 0.1, "V": 0.1}, error=error),
                                     train.dataset, max_iter=pretrain_iter, weight_decay=weight_decay)
    net.requires_grad_(False)

    def frozen_rhs(t, a, p):
        c = a / p["V"].unsqueeze(-1)
        return -p["CL"].unsqueeze(-1) * c * torch.exp(net(c / CONC_SCALE))

    frozen = ODEModel(frozen_rhs, ("central",), ("CL", "V"), scale={1: "V"}, name="1cmt_iv_linear_times_trained_nn",
                      **MM_SOLVER)
    neural = NLMEModel(frozen, theta={t.name: (0, t.init) for t in pretrained.parameter_set.theta},
                       omega={"CL": linear_fit.estimates["OMEGA(CL)"], "V": linear_fit.estimates["OMEGA(V)"]},
                       error=error)
    neural_fit = pmxgen.fit(neural, train.dataset, method="focei", covariance=None, max_iter=max_iter)
    return {"linear": linear_fit, "neural": neural_fit, "linear_model": linear, "neural_model": neural,
            "network": net, "train": train, "test": test}
