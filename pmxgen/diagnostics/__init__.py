"""Diagnostics: residuals (PRED, IPRED, WRES, IWRES, CWRES) and shrinkage."""
from .residuals import epsilon_shrinkage, eta_shrinkage, nlme_residuals, whitened_residuals

__all__ = ["nlme_residuals", "whitened_residuals", "eta_shrinkage", "epsilon_shrinkage"]
