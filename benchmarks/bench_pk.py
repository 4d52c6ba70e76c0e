"""Throughput of the structural engines: concentrations per second.

Problem: N subjects (default 10^5) × 10 oral doses (q12h) × 20 observation times, one-
compartment oral model with per-subject parameters. Timed in one run:

* pmxgen closed form (superposition, batched) on CPU, and on CUDA when available;
* pmxgen ODE path (torchdiffeq dopri5, rtol 1e-6) on the same problem;
* peers: a straightforward per-subject numpy loop of the same closed form, and scipy's
  ``solve_ivp`` per subject for the ODE, each timed on a sample of subjects and scaled.

Prints values/second and the ratios pmxgen/peer (machines here are noisy: read ratios).

Usage: ``python benchmarks/bench_pk.py [--subjects 100000] [--ode-subjects 100000]``
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import pandas as pd
import torch

import pmxgen
from pmxgen.structural import get_model

N_DOSES, N_TIMES, TAU = 10, 20, 12.0


def template(n_subjects: int) -> pmxgen.Dataset:
    times = np.linspace(0.5, N_DOSES * TAU + 12, N_TIMES)
    rows = []
    for i in range(1, n_subjects + 1):
        rows += [{"ID": i, "TIME": k * TAU, "AMT": 100.0, "DV": float("nan")} for k in range(N_DOSES)]
        rows += [{"ID": i, "TIME": t, "AMT": 0.0, "DV": 1.0} for t in times]
    frame = pd.DataFrame(rows).sort_values(["ID", "TIME", "AMT"], ascending=[True, True, False], kind="stable")
    return pmxgen.read_nonmem(frame.reset_index(drop=True))


def tile(batch, reps: int):
    """The batch repeated ``reps`` times along the subject axis (building 10^5 subjects from text is not the point)."""
    def rep(group):
        changes = {}
        for f in dataclasses.fields(group):
            v = getattr(group, f.name)
            if isinstance(v, torch.Tensor):
                changes[f.name] = v.repeat(reps, *([1] * (v.dim() - 1)))
            elif dataclasses.is_dataclass(v):
                changes[f.name] = rep(v)
        return dataclasses.replace(group, **changes)
    return rep(batch)


def parameters(n: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    typical = {"KA": 1.2, "CL": 3.0, "V": 30.0}
    return {k: (v * torch.exp(0.3 * torch.randn(n, generator=g, dtype=torch.float64))).to(device)
            for k, v in typical.items()}


def timed(fn, repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def numpy_loop(times_list, dose_times, p) -> float:
    """Per-subject loop of the superposed Bateman function (the straightforward peer)."""
    t0 = time.perf_counter()
    for i in range(len(times_list)):
        ka, cl, v = p["KA"][i], p["CL"][i], p["V"][i]
        k = cl / v
        t = times_list[i]
        c = np.zeros_like(t)
        for td in dose_times:
            dt = t - td
            on = dt > 0
            c[on] += 100.0 * ka / (v * (ka - k)) * (np.exp(-k * dt[on]) - np.exp(-ka * dt[on]))
    return time.perf_counter() - t0


def scipy_loop(times_list, dose_times, p) -> float:
    from scipy.integrate import solve_ivp
    t0 = time.perf_counter()
    for i in range(len(times_list)):
        ka, cl, v = p["KA"][i], p["CL"][i], p["V"][i]
        y = np.zeros(2)
        t_all = np.sort(np.concatenate([times_list[i], dose_times]))
        last = 0.0
        for td in dose_times:
            if td > last:
                y = solve_ivp(lambda t, a: [-ka * a[0], ka * a[0] - cl / v * a[1]], (last, td), y, rtol=1e-6,
                              atol=1e-9).y[:, -1]
            y[0] += 100.0
            last = td
        solve_ivp(lambda t, a: [-ka * a[0], ka * a[0] - cl / v * a[1]], (last, t_all[-1]), y, rtol=1e-6,
                  atol=1e-9, t_eval=times_list[i][times_list[i] >= last])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--ode-subjects", type=int, default=100_000)
    ap.add_argument("--peer-sample", type=int, default=2000)
    args = ap.parse_args()
    base = template(100)
    model = get_model("1cmt_oral")
    n = args.subjects
    values = n * N_TIMES
    print(f"problem: {n} subjects x {N_DOSES} doses x {N_TIMES} times = {values:.2e} concentrations; "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    results = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        batch = tile(base.batch, n // 100).to(dev)
        p = parameters(n, dev)

        def run():
            out = model.predict(p, batch)
            if dev == "cuda":
                torch.cuda.synchronize()
            return out
        run()
        secs = timed(run)
        results[f"closed_{dev}"] = values / secs
        print(f"pmxgen closed form [{dev}]: {secs:.3f} s  -> {values / secs:.3e} values/s")

    n_ode = args.ode_subjects
    batch = tile(base.batch, max(1, n_ode // 100))
    p = parameters(batch.n_subjects, "cpu")
    ode = model.as_ode(rtol=1e-6, atol=1e-9)
    secs = timed(lambda: ode.predict(p, batch), repeat=1)
    ode_values = batch.n_subjects * N_TIMES
    results["ode_cpu"] = ode_values / secs
    print(f"pmxgen ODE dopri5 [cpu]: {batch.n_subjects} subjects in {secs:.2f} s -> {ode_values / secs:.3e} values/s")
    closed = model.predict(p, batch)
    rel = float(((ode.predict(p, batch) - closed).abs() / closed.abs().clamp(min=1e-6))[batch.obs.mask].max())
    print(f"  ODE vs closed form max relative difference at rtol 1e-6: {rel:.1e}")

    k = args.peer_sample
    obs = base.batch.obs
    times_list = [obs.time[i % 100][obs.mask[i % 100]].numpy() for i in range(k)]
    dose_times = np.arange(N_DOSES) * TAU
    pk = {key: v[:k].cpu().numpy() for key, v in parameters(k, "cpu").items()}
    t_np = numpy_loop(times_list, dose_times, pk)
    results["numpy_loop"] = k * N_TIMES / t_np
    print(f"peer numpy per-subject loop: {k} subjects in {t_np:.2f} s -> {results['numpy_loop']:.3e} values/s")
    k_ode = max(50, k // 10)
    t_sp = scipy_loop(times_list[:k_ode], dose_times, pk)
    results["scipy_loop"] = k_ode * N_TIMES / t_sp
    print(f"peer scipy solve_ivp per subject: {k_ode} subjects in {t_sp:.2f} s -> {results['scipy_loop']:.3e} values/s")
    print("\nratios (higher is better for pmxgen):")
    print(f"  closed form cpu / numpy loop : {results['closed_cpu'] / results['numpy_loop']:.1f}x")
    if "closed_cuda" in results:
        print(f"  closed form cuda / cpu       : {results['closed_cuda'] / results['closed_cpu']:.1f}x")
    print(f"  ODE cpu / scipy solve_ivp     : {results['ode_cpu'] / results['scipy_loop']:.1f}x")
    print(f"  closed form / ODE (cpu)       : {results['closed_cpu'] / results['ode_cpu']:.1f}x")


if __name__ == "__main__":
    main()
