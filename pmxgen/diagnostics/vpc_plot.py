"""The VPC figure: observed percentiles over simulated prediction intervals, per stratum.

Shaded bands are the simulated intervals of the 5th/95th (blue) and 50th (red) percentiles,
lines the observed percentiles, points the observations (prediction-corrected for a pcVPC).
With censored (BLQ) data a lower panel per stratum shows the observed fraction below the LLOQ
over its simulated interval.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .plotting import new_figure
from .vpc import VPCResult

__all__ = ["vpc_figure"]

_OUTER, _MIDDLE = "#3d7ebf", "#c0392b"


def vpc_figure(result: VPCResult, title: str | None = None):
    """The figure of a :class:`~pmxgen.diagnostics.vpc.VPCResult`.

    Examples
    --------
    >>> from pmxgen.diagnostics.vpc import vpc_from_simulations
    >>> rng = np.random.default_rng(0)
    >>> time = np.tile(np.arange(1.0, 6.0), (30, 1))
    >>> r = vpc_from_simulations(time, rng.normal(size=(30, 5)), rng.normal(size=(100, 30, 5)), np.ones((30, 5), bool))
    >>> [ax.get_title() for ax in vpc_figure(r, title="VPC").axes]
    ['VPC: all']
    """
    table = result.table
    strata = list(pd.unique(table["stratum"])) if len(table) else ["all"]
    censored = "obs_fblq" in table
    fig, axes = new_figure(2 if censored else 1, len(strata), panel=(4.6, 3.4),
                           gridspec_kw={"height_ratios": [3, 1.3]} if censored else None)
    labels = result.labels
    middle = labels[len(labels) // 2]
    ylabel = "prediction-corrected DV" if result.pred_corrected else "DV"
    for c, stratum in enumerate(strata):
        ax = axes[0, c]
        rows = table[table["stratum"] == stratum].sort_values("bin")
        pts = result.points[result.points["stratum"] == stratum]
        quantified = ~pts["blq"].astype(bool)
        ax.scatter(pts["time"][quantified], pts["dv"][quantified], s=8, color="grey", alpha=0.4, edgecolors="none")
        t = rows["time"].to_numpy(dtype=float)
        for lab in labels:
            colour = _MIDDLE if lab == middle else _OUTER
            low = rows[f"sim_{lab}_lo"].to_numpy(dtype=float)
            if result.lloq is not None:          # a censored lower bound lies somewhere below the LLOQ
                low = np.where(np.isnan(low) & rows[f"sim_{lab}_hi"].notna(), result.lloq, low)
            ax.fill_between(t, low, rows[f"sim_{lab}_hi"], color=colour, alpha=0.25, lw=0)
            ax.plot(t, rows[f"sim_{lab}_med"], color=colour, lw=1, ls="--")
            ax.plot(t, rows[f"obs_{lab}"], color=colour, lw=1.8, marker="o", ms=3, label=f"observed {lab}")
        if result.lloq is not None:
            ax.axhline(result.lloq, color="black", lw=1, ls=":", label="LLOQ")
        ax.set_title(f"{title + ': ' if title else ''}{stratum}")
        ax.set_xlabel("TIME")
        ax.set_ylabel(ylabel)
        if c == 0:
            ax.legend(fontsize=7, loc="best")
        if censored:
            bx = axes[1, c]
            bx.fill_between(t, rows["sim_fblq_lo"], rows["sim_fblq_hi"], color=_OUTER, alpha=0.25, lw=0)
            bx.plot(t, rows["sim_fblq_med"], color=_OUTER, lw=1, ls="--")
            bx.plot(t, rows["obs_fblq"], color=_OUTER, lw=1.8, marker="o", ms=3)
            bx.set_ylim(-0.02, max(0.2, float(np.nanmax(rows[["obs_fblq", "sim_fblq_hi"]].to_numpy())) * 1.1))
            bx.set_xlabel("TIME")
            bx.set_ylabel("fraction < LLOQ")
    return fig
