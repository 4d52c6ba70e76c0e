"""Wall time of NLME by score (Fisher identity) against SAEM and FOCE-I on 1000 subjects, in one run.

Problem: ``sim_1cmt_oral_1000`` (1000 subjects, 8000 observations), one-compartment oral with
IIV on KA, CL and V and combined error (the model of ``bench_fit.py``). Timed (one torch
thread each, whole ``fit`` call, each with its own standard errors):

* FOCE-I with its covariance step (sandwich) — the reference, ratio 1;
* SAEM, default settings (300 + 200 iterations, Louis SEs, importance-sampling −2LL);
* ``method="score"``, default settings (400 iterations, Louis SEs, importance-sampling −2LL).

The importance-sampled −2LL and the largest difference of the estimates from FOCE-I's (in
FOCE-I standard errors) are printed next to the times, so that speed and accuracy are read
together. The ratio printed is method / FOCE-I: below 1 means faster than FOCE-I.

Usage: ``python benchmarks/bench_score.py [--subjects 1000]``
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import pmxgen

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit import oral_1000_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000, help="first N subjects of sim_1cmt_oral_1000")
    args = parser.parse_args(argv)
    data = pmxgen.datasets.load("sim_1cmt_oral_1000")
    if args.subjects < data.n_subjects:
        frame = data.to_frame()
        data = pmxgen.read_nonmem(frame[frame["ID"].isin(sorted(frame["ID"].unique())[:args.subjects])])
    print(f"sim_1cmt_oral_1000: {data.n_subjects} subjects, {data.n_observations} observations; one torch thread")
    runs = {
        "FOCE-I (sandwich SEs)": dict(method="focei", importance_samples=1000, seed=1),
        "SAEM (Louis SEs)": dict(method="saem", seed=1),
        "score (Louis SEs)": dict(method="score", seed=1),
    }
    fits, seconds = {}, {}
    for label, options in runs.items():
        model = oral_1000_model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            fits[label] = pmxgen.fit(model, data, **options)
            seconds[label] = time.perf_counter() - started
    reference = fits["FOCE-I (sandwich SEs)"]
    print(f"\n{'method':<24} {'seconds':>8} {'ratio':>7} {'IS -2LL':>11} {'MC SE':>6} {'max |d|/SE':>10}  status")
    for label, fit in fits.items():
        worst = max(abs(fit.estimates[n] - reference.estimates[n]) / reference.se[n] for n in reference.estimated_names)
        ll = fit.importance_sampling or {}
        print(f"{label:<24} {seconds[label]:8.1f} {seconds[label] / seconds['FOCE-I (sandwich SEs)']:7.2f} "
              f"{ll.get('minus2ll', float('nan')):11.2f} {ll.get('se', float('nan')):6.2f} {worst:10.2f}  {fit.status}")
    print("\nratio = wall time / FOCE-I's; max |d|/SE = largest |estimate - FOCE-I estimate| / FOCE-I SE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
