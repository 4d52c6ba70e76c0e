"""Held-out negative log-likelihood of each likelihood generator on the four FFJORD toy densities.

For each toy density ("checkerboard", "8gaussians", "moons", "2spirals"; :mod:`pmxgen.generative.toy`)
and each family with a tractable density — the multivariate normal baseline ("mvn"), RealNVP
("realnvp"), the rational-quadratic spline flow ("spline_flow"), the residual flow
("residual_flow") and the continuous normalizing flow ("cnf") — train on ``--train`` draws
(seed 0) and report the mean negative log density of ``--test`` fresh draws (seed 1) in nats,
with its Monte Carlo standard error, the training wall time and the status. The reference is
the true entropy where it is known: ``ln 32 = 3.4657`` for the checkerboard (exact) and a
Monte Carlo value for 8 Gaussians (exact density); a correct density model has expected
held-out NLL ≥ the entropy (Gibbs' inequality), so ``NLL − H`` measures the fit.

Each (density, family) pair runs in its own call so that the runs can be spread out; the
results are appended as JSON lines to ``--output`` and ``--table`` prints them.

Usage::

    python benchmarks/gen_toy_likelihood.py --density checkerboard --family realnvp
    python benchmarks/gen_toy_likelihood.py --all          # every pair, one after another
    python benchmarks/gen_toy_likelihood.py --table        # the recorded results

The recorded results of one run are in ``gen_toy_likelihood.json`` (the settings below, one
torch thread, a shared 2-core machine; see the table in benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch

from pmxgen.generative import make_generator
from pmxgen.generative.toy import TOY_DENSITIES, sample_toy, toy_entropy

#: Settings of each family (2-D data; the flows' defaults elsewhere are similar).
SETTINGS = {
    "mvn": {},
    "realnvp": dict(transforms=8, hidden_features=[64, 64], max_epochs=150, batch_size=256, learning_rate=1e-3,
                    patience=30),
    "spline_flow": dict(transforms=4, hidden_features=[64, 64], bins=12, max_epochs=150, batch_size=256,
                        learning_rate=1e-3, patience=30),
    # 2-D: the exact log-determinant is cheaper than the power series (2 vector-Jacobian products, no bias)
    "residual_flow": dict(n_blocks=8, hidden=64, train_logdet="exact", max_epochs=40, batch_size=256,
                          learning_rate=2e-3, patience=15),
    # training with fixed-step RK4 (8 steps; a shared CPU); log_prob integrates with dopri5 (rtol 1e-7)
    "cnf": dict(hidden_features=[64, 64, 64], solver="rk4", step_size=0.125, max_epochs=25, batch_size=500,
                learning_rate=3e-3, patience=15),
}
FAMILIES = tuple(SETTINGS)
OUTPUT = Path(__file__).with_suffix(".json")


def run(density: str, family: str, n_train: int, n_test: int, overrides: dict | None = None) -> dict:
    settings = {**SETTINGS[family], **(overrides or {})}
    x = sample_toy(density, n_train, seed=0)
    x_test = sample_toy(density, n_test, seed=1)
    gen = make_generator(family, seed=0, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen.fit(x)
    nll = -gen.log_prob(x_test)
    entropy = toy_entropy(density) if density in ("checkerboard", "8gaussians") else None
    finite = torch.isfinite(nll)
    return {"density": density, "family": family, "nll": float(nll[finite].mean()),
            "se": float(nll[finite].std() / math.sqrt(int(finite.sum()))), "non_finite": int((~finite).sum()),
            "entropy": entropy, "excess": None if entropy is None else float(nll[finite].mean()) - entropy,
            "fit_seconds": round(gen.fit_time_, 1), "epochs": len(gen.history_), "status": gen.status_,
            "n_train": n_train, "n_test": n_test, "settings": settings}


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [f"{'density':<13} {'family':<14} {'NLL':>7} {'± SE':>6} {'entropy':>8} {'NLL-H':>7} "
             f"{'fit s':>7} {'epochs':>6}  status, settings changed from SETTINGS"]
    for r in rows:
        ent = "" if r["entropy"] is None else f"{r['entropy']:.4f}"
        exc = "" if r["excess"] is None else f"{r['excess']:+.3f}"
        lines.append(f"{r['density']:<13} {r['family']:<14} {r['nll']:7.4f} {r['se']:6.4f} {ent:>8} {exc:>7} "
                     f"{r['fit_seconds']:7.1f} {r['epochs']:6d}  {r['status']}"
                     + "".join(f" {k}={v}" for k, v in r["settings"].items() if SETTINGS[r["family"]].get(k) != v))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", choices=TOY_DENSITIES)
    parser.add_argument("--family", choices=FAMILIES)
    parser.add_argument("--all", action="store_true", help="every (density, family) pair")
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--table", action="store_true", help="print the recorded results and stop")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                        help="override a setting of the family, e.g. --set max_epochs=80 (recorded with the result)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.table:
        print(table(args.output))
        return 0
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    densities = ("checkerboard", "8gaussians", "moons", "2spirals") if args.all or not args.density else (args.density,)
    families = FAMILIES if args.all or not args.family else (args.family,)
    for density in densities:
        for family in families:
            started = time.perf_counter()
            result = run(density, family, args.train, args.test, overrides)
            with args.output.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
            print(f"{density:<13} {family:<14} NLL {result['nll']:.4f} ± {result['se']:.4f}"
                  + ("" if result["excess"] is None else f" (entropy {result['entropy']:.4f}, "
                                                         f"excess {result['excess']:+.3f})")
                  + f" {time.perf_counter() - started:.0f} s {result['status']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
