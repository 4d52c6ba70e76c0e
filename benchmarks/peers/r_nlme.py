"""Run R's ``nlme`` as a peer from Python, for benchmarks only.

R is never needed by pmxgen or its tests; this module lets benchmark scripts time
``nlme::nlme`` on the same NONMEM-style csv files that pmxgen fits, through
``benchmarks/peers/nlme_fit.R``.

Examples
--------
>>> import sys; sys.path.insert(0, "benchmarks/peers")          # doctest: +SKIP
>>> from r_nlme import r_available, fit_nlme                     # doctest: +SKIP
>>> if r_available():                                           # doctest: +SKIP
...     res = fit_nlme("datasets/theophylline/theophylline.csv", "theoph")
...     res["minus2ll"], res["seconds"], res["wall_seconds"]
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

__all__ = ["MODELS", "RNlmeError", "fit_nlme", "r_available", "SCRIPT"]

#: Path of the R script that does the fit.
SCRIPT = Path(__file__).resolve().with_name("nlme_fit.R")

#: Model names understood by :data:`SCRIPT`.
MODELS = ("theoph", "oral1_prop", "oral1_comb")

_CONTROLS = ("auto", "default", "relaxed", "dropneg")


class RNlmeError(RuntimeError):
    """Raised when R cannot be run or its output cannot be understood."""


@functools.lru_cache(maxsize=1)
def r_available() -> bool:
    """Tell whether ``Rscript`` is on ``PATH`` and can load ``nlme``.

    The answer is computed once per process and cached.

    Returns
    -------
    bool
        ``True`` if ``Rscript -e 'library(nlme)'`` succeeds within 60 s.
    """
    rscript = shutil.which("Rscript")
    if rscript is None:
        return False
    try:
        proc = subprocess.run(
            [rscript, "--vanilla", "-e", "suppressPackageStartupMessages(library(nlme))"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def fit_nlme(
    csv_path: str | os.PathLike,
    model: str,
    *,
    control: str = "auto",
    timeout: float = 1800.0,
) -> dict:
    """Fit a NONMEM-style csv with ``nlme::nlme`` (ML) in a subprocess.

    Parameters
    ----------
    csv_path : str or os.PathLike
        Data file with columns ``ID, TIME, DV, AMT, EVID, ...``; one oral dose per
        subject at time 0 (``EVID == 1``), observations ``EVID == 0``.
    model : {"theoph", "oral1_prop", "oral1_comb"}
        ``"theoph"``: ``SSfol`` with dose ``AMT/WT`` (needs ``WT``), random effects on
        ``lKa`` and ``lCl``, additive error. ``"oral1_prop"``: one-compartment oral model
        in ``lKA, lCL, lV``, all random (diagonal), proportional error
        (``varPower(fixed = 1)``). ``"oral1_comb"``: the same with combined error
        ``varConstProp()``, SD = sqrt(add^2 + (prop*f)^2).
    control : {"auto", "default", "relaxed", "dropneg"}, optional
        ``"auto"`` tries the default ``nlmeControl()``, then on error or
        non-convergence a relaxed one, and for ``"oral1_prop"`` finally the default
        control on the data less rows with DV <= 0 (reported in
        ``dropped_nonpositive_dv``); see the R script's header.
    timeout : float, optional
        Seconds before the R process is killed (default 1800).

    Returns
    -------
    dict
        The JSON printed by the R script: ``model``, ``seconds`` (elapsed time of the
        ``nlme()`` call alone), ``minus2ll`` (-2 log-likelihood with the 2*pi constant),
        ``fixed``, ``converged``, ``message`` and, when a fit was obtained,
        ``fixed_se``, ``re_variance``, ``sigma2``, ``residual`` (SDs), ``control``,
        ``nobs``, ``dropped_nonpositive_dv``, ``attempts`` and more.
        A ``wall_seconds`` key is added: the wall time of the whole subprocess
        (R start-up and data reading included).

    Raises
    ------
    ValueError
        If ``model`` or ``control`` is not known.
    FileNotFoundError
        If ``csv_path`` does not exist.
    RNlmeError
        If R or ``nlme`` is unavailable, the process times out or fails, or its output
        holds no JSON line. A failed *fit* is not an exception: it comes back with
        ``converged`` false and R's message.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if control not in _CONTROLS:
        raise ValueError(f"control must be one of {_CONTROLS}, got {control!r}")
    csv = Path(csv_path)
    if not csv.is_file():
        raise FileNotFoundError(f"csv not found: {csv}")
    if not r_available():
        raise RNlmeError("Rscript with the nlme package is not available")
    cmd = [shutil.which("Rscript") or "Rscript", "--vanilla", str(SCRIPT),
           str(csv.resolve()), model, control]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise RNlmeError(f"nlme fit timed out after {timeout} s: {' '.join(cmd)}") from exc
    wall = time.perf_counter() - t0
    result = None
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            break
    if result is None:
        raise RNlmeError(
            f"no JSON from R (exit {proc.returncode}); stderr tail:\n{proc.stderr[-2000:]}"
        )
    if proc.returncode != 0:
        raise RNlmeError(f"Rscript exited {proc.returncode}: {proc.stderr[-2000:]}")
    result["wall_seconds"] = wall
    return result


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    if len(sys.argv) < 3:
        sys.exit("usage: python r_nlme.py CSV MODEL [auto|default|relaxed]")
    ctl = sys.argv[3] if len(sys.argv) > 3 else "auto"
    print(json.dumps(fit_nlme(sys.argv[1], sys.argv[2], control=ctl)))
