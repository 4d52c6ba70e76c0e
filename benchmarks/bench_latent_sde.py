"""torchsde's latent-SDE example inside pmxgen, side by side with the example script itself.

The example (``benchmarks/peers/torchsde_latent_sde_example.py``, a copy of torchsde's
``examples/latent_sde.py``): one series, ``y = cos(2πt)`` at 10 times in [0.3, 0.8] and 10 in
[1.2, 1.5]; prior OU ``dz = θ(μ − z)dt + σ dW`` (θ = 1, μ = 0, σ = 0.5) with stationary
``z(0) ~ N(0, σ²/2θ)``; a posterior drift network of ``(sin t, cos t, z)`` (two hidden layers of
200, tanh, zero-initialised last layer); paths on [0, 2] by Euler, dt = 0.01; 512 posterior paths
per iteration; Adam, learning rate 0.01 decaying ×0.999 per iteration; KL annealed linearly over
100 iterations. Likelihood: the example's ``--likelihood normal --scale 0.05`` (pmxgen's additive
error with σ² = 0.05² fixed; the example's default Laplace likelihood is not one of pmxgen's
residual error models).

pmxgen fits the same model with :func:`~pmxgen.estimation.latent_sde_fit.fit_latent_sde`
(``LatentSDEModel(mechanism="ou")`` with everything but the posterior fixed). Differences: pmxgen
is float64 (the example float32); its posterior drift is *prior + correction* (starts at the prior
rather than at 0); ``q(z(0))`` comes from the encoder (for one subject, its output bias plays the
example's free ``qy0_mean``/``qy0_logvar``).

Then the population case: 1000 simulated subjects (``y = A_i cos(2πt + φ_i) + N(0, 0.05²)`` at the
same times), minibatches of 512 subjects with one path each (512 rows, as the example), so an
epoch is 2 iterations: its time against the example's time per iteration.

Usage: ``python benchmarks/bench_latent_sde.py [--quick] [--iters N] [--epochs E] [--dtype float32]
[--device cuda] [--skip-example] [--png FILE]``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pmxgen  # noqa: E402
from pmxgen.estimation.latent_sde_fit import fit_latent_sde  # noqa: E402
from pmxgen.models.latent_sde import LatentSDEModel  # noqa: E402

TS = np.concatenate((np.linspace(0.3, 0.8, 10), np.linspace(1.2, 1.5, 10)))


def example_model(context_dim: int, device, dtype=torch.float64) -> LatentSDEModel:
    theta, sigma = 1.0, 0.5
    return LatentSDEModel(1, mechanism="ou", network=False, rates={"A1": theta}, fix_rates=True, diffusion=sigma,
                          fix_diffusion=True, z0_mean=0.0, z0_sd=math.sqrt(sigma ** 2 / (2 * theta)),
                          error={"kind": "additive", "init": {"ADD": 0.05 ** 2}, "fixed": ("ADD",)},
                          context_dim=context_dim, hidden=200, n_layers=2, activation="tanh", time_scale=1.0,
                          dt=1e-2, method="euler", device=device, dtype=dtype)


def frame(ys: np.ndarray) -> pd.DataFrame:
    n = ys.shape[0]
    return pd.DataFrame({"ID": np.repeat(np.arange(1, n + 1), len(TS)), "TIME": np.tile(TS, n),
                         "DV": ys.reshape(-1), "AMT": 0.0, "EVID": 0, "MDV": 0})


def run_pmxgen(data, model, iters: int, **kw) -> tuple[list, list]:
    stamps = [time.perf_counter()]
    fit = fit_latent_sde(model, data, max_iter=iters, learning_rate=1e-2, lr_decay=0.999, horizon=2.0,
                         min_iter=iters, window=max(2, iters), elbo_samples=8,
                         callback=lambda e: stamps.append(time.perf_counter()), **kw)
    return list(fit.history), list(np.diff(stamps))


def run_example(iters: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        record = os.path.join(tmp, "record.jsonl")
        cmd = [sys.executable, str(HERE / "peers" / "torchsde_latent_sde_example.py"), "--train-dir", tmp, "--no-gpu",
               "--likelihood", "normal", "--scale", "0.05", "--train-iters", str(iters), "--batch-size", "512",
               "--kl-anneal-iters", "100", "--no-plots", "--record", record]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", "1")})
        return [json.loads(line) for line in open(record)]


def window_means(values: list[float], at: list[int], width: int = 10) -> list[float]:
    return [float(np.mean(values[max(0, k - width + 1):k + 1])) for k in at]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 iterations and 2 epochs")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                    help="pmxgen's precision (the example runs in float32)")
    ap.add_argument("--skip-example", action="store_true", help="time pmxgen only (e.g. on a GPU machine)")
    ap.add_argument("--png", default="", help="write the two ELBO curves to this PNG file")
    args = ap.parse_args()
    iters, epochs = (40, 2) if args.quick else (args.iters, args.epochs)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}, pmxgen {args.dtype}; "
          f"{iters} iterations")

    # ---- 1. the example's single series, both implementations
    ys = np.cos(TS * 2 * math.pi)[None, :]
    data = pmxgen.read_nonmem(frame(ys), require_doses=False, device=device, dtype=dtype)
    hist, secs = run_pmxgen(data, example_model(1, device, dtype), iters, n_samples=512, kl_anneal_iters=100, seed=0)
    ours = [h["elbo"] for h in hist]
    peer, peer_secs = None, None
    if not args.skip_example:
        rec = run_example(iters)
        peer = [r["logpy"] - r["kl"] for r in rec]
        peer_secs = [r["seconds"] for r in rec]
    at = sorted({0, 9, 24, 49, 99, 199, 299, 499, 999, iters - 1} & set(range(iters)))
    print("\nELBO (log p(y) - KL, unannealed; mean of the 10 iterations up to each point)")
    print(f"{'iteration':>10} {'pmxgen':>12}" + ("" if peer is None else f" {'torchsde example':>17}"))
    for k, a, b in zip(at, window_means(ours, at), window_means(peer, at) if peer else [None] * len(at)):
        print(f"{k + 1:>10} {a:>12.2f}" + ("" if b is None else f" {b:>17.2f}"))
    ours_t = float(np.median(secs[1:]))
    line = f"\ntime per iteration (median): pmxgen {ours_t:.3f} s"
    if peer_secs:
        peer_t = float(np.median(peer_secs[1:]))
        line += f", torchsde example {peer_t:.3f} s, ratio pmxgen/example {ours_t / peer_t:.2f}"
    print(line)
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(np.arange(1, iters + 1), ours, lw=0.8, label="pmxgen fit_latent_sde")
        if peer:
            ax.plot(np.arange(1, iters + 1), peer, lw=0.8, label="torchsde examples/latent_sde.py")
        ax.set_xlabel("iteration")
        ax.set_ylabel("ELBO (nats)")
        ax.set_yscale("symlog", linthresh=10.0)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"figure: {args.png}")

    # ---- 2. 1000 simulated subjects, minibatches of 512 (one path each)
    rng = np.random.default_rng(0)
    n = 1000
    amp, phase = rng.uniform(0.7, 1.3, n), rng.uniform(-0.5, 0.5, n)
    ys = amp[:, None] * np.cos(2 * math.pi * TS[None, :] + phase[:, None]) + rng.normal(0, 0.05, (n, len(TS)))
    pop = pmxgen.read_nonmem(frame(ys), require_doses=False, device=device, dtype=dtype)
    its = 2 * epochs
    hist, secs = run_pmxgen(pop, example_model(8, device, dtype), its, n_samples=1, batch_size=512, seed=0)
    per_epoch = float(np.sum(secs[2:])) / (epochs - 1) if epochs > 1 else float(np.sum(secs))
    print(f"\n1000 subjects, batch 512 subjects x 1 path: {per_epoch:.3f} s per epoch (2 iterations; first epoch "
          f"excluded)" + (f", {per_epoch / peer_t:.2f} x the example's time per iteration at batch 512"
                          if peer_secs else ""))
    print("ELBO per epoch:", [round(float(np.mean([h['elbo'] for h in hist[2 * e:2 * e + 2]])), 1)
                              for e in range(epochs)])


if __name__ == "__main__":
    main()
