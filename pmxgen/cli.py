"""Command line: ``pmxgen fit | datasets | summarize | demo``.

``pmxgen fit theophylline --model 1cmt_oral --error additive --iiv KA,CL --method focei --output out/``
fits a population model and writes ``results.json`` and NONMEM-like tables.

``pmxgen demo theophylline --output out/`` summarises a bundled dataset, predicts its
concentrations with a structural model at typical parameter values, simulates a replicate
of the study with between-subject variability and residual error, and writes the tables.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UsageError

__all__ = ["main", "build_parser"]

#: Default model and typical values for the demo on each bundled real dataset.
_DEMO_SETTINGS = {
    "theophylline": ("1cmt_oral", {"KA": 1.5, "CL": 2.8, "V": 32.0}),
    "indomethacin": ("2cmt_iv", {"CL": 8.0, "V1": 6.0, "Q": 6.0, "V2": 12.0}),
    "pheno": ("1cmt_iv", {"CL": 0.0047, "V": 1.0}),
    "moxo": ("1cmt_oral", {"KA": 3.0, "CL": 27.0, "V": 90.0}),
}


def _parse_params(items: Sequence[str], option: str = "--param") -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"{option} expects NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"{option} {name}: {value!r} is not a number") from None
    return out


def _load(data: str, occasion: str | None = None, require_doses: bool = True):
    import pmxgen
    if Path(data).is_dir():
        raise UsageError(f"{data} is a folder; give a NONMEM-style data file or a bundled dataset name")
    if Path(data).exists():
        try:
            return pmxgen.read_nonmem(data, occasion=occasion, require_doses=require_doses)
        except OSError as exc:
            raise UsageError(f"{data} cannot be read ({exc.strerror or exc})") from None
    if data in pmxgen.datasets.list():
        return pmxgen.datasets.load(data, **({"occasion": occasion} if occasion else {}))
    raise UsageError(f"{data!r} is neither a file nor a bundled dataset "
                     f"({', '.join(pmxgen.datasets.list())})")


def _cmd_datasets(args) -> int:
    import pmxgen
    if args.name is None:
        for name in pmxgen.datasets.list():
            ds = pmxgen.datasets.load(name)
            print(f"{name:<24} {ds.n_subjects:>5} subjects {ds.n_observations:>6} observations  "
                  f"{pmxgen.datasets.path(name)}")
        return 0
    print(pmxgen.datasets.describe(args.name))
    return 0


def _cmd_summarize(args) -> int:
    ds = _load(args.data, args.occasion)
    print(ds.summary())
    return 0


def _cmd_demo(args) -> int:
    import torch

    import pmxgen
    from pmxgen.structural import get_model

    ds = _load(args.data)
    name = Path(args.data).stem if Path(args.data).exists() else args.data
    model_name, typical = _DEMO_SETTINGS.get(name, (args.model or "1cmt_oral", {}))
    model_name = args.model or model_name
    typical = {**typical, **_parse_params(args.param)}
    model = get_model(model_name)
    missing = [p for p in model.parameter_names if p not in typical]
    if missing:
        raise UsageError(f"give typical values for {', '.join(missing)} with --param NAME=VALUE")
    model.check_dataset(ds)
    print(ds.summary())
    print(f"\nModel {model_name}; typical values " + ", ".join(f"{k}={v:g}" for k, v in typical.items()))
    pred = model.predict({k: torch.tensor(v, dtype=ds.dtype) for k, v in typical.items()}, ds.batch)
    sim = pmxgen.simulate_dataset(model, ds, theta={k: typical[k] for k in model.parameter_names},
                                  omega={k: args.omega for k in model.parameter_names},
                                  error={"proportional": args.prop_error}, seed=args.seed)
    obs = ds.batch.obs
    observed = obs.dv[obs.mask].cpu().numpy()
    typical_pred = pred[obs.mask].detach().cpu().numpy()
    simulated = sim.dataset.batch.obs.dv[obs.mask].cpu().numpy()
    print("\n                      median      5%        95%")
    for label, v in (("observed DV", observed), ("typical prediction", typical_pred),
                     ("simulated DV", simulated)):
        q = np.percentile(v, [50, 5, 95])
        print(f"  {label:<18} {q[0]:>9.4g} {q[1]:>9.4g} {q[2]:>9.4g}")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        ds.observation_frame(pred, "PRED").to_csv(out / "predictions.csv", index=False)
        sim.dataset.to_frame().to_csv(out / "simulated.csv", index=False, na_rep=".")
        (out / "summary.json").write_text(json.dumps({
            "dataset": name, "model": model_name, "typical": typical, "omega": args.omega,
            "proportional_error": args.prop_error, "seed": args.seed, "subjects": ds.n_subjects,
            "observations": ds.n_observations, "dose_events": ds.n_dose_events,
            "observed_median": float(np.median(observed)), "prediction_median": float(np.median(typical_pred)),
            "simulated_median": float(np.median(simulated))}, indent=2))
        print(f"\nWrote {out / 'predictions.csv'}, {out / 'simulated.csv'}, {out / 'summary.json'}")
    return 0


def _split(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _estimator_flags() -> dict[str, dict]:
    """Every estimator option of the registry by flag: ``{flag: {method: CliOption}}``."""
    from pmxgen.estimation.registry import estimator_classes
    flags: dict[str, dict] = {}
    for method, cls in estimator_classes().items():
        for option in cls.cli_options:
            flags.setdefault(option.flag, {})[method] = option
    return flags


def _flag_dest(flag: str) -> str:
    return "est_" + flag.lstrip("-").replace("-", "_")


def _add_estimator_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per flag that any registered estimator declares; the help says which methods take it."""
    for flag, by_method in _estimator_flags().items():
        groups: dict[str, list[str]] = {}
        for method, option in by_method.items():
            text = option.help + (f" [{'/'.join(option.choices)}]" if option.choices else "")
            groups.setdefault(text, []).append(method)
        parser.add_argument(flag, dest=_flag_dest(flag), metavar="VALUE",
                            help="; ".join(f"{', '.join(methods)}: {text}" for text, methods in groups.items()))


