"""Every registered generator on the diabetes covariate panel, against the multivariate normal baseline.

The check of issue 20: "every generator beats the multivariate normal baseline on the classifier
two-sample test and on correlation error, or the note says which do not and why; generated
values respect bounds and categories".

For each of ``--repeats`` seeds the 442 patients (age, sex, BMI, blood pressure, six serum
measurements; the outcome Y is left out) are split 70/30 (seeded), every generator is fitted on
the train split and ``--n`` rows are generated and compared with the held-out rows
(:func:`pmxgen.generative.compare_generators`, with the train split itself as the reference row:
the noise floor of each metric at these sample sizes). The script prints each metric's mean
(and SD) over the repeats, the wall times, the check against ``mvn`` (classifier accuracy closer
to 0.5 and smaller correlation error, on the means), and whether the generated values respect
bounds (positive columns > 0) and categories (SEX in {1, 2}). It writes the HTML report of the
first repeat and a JSON of the mean table.

The panel is read from ``datasets/diabetes/diabetes.csv`` (bundled by the virtual-population
work); where that file is absent it is taken from ``sklearn.datasets.load_diabetes(scaled=False)``
(scikit-learn is needed only then, and only here).

Usage::

    python benchmarks/gen_diabetes_comparison.py                       # every registered generator
    python benchmarks/gen_diabetes_comparison.py --models mvn,gaussian_copula --repeats 5 \
        --report diabetes_generators.html --json diabetes_generators.json

Reference run (recorded in ``gen_diabetes_comparison.json`` next to this script): see the
``reference`` entry there (date, machine, models registered at the time, printed table).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["AGE", "SEX", "BMI", "BP", "S1", "S2", "S3", "S4", "S5", "S6"]
SHOWN = ["fit_time_s", "sample_time_s", "c2st_accuracy", "correlation_error", "mmd2", "mmd_p_value",
         "energy_distance", "sliced_w2", "w2", "ks_max", "tv_max", "precision", "recall", "coverage", "nll"]


def load_panel() -> tuple[pd.DataFrame, str]:
    path = ROOT / "datasets" / "diabetes" / "diabetes.csv"
    if path.exists():
        return pd.read_csv(path)[COLUMNS], str(path.relative_to(ROOT))
    from sklearn.datasets import load_diabetes
    frame = load_diabetes(scaled=False, as_frame=True).frame
    frame = frame.rename(columns={c: c.upper() for c in frame.columns})[COLUMNS]
    frame["AGE"] = frame["AGE"].astype(int)
    frame["SEX"] = frame["SEX"].astype(int)
    return frame, "sklearn.datasets.load_diabetes(scaled=False)"


def respects_bounds(sample: pd.DataFrame, panel: pd.DataFrame) -> str:
    problems = []
    for name in panel.columns:
        if name == "SEX":
            if not set(sample[name]) <= {1, 2}:
                problems.append(f"SEX levels {sorted(set(sample[name]))}")
        elif (panel[name] > 0).all() and not (sample[name] > 0).all():
            problems.append(f"{name} <= 0 in {(sample[name] <= 0).sum()} rows")
    return "yes" if not problems else "; ".join(problems)


def paired_differences(everything: pd.DataFrame, baseline: str = "mvn") -> pd.DataFrame:
    """Per model: mean and SE over repeats of (model − baseline) for |C2ST accuracy − 0.5| and correlation
    error (same splits, so the held-out noise common to both cancels); negative = better than the baseline."""
    from pmxgen.generative.comparison import REFERENCE
    wide = everything.assign(c2st_gap=(everything["c2st_accuracy"] - 0.5).abs())
    base = wide[wide["model"] == baseline].set_index("repeat")
    rows = []
    for model, part in wide[~wide["model"].isin([baseline, REFERENCE])].groupby("model", sort=False):
        part = part.set_index("repeat")
        common = part.index.intersection(base.index)
        row = {"model": model, "repeats": len(common)}
        for key in ("c2st_gap", "correlation_error"):
            d = (part.loc[common, key] - base.loc[common, key]).to_numpy(float)
            d = d[np.isfinite(d)]
            mean = float(d.mean()) if len(d) else float("nan")
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            verdict = ("better" if mean + 2 * se < 0 else "worse" if mean - 2 * se > 0 else "not distinguishable")
            row.update({f"{key}_diff": mean, f"{key}_se": se, f"{key}_verdict": verdict})
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    from pmxgen.generative import baseline_check, compare_generators, generator_names
    from pmxgen.generative.comparison import REFERENCE
    from pmxgen.report.generators import write_generator_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="comma-separated generator names (default: every registered one)")
    parser.add_argument("--repeats", type=int, default=5, help="seeds (splits) to average over")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="share of patients held out")
    parser.add_argument("--n", type=int, default=1000, help="rows generated per model and repeat")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--report", default="diabetes_generators.html", help="HTML report of the first repeat")
    parser.add_argument("--json", help="write the mean table and the check as JSON")
    args = parser.parse_args(argv)

    models = [m.strip() for m in args.models.split(",")] if args.models else generator_names()
    if "mvn" not in models:
        models = ["mvn", *models]
    panel, source = load_panel()
    print(f"diabetes panel: {len(panel)} rows, columns {', '.join(panel.columns)} ({source})")
    print(f"models: {', '.join(models)}; repeats {args.repeats}; n = {args.n} generated rows per model")
    tables, bounds = [], {}
    start = time.perf_counter()
    for r in range(args.repeats):
        seed = args.seed + r
        result = compare_generators(panel, models, n=args.n, seed=seed, reference=True, source=source,
                                    test_fraction=args.test_fraction, progress=True)
        result.table["repeat"] = r
        tables.append(result.table)
        for name, sample in result.samples.items():
            verdict = respects_bounds(sample, panel)
            if bounds.get(name, "yes") == "yes":
                bounds[name] = verdict
        if r == 0 and args.report:
            paths = write_generator_report(result, args.report, columns=["AGE", "BMI", "BP", "S1", "S5"])
            print("wrote " + ", ".join(str(p) for p in paths))
        failed = result.table[~result.table["status"].isin(["converged", "max_iterations", "reference"])]
        for row in failed.itertuples():
            print(f"repeat {r}: {row.model} {row.status}: {row.message}")
    everything = pd.concat(tables, ignore_index=True)
    ok = everything[everything["status"] != "error"]
    mean = ok.groupby("model", sort=False)[SHOWN].mean()
    sd = ok.groupby("model", sort=False)[["c2st_accuracy", "correlation_error"]].std()
    order = [REFERENCE] + [m for m in models if m in mean.index]
    mean = mean.loc[order]
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.precision", 4):
        print(f"\nmean over {args.repeats} repeats (held-out rows per repeat: {int(tables[0]['n_real'].iloc[0])}):")
        print(mean.to_string())
        print("\nSD over repeats:")
        print(sd.loc[order].to_string())
    check = baseline_check(mean.reset_index()[["model", "c2st_accuracy", "correlation_error"]])
    check["bounds_and_categories"] = [bounds.get(m, "no sample") for m in check["model"]]
    print("\nagainst the multivariate normal baseline (means; C2ST: |accuracy - 0.5| smaller; correlation error smaller):")
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.precision", 4):
        print(check.to_string(index=False) if len(check) else "(no model other than mvn)")
    paired = paired_differences(everything)
    if len(paired):
        print("\npaired over repeats, model − mvn (negative = better; verdict at ±2 SE):")
        with pd.option_context("display.width", 250, "display.max_columns", None, "display.precision", 4):
            print(paired.to_string(index=False))
    print(f"mvn respects bounds and categories: {bounds.get('mvn', 'no sample')}")
    losers = check.loc[~check["beats_both"], "model"].tolist() if len(check) else []
    if len(check):
        print("every generator beats mvn on both: " + ("yes" if not losers else f"no ({', '.join(losers)} do not)"))
    else:
        print("no generator other than mvn was compared")
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "source": source, "models": models, "repeats": args.repeats, "n": args.n, "seed": args.seed,
            "mean": mean.reset_index().to_dict(orient="records"),
            "sd": sd.loc[order].reset_index().to_dict(orient="records"),
            "check": check.to_dict(orient="records"), "paired": paired.to_dict(orient="records"),
            "bounds": bounds}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
