#!/usr/bin/env python3
"""Convert the public source data sets into pmxgen's bundled NONMEM-format CSVs.

Run from the repository root::

    python datasets/convert_shared_data.py [--shared DIR] [--output DIR]

``--shared`` is the folder holding the source files (default ``../shared/data``
relative to the repository root): ``r_Theoph.csv``, ``r_Indometh.csv``,
``pheno.dta``, ``moxo.csv`` and ``pmxnode_example1.csv``.  ``--output`` is the folder that receives one
sub-folder per data set (default: this ``datasets/`` folder), each with
``<name>/<name>.csv``.  The READMEs next to the CSVs are written by hand and are
not touched.

The conversion uses only the standard library (``csv`` and Python's own
``float``/``int`` parsing, which is exact), so it is deterministic: re-running it
reproduces byte-identical files.  Numbers are written with :func:`fmt`: integral
values without a decimal part, other floats with ``repr`` (the shortest string
that reads back to the same double).  The NONMEM missing value is ``.``.

Conventions shared by all the files (see each README for details):

* columns ``ID, TIME, DV, AMT, EVID, MDV, CMT`` first, then any dosing columns
  the data need (``SS, II`` for moxo), then covariates/other source columns;
* dose records: ``EVID`` 1 (or 4 in moxo), ``MDV`` 1;
* observation records: ``EVID`` 0, ``MDV`` 0, ``AMT`` 0.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

MISSING = "."


# ---------------------------------------------------------------------------
# helpers


def num(text: str) -> int | float:
    """Parse a numeric source field exactly (int when the text is an integer)."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"non-finite number in source: {text!r}")
        return value


