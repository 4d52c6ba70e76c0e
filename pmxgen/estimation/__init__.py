"""Estimators: FO, FOCE, FOCE-I, Laplace, SAEM, MCEM and variational EM, the covariance step, importance sampling and FitResult."""
from .api import ALL_METHODS, fit
from .base import CliOption, Estimator
from .classical import FO, FOCE, FOCEI, ClassicalEstimator, Laplace
from .covariance import CovarianceResult, covariance_step
from .ebe import EBEResult, solve_ebes
from .encoder import SubjectEncoder
from .expansion import TaylorExpansion, expand_predictions, expanded_model
from .importance import ImportanceSamplingResult, importance_sampling, importance_sampling_from_draws
from .louis import louis_covariance, louis_information
from .mcmc import sample_conditional
from .objective import METHODS, subject_objective
from .results import FitResult
from .saem import MCEM, SAEM
from .score import FisherScore, fisher_identity_score
from .energy_em import EnergyEM
from .variational import VariationalEM
from .registry import estimator_names, get_estimator_class, make_estimator, register_estimator

__all__ = ["Estimator", "CliOption", "register_estimator", "estimator_names", "get_estimator_class",
           "make_estimator", "ClassicalEstimator", "FO", "FOCE", "FOCEI", "Laplace", "SAEM", "MCEM", "VariationalEM", "SubjectEncoder", "fit", "FitResult", "METHODS",
           "ALL_METHODS", "subject_objective", "solve_ebes", "EBEResult", "covariance_step", "CovarianceResult",
           "importance_sampling", "importance_sampling_from_draws", "ImportanceSamplingResult", "sample_conditional", "louis_information",
           "louis_covariance", "TaylorExpansion", "expand_predictions", "expanded_model", "FisherScore",
           "fisher_identity_score", "EnergyEM"]
