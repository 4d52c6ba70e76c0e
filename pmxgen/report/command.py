"""The ``pmxgen report RESULTS_DIR -o report.html`` subcommand.

Reloads a run written by ``pmxgen fit --output RESULTS_DIR`` (:func:`pmxgen.load_run`), diagnoses
it (:func:`pmxgen.diagnostics.diagnose`) and writes the HTML report with its CSV tables.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import UsageError

__all__ = ["register"]


def _bins(text: str | None):
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [float(t) for t in items]
    except ValueError:
        raise UsageError(f"--bins expects a number of bins or comma-separated edges, got {text!r}") from None
    if len(values) == 1:
        if values[0] != int(values[0]) or values[0] < 1:
            raise UsageError(f"--bins {text!r}: a number of bins must be a whole number >= 1")
        return int(values[0])
    return values


def _run(args) -> int:
    from pathlib import Path

    from ..errors import PmxgenError
    from ..runs import load_run
    from .html import write_report

    bins = _bins(args.bins)
    data = None
    if args.data:
        from ..cli import _load
        data = _load(args.data)
    source = Path(args.results)
    try:
        run = load_run(source, data=data)
    except FileNotFoundError as exc:
        raise UsageError(f"{exc}") from None
    except ValueError as exc:        # not a FitResult file (PmxgenErrors go to main's handler)
        if isinstance(exc, PmxgenError):
            raise
        raise UsageError(f"{source}: {exc}") from None
    pred_corr = {"both": None, "vpc": False, "pcvpc": True}[args.vpc]
    print(f"Diagnosing {source} with {args.simulations} simulated replicates", file=sys.stderr, flush=True)
    paths = write_report(run, args.output, n_simulations=args.simulations, seed=args.seed, bins=bins,
                         stratify=args.stratify, pred_corr=pred_corr, tables=not args.no_tables,
                         per_page=args.per_page)
    print("Wrote " + ", ".join(str(p) for p in paths))
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the ``pmxgen`` argument parser."""
    p = subparsers.add_parser("report", help="diagnose a fit (NPDE, VPC, figures) and write an HTML report")
    p.add_argument("results", help="a folder written by `pmxgen fit --output DIR` (or its fit.json)")
    p.add_argument("-o", "--output", default="report.html", help="the HTML file (CSV tables go next to it)")
    p.add_argument("--simulations", type=int, default=500, help="replicates of the design for NPDE and VPC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bins", help="VPC bins: a number of automatic bins, or comma-separated edges")
    p.add_argument("--stratify", help="covariate to stratify the VPCs by")
    p.add_argument("--vpc", choices=["both", "vpc", "pcvpc"], default="both", help="which VPCs to draw")
    p.add_argument("--per-page", type=int, default=12, help="subjects per page of individual fits")
    p.add_argument("--data", help="the data file, when it is no longer where the fit read it")
    p.add_argument("--no-tables", action="store_true", help="write the HTML file only")
    p.set_defaults(func=_run)
    return p
