"""Score SDE (VP) on toy densities: held-out NLL through the probability-flow ODE against the true entropy.

The probability-flow ODE gives the model's exact log density (instantaneous change of variables,
exact divergence in 2-D, dopri5). The held-out negative log-likelihood is a cross-entropy, so it
lies above the true entropy (8 Gaussians: Monte Carlo entropy from the exact density,
``toy_entropy``; checkerboard: ln 32 = 3.466 nats) by the KL divergence of the model from the
truth; the multivariate normal baseline's NLL is printed for scale.

Run: ``OMP_NUM_THREADS=1 python benchmarks/gen_score_sde_likelihood.py [--write]`` (CPU, float64; about 10 min on one core).
The numbers it printed are in ``gen_score_sde_likelihood.json`` next to this script.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from pmxgen.generative import make_generator, sample_toy, toy_entropy

N_TRAIN, N_TEST = 20_000, 2000
SETTINGS = dict(sde="vp", hidden=[256, 256, 256], max_epochs=250, batch_size=256, learning_rate=5e-4,
                validation_fraction=0.05, patience=40, seed=0, t_min=1e-5, rtol=1e-5, atol=1e-5)


def main() -> dict:
    torch.set_num_threads(1)
    out: dict = {"settings": {**SETTINGS, "n_train": N_TRAIN, "n_test": N_TEST}}
    for name in ("8gaussians", "checkerboard"):
        train, test = sample_toy(name, N_TRAIN, seed=0), sample_toy(name, N_TEST, seed=1)
        start = time.perf_counter()
        gen = make_generator("score_sde", **SETTINGS).fit(train)
        fit_s = time.perf_counter() - start
        nll = -gen.log_prob(test)
        gauss = -make_generator("mvn").fit(train).log_prob(test)
        row = {"entropy": toy_entropy(name), "nll": float(nll.mean()),
               "nll_se": float(nll.std()) / math.sqrt(N_TEST), "nll_mvn": float(gauss.mean()), "fit_s": fit_s,
               "status": gen.status_, "epochs": len(gen.history_)}
        row["excess_over_entropy"] = row["nll"] - row["entropy"]
        out[name] = row
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return out


if __name__ == "__main__":
    result = main()
    if "--write" in sys.argv:
        Path(__file__).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
