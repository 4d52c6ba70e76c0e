"""Wall time of a population fit: pmxgen FOCE-I against R's nlme, in the same run.

Problems (same model, data and error model for both tools):

* ``theophylline`` (12 subjects, 132 observations): R's ``SSfol(Dose, Time, lKe, lKa, lCl)``,
  random effects on lKa and lCl (diagonal), additive error.
* ``sim_1cmt_oral_1000`` (1000 subjects, 8000 observations): one-compartment oral in
  lKA, lCL, lV, all three random (diagonal), combined error (variance sum; nlme's
  ``varConstProp()``).

pmxgen is timed for the whole ``pmxgen.fit`` (EBEs, estimation; once without and once with
the covariance step); nlme for the ``nlme()`` call alone (``benchmarks/peers/nlme_fit.R``),
which also computes its model-based SEs. The ratio printed is pmxgen / nlme: below 1 means
pmxgen is faster. Without R (``Rscript`` with nlme on PATH) the script says so and times
pmxgen only.

SAEM (Monolix-like defaults: 300 + 200 iterations, Louis SEs, importance-sampling −2LL) is
timed on the same problems and printed relative to pmxgen FOCE-I with its covariance step
(``--skip-saem`` leaves it out).

Usage: ``python benchmarks/bench_fit.py [--repeats 3] [--skip-1000] [--skip-saem]``
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import pmxgen
from pmxgen.models import NLMEModel

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from r_nlme import fit_nlme, r_available  # noqa: E402


def theophylline_model() -> NLMEModel:
    def individual(theta, eta, cov):
        cl = torch.exp(theta["lCl"] + eta["lCl"]) * cov["WT"]
        return {"KA": torch.exp(theta["lKa"] + eta["lKa"]), "CL": cl, "V": cl / torch.exp(theta["lKe"])}

    return NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"lKe": -2.5, "lKa": 0.5, "lCl": -3.0},
                     omega={"lKa": 0.5, "lCl": 0.05}, error={"kind": "additive", "init": {"ADD": 0.5}},
                     individual=individual)


def oral_1000_model() -> NLMEModel:
    def individual(theta, eta, cov):
        return {p: torch.exp(theta[f"l{p}"] + eta[f"l{p}"]) for p in ("KA", "CL", "V")}

    return NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"lKA": 0.0, "lCL": 1.0986, "lV": 3.2189},
                     omega={"lKA": 0.1, "lCL": 0.1, "lV": 0.1},
                     error={"kind": "combined", "init": {"ADD": 0.01, "PROP": 0.04}}, individual=individual)


PROBLEMS = {
    "theophylline": (theophylline_model, "theoph"),
    "sim_1cmt_oral_1000": (oral_1000_model, "oral1_comb"),
}


def time_pmxgen(name: str, repeats: int, covariance: str | None, method: str = "focei"
                ) -> tuple[float, pmxgen.FitResult]:
    data = pmxgen.datasets.load(name)
    build, _ = PROBLEMS[name]
    best, fit = float("inf"), None
    for _ in range(repeats):
        model = build()
        start = time.perf_counter()
        fit = pmxgen.fit(model, data, method=method, covariance=covariance)
        best = min(best, time.perf_counter() - start)
    return best, fit


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timings per tool (the minimum is reported)")
    parser.add_argument("--skip-1000", action="store_true", help="only theophylline")
    parser.add_argument("--skip-saem", action="store_true", help="do not time SAEM")
    args = parser.parse_args(argv)
    have_r = r_available()
    if not have_r:
        print("R with nlme is not available (Rscript on PATH with the nlme package): timing pmxgen only.")
    names = ["theophylline"] + ([] if args.skip_1000 else ["sim_1cmt_oral_1000"])
    print(f"torch {torch.__version__}, threads during fit: 1 (pmxgen default cpu_threads=1)")
    for name in names:
        data = pmxgen.datasets.load(name)
        print(f"\n== {name}: {data.n_subjects} subjects, {data.n_observations} observations ==")
        repeats = args.repeats if name == "theophylline" else max(1, args.repeats - 2)
        t_fit, fit = time_pmxgen(name, repeats, None)
        t_cov, fit_cov = time_pmxgen(name, 1, "sandwich")
        print(f"pmxgen FOCE-I: {t_fit:8.2f} s  (with covariance step {t_cov:.2f} s)  -2LL {fit.minus2ll:.4f}  "
              f"status {fit.status}")
        print("   " + ", ".join(f"{k}={v:.4g}" for k, v in fit.estimates.items()))
        if not args.skip_saem:
            t_saem, saem = time_pmxgen(name, 1, "louis", method="saem")
            print(f"pmxgen SAEM:   {t_saem:8.2f} s  (with Louis SEs and IS -2LL {saem.minus2ll:.4f} ± "
                  f"{saem.importance_sampling['se']:.2f})")
            print("   " + ", ".join(f"{k}={v:.4g}" for k, v in saem.estimates.items()))
            print(f"ratio SAEM/FOCE-I (both with SEs): {t_saem / t_cov:.2f}")
        if not have_r:
            continue
        r_times, r = [], None
        for _ in range(repeats):
            r = fit_nlme(pmxgen.datasets.path(name), PROBLEMS[name][1])
            r_times.append(r["seconds"])
        t_r = min(r_times)
        print(f"R nlme (ML):   {t_r:8.2f} s  -2LL {r.get('minus2ll', float('nan')):.4f}  converged {r['converged']}"
              f"  {r.get('message', '')}")
        if r.get("fixed"):
            print("   " + ", ".join(f"{k}={v:.4g}" for k, v in r["fixed"].items()))
        print(f"ratio pmxgen/nlme: {t_fit / t_r:.3f} (estimation only), {t_cov / t_r:.3f} (with covariance step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
