"""Flow matching from 8 Gaussians to two moons: minibatch-OT coupling against independent coupling.

The published check (Tong et al. 2023, "Improving and generalizing flow-based generative models
with minibatch optimal transport"): with the source "8gaussians" and the target "moons" (FFJORD
toy densities), OT-CFM's flow is nearly straight, so a single Euler step already lands on the
target, while I-CFM's single step collapses towards the target's mean; with an adaptive solver
(dopri5) both reach the target. We report the exact 2-Wasserstein distance (POT ``ot.emd2``,
float64, squared Euclidean cost, square root taken) between 2000 generated points and 2000
held-out target points, and the same distance between two independent target samples (the
finite-sample floor: W2 between two samples of the *same* density is not 0).

Run: ``OMP_NUM_THREADS=1 python benchmarks/gen_flow_matching_ot.py`` (CPU, float64; about 5 min on one core).
The numbers it printed are in ``gen_flow_matching_ot.json`` next to this script.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import ot
import torch

from pmxgen.generative.flow_matching import FlowMatchingGenerator
from pmxgen.generative.toy import sample_toy

N_TRAIN, N_EVAL = 10_000, 2000
SETTINGS = dict(source="8gaussians", hidden=[128, 128, 128], max_epochs=100, batch_size=256, learning_rate=2e-3,
                validation_fraction=0.05, patience=30, seed=0)


def w2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact 2-Wasserstein distance between two equal-weight samples (POT network simplex)."""
    a, b = a.numpy(), b.numpy()
    return float(np.sqrt(ot.emd2([], [], ot.dist(a, b), numItermax=10_000_000)))


def main() -> dict:
    torch.set_num_threads(1)
    data = sample_toy("moons", N_TRAIN, seed=0)
    target = sample_toy("moons", N_EVAL, seed=1)
    out: dict = {"settings": {**SETTINGS, "n_train": N_TRAIN, "n_eval": N_EVAL},
                 "floor_w2_two_target_samples": w2(sample_toy("moons", N_EVAL, seed=2), target),
                 "w2_source_to_target": w2(sample_toy("8gaussians", N_EVAL, seed=3), target)}
    for coupling in ("ot", "independent"):
        start = time.perf_counter()
        gen = FlowMatchingGenerator(coupling=coupling, **SETTINGS).fit(data)
        row = {"fit_s": time.perf_counter() - start, "status": gen.status_, "epochs": len(gen.history_)}
        for label, method, steps in (("euler_1", "euler", 1), ("euler_10", "euler", 10), ("dopri5", "dopri5", 1)):
            gen.set_params(ode_method=method, n_steps=steps)
            row[f"w2_{label}"] = w2(gen.sample(N_EVAL, seed=4), target)
        out[coupling] = row
        print(coupling, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    print("floor", round(out["floor_w2_two_target_samples"], 4), "source", round(out["w2_source_to_target"], 4))
    return out


if __name__ == "__main__":
    result = main()
    if "--write" in sys.argv:
        Path(__file__).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
