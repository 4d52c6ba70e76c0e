#!/usr/bin/env python3
"""Write pmxgen's simulated data sets (CSV, truth.json, README.md) with known true parameters.

Run from the repository root::

    python datasets/make_simulated.py [--output DIR] [NAME ...]

With no names, all four data sets are written, each to ``<output>/<name>/`` (default: this
``datasets/`` folder):

``sim_1cmt_oral_wt``
    one-compartment oral, 100 subjects, single 100 mg dose, weight on clearance;
``sim_2cmt_iv_infusion``
    two-compartment IV, 200 subjects, 500 mg as 1-h infusions every 12 h, 4 doses;
``sim_mm_oral``
    one-compartment oral with Michaelis-Menten elimination (ODE), 100 subjects, 100 or 800 mg;
``sim_1cmt_oral_1000``
    one-compartment oral, 1000 subjects, correlated CL-V variability, jittered sampling times.

Everything a data set is made from is in :data:`SPECS` and is written to its ``truth.json``
(true θ, Ω, σ, seed, design); :func:`simulate_from_truth` rebuilds the data from that
dict alone, so ``simulate_from_truth(json.load(open("truth.json")))`` reproduces the CSV.
The output is deterministic: the design's random parts (weights, time jitter) come from
``numpy.random.default_rng(seed)`` and the simulation from a ``torch.Generator`` seeded with
``seed`` (float64 on the CPU). DV is written with 6 significant digits.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:          # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent))

import pmxgen  # noqa: E402
from pmxgen.simulation import SimulatedData, design_frame, simulate_dataset  # noqa: E402

#: Keys every truth.json has.
TRUTH_KEYS = ("name", "description", "model", "parameters", "theta", "omega", "omega_matrix", "error", "seed",
              "n_subjects", "n_observations", "individual_model", "design", "units", "generated_by")

UNITS = {"TIME": "h", "AMT": "mg", "DV": "mg/L", "RATE": "mg/h", "CL, Q, VM": "L/h (VM: mg/h)",
         "V, V1, V2": "L", "KA": "1/h", "KM": "mg/L", "WT": "kg"}


def _block(names: list[str], variances: dict[str, float], correlations: dict[tuple[str, str], float]) -> list:
    """Covariance matrix (nested lists) from variances and correlations."""
    sd = np.sqrt([variances[n] for n in names])
    m = np.diag(sd ** 2)
    for (a, b), r in correlations.items():
        i, j = names.index(a), names.index(b)
        m[i, j] = m[j, i] = r * sd[i] * sd[j]
    return m.tolist()


def _diagonal(names: list[str], variances: dict[str, float]) -> list:
    return np.diag([variances[n] for n in names]).tolist()


SPECS: dict[str, dict] = {
    "sim_1cmt_oral_wt": {
        "description": "One-compartment oral PK with first-order absorption; single 100 mg dose; "
                       "allometric body-weight effect on clearance.",
        "model": "1cmt_oral",
        "theta": {"KA": 1.2, "CL": 4.0, "V": 35.0, "WT_ON_CL": 0.75},
        "omega": {"KA": 0.16, "CL": 0.09, "V": 0.04},
        "error": {"proportional": 0.12, "additive": 0.03},
        "seed": 101,
        "n_subjects": 100,
        "individual_model": "KA_i = KA*exp(eta_KA); CL_i = CL*(WT/70)^WT_ON_CL*exp(eta_CL); V_i = V*exp(eta_V); "
                            "eta ~ N(0, diag(omega))",
        "design": {"doses": [{"time": 0, "amt": 100, "cmt": 1}],
                   "obs_times": [0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 24], "obs_cmt": 2,
                   "covariates": {"WT": {"distribution": "lognormal", "median": 70.0, "sd_log": 0.2,
                                         "decimals": 1, "reference": 70.0}}},
    },
    "sim_2cmt_iv_infusion": {
        "description": "Two-compartment IV PK; 500 mg given as 1-h infusions every 12 h, 4 doses (one record "
                       "with ADDL=3, II=12, RATE=500); samples after the first dose, at troughs and after the "
                       "last dose.",
        "model": "2cmt_iv",
        "theta": {"CL": 5.0, "V1": 20.0, "Q": 8.0, "V2": 50.0},
        "omega": {"CL": 0.09, "V1": 0.04, "Q": 0.04, "V2": 0.0625},
        "error": {"proportional": 0.1, "additive": 0.2},
        "seed": 202,
        "n_subjects": 200,
        "individual_model": "P_i = P*exp(eta_P) for P in CL, V1, Q, V2; eta ~ N(0, diag(omega))",
        "design": {"doses": [{"time": 0, "amt": 500, "cmt": 1, "rate": 500, "ii": 12, "addl": 3}],
                   "obs_times": [0.5, 1, 2, 4, 8, 11.5, 23.5, 35.5, 37, 38, 42, 48], "obs_cmt": 1},
    },
    "sim_mm_oral": {
        "description": "One-compartment oral PK with Michaelis-Menten (saturable) elimination, integrated as "
                       "an ODE; single oral dose of 100 mg (IDs 1-50) or 800 mg (IDs 51-100), so that "
                       "concentrations span KM and both VM and KM are identifiable.",
        "model": "1cmt_oral_mm",
        "theta": {"KA": 1.0, "VM": 20.0, "KM": 5.0, "V": 40.0},
        "omega": {"KA": 0.09, "VM": 0.09, "V": 0.04},
        "error": {"proportional": 0.1, "additive": 0.05},
        "seed": 303,
        "n_subjects": 100,
        "individual_model": "KA_i = KA*exp(eta_KA); VM_i = VM*exp(eta_VM); KM_i = KM (no IIV); "
                            "V_i = V*exp(eta_V); eta ~ N(0, diag(omega)); "
                            "dA1/dt = -KA_i*A1, dA2/dt = KA_i*A1 - VM_i*C/(KM_i + C), C = A2/V_i",
        "design": {"dose_groups": [{"amt": 100, "n_subjects": 50}, {"amt": 800, "n_subjects": 50}],
                   "doses": [{"time": 0, "cmt": 1}],
                   "obs_times": [0.5, 1, 2, 3, 4, 6, 8, 12, 24, 36, 48], "obs_cmt": 2},
    },
    "sim_1cmt_oral_1000": {
        "description": "One-compartment oral PK in 1000 subjects (for scale work); single 200 mg dose; "
                       "correlated IIV on CL and V; 8 samples per subject at nominal times with "
                       "random jitter.",
        "model": "1cmt_oral",
        "theta": {"KA": 1.0, "CL": 3.0, "V": 25.0},
        "omega": {"KA": 0.25, "CL": 0.09, "V": 0.04},
        "omega_correlations": {"CL,V": 0.6},
        "error": {"proportional": 0.15, "additive": 0.05},
        "seed": 404,
        "n_subjects": 1000,
        "individual_model": "P_i = P*exp(eta_P) for P in KA, CL, V; eta ~ N(0, omega_matrix) with corr(eta_CL, "
                            "eta_V) = 0.6",
        "design": {"doses": [{"time": 0, "amt": 200, "cmt": 1}],
                   "obs_times": [0.5, 1, 2, 4, 6, 8, 12, 24], "obs_cmt": 2,
                   "time_jitter": {"distribution": "lognormal", "sd_log": 0.1, "decimals": 2}},
    },
}


def truth_of(name: str) -> dict:
    """The truth.json content of data set ``name`` (without ``n_observations``, known after simulation)."""
    if name not in SPECS:
        raise KeyError(f"unknown simulated data set {name!r}; known: {', '.join(SPECS)}")
    spec = copy.deepcopy(SPECS[name])
    model = pmxgen.get_model(spec["model"])
    names = list(spec["omega"])
    corr = {tuple(k.split(",")): v for k, v in spec.pop("omega_correlations", {}).items()}
    matrix = _block(names, spec["omega"], corr) if corr else _diagonal(names, spec["omega"])
    truth = {"name": name, "description": spec["description"], "model": spec["model"],
             "parameters": list(model.parameter_names), "theta": spec["theta"], "omega": spec["omega"],
             "omega_matrix": {"names": names, "matrix": matrix}, "error": spec["error"], "seed": spec["seed"],
             "n_subjects": spec["n_subjects"], "n_observations": None, "individual_model": spec["individual_model"],
             "design": spec["design"], "units": dict(UNITS), "generated_by": "python datasets/make_simulated.py"}
    return truth


def _individual(truth: dict):
    """The individual-parameter model of a data set (None: P_i = θ_P exp(η_P))."""
    if truth["name"] == "sim_1cmt_oral_wt":
        reference = truth["design"]["covariates"]["WT"]["reference"]

        def individual(theta, eta, cov):
            return {"KA": theta["KA"] * torch.exp(eta["KA"]),
                    "CL": theta["CL"] * (cov["WT"] / reference) ** theta["WT_ON_CL"] * torch.exp(eta["CL"]),
                    "V": theta["V"] * torch.exp(eta["V"])}
        return individual
    return None


def design_of(truth: dict) -> pd.DataFrame:
    """The design (records with DV placeholders) of a data set, from its truth dict."""
    design, n, name = truth["design"], truth["n_subjects"], truth["name"]
    rng = np.random.default_rng(truth["seed"])
    covariates = {}
    for cov, how in design.get("covariates", {}).items():
        values = how["median"] * np.exp(how["sd_log"] * rng.standard_normal(n))
        covariates[cov] = np.round(values, how["decimals"])
    doses = [dict(d) for d in design["doses"]]
    if "dose_groups" in design:
        groups = design["dose_groups"]
        if sum(g["n_subjects"] for g in groups) != n:
            raise ValueError(f"{name}: dose groups do not add up to {n} subjects")
        amt = np.concatenate([np.full(g["n_subjects"], float(g["amt"])) for g in groups])
        for d in doses:
            d["amt"] = amt
        covariates["DOSE"] = amt
    obs_times = design["obs_times"]
    if "time_jitter" in design:
        jitter = design["time_jitter"]
        nominal = np.asarray(obs_times, dtype=np.float64)

        def obs_times(generator):
            t = nominal * np.exp(jitter["sd_log"] * generator.standard_normal(len(nominal)))
            return np.round(t, jitter["decimals"])
    return design_frame(n, doses=doses, obs_times=obs_times, covariates=covariates or None,
                        obs_cmt=design["obs_cmt"], seed=rng)


def simulate_from_truth(truth: dict) -> SimulatedData:
    """Simulate data set ``truth['name']`` from its truth dict (as in truth.json): the bundled data, unrounded."""
    om = truth["omega_matrix"]
    return simulate_dataset(truth["model"], design_of(truth), theta=truth["theta"],
                            omega=(om["names"], np.asarray(om["matrix"], dtype=np.float64)), error=truth["error"],
                            individual=_individual(truth), seed=truth["seed"])


def csv_text(sim: SimulatedData) -> str:
    """The CSV of a simulation: NONMEM columns, '.' for missing, numbers with 6 significant digits."""
    frame = sim.dataset.to_frame()
    return frame.to_csv(index=False, na_rep=".", float_format="%.6g", lineterminator="\n")


def _range(values) -> str:
    lo, hi = int(np.min(values)), int(np.max(values))
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def readme_text(truth: dict, sim: SimulatedData) -> str:
    """README.md of a simulated data set, from its truth."""
    ds = sim.dataset
    name, design = truth["name"], truth["design"]
    n_obs = ds.observations_per_subject
    frame = ds.to_frame()
    cols = list(frame.columns)
    lines = [f"# {name}", "", truth["description"], "",
             "**Simulated data** with known true parameters (in `truth.json`), for testing and comparing "
             "estimators. Made by `python datasets/make_simulated.py` (deterministic; CPU, float64).", "",
             "## Model", "",
             f"- Structural model: `pmxgen.get_model('{truth['model']}')` (parameters "
             f"{', '.join(truth['parameters'])}).",
             f"- Individual parameters: {truth['individual_model']}.",
             "- Residual error: `DV = IPRED + IPRED*eps_prop + eps_add`, eps_prop ~ N(0, proportional^2), "
             "eps_add ~ N(0, additive^2), independent (no censoring: DV can be slightly negative where IPRED is "
             "near 0).", "",
             "## True values", "",
             "| parameter | value |", "|---|---|"]
    lines += [f"| theta `{k}` | {_fmt(v)} |" for k, v in truth["theta"].items()]
    lines += [f"| omega `{k}` (variance of eta_{k}; CV ~ {100 * np.sqrt(np.exp(v) - 1):.0f}%) | {_fmt(v)} |"
              for k, v in truth["omega"].items()]
    om = truth["omega_matrix"]
    m = np.asarray(om["matrix"])
    for i in range(len(om["names"])):
        for j in range(i):
            if m[i, j] != 0:
                r = m[i, j] / np.sqrt(m[i, i] * m[j, j])
                lines.append(f"| omega covariance `{om['names'][j]},{om['names'][i]}` (correlation {r:g}) | "
                             f"{m[i, j]:.6g} |")
    lines += [f"| error `{k}` (SD) | {_fmt(v)} |" for k, v in truth["error"].items()]
    lines += ["", f"Seed {truth['seed']}.", "", "## Design", ""]
    lines.append(f"- {truth['n_subjects']} subjects (IDs 1-{truth['n_subjects']}), {ds.n_observations} "
                 f"observations ({_range(n_obs)} per subject), {ds.n_dose_records} dose records "
                 f"({ds.n_dose_events} dose events after ADDL).")
    for d in design["doses"]:
        parts = [f"time {d['time']} h", f"CMT {d.get('cmt', 1)}"]
        if "amt" in d:
            parts.insert(1, f"{d['amt']} mg")
        if d.get("rate", 0) > 0:
            parts.append(f"infusion RATE {d['rate']} mg/h ({d['amt'] / d['rate']:g} h)")
        if d.get("addl", 0):
            parts.append(f"plus ADDL={d['addl']} more every II={d['ii']} h")
        lines.append("- Dose: " + ", ".join(parts) + ".")
    if "dose_groups" in design:
        lines.append("- Dose groups: " + "; ".join(f"{g['amt']} mg in {g['n_subjects']} subjects"
                                                   for g in design["dose_groups"]) +
                     " (in ID order; the amount is also in covariate `DOSE`).")
    lines.append(f"- Nominal sampling times (h): {', '.join(_fmt(float(t)) for t in design['obs_times'])} "
                 f"(CMT {design['obs_cmt']}).")
    if "time_jitter" in design:
        j = design["time_jitter"]
        lines.append(f"- Each subject's sampling times are the nominal ones times exp(N(0, {j['sd_log']}^2)), "
                     f"rounded to {j['decimals']} decimals.")
    for cov, how in design.get("covariates", {}).items():
        v = frame.groupby("ID")[cov].first()
        lines.append(f"- Covariate `{cov}`: log-normal, median {how['median']:g}, SD of log {how['sd_log']:g}, "
                     f"rounded to {how['decimals']} decimal (observed median {v.median():g}, range "
                     f"{v.min():g}-{v.max():g}); reference value {how['reference']:g}.")
    lines += ["", "## Columns and units", "",
              f"`{','.join(cols)}` (NONMEM format; `.` = missing). TIME and II in h, AMT in mg, RATE in mg/h, "
              "DV in mg/L; EVID 1 dose, 0 observation; MDV 1 on dose records. Parameter units: CL, Q in L/h; "
              "V, V1, V2 in L; KA in 1/h; VM in mg/h; KM in mg/L; WT in kg.", "",
              "## Use", "", "```python", "import pmxgen",
              f"ds = pmxgen.datasets.load({name!r})",
              f"truth = pmxgen.datasets.truth({name!r})   # the contents of truth.json", "```", "",
              "## Regenerating", "",
              "`python datasets/make_simulated.py " + name + "` rewrites this folder; "
              "`simulate_from_truth(truth)` in that script rebuilds the data from `truth.json` alone "
              "(the design's random parts from `numpy.random.default_rng(seed)`, the simulation from "
              "`torch.Generator().manual_seed(seed)`).", ""]
    return "\n".join(lines)


def write(name: str, output: Path) -> dict:
    """Simulate data set ``name`` and write its folder; returns the truth."""
    truth = truth_of(name)
    sim = simulate_from_truth(truth)
    truth["n_observations"] = sim.dataset.n_observations
    folder = output / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.csv").write_text(csv_text(sim))
    (folder / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    (folder / "README.md").write_text(readme_text(truth, sim))
    return truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"data sets to write (default all: {', '.join(SPECS)})")
    parser.add_argument("--output", type=Path, default=HERE, help="folder receiving <name>/ (default: datasets/)")
    args = parser.parse_args(argv)
    for name in args.names or list(SPECS):
        truth = write(name, args.output)
        csv = args.output / name / f"{name}.csv"
        print(f"{name}: {truth['n_subjects']} subjects, {truth['n_observations']} observations, "
              f"{csv.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
