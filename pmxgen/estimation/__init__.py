"""Estimators: FO, FOCE, FOCE-I and Laplace, the covariance step, importance sampling and FitResult."""
from .classical import FO, FOCE, FOCEI, ClassicalEstimator, Laplace, fit
from .covariance import CovarianceResult, covariance_step
from .ebe import EBEResult, solve_ebes
from .importance import ImportanceSamplingResult, importance_sampling
from .objective import METHODS, subject_objective
from .results import FitResult

__all__ = ["ClassicalEstimator", "FO", "FOCE", "FOCEI", "Laplace", "fit", "FitResult", "METHODS",
           "subject_objective", "solve_ebes", "EBEResult", "covariance_step", "CovarianceResult",
           "importance_sampling", "ImportanceSamplingResult"]
