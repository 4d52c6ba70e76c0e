"""Wall time of variational EM against pmxgen FOCE-I on the 1000-subject simulated set, in one run.

Problem: ``sim_1cmt_oral_1000`` (1000 subjects, 8000 observations), one-compartment oral,
IIV on KA, CL and V, combined error (the model of ``bench_fit.py``).

Timed (one torch thread each, whole ``fit`` call):

* FOCE-I with its covariance step (the reference: ratio 1);
* VEM, amortized posterior (encoder), with and without per-subject refinement;
* VEM, per-subject Gaussian posteriors.

VEM runs skip their own (linearisation) covariance step so that the ratio measures the
estimation; their importance-sampling −2LL (with the variational posterior as proposal) is
printed next to FOCE-I's, so that speed and accuracy can be read together. The ratio printed
is VEM / FOCE-I: below 1 means VEM is faster.

Usage: ``python benchmarks/bench_vem.py [--max-iter 1000] [--skip-gaussian]``
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import pmxgen
from pmxgen.estimation.variational import VariationalEM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit import oral_1000_model  # noqa: E402


def _timed(make_fit):
    start = time.perf_counter()
    fit = make_fit()
    return fit, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--refine-iter", type=int, default=300)
    parser.add_argument("--skip-gaussian", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = pmxgen.datasets.load("sim_1cmt_oral_1000")
    model = oral_1000_model()
    print(f"sim_1cmt_oral_1000: {data.n_subjects} subjects, {data.n_observations} observations; one torch thread")

    focei, t_focei = _timed(lambda: pmxgen.fit(model, data, method="focei", covariance="sandwich",
                                               importance_samples=300))
    rows = [("FOCE-I (+ covariance step)", focei, t_focei)]
    common = dict(max_iter=args.max_iter, covariance=None, importance_samples=300, posterior_draws=100, seed=0)
    runs = [("VEM amortized", dict(posterior="amortized", learning_rate=0.01, final_learning_rate=0.0005)),
            (f"VEM amortized + {args.refine_iter} refinement steps",
             dict(posterior="amortized", learning_rate=0.01, final_learning_rate=0.0005,
                  refine_iter=args.refine_iter))]
    if not args.skip_gaussian:
        runs.append(("VEM Gaussian", dict(posterior="gaussian")))
    for label, options in runs:
        fit, seconds = _timed(lambda: VariationalEM(**common, **options).fit(model, data))
        rows.append((label, fit, seconds))

    print(f"\n{'method':44s} {'seconds':>8s} {'ratio':>7s} {'IS -2LL':>12s} {'MC SE':>6s} {'ELBO':>12s}  status")
    for label, fit, seconds in rows:
        is_ = fit.importance_sampling or {}
        elbo = f"{fit.elbo['elbo']:12.2f}" if fit.elbo else f"{'':12s}"
        print(f"{label:44s} {seconds:8.1f} {seconds / t_focei:7.2f} {is_.get('minus2ll', float('nan')):12.2f} "
              f"{is_.get('se', float('nan')):6.2f} {elbo}  {fit.status}")
    print("\nratio = wall time / FOCE-I's (below 1: faster than FOCE-I)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
