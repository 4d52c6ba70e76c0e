"""Neural-ODE FOCE-I fits against closed-form FOCE-I fits of the same size, and backprop vs adjoint, in one run.

Printed (one torch thread, wall and CPU seconds of pretraining + ``fit``, no covariance step):

1. **Gradients**: predictions + gradient (sum of squared predictions with respect to every
   network weight and V) of a one-compartment neural ODE (``dA/dt = V·NN(A/V)``, 1-16-1 tanh)
   on the pmxNODE data (20 subjects, 6 observations each) by backpropagation through pmxgen's
   solver and by the adjoint method (``torchdiffeq.odeint_adjoint``); median of 5 repeats.
2. **pmxNODE example 1** (20 subjects): pmxNODE's neural ODE (``dA/dt = exp(η)·NN_c(A) +
   DOSE·NN_t(t)``, η on V and on NN_c's output, proportional error; naive pooled pretraining,
   then FOCE-I) against the one-compartment IV closed form with η on CL and V.
3. **1000 simulated subjects** (``--quick``: 100): data simulated from a one-compartment IV
   model (5 samples each), fitted by a neural elimination model (``dA/dt = V·exp(η)·NN(C)``,
   η on V and on the network output) and by the closed form; ratio neural / closed form.

``--max-iter`` caps the neural FOCE-I iterations (the status is printed: a capped fit is
"max_iterations"); the pretraining runs ``--pretrain-iter`` L-BFGS iterations.

Usage: ``python benchmarks/bench_neural_ode.py [--quick] [--max-iter 300] [--pretrain-iter 60]``
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import pmxgen
from pmxgen.estimation.pretrain import pretrain_population
from pmxgen.structural import NeuralODEModel, mlp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vignettes"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "estimation"))
from neural_ode import one_compartment_model as pmxnode_one_compartment, pmxnode_model  # noqa: E402
from neural_models import neural_elimination_model, one_compartment_model  # noqa: E402


def _timed(make):
    """``(result, (wall seconds, CPU seconds))``: on a shared machine the CPU time is the steadier figure."""
    start, cpu = time.perf_counter(), time.process_time()
    out = make()
    return out, (time.perf_counter() - start, time.process_time() - cpu)


def gradient_timings(repeats: int = 5) -> dict:
    """Median CPU seconds of predictions + gradient by backprop and by the adjoint."""
    data = pmxgen.datasets.load("pmxnode_example1")
    out = {}
    for gradient in ("backprop", "adjoint"):
        net = mlp((1, 16, 1), zero_last=False, seed=1)

        def rhs(t, a, p, nn):
            v = p["V"].unsqueeze(-1)
            return v * nn["nn"](a / v)

        model = NeuralODEModel(rhs, ("central",), ("V",), networks={"nn": net}, scale={1: "V"},
                               gradient=gradient, rtol=1e-6, atol=1e-8)
        times = []
        for _ in range(repeats):
            v = torch.full((data.n_subjects,), 2.0, dtype=torch.float64, requires_grad=True)
            start = time.process_time()
            f = model.predict({"V": v}, data.batch)
            torch.autograd.grad((f * f).sum(), [v, *net.parameters()])
            times.append(time.process_time() - start)
        out[gradient] = statistics.median(times)
    return out


def _neural_fit(model, data, max_iter, pretrain_iter):
    started = pretrain_population(model, data, max_iter=pretrain_iter)
    return pmxgen.fit(started, data, method="focei", covariance=None, max_iter=max_iter)


def _row(label, fit, seconds, reference_seconds):
    k = fit.n_estimated + fit.n_network_weights
    print(f"  {label:<32} wall {seconds[0]:7.1f} s (ratio {seconds[0] / reference_seconds[0]:6.1f})  "
          f"CPU {seconds[1]:7.1f} s (ratio {seconds[1] / reference_seconds[1]:6.1f})  OFV {fit.ofv:10.2f}  "
          f"parameters {k:3d}  {fit.status} ({len(fit.history) - 1} iterations)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 simulated subjects instead of 1000")
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--pretrain-iter", type=int, default=60)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    g = gradient_timings()
    print(f"gradients (pmxNODE data, 1-16-1 network, CPU): backprop {g['backprop']:.3f} s, adjoint {g['adjoint']:.3f} s, "
          f"adjoint / backprop {g['adjoint'] / g['backprop']:.1f}", flush=True)

    data = pmxgen.datasets.load("pmxnode_example1")
    print(f"pmxnode_example1: {data.n_subjects} subjects, {data.n_observations} observations")
    ref, ref_s = _timed(lambda: pmxgen.fit(pmxnode_one_compartment(), data, method="focei", covariance=None))
    _row("1cmt IV closed form, FOCE-I", ref, ref_s, ref_s)
    fit, s = _timed(lambda: _neural_fit(pmxnode_model(), data, args.max_iter, args.pretrain_iter))
    _row("pmxNODE neural ODE, FOCE-I", fit, s, ref_s)

    n = 100 if args.quick else 1000
    design = pmxgen.design_frame(n, doses=[{"time": 0.0, "amt": 100.0}], obs_times=[0.5, 2.0, 6.0, 12.0, 24.0])
    sim = pmxgen.simulate_dataset("1cmt_iv", design, theta={"CL": 2.0, "V": 20.0}, omega={"CL": 0.1, "V": 0.1},
                                  error={"proportional": 0.05}, seed=3)
    print(f"simulated 1cmt IV: {n} subjects, {sim.dataset.n_observations} observations")
    ref, ref_s = _timed(lambda: pmxgen.fit(one_compartment_model(), sim.dataset, method="focei", covariance=None))
    _row("1cmt IV closed form, FOCE-I", ref, ref_s, ref_s)
    fit, s = _timed(lambda: _neural_fit(neural_elimination_model(), sim.dataset, args.max_iter,
                                        args.pretrain_iter))
    _row("neural elimination ODE, FOCE-I", fit, s, ref_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
