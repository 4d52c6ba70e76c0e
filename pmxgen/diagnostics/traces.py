"""Convergence traces of iterative estimators from ``FitResult.history``.

Each history entry is a dict with ``iteration``, ``ofv`` (may be NaN, e.g. for SAEM iterations)
and the parameter values by name; SAEM-like estimators add a ``phase``. One panel per quantity;
the OFV panel is left out when it is NaN throughout, and phase changes are marked.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .plotting import OBS, grid_shape, new_figure

__all__ = ["convergence_traces"]

_SKIP = ("iteration", "phase")


def convergence_traces(history, max_cols: int = 4):
    """A figure of parameter (and OFV) traces over the iterations; None with fewer than 2 iterations.

    Examples
    --------
    >>> history = [{"iteration": i, "ofv": 100.0 / (i + 1), "CL": 3 + 1 / (i + 1), "phase": "burn-in" if i < 3
    ...             else "main"} for i in range(6)]
    >>> fig = convergence_traces(history)
    >>> [ax.get_title() for ax in fig.axes]
    ['OFV', 'CL']
    >>> convergence_traces(history[:1]) is None
    True
    """
    frame = pd.DataFrame(list(history))
    if len(frame) < 2:
        return None
    x = frame["iteration"].to_numpy(dtype=float) if "iteration" in frame else np.arange(len(frame), dtype=float)
    names = [c for c in frame.columns if c not in _SKIP and pd.api.types.is_numeric_dtype(frame[c])]
    names = [c for c in names if np.isfinite(frame[c].to_numpy(dtype=float)).any()]
    if not names:
        return None
    changes = []
    if "phase" in frame:
        phase = frame["phase"].astype(str).to_numpy()
        changes = [(x[k], phase[k]) for k in range(1, len(phase)) if phase[k] != phase[k - 1]]
    nrows, ncols = grid_shape(len(names), max_cols)
    fig, axes = new_figure(nrows, ncols, panel=(3.0, 2.3))
    flat = axes.ravel()
    for ax, name in zip(flat, names):
        ax.plot(x, frame[name].to_numpy(dtype=float), color=OBS, lw=1.2)
        for at, label in changes:
            ax.axvline(at, color="grey", ls=":", lw=1)
            ax.annotate(label, (at, 1), xycoords=("data", "axes fraction"), fontsize=6, rotation=90, va="top")
        ax.set_title(name.upper() if name == "ofv" else name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in flat[len(names):]:
        ax.set_visible(False)
    fig.supxlabel("iteration", fontsize=9)
    return fig
