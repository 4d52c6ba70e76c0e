"""Population models: parameters (θ, Ω, σ), residual error, NLME models, the built-in library and PPCA."""
from .base import ObservedData, PopulationModel, TIERS, capabilities, gaussian_log_prior, require_capabilities
from .covariate_effects import categorical_effect, exponential_effect, linear_effect, power_effect
from .library import DEFAULT_IIV, LIBRARY, build_model, initial_estimates
from .nlme import NLMEModel
from .ppca import PPCAModel, PPCAResult, fit_ppca, ppca_dataset, ppca_log_likelihood, ppca_matrix, ppca_posterior
from .parameter_set import OmegaBlock, ParameterSet, PopulationValues, Sigma, Theta
from .residual_error import ERROR_MODELS, ResidualError

__all__ = ["PopulationModel", "gaussian_log_prior", "TIERS", "capabilities", "require_capabilities", "NLMEModel", "ObservedData", "Theta", "OmegaBlock", "Sigma",
           "ParameterSet", "PopulationValues", "ResidualError", "ERROR_MODELS", "build_model", "initial_estimates",
           "LIBRARY", "DEFAULT_IIV", "power_effect", "exponential_effect", "linear_effect",
           "categorical_effect", "PPCAModel", "PPCAResult", "fit_ppca", "ppca_dataset", "ppca_log_likelihood",
           "ppca_matrix", "ppca_posterior"]
from .energy_prior import EnergyPriorModel
__all__ += ["EnergyPriorModel"]
from .latent_sde import DeepLatentGaussianModel, LatentPaths, LatentSDEModel
__all__ += ["LatentSDEModel", "DeepLatentGaussianModel", "LatentPaths"]
