"""Shared pieces of the diagnostic figures: figures without pyplot, PNG bytes, smoothers, reference lines.

Figures are :class:`matplotlib.figure.Figure` objects made directly (not through ``pyplot``), so
they need no interactive backend, are never shown, and are freed with the object; PNGs are
rendered with the Agg canvas.
"""
from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["new_figure", "figure_png", "scatter_panel", "add_lowess", "add_identity", "add_reference",
           "grid_shape"]

#: Colours: observations, individual predictions, population predictions, smoother.
OBS, IPRED, PRED, SMOOTH = "#1f4e79", "#c0392b", "#27ae60", "#e67e22"




def grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    """Rows and columns of a grid of ``n`` panels, at most ``max_cols`` wide."""
    cols = max(1, min(max_cols, n))
    return max(1, math.ceil(n / cols)), cols


def new_figure(nrows: int = 1, ncols: int = 1, *, panel: tuple[float, float] = (4.0, 3.2), **kwargs):
    """A figure of ``nrows × ncols`` panels of size ``panel`` inches; returns ``(figure, axes array)``.

    Examples
    --------
    >>> fig, axes = new_figure(2, 3)
    >>> axes.shape, fig.get_size_inches().tolist()
    ((2, 3), [12.0, 6.4])
    """
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def figure_png(fig: Figure, dpi: int = 90) -> bytes:
    """The figure as PNG bytes.

    Examples
    --------
    >>> fig, axes = new_figure()
    >>> figure_png(fig)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def add_lowess(ax, x, y, frac: float = 2 / 3) -> None:
    """A LOWESS smoother (statsmodels) through the finite points, when there are enough of them."""
    from statsmodels.nonparametric.smoothers_lowess import lowess

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 5 or np.ptp(x[keep]) == 0:
        return
    fitted = lowess(y[keep], x[keep], frac=frac, return_sorted=True)
    ax.plot(fitted[:, 0], fitted[:, 1], color=SMOOTH, lw=1.8, label="LOWESS")


def add_identity(ax, x, y) -> None:
    """The line y = x over the range of the data."""
    values = np.concatenate([np.asarray(x, float), np.asarray(y, float)])
    values = values[np.isfinite(values)]
    if values.size:
        lo, hi = values.min(), values.max()
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="identity")


def add_reference(ax, values=(0.0,), **kwargs) -> None:
    """Horizontal reference lines (default y = 0)."""
    for v in values:
        ax.axhline(v, color=kwargs.get("color", "black"), lw=kwargs.get("lw", 1), ls=kwargs.get("ls", "--"))


def scatter_panel(ax, x, y, *, xlabel: str, ylabel: str, identity: bool = False, zero: bool = False,
                  band: float | None = None, smooth: bool = True) -> None:
    """Points with optional identity line, zero line, ±``band`` lines and a LOWESS smoother."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ax.scatter(x, y, s=12, alpha=0.6, color=OBS, edgecolors="none")
    if identity:
        add_identity(ax, x, y)
    if zero:
        add_reference(ax)
    if band is not None:
        add_reference(ax, (-band, band), ls=":", color="grey")
    if smooth:
        add_lowess(ax, x, y)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