def _fit_options(args) -> dict:
    """Estimator keywords from the command line (each method keeps its defaults where none is given).

    Each estimator declares its options (``cli_options``); an option the chosen method does not
    declare is refused naming the methods that take it, a value is converted and checked against
    the method's own choices.
    """
    from pmxgen.estimation.registry import get_estimator_class, normalise_method
    method = normalise_method(args.method)
    cls = get_estimator_class(method)
    params = cls._param_names()
    options: dict = {}
    if "seed" in params:
        options["seed"] = args.seed
    if "progress" in params:
        options["progress"] = not args.quiet
    own = {o.flag: o for o in cls.cli_options}
    for flag, by_method in _estimator_flags().items():
        raw = getattr(args, _flag_dest(flag), None)
        if raw is None:
            continue
        if flag not in own:
            raise UsageError(f"{flag} does not apply to --method {method}; it applies to {', '.join(by_method)}")
        option = own[flag]
        if option.choices and raw not in option.choices:
            raise UsageError(f"{flag} {raw} does not apply to --method {method}; choose one of "
                             f"{', '.join(option.choices)}")
        try:
            options[option.keyword] = option.convert(raw)
        except ValueError:
            raise UsageError(f"{flag}: {raw!r} is not a valid {option.type.__name__}") from None
    return options


def _check_output(out: Path, *, force: bool) -> None:
    """Refuse an ``--output`` that is a file, is not writable, or holds a previous run (without ``--force``)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out} is a file; give a folder")
    if out.is_dir() and (out / "fit.json").exists() and not force:
        raise UsageError(f"--output {out} holds a previous run (fit.json); choose another folder, or pass --force to "
                         f"replace its files")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pmxgen-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--output {out} cannot be written ({exc.strerror or exc}); choose a writable folder") from None


def _cmd_fit(args) -> int:
    import pmxgen
    from pmxgen.models import LIBRARY, build_model
    from pmxgen.models.loader import load_model_file
    from pmxgen.report import write_fit

    # Everything the command line can get wrong is checked before any reading or fitting.
    options = _fit_options(args)
    init = _parse_params(args.init, "--init") if args.init else None
    fixed = _parse_params(args.fix, "--fix") if args.fix else None
    if args.output:
        _check_output(Path(args.output), force=args.force)
    ds = _load(args.data, args.occasion, require_doses=not args.no_doses)
    if args.model.endswith(".py"):
        model = load_model_file(args.model, ds)
    elif args.model in LIBRARY:
        model = build_model(args.model, ds, error=args.error, iiv=_split(args.iiv), iov=_split(args.iov) or (),
                            full_omega=args.full_omega)
    else:
        raise UsageError(f"--model {args.model!r} is neither a .py model file nor a built-in model "
                         f"({', '.join(LIBRARY)})")
    if init:
        model = model.with_initial(init)
    if fixed:
        model = model.with_fixed(fixed)
    print(f"Fitting {model.name} to {ds.source} ({ds.n_subjects} subjects, {ds.n_observations} observations) "
          f"by {args.method.upper()}", file=sys.stderr, flush=True)
    fit = pmxgen.fit(model, ds, method=args.method, **options)
    print(fit.summary())
    if args.output:
        out = Path(args.output)
        replaced = sorted(p.name for p in out.glob("*") if p.is_file()) if out.is_dir() else []
        paths = write_fit(fit, out)
        print("\nWrote " + ", ".join(str(p) for p in paths))
        if replaced:
            print(f"(--force: replaced the previous run's files in {out}: {', '.join(replaced)})")
    return 0 if fit.status == "converged" else 1


def _load_plugins(argv: list[str]) -> None:
    """Import the ``--plugin`` files or modules first, so their estimators are choices of ``--method``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    if known.plugin:
        from pmxgen.estimation.registry import load_plugin
        for spec in known.plugin:
            load_plugin(spec)


