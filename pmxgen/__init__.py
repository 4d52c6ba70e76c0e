"""pmxgen: population pharmacometrics with NONMEM-style data, NLME estimation and deep generative models.

The public API is re-exported here; submodules are imported lazily.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "read_nonmem": "pmxgen.data",
    "Dataset": "pmxgen.data",
    "SubjectBatch": "pmxgen.data",
    "DatasetError": "pmxgen.errors",
    "ModelError": "pmxgen.errors",
    "EstimationError": "pmxgen.errors",
    "IntegrationError": "pmxgen.errors",
    "DatasetWarning": "pmxgen.errors",
    "ConvergenceWarning": "pmxgen.errors",
    "get_model": "pmxgen.structural",
    "ODEModel": "pmxgen.structural",
    "NeuralODEModel": "pmxgen.structural",
    "simulate_dataset": "pmxgen.simulation",
    "design_frame": "pmxgen.simulation",
    "NLMEModel": "pmxgen.models",
    "Theta": "pmxgen.models",
    "OmegaBlock": "pmxgen.models",
    "ResidualError": "pmxgen.models",
    "build_model": "pmxgen.models",
    "PPCAModel": "pmxgen.models",
    "fit_ppca": "pmxgen.models",
    "ppca_dataset": "pmxgen.models",
    "ppca_log_likelihood": "pmxgen.models",
    "fit": "pmxgen.estimation",
    "ALL_METHODS": "pmxgen.estimation",
    "Estimator": "pmxgen.estimation",
    "register_estimator": "pmxgen.estimation",
    "PopulationModel": "pmxgen.models",
    "capabilities": "pmxgen.models",
    "FitResult": "pmxgen.estimation",
    "ClassicalEstimator": "pmxgen.estimation",
    "FO": "pmxgen.estimation",
    "FOCE": "pmxgen.estimation",
    "FOCEI": "pmxgen.estimation",
    "Laplace": "pmxgen.estimation",
    "SAEM": "pmxgen.estimation",
    "MCEM": "pmxgen.estimation",
    "VariationalEM": "pmxgen.estimation",
    "FisherScore": "pmxgen.estimation",
    "Flow": "pmxgen.generative",
    "AffineFlow": "pmxgen.generative",
    "PlanarFlow": "pmxgen.generative",
    "RadialFlow": "pmxgen.generative",
    "AffineCouplingFlow": "pmxgen.generative",
    "ComposedFlow": "pmxgen.generative",
    "build_flow": "pmxgen.generative",
    "FlowDistribution": "pmxgen.generative",
    "compare_generators": "pmxgen.generative",
    "SubjectEncoder": "pmxgen.estimation",
    "diagnose": "pmxgen.diagnostics",
    "Diagnostics": "pmxgen.diagnostics",
    "to_inference_data": "pmxgen.diagnostics",
    "one_step_ahead": "pmxgen.diagnostics",
    "OneStepAhead": "pmxgen.diagnostics",
    "Regimen": "pmxgen.simulation",
    "parse_regimen": "pmxgen.simulation",
    "regimen_grid": "pmxgen.simulation",
    "simulate_population": "pmxgen.simulation",
    "simulate_individuals": "pmxgen.simulation",
    "SimulationResult": "pmxgen.simulation",
    "RegimenError": "pmxgen.simulation",
    "Run": "pmxgen.runs",
    "load_run": "pmxgen.runs",
    "fitted_values": "pmxgen.runs",
    "generate_population": "pmxgen.generative.vpop",
    "simulate_virtual_population": "pmxgen.simulation",
    "LatentSDEModel": "pmxgen.models",
    "DeepLatentGaussianModel": "pmxgen.models",
    "fit_latent_sde": "pmxgen.estimation.latent_sde_fit",
}
_SUBMODULES = ("data", "structural", "simulation", "datasets", "errors", "models", "estimation", "diagnostics",
               "report", "runs", "generative")

__all__ = sorted(list(_EXPORTS) + list(_SUBMODULES) + ["__version__"])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"pmxgen.{name}")
    raise AttributeError(f"module 'pmxgen' has no attribute {name!r}")


def __dir__():
    return __all__
