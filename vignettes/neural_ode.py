"""Vignette: a low-dimensional neural ODE (pmxNODE example 1) against a one-compartment model, by FOCE-I.

Data: ``pmxnode_example1`` (20 subjects, one IV bolus each, 120 concentrations; example 1
of the R package pmxNODE). Two population models, both with proportional residual error:

* **neural ODE** (pmxNODE's): ``dA/dt = exp(η_C)·NN_c(A/10) + DOSE·NN_t(t/24)``, ``Cc = A/V``,
  ``V = θ_V·exp(η_V)``; ``NN_c`` and ``NN_t`` are 1-5-1 tanh networks whose last layers start
  at zero (so the model starts as "nothing happens": Cc = DOSE/V); η_C scales NN_c's output
  (a random effect on a network output). The 32 weights are population parameters, fitted
  with θ, Ω and σ; the fit starts from a naive pooled pretraining (η = 0) of θ, σ and the
  weights (:func:`pmxgen.estimation.pretrain.pretrain_population`), then runs FOCE-I.
* **one-compartment IV** (``pmxgen.get_model("1cmt_iv")``), η on CL and V, FOCE-I.

Compared: OFV, the number of parameters (network weights counted), AIC = −2LL + 2·k, and
two figures per model: a VPC and the individual fits (written by :func:`figures`).

Expected (asserted by ``tests/test_neural_ode_vignette.py`` on the quick mode: 40 pretraining
and 20 FOCE-I iterations): the one-compartment fit converges; the neural fit ends with a finite
OFV and a status that is not "failed" (capped: "max_iterations"); starting from flat curves,
it has learned an elimination (median population prediction at the last sample below half the
one at time 0); FOCE-I lowered its OFV from the pretrained start; and its 32 weights cost it
the AIC comparison.

Full mode (``python vignettes/neural_ode.py``, run 2026-12-03 on a loaded 2-core machine,
205 CPU seconds): the neural ODE reaches OFV −85.8 after 500 FOCE-I iterations (still
"max_iterations": the weights keep creeping), the one-compartment model −74.1 (converged,
30 iterations); AIC 206.7 (36 parameters) against 156.5 (5 parameters). The neural ODE
discovers a first-order-like elimination (PRED at 24 h / PRED at 0: 0.100 against 0.092)
and fits 12 OFV points better, but nothing in these data needs more than the mechanistic
model: the one-compartment model wins on AIC.

Run: ``python vignettes/neural_ode.py [--quick] [--figures DIR]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

import pmxgen
from pmxgen.estimation.pretrain import pretrain_population
from pmxgen.models import NLMEModel
from pmxgen.structural.neural import pmxnode_example1

DATA = "pmxnode_example1"


def pmxnode_model(hidden: int = 5, seed: int = 0) -> NLMEModel:
    """pmxNODE example 1: η on V and on NN_c's output (``S_C = exp(η)``); NN_t's input scale fixed at 1."""
    structural = pmxnode_example1(hidden=hidden, seed=seed, rtol=1e-6, atol=1e-8)

    def individual(theta, eta, cov):
        return {"V": theta["V"] * torch.exp(eta["V"]), "DOSE": cov["DOSE"], "S_C": torch.exp(eta["S_C"]),
                "S_T": torch.ones_like(eta["V"])}

    return NLMEModel(structural, theta={"V": (0, 2.0)}, omega={"V": 0.1, "S_C": 0.1},
                     error={"kind": "proportional", "init": {"PROP": 0.04}}, individual=individual,
                     name="pmxNODE example 1 neural ODE")


def one_compartment_model() -> NLMEModel:
    """One-compartment IV bolus, η on CL and V, proportional error."""
    return NLMEModel(pmxgen.get_model("1cmt_iv"), theta={"CL": (0, 0.2), "V": (0, 2.0)}, omega={"CL": 0.1, "V": 0.1},
                     error={"kind": "proportional", "init": {"PROP": 0.04}}, name="1cmt IV")


def _values(model: NLMEModel, fit):
    ps = model.parameter_set
    return ps.unpack(torch.tensor([fit.estimates[n] for n in ps.names], dtype=torch.float64))


def _population_curve(model: NLMEModel, fit, data) -> np.ndarray:
    """PRED (η = 0) of every subject at its observation times, ``[N, J]``."""
    with torch.no_grad():
        eta = torch.zeros(data.n_subjects, len(model.eta_names(data.batch)), dtype=torch.float64)
        return model.predict(eta, _values(model, fit), data.batch).numpy()


def fits(quick: bool = False) -> dict:
    """``{label: (model, FitResult, seconds)}`` for the neural ODE and the one-compartment model."""
    data = pmxgen.datasets.load(DATA)
    out = {}
    start = time.perf_counter()
    model = pmxnode_model()
    started = pretrain_population(model, data, max_iter=40 if quick else 100)
    fit = pmxgen.fit(started, data, method="focei", covariance=None, max_iter=20 if quick else 500)
    out["NEURAL_ODE"] = (started, fit, time.perf_counter() - start)
    start = time.perf_counter()
    model = one_compartment_model()
    fit = pmxgen.fit(model, data, method="focei", covariance=None)
    out["1CMT_IV"] = (model, fit, time.perf_counter() - start)
    return out


def compare(quick: bool = False, results: dict | None = None) -> pd.DataFrame:
    """One row per model: status, OFV (and at the start), −2LL, parameters (named, weights, total), AIC,
    PRED decline, seconds."""
    data = pmxgen.datasets.load(DATA)
    results = results or fits(quick)
    rows = []
    obs = data.batch.obs
    last = obs.mask.sum(1) - 1
    for label, (model, fit, seconds) in results.items():
        k = fit.n_parameters
        pred = _population_curve(model, fit, data)
        first, final = pred[:, 0], pred[np.arange(data.n_subjects), last.numpy()]
        rows.append({"model": label, "status": fit.status, "ofv": fit.ofv, "ofv_start": fit.history[0]["ofv"],
                     "iterations": len(fit.history) - 1, "minus2ll": fit.minus2ll,
                     "n_named": fit.n_estimated, "n_weights": fit.n_network_weights, "n_parameters": k,
                     "aic": fit.aic,
                     # population prediction at the last sample / at the first (time 0), median over subjects
                     "pred_ratio_last_first": float(np.median(final / first)),
                     "seconds": seconds, **{f"est_{n}": v for n, v in fit.estimates.items()}})
    return pd.DataFrame(rows)


def figures(results: dict, folder) -> list:
    """VPC and individual-fit figures (PNG) of every model in ``results`` into ``folder``; their paths."""
    from pathlib import Path

    from pmxgen.diagnostics import compute_vpc, individual_fit_pages, vpc_figure

    data = pmxgen.datasets.load(DATA)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, (model, fit, _) in results.items():
        vpc = compute_vpc(model, _values(model, fit), data, n_simulations=200, seed=1)
        fig = vpc_figure(vpc, title=f"{label}: VPC")
        paths.append(folder / f"{label.lower()}_vpc.png")
        fig.savefig(paths[-1], dpi=80)
        for k, page in enumerate(individual_fit_pages(fit.observations, per_page=20, max_cols=5)):
            paths.append(folder / f"{label.lower()}_individual_{k + 1}.png")
            page.savefig(paths[-1], dpi=80)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--figures", default=None, help="folder for the VPC and individual-fit figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = fits(args.quick)
    table = compare(args.quick, results)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False))
    if args.figures:
        for path in figures(results, args.figures):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
