"""Diagnostics: residuals (PRED, IPRED, WRES, IWRES, CWRES), shrinkage, NPDE/NPD, VPC and pcVPC,
goodness-of-fit figures, convergence traces, export to ArviZ, and one-step-ahead predictive
log-likelihoods (:func:`one_step_ahead`).

``diagnose(fit_or_run, ...)`` gathers them all in a :class:`Diagnostics` object. Figure and
ArviZ functions are imported on first use (matplotlib and arviz load only then).
"""
import importlib

from .diagnose import Diagnostics, diagnose
from .one_step_ahead import OneStepAhead, one_step_ahead
from .npde import NPDEResult, compute_npde, normality_tests, npde_from_simulations
from .residuals import epsilon_shrinkage, eta_shrinkage, nlme_residuals, whitened_residuals
from .simulate import simulate_replicates
from .vpc import VPCResult, auto_bins, compute_vpc, vpc_from_simulations

_LAZY = {
    "gof_figure": "gof", "residual_figure": "gof", "individual_fit_pages": "subject_plots",
    "eta_histograms": "subject_plots", "eta_covariate_figure": "subject_plots", "convergence_traces": "traces",
    "vpc_figure": "vpc_plot", "to_inference_data": "arviz_export", "write_inference_data": "arviz_export",
}

__all__ = ["nlme_residuals", "whitened_residuals", "eta_shrinkage", "epsilon_shrinkage", "Diagnostics", "diagnose",
           "NPDEResult", "compute_npde", "npde_from_simulations", "normality_tests", "simulate_replicates",
           "VPCResult", "auto_bins", "compute_vpc", "vpc_from_simulations", "OneStepAhead", "one_step_ahead", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