def build_parser() -> argparse.ArgumentParser:
    from pmxgen.report.command import register as register_report
    from pmxgen.simulation.command import register as register_simulate

    parser = argparse.ArgumentParser(prog="pmxgen", description="Population pharmacometrics with pmxgen.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit a population model (any registered method: FO, FOCE, FOCE-I, Laplace, SAEM, "
                                   "MCEM, VEM, ...) and write the results")
    p.add_argument("data", help="a NONMEM-style file or a bundled dataset name")
    p.add_argument("--model", required=True, help="built-in model (1cmt_oral, 2cmt_iv, ...) or a .py model file")
    from pmxgen.estimation.registry import estimator_classes
    methods = estimator_classes()
    p.add_argument("--method", default="focei", choices=list(methods), metavar="METHOD",
                   help="estimation method: " + "; ".join(f"{name} ({cls.summary})" for name, cls in methods.items()))
    p.add_argument("--error", default="combined",
                   choices=["additive", "proportional", "combined", "combined_sd", "exponential"],
                   help="residual error model (built-in models)")
    p.add_argument("--iiv", help="comma-separated parameters with IIV (built-in models), e.g. KA,CL,V")
    p.add_argument("--iov", help="comma-separated parameters with inter-occasion variability (needs --occasion)")
    p.add_argument("--occasion", help="occasion column of the data file")
    p.add_argument("--no-doses", action="store_true",
                   help="the data have no dose records (a non-PK model, e.g. PPCA or a linear mixed model)")
    p.add_argument("--full-omega", action="store_true", help="one full Omega block over the IIV effects")
    p.add_argument("--init", action="append", default=[], metavar="NAME=VALUE",
                   help="initial estimate, e.g. CL=3 or OMEGA(CL)=0.1 (repeatable)")
    p.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                   help="fix a parameter at a value, e.g. KA=1.5 or SIGMA(ADD)=0.01 (repeatable; Omega by whole "
                        "blocks, as NONMEM)")
    _add_estimator_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--output", help="folder for results.json, fit.json and the tables (checked before fitting)")
    p.add_argument("--force", action="store_true", help="replace the files of a previous run in --output")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="import an estimator plugin first (a .py file or module that registers estimators; "
                        "repeatable); installed packages can use the entry-point group pmxgen.estimators")
    p.set_defaults(func=_cmd_fit)
    p = sub.add_parser("datasets", help="list bundled datasets, or describe one")
    p.add_argument("name", nargs="?", help="a dataset name: print its README")
    p.set_defaults(func=_cmd_datasets)
    p = sub.add_parser("summarize", help="read a NONMEM-style file (or bundled dataset) and summarise it")
    p.add_argument("data")
    p.add_argument("--occasion", help="occasion column")
    p.set_defaults(func=_cmd_summarize)
    p = sub.add_parser("demo", help="summarise a dataset, predict with a model and simulate a replicate study")
    p.add_argument("data", help="a file or a bundled dataset name")
    p.add_argument("--model", help="built-in structural model (see pmxgen.structural.MODELS)")
    p.add_argument("--param", action="append", default=[], help="typical value NAME=VALUE (repeatable)")
    p.add_argument("--omega", type=float, default=0.09, help="IIV variance on every parameter (log scale)")
    p.add_argument("--prop-error", type=float, default=0.1, help="proportional residual error SD")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output", help="folder for predictions.csv, simulated.csv, summary.json")
    p.set_defaults(func=_cmd_demo)
    register_report(sub)
    register_simulate(sub)
    from pmxgen.report.generators_command import register as register_compare_generators
    register_compare_generators(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pmxgen`` console script.

    Examples
    --------
    >>> main(["summarize", "theophylline"])  # doctest: +ELLIPSIS
    Dataset ...
    0
    """
    from pmxgen.errors import PmxgenError
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _load_plugins(argv)
        args = build_parser().parse_args(argv)
        return args.func(args)
    except PmxgenError as exc:
        print(f"pmxgen: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
