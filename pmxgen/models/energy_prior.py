r"""An energy-based random-effects distribution: p(η) ∝ exp(−E_w(η)) in place of N(0, Ω).

:class:`EnergyPriorModel` wraps an :class:`~pmxgen.models.NLMEModel` (its structural model,
individual parameters and residual error are used unchanged, so it keeps the
``gaussian_residual`` and ``individual_parameters`` tiers) and replaces its Gaussian η
distribution by a density given by an energy network (:class:`~pmxgen.generative.score.EnergyNetwork`)
on a box,

    p(η) = exp(−E_w(η)) / Z_w   for |η_k| ≤ L (k = 1..K),   0 outside,

for populations whose random effects are not Gaussian (e.g. sub-groups that a Gaussian Ω
merges into one wide mode). Restricting the support to the box makes the density normalisable
whatever the network does, and makes ``log Z_w`` an integral over a bounded region, computed by
a tensor-product Gauss–Legendre rule (``quadrature_nodes`` per axis): with the default 512 nodes
(K = 1) or 160 per axis (K = 2) on L = 3 the error of ``log Z`` is far below 1e-6 for densities
whose features are wider than about 0.03 on the η scale (checked in the tests against a 4× finer
rule). Hence the model is limited to K ≤ 2 random effects.

Parameters of the model: θ and σ of the base model. Ω does not exist here (:attr:`parameter_set`
has no Ω blocks); the θ of parameters that carry an η (by default those whose name is an η
name, as in ``P = θ_P · exp(η_P)``) are **fixed** at their initial values, because the energy's
location is free: θ_P and the centre of η_P are not separately identifiable. The fitted prior
is then read on the η scale relative to those reference values. :meth:`omega_matrix` returns the
covariance of η under the current prior (by the same quadrature), used for proposal scales,
shrinkage and the linearised residuals (WRES/CWRES are then those of the moment-matched
Gaussian and only indicative).

The energy network is in :attr:`networks` (under ``"energy"``), so its weights are stored with
a fit and reloaded like any network weights.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..data.batching import SubjectBatch
from ..errors import ModelError
from .base import TIERS, ObservedData, PopulationModel
from .nlme import NLMEModel
from .parameter_set import ParameterSet, PopulationValues, Theta

__all__ = ["EnergyPriorModel", "ENERGY_TIER", "box_mala"]

#: The capability tier of models with an energy-based η distribution and a computable normaliser
#: (defined with the other tiers in :mod:`pmxgen.models.base`).
ENERGY_TIER = "energy_random_effects"
assert ENERGY_TIER in TIERS

_DEFAULT_NODES = {1: 512, 2: 160}


def _weights_key(module: torch.nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version, p.device.type) for p in module.parameters())


class EnergyPriorModel(PopulationModel):
    """An NLME model whose random effects follow an energy-based density on a box (see the module docstring).

    Parameters
    ----------
    base : NLMEModel
        Structural model, individual parameters and residual error (its Ω is not used; K ≤ 2
        random effects, no IOV).
    energy : EnergyNetwork, optional
        The energy ``E_w(η)`` (any ``torch.nn.Module`` with ``energy(x [B, K]) -> [B]``); default
        ``EnergyNetwork(K, hidden=(32, 32), quadratic=1.0, seed=seed)``.
    bound : float
        L: the support is ``|η_k| ≤ L`` (default 3: individual parameters within a factor
        e³ ≈ 20 of their reference value).
    quadrature_nodes : int, optional
        Gauss–Legendre nodes per axis for ``log Z`` (default 512 for K = 1, 160 for K = 2).
    fixed_theta : sequence of str, optional
        θ fixed at their initial values (default: θ named like an η of the base model).
    seed : int
        Initialisation of the default energy network.
    name : str, optional

    Examples
    --------
    >>> import pmxgen, torch
    >>> base = pmxgen.build_model("1cmt_oral", error="additive", iiv=("CL",))
    >>> model = EnergyPriorModel(base)
    >>> model.eta_distribution, model.parameter_set.names
    ('energy', ('KA', 'V', 'SIGMA(ADD)'))
    >>> x, w = model.quadrature()
    >>> with torch.no_grad():
    ...     round(float((w * model.log_prior(x, None, None).exp()).sum()), 8)   # normalised
    1.0
    """

    eta_distribution = "energy"

    def __init__(self, base: NLMEModel, energy: torch.nn.Module | None = None, *, bound: float = 3.0,
                 quadrature_nodes: int | None = None, fixed_theta: Sequence[str] | None = None, seed: int = 0,
                 name: str | None = None):
        if not isinstance(base, NLMEModel):
            raise ModelError(f"EnergyPriorModel wraps an NLMEModel (found {type(base).__name__})")
        if base.iov_names:
            raise ModelError("EnergyPriorModel does not handle inter-occasion variability "
                             f"({', '.join(base.iov_names)}); remove the IOV effects")
        if len(list(base.networks.parameters())):
            raise ModelError("EnergyPriorModel: the base model has network weights of its own; only the energy "
                             "network may be a network here")
        k = len(base.iiv_names)
        if not 1 <= k <= 2:
            raise ModelError(f"EnergyPriorModel needs 1 or 2 random effects (the base model has {k}): log Z is "
                             f"computed by quadrature on a grid, which is only accurate and cheap for K <= 2")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not (math.isfinite(bound) and bound > 0):
            raise ModelError(f"EnergyPriorModel: bound must be a finite number > 0 (found {bound!r})")
        nodes = _DEFAULT_NODES[k] if quadrature_nodes is None else quadrature_nodes
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 16:
            raise ModelError(f"EnergyPriorModel: quadrature_nodes must be an integer >= 16 (found {nodes!r})")
        self.base = base
        self.k = k
        self.bound = float(bound)
        self.quadrature_nodes = nodes
        if energy is None:
            from ..generative.score import EnergyNetwork
            energy = EnergyNetwork(k, hidden=(32, 32), quadratic=1.0, seed=seed)
        if not callable(getattr(energy, "energy", None)) or not isinstance(energy, torch.nn.Module):
            raise ModelError("energy must be a torch.nn.Module with a method energy(x [B, K]) -> [B] "
                             "(e.g. pmxgen.generative.score.EnergyNetwork)")
        if getattr(energy, "dim", k) != k or getattr(energy, "noise_conditional", False):
            raise ModelError(f"energy must be a (not noise-conditional) energy of dimension {k}")
        self.networks = {"energy": energy}
        ps = base.parameter_set
        fixed = set(base.iiv_names if fixed_theta is None else fixed_theta)
        unknown = sorted(fixed - {t.name for t in ps.theta})
        if unknown:
            raise ModelError(f"fixed_theta {unknown} are not θ of the base model ({', '.join(t.name for t in ps.theta)})")
        thetas = [Theta(t.name, t.init, t.lower, t.upper, t.fixed or t.name in fixed) for t in ps.theta]
        self.parameter_set = ParameterSet(thetas, [], ps.sigma)
        self.name = name or f"{base.name} with energy-based η prior"
        self.recipe = None
        self._cache: dict = {}

    # ------------------------------------------------------------- energy prior
    @property
    def energy(self) -> torch.nn.Module:
        """The energy network (``networks["energy"]``)."""
        return self.networks["energy"]

    def _parameter(self) -> torch.Tensor:
        return next(self.energy.parameters())

    def quadrature(self, dtype: torch.dtype | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gauss–Legendre nodes ``[M, K]`` and weights ``[M]`` on the box ``[−L, L]^K`` (M = nodes^K)."""
        p = self._parameter()
        dtype = dtype or p.dtype
        device = device or p.device
        key = ("grid", dtype, str(device))
        if key not in self._cache:
            z, w = np.polynomial.legendre.leggauss(self.quadrature_nodes)
            z = torch.as_tensor(z * self.bound, dtype=dtype, device=device)
            w = torch.as_tensor(w * self.bound, dtype=dtype, device=device)
            if self.k == 1:
                self._cache[key] = (z[:, None], w)
            else:
                gx, gy = torch.meshgrid(z, z, indexing="ij")
                self._cache[key] = (torch.stack([gx.reshape(-1), gy.reshape(-1)], -1), (w[:, None] * w[None, :]).reshape(-1))
        return self._cache[key]

    def _energy(self, eta: torch.Tensor) -> torch.Tensor:
        p = self._parameter()
        return self.energy.energy(eta.to(p.dtype).to(p.device)).to(eta.dtype).to(eta.device)

    def _grid_log_density(self) -> torch.Tensor:
        """Unnormalised log density −E at the quadrature nodes plus log weights ``[M]`` (differentiable in w)."""
        x, w = self.quadrature()
        return -self.energy.energy(x) + torch.log(w)

    def _weights_require_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.energy.parameters())

    def log_normalizer(self) -> torch.Tensor:
        """``log Z_w = log ∫_box exp(−E_w(η)) dη`` by Gauss–Legendre quadrature (0-d; differentiable in
        the weights when gradients are enabled, else cached until the weights change)."""
        if self._weights_require_grad():
            return torch.logsumexp(self._grid_log_density(), 0)
        key = _weights_key(self.energy)
        hit = self._cache.get("logz")
        if hit is None or hit[0] != key:
            with torch.no_grad():
                lw = self._grid_log_density()
                logz = torch.logsumexp(lw, 0)
                prob = torch.exp(lw - logz)
                x, _ = self.quadrature()
                mean = prob @ x
                c = x - mean
                cov = (c * prob[:, None]).T @ c
            hit = (key, logz, mean, cov)
            self._cache["logz"] = hit
        return hit[1]

    def prior_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[K]`` and covariance ``[K, K]`` of η under the current prior (quadrature; detached)."""
        with torch.no_grad():
            self.log_normalizer()
        _, _, mean, cov = self._cache["logz"]
        return mean, cov

    def inside(self, eta: torch.Tensor) -> torch.Tensor:
        """Whether each row of ``eta`` ``[..., K]`` lies in the support ``|η_k| ≤ L``."""
        return (eta.abs() <= self.bound).all(-1)

    def log_prior(self, eta: torch.Tensor, values: PopulationValues | None, batch: SubjectBatch | None
                  ) -> torch.Tensor:
        """``log p(η) = −E_w(η) − log Z_w`` per row (``−inf`` outside the box); ``values``/``batch`` unused."""
        lp = -self._energy(eta) - self.log_normalizer().to(eta.dtype).to(eta.device)
        return torch.where(self.inside(eta), lp, torch.full_like(lp, -math.inf))

    def omega_matrix(self, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        """Covariance of η under the current energy prior (by quadrature), ``[K, K]``."""
        cov = self.prior_moments()[1]
        ref = batch.obs.dv if batch is not None else cov
        return cov.to(ref.dtype).to(ref.device)

    def sample_eta(self, values: PopulationValues, batch: SubjectBatch, generator: torch.Generator | None = None,
                   *, n_steps: int = 50) -> torch.Tensor:
        """η ``[N, K]`` drawn from the energy prior.

        Starting points are drawn from the quadrature nodes with probability ∝ weight × exp(−E)
        (so every mode gets its share: Langevin alone does not move mass between separated
        modes), jittered uniformly within the local node spacing, then moved by ``n_steps``
        Metropolis-adjusted Langevin steps (:func:`box_mala`) whose stationary law is the prior.
        """
        n = batch.n_subjects
        dtype, device = batch.dtype, batch.device
        with torch.no_grad():
            lw = self._grid_log_density().to(dtype).to(device)
        x, _ = self.quadrature(dtype, device)
        idx = torch.multinomial(torch.softmax(lw, 0), n, replacement=True, generator=generator)
        spacing = 2.0 * self.bound / self.quadrature_nodes
        jitter = (torch.rand(n, self.k, generator=generator, dtype=dtype, device=device) - 0.5) * spacing
        start = (x[idx] + jitter).clamp(-self.bound, self.bound)
        cov = self.prior_moments()[1].to(dtype).to(device)
        step = 0.5 * float(torch.sqrt(torch.linalg.eigvalsh(cov).min().clamp(min=1e-8)))
        return box_mala(lambda e: -self._energy(e), start, self.bound, step_size=step, n_steps=n_steps,
                        generator=generator)

    # ------------------------------------------------------ delegated to the base
    def eta_names(self, batch: SubjectBatch) -> tuple[str, ...]:
        return self.base.eta_names(batch)

    @property
    def iiv_names(self) -> tuple[str, ...]:
        return self.base.iiv_names

    @property
    def log_scale_observations(self) -> bool:
        return self.base.log_scale_observations

    def _base_values(self, values: PopulationValues) -> PopulationValues:
        return values

    def individual_parameters(self, eta, values, batch, occasion=None):
        return self.base.individual_parameters(eta, values, batch, occasion)

    def covariates(self, batch):
        return self.base.covariates(batch)

    def predict(self, eta, values, batch):
        return self.base.predict(eta, values, batch)

    def observed(self, batch) -> ObservedData:
        return self.base.observed(batch)

    def moments(self, eta, values, batch, *, variance_at=None):
        return self.base.moments(eta, values, batch, variance_at=variance_at)

    def observation_neg2ll(self, mean, var, data):
        return self.base.observation_neg2ll(mean, var, data)

    def log_likelihood(self, eta, values, batch):
        return self.base.log_likelihood(eta, values, batch)

    def sample_y(self, eta, values, batch, generator=None):
        return self.base.sample_y(eta, values, batch, generator)

    def check(self, dataset) -> None:
        self.base.check(dataset)

    def with_initial(self, values) -> "EnergyPriorModel":
        """A copy with other initial θ/σ (names as in :attr:`parameter_set`; the same energy network object)."""
        clone = copy.copy(self)
        clone.parameter_set = self.parameter_set.with_initial({str(k): float(v) for k, v in values.items()
                                                               if k in self.parameter_set.all_names})
        clone.base = self.base.with_initial({k: v for k, v in values.items()
                                             if k in self.base.parameter_set.all_names})
        clone._cache = {}
        return clone


def box_mala(log_prob, x0: torch.Tensor, bound: float, *, step_size: float, n_steps: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Metropolis-adjusted Langevin on the box ``|x_k| ≤ bound`` (proposals outside are rejected), batched.

    ``log_prob``: ``[B, K] → [B]`` unnormalised log density; ``x0`` ``[B, K]`` inside the box.
    Returns the final states ``[B, K]`` (detached).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = box_mala(lambda x: -0.5 * (x ** 2).sum(-1), torch.zeros(4000, 1, dtype=torch.float64), 5.0,
    ...              step_size=0.8, n_steps=100, generator=g)
    >>> round(float(x.var()), 1)
    1.0
    """
    h = float(step_size)

    def lp_grad(x):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = log_prob(xg)
            (g,) = torch.autograd.grad(lp.sum(), xg)
        return lp.detach(), g.detach()

    x = x0.detach().clone()
    lp, g = lp_grad(x)
    for _ in range(int(n_steps)):
        mean_f = x + 0.5 * h * h * g
        y = mean_f + h * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        inside = (y.abs() <= bound).all(-1)
        y_safe = torch.where(inside[:, None], y, x)
        lp_y, g_y = lp_grad(y_safe)
        mean_b = y_safe + 0.5 * h * h * g_y
        log_q_f = -((y_safe - mean_f) ** 2).sum(-1) / (2 * h * h)
        log_q_b = -((x - mean_b) ** 2).sum(-1) / (2 * h * h)
        ratio = lp_y - lp + log_q_b - log_q_f
        u = torch.rand(ratio.shape, generator=generator, dtype=x.dtype, device=x.device)
        ok = inside & torch.isfinite(ratio) & (torch.log(u) < ratio)
        x = torch.where(ok[:, None], y_safe, x)
        lp = torch.where(ok, lp_y, lp)
        g = torch.where(ok[:, None], g_y, g)
    return x
