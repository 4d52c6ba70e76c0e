"""Population models: parameters (θ, Ω, σ), residual error, NLME models and the built-in library."""
from .base import PopulationModel, gaussian_log_prior
from .covariate_effects import categorical_effect, exponential_effect, linear_effect, power_effect
from .library import DEFAULT_IIV, LIBRARY, build_model, initial_estimates
from .nlme import NLMEModel, ObservedData
from .parameters import OmegaBlock, ParameterSet, PopulationValues, Sigma, Theta
from .residual_error import ERROR_MODELS, ResidualError

__all__ = ["PopulationModel", "gaussian_log_prior", "NLMEModel", "ObservedData", "Theta", "OmegaBlock", "Sigma",
           "ParameterSet", "PopulationValues", "ResidualError", "ERROR_MODELS", "build_model", "initial_estimates",
           "LIBRARY", "DEFAULT_IIV", "power_effect", "exponential_effect", "linear_effect",
           "categorical_effect"]
