"""Estimators: FO, FOCE, FOCE-I, Laplace, SAEM and MCEM, the covariance step, importance sampling and FitResult."""
from .api import ALL_METHODS, fit
from .classical import FO, FOCE, FOCEI, ClassicalEstimator, Laplace
from .covariance import CovarianceResult, covariance_step
from .ebe import EBEResult, solve_ebes
from .importance import ImportanceSamplingResult, importance_sampling
from .louis import louis_covariance, louis_information
from .mcmc import sample_conditional
from .objective import METHODS, subject_objective
from .results import FitResult
from .saem import MCEM, SAEM

__all__ = ["ClassicalEstimator", "FO", "FOCE", "FOCEI", "Laplace", "SAEM", "MCEM", "fit", "FitResult", "METHODS",
           "ALL_METHODS", "subject_objective", "solve_ebes", "EBEResult", "covariance_step", "CovarianceResult",
           "importance_sampling", "ImportanceSamplingResult", "sample_conditional", "louis_information",
           "louis_covariance"]
