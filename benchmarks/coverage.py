"""Coverage of the truth on the bundled simulated sets: Wald intervals and profile likelihood.

Issue 3 asks that the true value lie inside the 95 % CI for >= 90 % of the parameters across
the simulated sets. CI measures it with the Wald intervals that ``FitResult`` reports
(sandwich SEs; ``tests/estimation/test_parameter_recovery.py``). This script adds the
likelihood-ratio view: each parameter that can be fixed on its own (θ, σ, Ω elements of
diagonal blocks; ``NLMEModel.with_fixed``) is fixed at its true value and the model refitted
from the estimates; the truth lies inside the 95 % profile-likelihood interval iff the OFV
rises by at most 3.84 (χ²₁). A full Ω block is tested jointly (all its elements fixed at the
truth, χ² with as many degrees of freedom as elements).

Every set is fitted FOCE-I with the model that generated it (``tests/estimation/simulated_models.py``).

Usage: ``python benchmarks/coverage.py [NAME ...]`` (default: the three closed-form sets; add
``sim_mm_oral`` for the ODE set, about 2 min per fit). ``python benchmarks/coverage.py --estimators
[NAME ...]`` instead compares the Wald coverage of several estimators on the same sets (FOCE-I with
the sandwich and with the R-matrix SEs, Laplace, SAEM with Louis' SEs), without profiles. Measured
results are in ``benchmarks/README.md``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from scipy import stats

import pmxgen
from pmxgen.errors import ModelError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "estimation"))
from simulated_models import Z95, model_for, true_values, z_scores  # noqa: E402

SETS = ("sim_1cmt_oral_wt", "sim_2cmt_iv_infusion", "sim_1cmt_oral_1000")
LEVEL = 0.95
#: (label, pmxgen.fit options) of the estimators that ``--estimators`` compares.
ESTIMATORS = (("FOCE-I, sandwich SE", {"method": "focei"}),
              ("FOCE-I, R-matrix SE", {"method": "focei", "covariance": "R"}),
              ("Laplace, sandwich SE", {"method": "laplace"}),
              ("SAEM, Louis SE", {"method": "saem", "seed": 1}))


def _inside(flag: bool) -> str:
    return "in " if flag else "OUT"


def compare_estimators(names: list[str]) -> None:
    """Print, for each estimator of ``ESTIMATORS``, the Wald intervals that miss the truth and the coverage."""
    covered = {label: [0, 0] for label, _ in ESTIMATORS}
    for name in names:
        data = pmxgen.datasets.load(name)
        truth = true_values(pmxgen.datasets.truth(name))
        for label, options in ESTIMATORS:
            started = time.perf_counter()
            fit = pmxgen.fit(model_for(name, data), data, **options)
            z = z_scores(fit, truth)
            inside = sum(abs(v) <= Z95 for v in z.values())
            covered[label][0] += inside
            covered[label][1] += len(z)
            misses = ", ".join(f"{p} z {v:+.2f}" for p, v in z.items() if abs(v) > Z95) or "none"
            print(f"{name:22s} {label:22s} {fit.status:9s} covariance {fit.covariance_status:6s} "
                  f"{inside}/{len(z)} covered; misses: {misses} ({time.perf_counter() - started:.0f} s)", flush=True)
    for label, (inside, total) in covered.items():
        print(f"{label:22s} {inside}/{total} intervals cover the truth ({100 * inside / total:.1f} %)")


def main(argv=None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    if args[:1] == ["--estimators"]:
        compare_estimators(args[1:] or list(SETS))
        return 0
    names = args or list(SETS)
    wald_in = wald_n = profile_in = profile_n = 0
    for name in names:
        data = pmxgen.datasets.load(name)
        model = model_for(name, data)
        fit = pmxgen.fit(model, data, method="focei")
        truth = true_values(pmxgen.datasets.truth(name))
        z = z_scores(fit, truth)
        restart = model.with_initial(fit.estimates)
        print(f"{name}: FOCE-I {fit.status}, covariance {fit.covariance_status}, OFV {fit.ofv:.4f}", flush=True)
        print(f"  {'parameter':16s} {'truth':>10s} {'estimate':>10s} {'Wald z':>7s}  {'ΔOFV':>7s}  Wald profile")
        blocks = []
        for p in fit.estimated_names:
            started = time.perf_counter()
            try:
                fixed = pmxgen.fit(restart.with_fixed({p: truth[p]}), data, method="focei", covariance=None)
            except ModelError:
                blocks.append(p)
                delta = None
            else:
                delta = fixed.ofv - fit.ofv
            wald = abs(z[p]) <= Z95
            wald_in += wald
            wald_n += 1
            line = f"  {p:16s} {truth[p]:10.4g} {fit.estimates[p]:10.4g} {z[p]:7.2f}  "
            if delta is None:
                print(line + f"{'':7s}  {_inside(wald)}  (Ω block element: tested jointly below)", flush=True)
                continue
            profile = delta <= stats.chi2.ppf(LEVEL, 1)
            profile_in += profile
            profile_n += 1
            note = "" if fixed.status == "converged" else f"  [{fixed.status}: {fixed.messages[0]}]"
            print(line + f"{delta:7.3f}  {_inside(wald)}  {_inside(profile)}   ({time.perf_counter() - started:.1f} s)"
                  + note, flush=True)
        if blocks:
            joint = pmxgen.fit(restart.with_fixed({p: truth[p] for p in blocks}), data, method="focei",
                               covariance=None)
            delta = joint.ofv - fit.ofv
            limit = stats.chi2.ppf(LEVEL, len(blocks))
            print(f"  joint {', '.join(blocks)}: ΔOFV {delta:.3f} (95 % limit {limit:.2f}, {len(blocks)} df): "
                  f"{'inside' if delta <= limit else 'OUTSIDE'}", flush=True)
        print(flush=True)
    print(f"Wald: {wald_in}/{wald_n} intervals cover the truth ({100 * wald_in / wald_n:.1f} %)")
    print(f"profile likelihood: {profile_in}/{profile_n} of the parameters that can be fixed alone "
          f"({100 * profile_in / profile_n:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
