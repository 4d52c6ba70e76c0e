"""The population-model contract every estimator works through, and its capability tiers.

A :class:`PopulationModel` says how each subject's data arise from population parameters and
subject-level latent variables η, for all subjects of a :class:`~pmxgen.data.SubjectBatch` at
once: ``log p(y_i | η_i, θ)``, ``log p(η_i | θ)``, predictions, sampling of η and y, and its
parameters (named θ/Ω/σ in a :class:`~pmxgen.models.parameter_set.ParameterSet`, plus optional
``torch.nn.Module`` weights in :attr:`PopulationModel.networks`).

Estimators need more than the base contract for some methods. What a model offers beyond it
is a **capability tier**, checked by what the model provides, never by its class
(:func:`capabilities`, :func:`require_capabilities`):

========================  ===============================================================  ==========================
tier                      what the model provides                                          used by
========================  ===============================================================  ==========================
``gaussian_residual``     ``observed``, ``moments`` (mean and variance of each observation  FO, FOCE, FOCE-I, Laplace,
                          given η on the likelihood scale), ``observation_neg2ll``,         EBEs, WRES/CWRES tables
                          ``log_scale_observations``
``gaussian_random_eff…``  ``eta_distribution == "gaussian"``: ``log p(η|θ) = N(0, Ω)`` with  FO…Laplace, SAEM, MCEM
                          Ω from the parameter set's blocks (closed-form EM statistics)
``individual_parameters`` ``individual_parameters(η, values, batch) -> {name: [N]}``       mu-referencing (SAEM's
                                                                                           closed-form θ), tables
``energy_random_eff…``    ``eta_distribution == "energy"`` and ``log_normalizer``:           EnergyEM
                          p(η) = exp(−E(η))/Z with a computable Z (``EnergyPriorModel``)
``network_weights``       a non-empty ``networks`` (``torch.nn.ModuleDict``) of weights     estimators that declare
                          that are population parameters                                   they optimise weights
========================  ===============================================================  ==========================
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable

import torch

from ..data.batching import SubjectBatch
from ..errors import ModelError
from .parameter_set import ParameterSet, PopulationValues

__all__ = ["PopulationModel", "ObservedData", "gaussian_log_prior", "TIERS", "capabilities", "require_capabilities",
           "network_weight_count", "network_weight_norm"]


def gaussian_log_prior(eta: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """log N(η; 0, Ω) per subject for η ``[N, K]`` and Ω ``[K, K]`` or ``[N, K, K]``."""
    k = eta.shape[-1]
    if k == 0:
        return eta.new_zeros(eta.shape[:-1])
    chol = torch.linalg.cholesky(omega)
    z = torch.linalg.solve_triangular(chol.expand(eta.shape[:-1] + (k, k)), eta[..., None], upper=False)[..., 0]
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * ((z * z).sum(-1) + logdet + k * math.log(2 * math.pi))


@dataclass(frozen=True)
class ObservedData:
    """Observations on the likelihood scale: ``y``, ``mask`` (used), ``blq`` (M3) and ``lloq``, ``[N, J]``."""

    y: torch.Tensor
    mask: torch.Tensor
    blq: torch.Tensor
    lloq: torch.Tensor

    @property
    def normal(self) -> torch.Tensor:
        """Observations that contribute a density (not BLQ)."""
        return self.mask & ~self.blq


class PopulationModel(ABC):
    """How each subject's data arise from population parameters and subject-level latents η.

    Subclasses provide batched ``log p(y_i | η_i, θ)`` (:meth:`log_likelihood`), predictions
    (:meth:`predict`) and sampling of y (:meth:`sample_y`); ``log p(η_i | θ)`` and sampling
    of η default to ``N(0, Ω)``. Estimators use only this contract plus the capability tiers
    they declare (see the module docstring and :func:`require_capabilities`).

    Examples
    --------
    A complete model in a few lines (y_ij = θ + η_i + ε_ij):

    >>> import torch, pmxgen
    >>> from pmxgen.models import OmegaBlock, ParameterSet, Sigma, Theta
    >>> class RandomIntercept(PopulationModel):
    ...     name = "random intercept"
    ...     def __init__(self):
    ...         self.parameter_set = ParameterSet([Theta("MU", 0.0)], [OmegaBlock(["MU"], [1.0])], [Sigma("ADD", 1.0)])
    ...     def predict(self, eta, values, batch):
    ...         return (values.theta["MU"] + eta[:, :1]).expand(batch.obs.dv.shape)
    ...     def log_likelihood(self, eta, values, batch):
    ...         r, v = batch.obs.dv - self.predict(eta, values, batch), values.sigma["ADD"]
    ...         ll = -0.5 * (r * r / v + torch.log(2 * torch.pi * v))
    ...         return torch.where(batch.obs.mask, ll, torch.zeros_like(ll)).sum(-1)
    ...     def sample_y(self, eta, values, batch, generator=None):
    ...         f = self.predict(eta, values, batch)
    ...         return f + values.sigma["ADD"].sqrt() * torch.randn(f.shape, generator=generator, dtype=f.dtype)
    >>> sorted(capabilities(RandomIntercept()))
    ['gaussian_random_effects']
    """

    #: The named parameters (θ, Ω, σ) with their initial values, bounds and fixed flags.
    parameter_set: ParameterSet
    name: str = "population model"
    #: How to rebuild this model (set by :func:`~pmxgen.models.build_model` and the model-file
    #: loader; stored in the FitResult so that a results folder can be reloaded), or None.
    recipe: dict | None = None
    #: The distribution of η: ``"gaussian"`` means ``N(0, Ω)`` with Ω from :attr:`parameter_set`
    #: (the ``gaussian_random_effects`` tier); a model with another prior overrides
    #: :meth:`log_prior` and :meth:`sample_eta` and sets another name.
    eta_distribution: str = "gaussian"
    #: Random effects that repeat on every occasion (inter-occasion variability); estimators
    #: that cannot handle them check this.
    iov_names: tuple[str, ...] = ()

    # ----------------------------------------------------------------- weights
    @property
    def networks(self) -> torch.nn.ModuleDict:
        """Network weights that are population parameters (empty for purely parametric models)."""
        held = self.__dict__.get("_networks")
        if held is None:
            held = torch.nn.ModuleDict()
            self.__dict__["_networks"] = held
        return held

    @networks.setter
    def networks(self, modules) -> None:
        if modules is None:
            modules = {}
        if isinstance(modules, torch.nn.Module) and not isinstance(modules, torch.nn.ModuleDict):
            modules = {"network": modules}
        try:
            held = torch.nn.ModuleDict(dict(modules))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"networks must be a torch.nn.Module or a dict name -> torch.nn.Module ({exc})") from None
        self.__dict__["_networks"] = held.to(torch.float64)

    # -------------------------------------------------------------- η layout
    def eta_names(self, batch: SubjectBatch) -> tuple[str, ...]:
        """Names of the columns of η for this batch."""
        return self.parameter_set.eta_names

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

    def check(self, dataset) -> None:
        """Raise a clear error where the model cannot be fitted to ``dataset`` at its initial values.

        The default evaluates the log-likelihood at η = 0 and the initial values and names the
        first subject where it is not finite; models override it with more specific checks.
        """
        batch = dataset.batch
        values = self.parameter_set.unpack(self.parameter_set.initial_natural(dtype=batch.dtype, device=batch.device))
        eta = torch.zeros(batch.n_subjects, len(self.eta_names(batch)), dtype=batch.dtype, device=batch.device)
        with torch.no_grad():
            ll = self.log_likelihood(eta, values, batch)
        bad = ~torch.isfinite(ll)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            raise ModelError(f"{self.name}: the log-likelihood of subject {dataset.ids[i]} is not finite at the "
                             f"initial values (η = 0); check the initial values and the data")


# ------------------------------------------------------------------------------------------ capability tiers
def _has_methods(model, names: Iterable[str]) -> bool:
    return all(callable(getattr(model, n, None)) for n in names)


#: Capability tiers: name -> (test, what it means, how to get it).
TIERS: dict[str, tuple] = {
    "gaussian_residual": (
        lambda m: _has_methods(m, ("observed", "moments", "observation_neg2ll"))
        and isinstance(getattr(m, "log_scale_observations", None), bool),
        "Gaussian residuals given η: observed(batch), moments(eta, values, batch, variance_at=None) and "
        "observation_neg2ll(mean, var, observed), and the flag log_scale_observations",
        "fit it by an estimator that needs only the likelihood (e.g. method='vem')"),
    "gaussian_random_effects": (
        lambda m: getattr(m, "eta_distribution", None) == "gaussian",
        "random effects η ~ N(0, Ω) with Ω from the model's parameter set (eta_distribution == 'gaussian')",
        "use an estimator that works from log_prior alone (e.g. method='vem')"),
    "individual_parameters": (
        lambda m: _has_methods(m, ("individual_parameters",)),
        "individual_parameters(eta, values, batch) -> {name: [N] tensor}",
        "add that method to the model"),
    "energy_random_effects": (
        lambda m: getattr(m, "eta_distribution", None) == "energy" and callable(getattr(m, "log_normalizer", None)),
        "random effects with an energy-based density exp(-E(η))/Z and a computable log Z (eta_distribution == "
        "'energy')",
        "wrap the model: pmxgen.models.EnergyPriorModel(model)"),
    "network_weights": (
        lambda m: len(list(m.networks.parameters())) > 0 if isinstance(getattr(m, "networks", None),
                                                                        torch.nn.Module) else False,
        "torch.nn.Module weights that are population parameters (model.networks)",
        "use an estimator that optimises network weights (e.g. method='focei', 'laplace' or 'vem')"),
}


def capabilities(model) -> frozenset[str]:
    """The capability tiers ``model`` offers (see the module docstring).

    Examples
    --------
    >>> import pmxgen
    >>> sorted(capabilities(pmxgen.build_model("1cmt_oral", error="additive")))
    ['gaussian_random_effects', 'gaussian_residual', 'individual_parameters']
    """
    return frozenset(name for name, (test, _, _) in TIERS.items() if test(model))


def require_capabilities(model, needs: Iterable[str], who: str) -> None:
    """Raise :class:`~pmxgen.errors.ModelError` naming the first tier of ``needs`` that ``model`` lacks.

    Examples
    --------
    >>> import pmxgen, numpy as np
    >>> model = pmxgen.PPCAModel(np.zeros(3), np.ones((3, 1)))
    >>> require_capabilities(model, ["gaussian_residual"], "FOCE-I")     # PPCA offers it: no error
    >>> require_capabilities(model, ["network_weights"], "a weights-only estimator")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pmxgen.errors.ModelError: a weights-only estimator needs a model with network weights (...
    """
    if not isinstance(model, PopulationModel):
        raise ModelError(f"{who} needs a pmxgen PopulationModel (found {type(model).__name__}); see "
                         f"pmxgen.models.PopulationModel for the contract")
    offered = capabilities(model)
    for need in needs:
        if need not in TIERS:
            raise ModelError(f"{who} asks for an unknown capability {need!r} (known: {', '.join(TIERS)})")
        if need not in offered:
            _, meaning, remedy = TIERS[need]
            raise ModelError(f"{who} needs a model with {need.replace('_', ' ')} ({meaning}); "
                             f"{getattr(model, 'name', type(model).__name__)} does not provide it: {remedy}")


def network_weight_count(model) -> int:
    """Number of scalar network weights of ``model`` (0 for parametric models)."""
    nets = getattr(model, "networks", None)
    return int(sum(p.numel() for p in nets.parameters())) if isinstance(nets, torch.nn.Module) else 0


def network_weight_norm(model) -> float:
    """Euclidean norm of all network weights of ``model`` (0.0 without weights)."""
    nets = getattr(model, "networks", None)
    if not isinstance(nets, torch.nn.Module):
        return 0.0
    total = sum(float((p.detach().double() ** 2).sum()) for p in nets.parameters())
    return math.sqrt(total)
