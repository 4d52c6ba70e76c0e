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

__all__ = ["main"]

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
            raise SystemExit(f"pmxgen: {option} expects NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"pmxgen: {option} {name}: {value!r} is not a number") from None
    return out


def _load(data: str, occasion: str | None = None):
    import pmxgen
    if Path(data).exists():
        return pmxgen.read_nonmem(data, occasion=occasion)
    if data in pmxgen.datasets.list():
        return pmxgen.datasets.load(data, **({"occasion": occasion} if occasion else {}))
    raise SystemExit(f"pmxgen: {data!r} is neither a file nor a bundled dataset "
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
    missing = [p for p in model.parameters if p not in typical]
    if missing:
        raise SystemExit(f"pmxgen: give typical values for {', '.join(missing)} with --param NAME=VALUE")
    model.check_dataset(ds)
    print(ds.summary())
    print(f"\nModel {model_name}; typical values " + ", ".join(f"{k}={v:g}" for k, v in typical.items()))
    pred = model.predict({k: torch.tensor(v, dtype=ds.dtype) for k, v in typical.items()}, ds.batch)
    sim = pmxgen.simulate_dataset(model, ds, theta={k: typical[k] for k in model.parameters},
                                  omega={k: args.omega for k in model.parameters},
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


def _fit_options(args) -> dict:
    """Estimator keywords from the command line (each method keeps its defaults where none is given)."""
    em = args.method in ("saem", "mcem")
    vem = args.method == "vem"
    options: dict = {"seed": args.seed, "progress": not args.quiet}
    if args.covariance is not None:
        allowed = (("louis", "linearization", "none") if em else ("linearization", "none") if vem
                   else ("sandwich", "R", "S", "none"))
        if args.covariance not in allowed:
            raise SystemExit(f"pmxgen: --covariance {args.covariance} does not apply to --method {args.method}; "
                             f"choose one of {', '.join(allowed)}")
        options["covariance"] = None if args.covariance == "none" else args.covariance
    if args.importance_samples is not None:
        options["importance_samples"] = args.importance_samples
    if args.max_iter is not None and args.method != "saem":
        options["max_iter"] = args.max_iter
    if em and args.chains is not None:
        options["n_chains"] = args.chains
    if args.derivatives is not None:
        if args.method not in ("fo", "foce", "focei", "laplace"):
            raise SystemExit(f"pmxgen: --derivatives applies to fo, foce, focei and laplace, not --method "
                             f"{args.method}")
        options["derivatives"] = args.derivatives
    if args.method == "saem":
        for key in ("n_explore", "n_smooth"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
    vem_only = {"posterior": args.posterior, "flow": args.flow, "bound": args.bound, "n_samples": args.vem_samples,
                "refine_iter": args.refine_iter}
    given = [key for key, v in vem_only.items() if v is not None]
    if given and not vem:
        raise SystemExit(f"pmxgen: --{given[0].replace('_', '-')} applies to --method vem only")
    options.update({key: v for key, v in vem_only.items() if v is not None})
    return options


def _cmd_fit(args) -> int:
    import pmxgen
    from pmxgen.models import LIBRARY, build_model
    from pmxgen.models.loader import load_model_file
    from pmxgen.report import write_fit

    ds = _load(args.data, args.occasion)
    if args.model.endswith(".py"):
        model = load_model_file(args.model, ds)
    elif args.model in LIBRARY:
        model = build_model(args.model, ds, error=args.error, iiv=_split(args.iiv), iov=_split(args.iov) or (),
                            full_omega=args.full_omega)
    else:
        raise SystemExit(f"pmxgen: --model {args.model!r} is neither a .py model file nor a built-in model "
                         f"({', '.join(LIBRARY)})")
    if args.init:
        model = model.with_initial(_parse_params(args.init, "--init"))
    if args.fix:
        model = model.with_fixed(_parse_params(args.fix, "--fix"))
    print(f"Fitting {model.name} to {ds.source} ({ds.n_subjects} subjects, {ds.n_observations} observations) "
          f"by {args.method.upper()}", file=sys.stderr, flush=True)
    fit = pmxgen.fit(model, ds, method=args.method, **_fit_options(args))
    print(fit.summary())
    if args.output:
        paths = write_fit(fit, args.output)
        print("\nWrote " + ", ".join(str(p) for p in paths))
    return 0 if fit.status == "converged" else 1


def build_parser() -> argparse.ArgumentParser:
    from pmxgen.report.command import register as register_report
    from pmxgen.simulation.command import register as register_simulate

    parser = argparse.ArgumentParser(prog="pmxgen", description="Population pharmacometrics with pmxgen.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit a population model (FO, FOCE, FOCE-I, Laplace, SAEM, MCEM, VEM) and write the "
                                   "results")
    p.add_argument("data", help="a NONMEM-style file or a bundled dataset name")
    p.add_argument("--model", required=True, help="built-in model (1cmt_oral, 2cmt_iv, ...) or a .py model file")
    p.add_argument("--method", default="focei", choices=["fo", "foce", "focei", "laplace", "saem", "mcem", "vem"])
    p.add_argument("--error", default="combined",
                   choices=["additive", "proportional", "combined", "combined_sd", "exponential"],
                   help="residual error model (built-in models)")
    p.add_argument("--iiv", help="comma-separated parameters with IIV (built-in models), e.g. KA,CL,V")
    p.add_argument("--iov", help="comma-separated parameters with inter-occasion variability (needs --occasion)")
    p.add_argument("--occasion", help="occasion column of the data file")
    p.add_argument("--full-omega", action="store_true", help="one full Omega block over the IIV effects")
    p.add_argument("--init", action="append", default=[], metavar="NAME=VALUE",
                   help="initial estimate, e.g. CL=3 or OMEGA(CL)=0.1 (repeatable)")
    p.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                   help="fix a parameter at a value, e.g. KA=1.5 or SIGMA(ADD)=0.01 (repeatable; Omega by whole "
                        "blocks, as NONMEM)")
    p.add_argument("--covariance", choices=["sandwich", "R", "S", "louis", "linearization", "none"],
                   help="standard errors: sandwich (default), R or S for the classical methods; louis (default) or "
                        "linearization for SAEM/MCEM; linearization (default) for VEM; none skips them")
    p.add_argument("--importance-samples", type=int,
                   help="draws per subject for the importance-sampling -2LL at the estimates (classical default 0: "
                        "skip; SAEM/MCEM always compute it, default 1000)")
    p.add_argument("--max-iter", type=int, help="maximum iterations (classical: BFGS, default 500; MCEM: 100; "
                                                 "VEM: gradient steps, default 1000)")
    p.add_argument("--derivatives", choices=["auto", "expansion", "autograd"],
                   help="FO/FOCE/FOCE-I/Laplace: derivatives of the predictions from a Taylor expansion (second "
                        "order; third for Laplace; central differences in one batched evaluation) or autograd; "
                        "auto (default) expands ODE models")
    p.add_argument("--n-explore", type=int, help="SAEM: exploratory iterations (default 300)")
    p.add_argument("--n-smooth", type=int, help="SAEM: smoothing iterations (default 200)")
    p.add_argument("--chains", type=int, help="SAEM/MCEM: MCMC chains per subject (default ceil(200/N))")
    p.add_argument("--posterior", choices=["gaussian", "flow", "amortized"],
                   help="VEM: each subject's posterior family (default gaussian)")
    p.add_argument("--flow", help="VEM --posterior flow: the flow, e.g. affine+planar*4 (default) or "
                                  "affine+coupling*2+radial*2")
    p.add_argument("--bound", choices=["elbo", "iwae"], help="VEM: the bound maximised (default elbo)")
    p.add_argument("--vem-samples", type=int, help="VEM: draws per subject per gradient step (default 8)")
    p.add_argument("--refine-iter", type=int,
                   help="VEM --posterior amortized: per-subject refinement steps after the encoder fit (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--output", help="folder for results.json, fit.json and the tables")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pmxgen`` console script.

    Examples
    --------
    >>> main(["summarize", "theophylline"])  # doctest: +ELLIPSIS
    Dataset ...
    0
    """
    args = build_parser().parse_args(argv)
    from pmxgen.errors import PmxgenError
    try:
        return args.func(args)
    except PmxgenError as exc:
        print(f"pmxgen: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
