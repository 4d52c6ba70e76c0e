"""``pmxgen simulate RESULTS_DIR --regimen TEXT [--regimen TEXT ...]``: counterfactual dosing from the command line.

Examples::

    pmxgen simulate out/ --regimen "320 mg q12h x6" --regimen "640 mg q24h x3" --n 10000 \\
        --target "cmin[last]>=3" --output sim/
    pmxgen simulate out/ --individual --draws 200 --regimen "1 g iv over 1 h q8h x6" --output sim/
    pmxgen simulate out/ --population vpop.csv --regimen "100 mg q24h x7" --target "auc[last]>=20" \
        --strata SEX --output sim/
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["register", "run_command"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``simulate`` subcommand to ``subparsers`` (from :func:`pmxgen.cli.build_parser`)."""
    p = subparsers.add_parser("simulate", help="simulate a fitted model under dosing regimens (exposures, PTA)",
                              description="Simulate virtual subjects (or the observed subjects with --individual) "
                                          "of a fitted run under dosing regimens; print exposures and target "
                                          "attainment, and write tables, a figure and a netCDF file.")
    p.add_argument("results", help="a results folder written by `pmxgen fit --output DIR` (or its fit.json)")
    p.add_argument("--regimen", action="append", default=[], metavar="TEXT",
                   help="a regimen, e.g. '500 mg q12h x14' or '1 g iv over 1 h q8h x6' (repeatable)")
    p.add_argument("--n", type=int, default=None, help="virtual subjects per replicate (default 1000; with "
                                                        "--population: its rows)")
    p.add_argument("--population", metavar="CSV",
                   help="a virtual population (e.g. from `pmxgen generate`): one virtual subject per row with its "
                        "covariates, applied through the model's covariate effects")
    p.add_argument("--strata", metavar="COLUMN[:CUTS]",
                   help="--population: PTA per stratum of a column (SEX) or of bands of a numeric one (AGE:40,65)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--individual", action="store_true",
                   help="counterfactuals of the observed subjects (own EBE / posterior) instead of a population")
    p.add_argument("--draws", type=int, default=0, help="--individual: posterior draws per subject (0: the EBE)")
    p.add_argument("--replicates", type=int, default=1, help="populations of --n subjects")
    p.add_argument("--uncertainty", action="store_true",
                   help="draw each replicate's population parameters from the estimates' covariance")
    p.add_argument("--residual-error", action="store_true", help="add residual error to the profiles (dv)")
    p.add_argument("--target", action="append", default=[], metavar="TEXT",
                   help="target for PTA, METRIC[WINDOW]OP VALUE, e.g. 'auc[last]>=400' (repeatable)")
    p.add_argument("--threshold", type=float, help="concentration for time above threshold (t_above, ft_above)")
    p.add_argument("--window", action="append", metavar="NAME", help="exposure window: first, last, total")
    p.add_argument("--horizon", type=float, help="end of the simulated time (default: last dose + interval)")
    p.add_argument("--profiles", type=int, default=200,
                   help="subjects per replicate whose concentration profiles are kept (default 200)")
    p.add_argument("--exposures", type=int, default=100000,
                   help="subjects per replicate whose exposures are kept (quantiles; default 100000)")
    p.add_argument("--chunk-size", type=int, default=8192)
    p.add_argument("--amount-unit", default="mg", help="amount unit of the data (default mg)")
    p.add_argument("--time-unit", default="h", help="time unit of the data (default h)")
    p.add_argument("--device", help="torch device, e.g. cuda")
    p.add_argument("--output", help="folder for profiles.csv, exposures.csv, summary.csv, pta.csv, summary.png, "
                                    "simulation.nc")
    p.set_defaults(func=run_command)
    return p


def run_command(args) -> int:
    from ..errors import PmxgenError
    from .counterfactual import simulate_individuals
    from .exposure import parse_target
    from .population import simulate_population
    from .regimen import RegimenError, as_regimens, parse_regimen

    if args.population and args.individual:
        raise RegimenError("--population and --individual exclude each other")
    if args.strata and not args.population:
        raise RegimenError("--strata needs --population (the strata are columns of the virtual population)")
    if not args.regimen and not args.individual:
        raise RegimenError("give at least one --regimen TEXT (or --individual for the observed regimens)")
    regimens = as_regimens([parse_regimen(t, amount_unit=args.amount_unit, time_unit=args.time_unit)
                            for t in args.regimen]) if args.regimen else []
    targets = [parse_target(t) for t in args.target]
    try:
        from ..runs import load_run
        run = load_run(args.results, device=args.device)
    except FileNotFoundError as exc:
        raise PmxgenError(str(exc)) from None
    common = dict(seed=args.seed, residual_error=args.residual_error, windows=args.window, horizon=args.horizon,
                  threshold=args.threshold, targets=targets, keep_profiles=args.profiles,
                  keep_exposures=args.exposures, chunk_size=args.chunk_size, device=args.device)
    if args.individual:
        result = simulate_individuals(run, regimens, draws=args.draws, **common)
    elif args.population:
        from ..generative.vpop import read_covariates
        from .virtual import simulate_virtual_population
        rows = len(read_covariates(args.population)[0])
        if args.n is not None and args.n != rows:
            raise RegimenError(f"--n {args.n} differs from the {rows} rows of --population; leave --n out (each row "
                               f"is one virtual subject)")
        result = simulate_virtual_population(run, args.population, regimens, strata=args.strata,
                                             replicates=args.replicates, uncertainty=args.uncertainty, **common)
    else:
        result = simulate_population(run, regimens, n=args.n if args.n is not None else 1000,
                                     replicates=args.replicates, uncertainty=args.uncertainty, **common)
    print(result.summary_text())
    if args.output:
        paths = result.write(args.output)
        print("\nWrote " + ", ".join(str(p) for p in paths))
    sys.stdout.flush()
    return 0
