"""Per-subject figures: individual fits (paged), η histograms, η vs covariates.

* :func:`individual_fit_pages`: observations, IPRED and PRED over time, one panel per subject,
  ``per_page`` subjects a page (BLQ observations drawn as open triangles at the LLOQ).
* :func:`eta_histograms`: histogram of each η (EBE) with the N(0, ω²) density of the model.
* :func:`eta_covariate_figure`: each η against each baseline covariate, with a LOWESS smoother.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .plotting import IPRED, OBS, PRED, grid_shape, new_figure, scatter_panel

__all__ = ["individual_fit_pages", "eta_histograms", "eta_covariate_figure"]


def individual_fit_pages(observations: pd.DataFrame, per_page: int = 12, max_cols: int = 4) -> list:
    """One figure per ``per_page`` subjects with DV (points), IPRED (line) and PRED (dashed) vs TIME.

    Examples
    --------
    >>> obs = pd.DataFrame({"ID": np.repeat([1, 2, 3], 4), "TIME": np.tile([1., 2, 4, 8], 3),
    ...                     "DV": np.arange(12.0), "IPRED": np.arange(12.0), "PRED": np.arange(12.0), "BLQ": 0})
    >>> pages = individual_fit_pages(obs, per_page=2)
    >>> len(pages), [ax.get_title() for ax in pages[0].axes if ax.get_visible()]
    (2, ['ID 1', 'ID 2'])
    """
    if per_page < 1:
        raise ValueError(f"per_page must be >= 1 (found {per_page})")
    ids = list(pd.unique(observations["ID"]))
    groups = dict(tuple(observations.groupby("ID", sort=False)))
    pages = []
    for start in range(0, len(ids), per_page):
        chunk = ids[start:start + per_page]
        nrows, ncols = grid_shape(len(chunk), max_cols)
        fig, axes = new_figure(nrows, ncols, panel=(3.0, 2.4))
        flat = axes.ravel()
        for ax, subject in zip(flat, chunk):
            d = groups[subject].sort_values("TIME", kind="stable")
            blq = d["BLQ"].fillna(0).astype(bool) if "BLQ" in d else pd.Series(False, index=d.index)
            ax.plot(d["TIME"], d["IPRED"], color=IPRED, lw=1.5, label="IPRED")
            ax.plot(d["TIME"], d["PRED"], color=PRED, lw=1.2, ls="--", label="PRED")
            ax.scatter(d["TIME"][~blq], d["DV"][~blq], s=14, color=OBS, zorder=3, label="DV")
            if blq.any():
                ax.scatter(d["TIME"][blq], d["DV"][blq], s=20, marker="v", facecolors="none", edgecolors=OBS,
                           zorder=3, label="BLQ")
            ax.set_title(f"ID {subject}", fontsize=9)
            ax.tick_params(labelsize=7)
        for ax in flat[len(chunk):]:
            ax.set_visible(False)
        flat[0].legend(fontsize=7, loc="best")
        fig.supxlabel("TIME", fontsize=9)
        fig.supylabel("DV", fontsize=9)
        pages.append(fig)
    return pages


def eta_histograms(individual: pd.DataFrame, eta_names, omega_diag=None, prior_density=None):
    """Histogram of each EBE column ``ETA(name)`` with the N(0, ω) density when ``omega_diag`` is given.

    ``prior_density`` (a callable from a grid ``[G]`` of η values to the model's prior density, for
    a model with one non-Gaussian random effect) is drawn instead of the normal density.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ind = pd.DataFrame({"ETA(CL)": rng.normal(0, 0.3, 50), "ETA(V)": rng.normal(0, 0.2, 50)})
    >>> [ax.get_xlabel() for ax in eta_histograms(ind, ["CL", "V"], [0.09, 0.04]).axes]
    ['ETA(CL)', 'ETA(V)']
    """
    names = list(eta_names)
    nrows, ncols = grid_shape(max(1, len(names)))
    fig, axes = new_figure(nrows, ncols, panel=(3.4, 2.8))
    flat = axes.ravel()
    for k, name in enumerate(names):
        ax = flat[k]
        v = individual[f"ETA({name})"].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        ax.hist(v, bins="auto", density=True, color=OBS, alpha=0.6)
        if prior_density is not None and k == 0:
            grid = np.linspace(min(v.min(initial=0), -1.0) - 0.5, max(v.max(initial=0), 1.0) + 0.5, 400)
            ax.plot(grid, prior_density(grid), color=IPRED, lw=1.5, label="model prior")
            ax.legend(fontsize=7)
        elif omega_diag is not None and float(omega_diag[k]) > 0:
            sd = float(np.sqrt(omega_diag[k]))
            grid = np.linspace(min(-3 * sd, v.min(initial=0)), max(3 * sd, v.max(initial=0)), 200)
            ax.plot(grid, stats.norm.pdf(grid, 0, sd), color=IPRED, lw=1.5, label="N(0, ω²)")
            ax.legend(fontsize=7)
        ax.axvline(0, color="black", lw=1, ls="--")
        ax.set_xlabel(f"ETA({name})")
        ax.set_ylabel("density")
    for ax in flat[len(names):]:
        ax.set_visible(False)
    return fig


def eta_covariate_figure(individual: pd.DataFrame, eta_names, covariates: pd.DataFrame):
    """Each η (rows) against each covariate column (columns); None when there are no covariates.

    ``covariates`` has one row per subject in the order of ``individual``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ind = pd.DataFrame({"ETA(CL)": rng.normal(size=30)})
    >>> fig = eta_covariate_figure(ind, ["CL"], pd.DataFrame({"WT": rng.normal(70, 10, 30), "AGE": 40.0}))
    >>> [ax.get_xlabel() for ax in fig.axes]
    ['WT', 'AGE']
    >>> eta_covariate_figure(ind, ["CL"], pd.DataFrame(index=range(30))) is None
    True
    """
    names = list(eta_names)
    cols = list(covariates.columns)
    if not cols or not names:
        return None
    fig, axes = new_figure(len(names), len(cols), panel=(3.0, 2.5))
    for r, name in enumerate(names):
        for c, cov in enumerate(cols):
            scatter_panel(axes[r, c], covariates[cov].to_numpy(dtype=float),
                          individual[f"ETA({name})"].to_numpy(dtype=float), xlabel=cov, ylabel=f"ETA({name})",
                          zero=True)
    return fig
