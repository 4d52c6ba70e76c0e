"""Derivatives of the predictions for FOCE-I and Laplace: Taylor expansion against autograd, in one run.

For each problem, at the initial estimates, both routes (``derivatives="expansion"`` and
``"autograd"``, see ``pmxgen.estimation.expansion``) time

* the EBEs for all subjects from η = 0 (batched Newton to a decrement of 1e-8), and
* one outer evaluation of FOCE-I (second-order expansion) and of Laplace (third-order
  expansion): the objective at φ with its gradient (EBEs re-solved from the modes, implicit
  differentiation),

and print the time ratio expansion / autograd (below 1: the expansion is faster) and the
largest relative difference of the two gradients. Problems: ``sim_mm_oral`` (ODE,
Michaelis-Menten, 100 subjects), ``theophylline`` (closed form, 12 subjects) and
``sim_1cmt_oral_1000`` (closed form, 1000 subjects). ``pmxgen.fit``'s default
(``derivatives="auto"``) expands ODE models and uses autograd for closed forms, which is what
these ratios support.

Usage: ``python benchmarks/bench_derivatives.py [--repeats 2] [--skip-ode]``
"""
from __future__ import annotations

import argparse
import time

import torch

import pmxgen
from pmxgen.estimation import solve_ebes
from pmxgen.estimation.classical import approximate_objective
from pmxgen.models import build_model


def problems(skip_ode: bool):
    out = []
    if not skip_ode:
        data = pmxgen.datasets.load("sim_mm_oral")
        out.append(("sim_mm_oral (ODE)", build_model("1cmt_oral_mm", data, error="combined", iiv=("KA", "VM", "V")),
                    data))
    data = pmxgen.datasets.load("theophylline")
    out.append(("theophylline", build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL")), data))
    data = pmxgen.datasets.load("sim_1cmt_oral_1000")
    out.append(("sim_1cmt_oral_1000", build_model("1cmt_oral", data, error="combined", iiv=("KA", "CL", "V")), data))
    return out


METHODS = ("focei", "laplace")


def time_route(model, data, how: str, repeats: int):
    """(best EBE time, {method: (best objective-with-gradient time, gradient)}) of route ``how``."""
    batch = data.batch
    ps = model.parameter_set
    phi0 = ps.initial_natural(dtype=batch.dtype, device=batch.device)
    values = ps.unpack(phi0)
    eta0 = torch.zeros(batch.n_subjects, len(model.eta_names(batch)), dtype=batch.dtype, device=batch.device)
    best_ebe = float("inf")
    outer = {method: (float("inf"), None) for method in METHODS}
    for _ in range(repeats):
        start = time.perf_counter()
        modes = solve_ebes(model, values, batch, eta0, tol=1e-8, derivatives=how).eta
        best_ebe = min(best_ebe, time.perf_counter() - start)
        for method in METHODS:
            objective = approximate_objective(model, batch, method, derivatives=how)
            phi = phi0.clone().requires_grad_(True)
            start = time.perf_counter()
            total, _ = objective(phi, modes)
            (grad,) = torch.autograd.grad(total, phi)
            outer[method] = (min(outer[method][0], time.perf_counter() - start), grad)
    return best_ebe, outer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timings per route (the minimum is reported)")
    parser.add_argument("--skip-ode", action="store_true", help="leave out the ODE problem (the slow one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread")
    for name, model, data in problems(args.skip_ode):
        auto_ebe, auto = time_route(model, data, "autograd", args.repeats)
        expa_ebe, expa = time_route(model, data, "expansion", args.repeats)
        print(f"\n== {name}: {data.n_subjects} subjects, {data.n_observations} observations ==")
        print(f"EBEs from 0:          autograd {auto_ebe:8.3f} s   expansion {expa_ebe:8.3f} s   "
              f"ratio expansion/autograd {expa_ebe / auto_ebe:.3f}")
        for method in METHODS:
            (t_auto, g_auto), (t_expa, g_expa) = auto[method], expa[method]
            diff = float(((g_expa - g_auto).abs() / g_auto.abs().clamp_min(1e-8 * float(g_auto.abs().max()))).max())
            print(f"{method:7s} objective + gradient: autograd {t_auto:8.3f} s   expansion {t_expa:8.3f} s   "
                  f"ratio expansion/autograd {t_expa / t_auto:.3f}; largest relative gradient difference {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