def fmt(value) -> str:
    """Format a value for the CSV: integral numbers as integers, floats via repr."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise TypeError("booleans are not expected in the data")
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    assert float(text) == value  # repr always round-trips; keep the promise explicit
    return text


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    return header, rows


def write_dataset(out_dir: Path, name: str, columns: list[str], rows: list[dict]) -> Path:
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            if set(row) != set(columns):
                raise ValueError(f"{name}: row keys {sorted(row)} != columns {columns}")
            writer.writerow([fmt(row[c]) for c in columns])
    return path


def summary(name: str, rows: list[dict]) -> str:
    ids = {r["ID"] for r in rows}
    n_obs = sum(1 for r in rows if r["EVID"] == 0)
    n_dose = sum(1 for r in rows if r["EVID"] in (1, 4))
    return (
        f"{name}: subjects={len(ids)} observations={n_obs} doses={n_dose} "
        f"rows={len(rows)}"
    )


# ---------------------------------------------------------------------------
# theophylline: R datasets::Theoph


def convert_theophylline(shared: Path) -> tuple[list[str], list[dict]]:
    header, src = read_csv_rows(shared / "r_Theoph.csv")
    assert header == ["Subject", "Wt", "Dose", "Time", "conc"], header
    by_subject: dict[int, list[dict[str, str]]] = {}
    for r in src:  # dict keeps first-seen order; rows within a subject keep source order
        by_subject.setdefault(int(r["Subject"]), []).append(r)

    columns = ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "WT", "DOSE"]
    rows: list[dict] = []
    for sid in sorted(by_subject):
        recs = by_subject[sid]
        wts = {num(r["Wt"]) for r in recs}
        doses = {num(r["Dose"]) for r in recs}
        if len(wts) != 1 or len(doses) != 1:
            raise ValueError(f"theophylline subject {sid}: Wt/Dose not constant")
        wt, dose_mgkg = wts.pop(), doses.pop()
        # Dose is mg/kg; the amount in mg is Dose x Wt.  Round to 10 decimals to
        # drop binary noise (79.6*4.02 -> 319.992, not 319.99199999999996).
        amt_mg = round(dose_mgkg * wt, 10)
        rows.append(dict(ID=sid, TIME=0, DV=MISSING, AMT=amt_mg, EVID=1, MDV=1,
                         CMT=1, WT=wt, DOSE=dose_mgkg))
        for r in recs:
            rows.append(dict(ID=sid, TIME=num(r["Time"]), DV=num(r["conc"]), AMT=0,
                             EVID=0, MDV=0, CMT=2, WT=wt, DOSE=dose_mgkg))
    return columns, rows


# ---------------------------------------------------------------------------
# indomethacin: R datasets::Indometh

INDOMETHACIN_DOSE_MG = 25


def convert_indomethacin(shared: Path) -> tuple[list[str], list[dict]]:
    header, src = read_csv_rows(shared / "r_Indometh.csv")
    assert header == ["Subject", "time", "conc"], header
    by_subject: dict[int, list[dict[str, str]]] = {}
    for r in src:
        by_subject.setdefault(int(r["Subject"]), []).append(r)

    columns = ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT"]
    rows: list[dict] = []
    for sid in sorted(by_subject):
        rows.append(dict(ID=sid, TIME=0, DV=MISSING, AMT=INDOMETHACIN_DOSE_MG,
                         EVID=1, MDV=1, CMT=1))
        for r in by_subject[sid]:
            rows.append(dict(ID=sid, TIME=num(r["time"]), DV=num(r["conc"]), AMT=0,
                             EVID=0, MDV=0, CMT=1))
    return columns, rows


# ---------------------------------------------------------------------------
# pheno: pharmpy-core example data (Grasela & Donn 1985)


def convert_pheno(shared: Path) -> tuple[list[str], list[dict]]:
    lines = (shared / "pheno.dta").read_text(encoding="utf-8").splitlines()
    header = lines[0].split()
    assert header == ["ID", "TIME", "AMT", "WGT", "APGR", "DV", "FA1", "FA2"], header
    columns = ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "WGT", "APGR", "FA1", "FA2"]
    rows: list[dict] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != len(header):
            raise ValueError(f"pheno.dta line {lineno}: {len(fields)} fields")
        r = dict(zip(header, (num(f) for f in fields)))
        if r["AMT"] > 0:  # IV bolus dose; source DV is a 0 placeholder
            if r["DV"] != 0:
                raise ValueError(f"pheno.dta line {lineno}: dose row with DV {r['DV']}")
            out = dict(ID=r["ID"], TIME=r["TIME"], DV=MISSING, AMT=r["AMT"], EVID=1,
                       MDV=1, CMT=1)
        else:
            out = dict(ID=r["ID"], TIME=r["TIME"], DV=r["DV"], AMT=0, EVID=0, MDV=0,
                       CMT=1)
        out.update(WGT=r["WGT"], APGR=r["APGR"], FA1=r["FA1"], FA2=r["FA2"])
        rows.append(out)
    return columns, rows


# ---------------------------------------------------------------------------
# moxo: pharmpy-core example data (simulated moxonidine)


def convert_moxo(shared: Path) -> tuple[list[str], list[dict]]:
    header, src = read_csv_rows(shared / "moxo.csv")
    expected = ["ID", "VISI", "AGE", "SEX", "WT", "COMP", "TIME", "CRCL", "AMT", "SS",
                "II", "CMT", "DV", "EVID"]
    assert header == expected, header
    columns = ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "SS", "II", "VISI",
               "AGE", "SEX", "WT", "COMP", "CRCL"]
    rows: list[dict] = []
    for r in src:  # keep source row order
        out = {k: num(v) for k, v in r.items()}
        evid = out["EVID"]
        if evid in (1, 4):
            out["MDV"] = 1
        elif evid == 0:
            out["MDV"] = 0
        else:
            raise ValueError(f"moxo: unexpected EVID {evid}")
        rows.append(out)  # DV kept as in the source, also on dose rows (MDV=1)
    return columns, rows


# ---------------------------------------------------------------------------
# pmxnode_example1: example data 1 of the R package pmxNODE


def convert_pmxnode_example1(shared: Path) -> tuple[list[str], list[dict]]:
    header, src = read_csv_rows(shared / "pmxnode_example1.csv")
    assert header == ["C", "ID", "TIME", "AMT", "DV", "DOSE", "EVID"], header
    columns = ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "DOSE"]
    rows: list[dict] = []
    for lineno, r in enumerate(src, start=2):  # keep source row order
        if r["C"].strip() != MISSING:
            raise ValueError(f"pmxnode_example1.csv line {lineno}: comment column C is {r['C']!r}, not '.'")
        evid = num(r["EVID"])
        if evid == 1:
            if r["DV"].strip() != MISSING:
                raise ValueError(f"pmxnode_example1.csv line {lineno}: dose row with DV {r['DV']!r}")
            out = dict(ID=num(r["ID"]), TIME=num(r["TIME"]), DV=MISSING, AMT=num(r["AMT"]), EVID=1, MDV=1,
                       CMT=1)
        elif evid == 0:
            if r["AMT"].strip() != MISSING:
                raise ValueError(f"pmxnode_example1.csv line {lineno}: observation row with AMT {r['AMT']!r}")
            out = dict(ID=num(r["ID"]), TIME=num(r["TIME"]), DV=num(r["DV"]), AMT=0, EVID=0, MDV=0, CMT=1)
        else:
            raise ValueError(f"pmxnode_example1.csv line {lineno}: unexpected EVID {evid}")
        out["DOSE"] = num(r["DOSE"])
        rows.append(out)
    return columns, rows


CONVERTERS = {
    "theophylline": convert_theophylline,
    "indomethacin": convert_indomethacin,
    "pheno": convert_pheno,
    "moxo": convert_moxo,
    "pmxnode_example1": convert_pmxnode_example1,
}


def main(argv: list[str] | None = None) -> int:
    repo_root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=repo_root / ".." / "shared" / "data",
                        help="folder with the source files (default: ../shared/data "
                             "relative to the repository root)")
    parser.add_argument("--output", type=Path, default=repo_root / "datasets",
                        help="folder receiving <name>/<name>.csv (default: datasets/)")
    args = parser.parse_args(argv)
    for name, convert in CONVERTERS.items():
        columns, rows = convert(args.shared)
        path = write_dataset(args.output, name, columns, rows)
        print(f"{summary(name, rows)} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
