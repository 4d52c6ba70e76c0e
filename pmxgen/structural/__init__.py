"""Structural models: individual parameters + dose events + times → predictions.

Closed-form linear compartment models (NONMEM ADVAN1-4, 11, 12) and general ODE models
(torchdiffeq), batched over subjects and differentiable in their parameters.
"""
from .base import ResolvedDoses, StructuralModel, resolve_doses
from .closed_form import (LinearCompartmentModel, OneCompartmentIV, OneCompartmentOral, ThreeCompartmentIV,
                          ThreeCompartmentOral, TwoCompartmentIV, TwoCompartmentOral)
from .library import MODELS, get_model
from .neural import NeuralODEModel, mlp
from .ode import (ODEModel, indirect_response_rhs, linear_rhs, michaelis_menten_oral_rhs, michaelis_menten_rhs)

__all__ = [
    "StructuralModel", "ResolvedDoses", "resolve_doses", "LinearCompartmentModel",
    "OneCompartmentIV", "OneCompartmentOral", "TwoCompartmentIV", "TwoCompartmentOral",
    "ThreeCompartmentIV", "ThreeCompartmentOral", "ODEModel", "linear_rhs", "michaelis_menten_rhs",
    "michaelis_menten_oral_rhs", "indirect_response_rhs", "MODELS", "get_model",
    "NeuralODEModel", "mlp",
]
