"""Simulation: study designs, simulated datasets with known truth, counterfactual dosing.

:func:`design_frame` builds a NONMEM-format design; :func:`simulate_dataset` fills its
DVs from a population model (``sample_eta``, ``sample_y``): an NLME model built from a
structural model with log-normal inter-individual variability and residual error SDs, or any
:class:`~pmxgen.models.PopulationModel` at given values, keeping the truth in :class:`SimulatedData`.

Counterfactual dosing of a fitted run: :class:`Regimen` (constructors, text form
``"500 mg q12h x14"``, :func:`regimen_grid`), :func:`simulate_population` (virtual subjects,
η from Ω, optional parameter uncertainty and residual error) and :func:`simulate_individuals`
(the observed subjects with their EBE or posterior draws) give a :class:`SimulationResult`
(tidy profiles, exposures — exact AUC for closed-form models —, PTA, xarray export, figure).
"""
from .counterfactual import individual_draws, simulate_individuals
from .dataset_simulation import SimulatedData, simulate_dataset
from .design import design_frame
from .exposure import Target, exact_auc, parse_target
from .population import parameter_draws, simulate_population
from .regimen import DoseEvent, Regimen, RegimenError, parse_regimen, regimen_grid
from .result import SimulationResult
from .virtual import needed_covariates, simulate_virtual_population

__all__ = ["design_frame", "simulate_dataset", "SimulatedData", "Regimen", "DoseEvent", "RegimenError",
           "parse_regimen", "regimen_grid", "simulate_population", "simulate_individuals", "individual_draws",
           "parameter_draws", "SimulationResult", "simulate_virtual_population", "needed_covariates", "Target", "parse_target", "exact_auc"]
