"""The ``pmxgen compare-generators DATA --models mvn,... --output report.html`` subcommand.

Reads a table (a CSV file, or the CSV of a bundled data set by name), runs
:func:`pmxgen.generative.comparison.compare_generators` and writes the HTML comparison report
(:func:`pmxgen.report.generators.write_generator_report`) with the metrics table as CSV next to
it. The table is printed. Exit status 0 when every model was fitted and evaluated, 1 when one
failed (its row says why).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError

__all__ = ["register"]


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _read_table(data: str, columns: list[str] | None):
    import pandas as pd

    import pmxgen
    path = Path(data)
    if not path.exists():
        if data in pmxgen.datasets.list():
            path = pmxgen.datasets.path(data)
        else:
            raise UsageError(f"{data!r} is neither a CSV file nor a bundled dataset ({', '.join(pmxgen.datasets.list())})")
    if path.is_dir():
        raise UsageError(f"{data} is a folder; give a CSV file of one row per subject")
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} cannot be read as CSV ({exc})") from None
    if columns:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise UsageError(f"--columns {','.join(missing)}: not in {path} (columns: {', '.join(frame.columns)})")
        frame = frame[columns]
    return frame, str(path)


def _run(args) -> int:
    from ..generative.comparison import compare_generators
    from ..generative.generator import generator_names
    from .generators import write_generator_report

    models = _names(args.models) or ["mvn"]
    if models == ["all"]:
        models = generator_names()
    unknown = [m for m in models if m not in generator_names()]
    if unknown:
        raise UsageError(f"--models: unknown generator(s) {', '.join(unknown)}; choose among "
                         f"{', '.join(generator_names())} (or 'all')")
    frame, source = _read_table(args.data, _names(args.columns))
    common = {"categorical": _names(args.categorical)} if args.categorical else None
    print(f"Comparing {', '.join(models)} on {source} ({len(frame)} rows, {frame.shape[1]} columns)",
          file=sys.stderr, flush=True)
    result = compare_generators(frame, models, n=args.n, seed=args.seed, conditions=_names(args.conditions),
                                test_fraction=args.test_fraction, common=common, reference=args.reference,
                                metrics={"n_permutations": args.permutations}, source=source,
                                progress=not args.quiet)
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.precision", 4):
        print(result.table.drop(columns=["message"]).to_string(index=False))
    paths = write_generator_report(result, args.output, columns=_names(args.plot_columns), table=not args.no_table)
    print("Wrote " + ", ".join(str(p) for p in paths))
    failed = ~result.table["status"].isin(["converged", "max_iterations", "reference"])
    for row in result.table[failed].itertuples():
        print(f"{row.model}: {row.status}: {row.message}", file=sys.stderr)
    return 1 if failed.any() else 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``compare-generators`` subcommand to the ``pmxgen`` argument parser."""
    p = subparsers.add_parser("compare-generators",
                              help="fit generators of virtual populations on a table, evaluate them on held-out rows "
                                   "and write an HTML comparison report")
    p.add_argument("data", help="a CSV file of one row per subject, or a bundled dataset name")
    p.add_argument("--models", default="mvn", help="comma-separated generator names, or 'all' (default mvn)")
    p.add_argument("--n", type=int, help="rows generated per model (default: as many as the train split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of rows held out for the evaluation")
    p.add_argument("--columns", help="comma-separated columns of the data to model (default all)")
    p.add_argument("--conditions", help="comma-separated columns to condition on")
    p.add_argument("--categorical", help="comma-separated numeric columns to treat as categorical")
    p.add_argument("--plot-columns", help="comma-separated columns of the pairwise scatter plots")
    p.add_argument("--reference", action="store_true",
                   help="add a row evaluating the train split itself (the noise floor of every metric)")
    p.add_argument("--permutations", type=int, default=200, help="permutations of the MMD test")
    p.add_argument("-o", "--output", default="generators.html", help="the HTML report (metrics CSV goes next to it)")
    p.add_argument("--no-table", action="store_true", help="write the HTML file only")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_run)
    return p
