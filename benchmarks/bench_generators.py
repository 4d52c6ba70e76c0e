"""Virtual-population generators: training and sampling times on the diabetes panel, and streaming memory.

``python benchmarks/bench_generators.py [--quick] [--models a,b] [--threads 1] [--json out.json]``

For every registered generator (the registry is read, so families added later appear without
editing this script):

1. fit on the diabetes panel (442 patients; AGE, SEX, BMI, BP, S1-S6; the outcome Y dropped) and
   time it (wall seconds; ``fit_time_`` of the generator);
2. time sampling 10^5 virtual subjects in memory (``--quick``: 10^4);
3. generate 10^6 virtual subjects to a CSV with ``pmxgen.generate_population`` in one chunk
   (all rows in memory at once), then streamed in chunks of 10^5 and 10^4 rows (``--quick``:
   10^5 rows, one chunk and chunks of 10^4), each in a fresh subprocess, and report its peak
   resident memory (``ru_maxrss``) against a subprocess that only fits the generator: the
   difference is what generation costs; streamed, it depends on the chunk size, not on the
   number of rows.

Also on the generated rows: the largest error of the Pearson and Spearman correlation matrices
against the data's, and bounds (every value within the data's range for the copula;
positive columns positive for all) and SEX levels. Figures measured on the development machine
are recorded in ``benchmarks/README.md`` (section bench_generators.py).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0     # Linux: KiB


def _worker(model: str, n: int, chunk: int, quick: bool) -> None:
    """Fit ``model`` on diabetes and stream ``n`` rows (0: fit only); print one JSON line."""
    import pmxgen
    import pmxgen.generative  # noqa: F401  (torch and the registry imported before the clock starts)
    params = {"max_epochs": 20} if quick else {}
    out = Path(tempfile.mkdtemp()) / "vpop.csv"
    start = time.perf_counter()
    if n == 0:
        from pmxgen.generative import generator_class
        from pmxgen.generative.vpop import read_covariates
        frame, _ = read_covariates("diabetes", drop=["Y"])
        klass = generator_class(model)
        known = klass._param_names()
        klass(**{k: v for k, v in params.items() if k in known}).fit(frame)
        rows = 0
    else:
        known = pmxgen.generative.generator_class(model)._param_names()
        pmxgen.generate_population("diabetes", model=model, n=n, output=out, drop=["Y"], chunk_size=chunk,
                                   params={k: v for k, v in params.items() if k in known})
        rows = sum(1 for _ in open(out)) - 1
        out.unlink()
    print(json.dumps({"model": model, "n": n, "chunk": chunk, "rows": rows, "seconds": time.perf_counter() - start,
                      "peak_rss_mb": _rss_mb()}))


def _run_worker(model: str, n: int, chunk: int, quick: bool, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", model, str(n), str(chunk)] + (["--quick"] if quick else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        return {"model": model, "n": n, "chunk": chunk, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10^4 in-memory and 10^5 streamed rows; 20 epochs")
    parser.add_argument("--models", help="comma-separated generator names (default: every registered one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "N", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), args.quick)
        return
    import numpy as np
    import torch

    import pmxgen
    from pmxgen.generative import generator_class, generator_names
    from pmxgen.generative.vpop import read_covariates
    torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else generator_names()
    n_memory = 10_000 if args.quick else 100_000
    n_stream = 100_000 if args.quick else 1_000_000
    # one chunk of everything (the whole population in memory) against streamed chunks
    chunks = [n_stream, 10_000] if args.quick else [n_stream, 100_000, 10_000]
    frame, _ = read_covariates("diabetes", drop=["Y"])
    lo, hi = frame.min(), frame.max()
    results = []
    print(f"diabetes panel: {frame.shape[0]} rows x {frame.shape[1]} columns; torch {torch.__version__}, "
          f"{args.threads} thread(s); {'quick' if args.quick else 'full'} run")
    print(f"{'generator':<22} {'fit s':>8} {'sample 1e%d s' % round(np.log10(n_memory)):>14} {'rows/s':>10} "
          f"{'corr err':>9} {'spearman':>9}  streaming {n_stream:.0e} rows: chunk, s, peak RSS MB (fit only MB)")
    for name in names:
        klass = generator_class(name)
        known = klass._param_names()
        kwargs = {"max_epochs": 20} if args.quick and "max_epochs" in known else {}
        row = {"model": name}
        try:
            klass(seed=0, **{**kwargs, "max_epochs": 1} if "max_epochs" in known else kwargs).fit(frame.head(50))
            t0 = time.perf_counter()     # timed after a warm-up fit (lazy imports, first kernels)
            gen = klass(seed=0, **kwargs).fit(frame)
            row["fit_seconds"] = time.perf_counter() - t0
            row["status"] = gen.status_
            t0 = time.perf_counter()
            draws = gen.sample(n_memory, seed=1)
            row["sample_seconds"] = time.perf_counter() - t0
            row["n_memory"] = n_memory
            positive = [c for c in frame.columns if (frame[c] > 0).all()]
            row["bounds_ok"] = bool((draws[positive] > 0).all().all())
            row["within_data_range"] = bool(((draws >= lo - 1e-9) & (draws <= hi + 1e-9)).all().all())
            row["sex_levels_ok"] = set(draws["SEX"]) <= {1, 2}
            # largest error of the Pearson and Spearman correlation matrices (generated vs data)
            row["corr_error"] = float(np.abs(draws.corr().to_numpy() - frame.corr().to_numpy()).max())
            row["spearman_error"] = float(np.abs(draws.corr("spearman").to_numpy()
                                                 - frame.corr("spearman").to_numpy()).max())
        except Exception as exc:       # a family that fails here is reported, not fatal to the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            results.append(row)
            print(f"{name:<22} failed: {row['error']}")
            continue
        base = _run_worker(name, 0, 1, args.quick, args.threads)
        row["fit_only_peak_rss_mb"] = base.get("peak_rss_mb")
        row["streaming"] = [_run_worker(name, n_stream, c, args.quick, args.threads) for c in chunks]
        results.append(row)
        stream = "; ".join(f"{s['chunk']:.0e}: {s.get('seconds', float('nan')):.1f} s, "
                           f"{s.get('peak_rss_mb', float('nan')):.0f} MB" + (f" ({s['rows']} rows)" if
                                                                              s.get("rows") != n_stream else "")
                           for s in row["streaming"])
        print(f"{name:<22} {row['fit_seconds']:>8.3f} {row['sample_seconds']:>14.3f} "
              f"{n_memory / row['sample_seconds']:>10.3g} {row['corr_error']:>9.3f} {row['spearman_error']:>9.3f}  {stream} ({row['fit_only_peak_rss_mb']:.0f})"
              f"{'' if row['bounds_ok'] and row['sex_levels_ok'] else '  BOUNDS/LEVELS VIOLATED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"quick": args.quick, "threads": args.threads, "results": results,
                                               "torch": torch.__version__, "pmxgen": pmxgen.__version__},
                                              indent=2))


if __name__ == "__main__":
    main()
