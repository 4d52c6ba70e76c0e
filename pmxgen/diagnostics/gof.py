"""Goodness-of-fit figures from the per-observation table of a fit (``FitResult.observations``).

* :func:`gof_figure`: DV vs PRED and vs IPRED (identity line), CWRES vs TIME and vs PRED, each
  with a LOWESS smoother (statsmodels).
* :func:`residual_figure`: |IWRES| vs IPRED, normal QQ plots of CWRES and (when present) NPDE,
  and NPDE vs TIME.

BLQ observations (``BLQ`` = 1) carry no residuals and are left out of these panels.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .plotting import OBS, add_identity, new_figure, scatter_panel

__all__ = ["gof_figure", "residual_figure", "qq_panel"]


def _quantified(observations: pd.DataFrame) -> pd.DataFrame:
    if "BLQ" in observations:
        return observations[observations["BLQ"].fillna(0).astype(int) == 0]
    return observations


def qq_panel(ax, values, name: str) -> None:
    """Normal QQ plot of the finite ``values`` against N(0, 1), with the identity line."""
    v = np.sort(np.asarray(values, dtype=float)[np.isfinite(np.asarray(values, dtype=float))])
    if v.size:
        theoretical = stats.norm.ppf((np.arange(1, v.size + 1) - 0.5) / v.size)
        ax.scatter(theoretical, v, s=10, alpha=0.6, color=OBS, edgecolors="none")
        add_identity(ax, theoretical, theoretical)
    ax.set_xlabel("N(0, 1) quantiles")
    ax.set_ylabel(f"{name} quantiles")
    ax.set_title(f"QQ plot of {name}")


def gof_figure(observations: pd.DataFrame):
    """DV vs PRED, DV vs IPRED, CWRES vs TIME, CWRES vs PRED (2 × 2 panels).

    Examples
    --------
    >>> obs = pd.DataFrame({"TIME": [1., 2, 3, 4, 5, 6], "DV": [1., 2, 3, 3, 2, 1], "BLQ": 0,
    ...                     "PRED": [1.1, 2, 2.8, 3, 2.2, 1], "IPRED": [1., 2, 3, 3, 2, 1],
    ...                     "CWRES": [0.1, -0.2, 0.3, 0, -1, 1]})
    >>> fig = gof_figure(obs)
    >>> [ax.get_xlabel() for ax in fig.axes]
    ['PRED', 'IPRED', 'TIME', 'PRED']
    """
    obs = _quantified(observations)
    fig, axes = new_figure(2, 2)
    scatter_panel(axes[0, 0], obs["PRED"], obs["DV"], xlabel="PRED", ylabel="DV", identity=True)
    scatter_panel(axes[0, 1], obs["IPRED"], obs["DV"], xlabel="IPRED", ylabel="DV", identity=True)
    scatter_panel(axes[1, 0], obs["TIME"], obs["CWRES"], xlabel="TIME", ylabel="CWRES", zero=True, band=1.96)
    scatter_panel(axes[1, 1], obs["PRED"], obs["CWRES"], xlabel="PRED", ylabel="CWRES", zero=True, band=1.96)
    axes[0, 0].set_title("Observations vs population predictions")
    axes[0, 1].set_title("Observations vs individual predictions")
    axes[1, 0].set_title("CWRES vs time")
    axes[1, 1].set_title("CWRES vs population predictions")
    return fig


def residual_figure(observations: pd.DataFrame):
    """|IWRES| vs IPRED, QQ of CWRES, and with an ``NPDE`` column QQ of NPDE and NPDE vs TIME.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"TIME": np.arange(20.0), "IPRED": rng.random(20), "IWRES": rng.normal(size=20),
    ...                     "CWRES": rng.normal(size=20), "NPDE": rng.normal(size=20)})
    >>> [ax.get_title() for ax in residual_figure(obs).axes]
    ['|IWRES| vs individual predictions', 'QQ plot of CWRES', 'QQ plot of NPDE', 'NPDE vs time']
    """
    obs = _quantified(observations)
    has_npde = "NPDE" in obs and np.isfinite(obs["NPDE"].to_numpy(dtype=float)).any()
    fig, axes = new_figure(2, 2 if has_npde else 1, panel=(4.0, 3.2))
    axes = axes.ravel() if has_npde else axes[:, 0]
    scatter_panel(axes[0], obs["IPRED"], np.abs(obs["IWRES"]), xlabel="IPRED", ylabel="|IWRES|")
    axes[0].set_title("|IWRES| vs individual predictions")
    qq_panel(axes[1], obs["CWRES"], "CWRES")
    if has_npde:
        qq_panel(axes[2], obs["NPDE"], "NPDE")
        scatter_panel(axes[3], obs["TIME"], obs["NPDE"], xlabel="TIME", ylabel="NPDE", zero=True, band=1.96)
        axes[3].set_title("NPDE vs time")
    return fig
