"""Figures: the data drawn are the data given (checked on the artists), smoothers are statsmodels' LOWESS."""
import numpy as np
import pandas as pd
import pytest
from statsmodels.nonparametric.smoothers_lowess import lowess

from pmxgen.diagnostics import (convergence_traces, eta_covariate_figure, eta_histograms, gof_figure,
                                individual_fit_pages, residual_figure)
from pmxgen.diagnostics.plotting import figure_png


@pytest.fixture(scope="module")
def observations():
    rng = np.random.default_rng(0)
    n = 60
    pred = rng.uniform(0.5, 10, n)
    return pd.DataFrame({"ID": np.repeat(np.arange(1, 7), 10), "TIME": np.tile(np.arange(10.0), 6), "PRED": pred,
                         "IPRED": pred * 1.1, "DV": pred * 1.1 + rng.normal(0, 0.3, n), "CWRES": rng.normal(size=n),
                         "IWRES": rng.normal(size=n), "NPDE": rng.normal(size=n), "BLQ": [1] + [0] * (n - 1)})


def test_gof_panels_plot_the_quantified_observations(observations):
    fig = gof_figure(observations)
    ax = fig.axes[0]
    points = ax.collections[0].get_offsets()
    quantified = observations[observations.BLQ == 0]
    assert np.allclose(points, quantified[["PRED", "DV"]].to_numpy())       # BLQ row left out
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["identity", "LOWESS"]
    smooth = ax.lines[1].get_xydata()
    assert np.allclose(smooth, lowess(quantified["DV"], quantified["PRED"], frac=2 / 3))
    assert figure_png(fig)[:4] == b"\x89PNG"


def test_residual_figure_absolute_iwres_and_qq(observations):
    fig = residual_figure(observations)
    q = observations[observations.BLQ == 0]
    assert np.allclose(fig.axes[0].collections[0].get_offsets()[:, 1], np.abs(q["IWRES"]))
    qq = np.asarray(fig.axes[2].collections[0].get_offsets())
    assert np.allclose(qq[:, 1], np.sort(q["NPDE"])) and abs(np.median(qq[:, 0])) < 0.05
    without = residual_figure(observations.drop(columns="NPDE"))
    assert len(without.axes) == 2


def test_individual_pages_and_eta_figures(observations):
    pages = individual_fit_pages(observations, per_page=4)
    assert len(pages) == 2
    first = pages[0].axes[0]
    dv = observations[(observations.ID == 1) & (observations.BLQ == 0)]
    assert np.allclose(first.collections[0].get_offsets(), dv[["TIME", "DV"]].to_numpy())
    assert [line.get_label() for line in first.lines] == ["IPRED", "PRED"]
    assert len(pages[1].axes) == 2                             # the last page holds the 2 subjects left
    with pytest.raises(ValueError, match="per_page"):
        individual_fit_pages(observations, per_page=0)
    ind = pd.DataFrame({"ETA(CL)": np.random.default_rng(1).normal(0, 0.3, 40)})
    hist = eta_histograms(ind, ["CL"], [0.09])
    density = hist.axes[0].lines[0].get_xydata()
    assert density[:, 1].max() == pytest.approx(1 / np.sqrt(2 * np.pi * 0.09), rel=1e-3)
    cov = eta_covariate_figure(ind, ["CL"], pd.DataFrame({"WT": np.linspace(50, 90, 40)}))
    assert cov.axes[0].get_xlabel() == "WT"


def test_convergence_traces_skip_nan_ofv_and_mark_phases():
    history = [{"iteration": i, "ofv": float("nan"), "CL": 3.0 + 0.1 * i, "OMEGA(CL)": 0.1,
                "phase": "exploration" if i < 5 else "smoothing"} for i in range(10)]
    fig = convergence_traces(history)
    assert [ax.get_title() for ax in fig.axes] == ["CL", "OMEGA(CL)"]
    assert np.allclose(fig.axes[0].lines[0].get_ydata(), [3.0 + 0.1 * i for i in range(10)])
    assert fig.axes[0].lines[1].get_xdata()[0] == 5        # phase change marked at iteration 5
    assert convergence_traces([{"iteration": 0, "ofv": 1.0}]) is None
