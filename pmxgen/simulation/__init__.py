"""Simulation: study designs and simulated datasets with known truth.

:func:`design_frame` builds a NONMEM-format design; :func:`simulate_dataset` fills its
DVs from a structural model with log-normal inter-individual variability and combined
residual error, keeping the true parameters in :class:`SimulatedData`.
"""
from .dataset_simulation import SimulatedData, simulate_dataset
from .design import design_frame

__all__ = ["design_frame", "simulate_dataset", "SimulatedData"]
