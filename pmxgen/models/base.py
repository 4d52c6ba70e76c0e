"""The population-model contract every estimator works through."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from ..data.batching import SubjectBatch
from .parameters import ParameterSet, PopulationValues

__all__ = ["PopulationModel", "gaussian_log_prior"]


def gaussian_log_prior(eta: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """log N(η; 0, Ω) per subject for η ``[N, K]`` and Ω ``[K, K]`` or ``[N, K, K]``."""
    k = eta.shape[-1]
    if k == 0:
        return eta.new_zeros(eta.shape[:-1])
    chol = torch.linalg.cholesky(omega)
    z = torch.linalg.solve_triangular(chol.expand(eta.shape[:-1] + (k, k)), eta[..., None], upper=False)[..., 0]
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * ((z * z).sum(-1) + logdet + k * math.log(2 * math.pi))


class PopulationModel(ABC):
    """How each subject's data arise from population parameters and subject-level latents η.

    Subclasses provide batched ``log p(y_i | η_i, θ)``, ``log p(η_i | θ)``, predictions and
    sampling, for all subjects of a :class:`~pmxgen.data.SubjectBatch` at once. Estimators
    use only this contract (plus, for the linearisation-based ones, :meth:`moments`).
    """

    #: The parameters (θ, Ω, σ) with their initial values, bounds and fixed flags.
    parameters: ParameterSet
    name: str = "population model"
    #: How to rebuild this model (set by :func:`~pmxgen.models.build_model` and the model-file
    #: loader; stored in the FitResult so that a results folder can be reloaded), or None.
    recipe: dict | None = None

    def eta_names(self, batch: SubjectBatch) -> tuple[str, ...]:
        """Names of the columns of η for this batch."""
        return self.parameters.eta_names

    def omega_matrix(self, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        """Covariance of η ``[..., K, K]`` for this batch."""
        return values.omega

    def log_prior(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        """``log p(η_i | Ω)`` per subject ``[N]``."""
        return gaussian_log_prior(eta, self.omega_matrix(values, batch))

    @abstractmethod
    def log_likelihood(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        """``log p(y_i | η_i, θ, σ)`` per subject ``[N]`` (with all constants)."""

    @abstractmethod
    def predict(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        """Predictions ``[N, J]`` at the observation records for random effects η ``[N, K]``."""

    def sample_eta(self, values: PopulationValues, batch: SubjectBatch, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
        """η drawn from ``N(0, Ω)``, ``[N, K]``."""
        omega = self.omega_matrix(values, batch)
        k = omega.shape[-1]
        z = torch.randn(batch.n_subjects, k, generator=generator, dtype=batch.dtype, device=batch.device)
        if k == 0:
            return z
        return (torch.linalg.cholesky(omega) @ z[..., None])[..., 0]

    @abstractmethod
    def sample_y(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Observations drawn given η, ``[N, J]`` (0 on padding)."""
