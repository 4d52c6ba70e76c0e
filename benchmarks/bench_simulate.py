"""Counterfactual dosing throughput: pmxgen (batched torch) vs a per-subject numpy/scipy loop.

``python benchmarks/bench_simulate.py [--n 1000000] [--loop-subjects 1000] [--threads 1]``

Both compute the same things for every virtual subject × regimen of the theophylline run
(1-cmt oral, IIV on KA and CL; 4 one-week regimens): exact AUC of the first and last dosing
interval, Cmax/tmax and Cmin refined between grid points, Ctrough, and the time above a
threshold with its crossings solved on the model, then PTA. pmxgen runs all ``--n`` subjects
(chunked, exposures not kept); the loop runs ``--loop-subjects`` subjects (the same η as
pmxgen's first subjects, to check agreement) and its time is extrapolated linearly to ``--n``.
A CUDA run is added where a GPU is present.
"""
from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar

import pmxgen
from pmxgen.simulation import parse_regimen, simulate_population
from pmxgen.simulation.schedule import regimen_arm

REGIMENS = ["320 mg q12h x14", "640 mg q24h x7", "4.5 mg/kg q12h x14", "loading 640 mg then 320 mg q12h x13"]
THRESHOLD = 4.0
TARGET = "cmin[last]>=3"


def _loop(run, regimens, eta, wt, points_per_interval=24):
    """Per subject and regimen: numpy closed form on the grid, exact AUC, scipy refinement of extremes."""
    ka_t, cl_t, v = (run.fit.estimates[k] for k in ("KA", "CL", "V"))
    arms = [regimen_arm(r, points_per_interval=points_per_interval, within_windows=True) for r in regimens]
    out = []
    for i in range(len(eta)):
        ka, cl = ka_t * math.exp(eta[i, 0]), cl_t * math.exp(eta[i, 1])
        k = cl / v
        for reg, arm in zip(regimens, arms):
            times = np.array([e.time for e in reg.events])
            amts = np.array([e.amount * (wt[i] if e.per == "kg" else 1.0) for e in reg.events])
            coef = amts * ka / (v * (ka - k))

            def conc(t, before=False):
                x = t - times
                on = (x > 0) | ((x == 0) & (not before))      # a pre-dose point does not see its dose
                x = np.where(on, x, 0.0)
                return float(np.sum(np.where(on, coef * (np.exp(-k * x) - np.exp(-ka * x)), 0.0)))

            def cum(t):
                x = np.clip(t - times, 0.0, None)
                return np.sum(coef * ((1 - np.exp(-k * x)) / k - (1 - np.exp(-ka * x)) / ka))
            grid = [(t, p) for t, p in zip(arm.time, arm.pre)]
            values = np.array([conc(t, p) for t, p in grid])
            res = {}
            for w, (a, b) in arm.windows.items():
                i0, i1 = arm.window_index(w)
                tw, cw = arm.time[i0:i1 + 1], values[i0:i1 + 1]
                im, jn = int(np.argmax(cw)), int(np.argmin(cw))
                best = minimize_scalar(lambda t: -conc(t), bounds=(tw[max(im - 1, 0)], tw[min(im + 1, len(tw) - 1)]),
                                       method="bounded", options={"xatol": 1e-10})
                worst = minimize_scalar(conc, bounds=(tw[max(jn - 1, 0)], tw[min(jn + 1, len(tw) - 1)]),
                                        method="bounded", options={"xatol": 1e-10})
                above = 0.0
                for t0, t1, y0, y1 in zip(tw[:-1], tw[1:], cw[:-1], cw[1:]):
                    if t1 <= t0:
                        continue
                    if y0 >= THRESHOLD and y1 >= THRESHOLD:
                        above += t1 - t0
                    elif (y0 >= THRESHOLD) != (y1 >= THRESHOLD):
                        root = brentq(lambda t: conc(t) - THRESHOLD, t0, t1, xtol=1e-12)
                        above += (root - t0) if y0 >= THRESHOLD else (t1 - root)
                res[w] = {"auc": cum(b) - cum(a), "cmax": max(cw.max(), -best.fun), "cmin": min(cw.min(), worst.fun),
                          "ctrough": cw[-1], "t_above": above}
            out.append(res)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--loop-subjects", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=8192)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    run = pmxgen.load_run(pmxgen.fit(model, data, method="foce", covariance=None, cpu_threads=1))
    regimens = [parse_regimen(r) for r in REGIMENS]
    m = args.loop_subjects

    def ours(device, n, keep):
        t0 = time.perf_counter()
        res = simulate_population(run, regimens, n=n, seed=1, threshold=THRESHOLD, targets=[TARGET],
                                  keep_profiles=False, keep_exposures=keep, chunk_size=args.chunk_size,
                                  device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        return res, time.perf_counter() - t0

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {len(regimens)} regimens: "
          + "; ".join(REGIMENS))
    res, t_ours = ours("cpu", args.n, m)
    rate = args.n * len(regimens) / t_ours
    print(f"pmxgen CPU: {args.n} subjects x {len(regimens)} regimens in {t_ours:.1f} s -> "
          f"{rate:.3g} subject-regimens/s")
    print(f"peak resident memory so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(res.pta().to_string(index=False))
    # the loop on the first m subjects (their η and WT from pmxgen's subjects table)
    sub = res.subjects.sort_values("subject").head(m)
    eta = sub[["ETA(KA)", "ETA(CL)"]].to_numpy()
    t0 = time.perf_counter()
    loop = _loop(run, regimens, eta, sub["WT"].to_numpy())
    t_loop = time.perf_counter() - t0
    loop_rate = m * len(regimens) / t_loop
    print(f"per-subject numpy/scipy loop: {m} subjects x {len(regimens)} regimens in {t_loop:.1f} s -> "
          f"{loop_rate:.3g} subject-regimens/s (extrapolated to {args.n}: {args.n / m * t_loop:.0f} s)")
    print(f"ratio pmxgen / loop: {rate / loop_rate:.1f}x")
    exp = res.exposures.set_index(["regimen", "window", "subject"])
    worst = {}
    for j, reg in enumerate(regimens):
        for i in range(m):
            for w, vals in loop[i * len(regimens) + j].items():
                row = exp.loc[(reg.label, w, i + 1)]
                for key, val in vals.items():
                    d = abs(row[key] - val) / max(abs(val), 1e-12)
                    worst[key] = max(worst.get(key, 0.0), d)
    print("max relative difference pmxgen vs loop: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    if torch.cuda.is_available():
        ours("cuda", 10_000, False)      # warm-up
        _, t_gpu = ours("cuda", args.n, False)
        print(f"pmxgen CUDA ({torch.cuda.get_device_name()}): {args.n * len(regimens) / t_gpu:.3g} "
              f"subject-regimens/s ({t_gpu:.1f} s)")
    else:
        print("no CUDA device: GPU figures not measured")


if __name__ == "__main__":
    main()
