"""Batched Metropolis–Hastings kernels for the random effects of all subjects (and chains) at once.

The target of row r (one subject in one chain) is its conditional density
``log π(η_r) = log p(y_r | η_r, θ) + log p(η_r | Ω)``. Rows are independent, so one model
evaluation moves every row, and one backward pass gives every row's gradient (each row's
log density depends on its own η only).

Kernels (as in Monolix's SAEM, with MALA in place of the block random walk option):

* ``prior``: independent proposal ``η' ~ N(0, Ω)``, accepted with the likelihood ratio.
* ``random_walk``: ``η' = η + s_r L ξ`` (``L Lᵀ = Ω``) with a per-row scale ``s_r`` adapted
  towards an acceptance rate of 0.4.
* ``mala``: Langevin proposal ``η' = η + ½h_r² Ω ∇log π(η) + h_r L ξ`` with the
  Metropolis correction for its asymmetry, per-row ``h_r`` adapted towards 0.57.
* ``follmer``: a Schrödinger–Föllmer path proposal (an independence proposal that can jump
  between modes, no tuning), Metropolis-corrected by its Girsanov weights; see
  :func:`pmxgen.estimation.follmer.follmer_move`. Costs about 2 × FOLLMER_STEPS × FOLLMER_DRAWS
  model evaluations per application.

A proposal whose density is not finite (or whose evaluation raises a model/integration
error) is rejected; the chain stays where it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..data.batching import SubjectBatch
from ..errors import EstimationError, IntegrationError, ModelError
from ..models.base import PopulationModel
from ..models.parameter_set import PopulationValues

__all__ = ["KERNELS", "ConditionalTarget", "KernelState", "apply_kernels", "sample_conditional", "validate_kernels"]

#: Kernel names, in the order they are applied within one sweep.
KERNELS = ("prior", "random_walk", "mala", "follmer")
_TARGET_ACCEPTANCE = {"random_walk": 0.4, "mala": 0.57}
_ADAPT_RATE = 0.5


def validate_kernels(kernels) -> dict[str, int]:
    """``{kernel: applications per sweep}`` checked: known names, non-negative integers, at least one."""
    if not isinstance(kernels, dict):
        raise EstimationError(f"kernels must be a dict like {{'prior': 2, 'random_walk': 2, 'mala': 2}} "
                              f"(found {kernels!r})")
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        raise EstimationError(f"unknown MCMC kernels {unknown}; choose from {', '.join(KERNELS)}")
    out = {}
    for name in KERNELS:
        n = kernels.get(name, 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise EstimationError(f"kernels[{name!r}] must be a non-negative integer (found {n!r})")
        out[name] = n
    if sum(out.values()) == 0:
        raise EstimationError("kernels: at least one kernel must be applied at least once per sweep")
    return out


class ConditionalTarget:
    """``log p(y|η) + log p(η)`` of every row of ``batch`` at fixed population values.

    Examples
    --------
    >>> import pmxgen, torch
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> target = ConditionalTarget(model, values, data.batch)
    >>> target.log_density(torch.zeros(12, 2, dtype=torch.float64)).shape
    torch.Size([12])
    """

    def __init__(self, model: PopulationModel, values: PopulationValues, batch: SubjectBatch):
        self.model, self.values, self.batch = model, values, batch
        omega = model.omega_matrix(values, batch).detach()
        self.chol = torch.linalg.cholesky(omega)

    def log_likelihood(self, eta: torch.Tensor) -> torch.Tensor:
        """``log p(y_r | η_r)`` per row, ``-inf`` where it cannot be evaluated."""
        try:
            ll = self.model.log_likelihood(eta, self.values, self.batch)
        except (ModelError, IntegrationError, torch.linalg.LinAlgError):
            return torch.full(eta.shape[:1], -math.inf, dtype=eta.dtype, device=eta.device)
        return torch.where(torch.isfinite(ll), ll, torch.full_like(ll, -math.inf))

    def log_prior(self, eta: torch.Tensor) -> torch.Tensor:
        z = torch.linalg.solve_triangular(self.chol, eta.unsqueeze(-1), upper=False).squeeze(-1)
        return -0.5 * (z * z).sum(-1)

    def log_density(self, eta: torch.Tensor) -> torch.Tensor:
        return self.log_likelihood(eta) + self.log_prior(eta)

    def log_density_and_gradient(self, eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log π`` per row and its gradient in η (zero gradient where ``log π`` is not finite)."""
        with torch.enable_grad():
            e = eta.detach().requires_grad_(True)
            lp = self.log_density(e)
            finite = torch.isfinite(lp)
            if not bool(finite.any()):
                return lp.detach(), torch.zeros_like(eta)
            (g,) = torch.autograd.grad(torch.where(finite, lp, torch.zeros_like(lp)).sum(), e, allow_unused=True)
        g = torch.zeros_like(eta) if g is None else g
        g = torch.where(finite[:, None] & torch.isfinite(g), g, torch.zeros_like(g))
        return lp.detach(), g.detach()


@dataclass
class KernelState:
    """The chains: current η ``[R, K]``, their log densities, and per-row adaptive scales."""

    eta: torch.Tensor
    log_density: torch.Tensor | None = None
    gradient: torch.Tensor | None = None
    scale: dict = field(default_factory=dict)
    accepted: dict = field(default_factory=dict)
    proposed: dict = field(default_factory=dict)

    def acceptance(self) -> dict[str, float]:
        """Acceptance rate of each kernel since the counters were last reset."""
        return {k: self.accepted[k] / max(self.proposed[k], 1) for k in self.proposed}

    def reset_counters(self) -> None:
        self.accepted, self.proposed = {}, {}


def _accept(state: KernelState, name: str, proposal: torch.Tensor, log_target: torch.Tensor,
            log_ratio: torch.Tensor, generator: torch.Generator, adapt: bool) -> torch.Tensor:
    u = torch.rand(log_ratio.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device)
    ok = torch.isfinite(log_ratio) & (torch.log(u) < log_ratio)
    state.eta = torch.where(ok[:, None], proposal, state.eta)
    state.gradient = None
    state.log_density = torch.where(ok, log_target, state.log_density)
    state.accepted[name] = state.accepted.get(name, 0) + int(ok.sum())
    state.proposed[name] = state.proposed.get(name, 0) + ok.numel()
    if adapt and name in _TARGET_ACCEPTANCE:
        # Robbins–Monro on log s: up after acceptance, down after rejection; rate ≈ target.
        step = _ADAPT_RATE * (ok.to(log_ratio.dtype) - _TARGET_ACCEPTANCE[name])
        state.scale[name] = state.scale[name] * torch.exp(step)
    return ok


def apply_kernels(target: ConditionalTarget, state: KernelState, kernels: dict[str, int],
                  generator: torch.Generator, *, adapt: bool = True) -> KernelState:
    """One sweep: each kernel applied ``kernels[name]`` times to every row; returns ``state`` (updated)."""
    eta = state.eta
    rows, k = eta.shape
    dtype, device = eta.dtype, eta.device
    if state.log_density is None:
        state.log_density = target.log_density(eta).detach()
        state.gradient = None
    for name, default in (("random_walk", 0.5), ("mala", 0.5)):
        if name not in state.scale:
            state.scale[name] = torch.full((rows,), default, dtype=dtype, device=device)
    chol = target.chol
    omega = chol @ chol.transpose(-1, -2)
    with torch.no_grad():
        for _ in range(kernels.get("prior", 0)):
            xi = torch.randn(rows, k, generator=generator, dtype=dtype, device=device)
            proposal = xi @ chol.transpose(-1, -2)
            ll_new = target.log_likelihood(proposal)
            ll_old = state.log_density - target.log_prior(state.eta)
            lp_new = ll_new + target.log_prior(proposal)
            _accept(state, "prior", proposal, lp_new, ll_new - ll_old, generator, adapt)
        for _ in range(kernels.get("random_walk", 0)):
            xi = torch.randn(rows, k, generator=generator, dtype=dtype, device=device)
            proposal = state.eta + state.scale["random_walk"][:, None] * (xi @ chol.transpose(-1, -2))
            lp_new = target.log_density(proposal)
            _accept(state, "random_walk", proposal, lp_new, lp_new - state.log_density, generator, adapt)
    for _ in range(kernels.get("mala", 0)):
        h = state.scale["mala"][:, None]
        if state.gradient is None:
            state.log_density, state.gradient = target.log_density_and_gradient(state.eta)
        lp_old, g_old = state.log_density, state.gradient
        mean_fwd = state.eta + 0.5 * h * h * (g_old @ omega)
        xi = torch.randn(rows, k, generator=generator, dtype=dtype, device=device)
        proposal = mean_fwd + h * (xi @ chol.transpose(-1, -2))
        lp_new, g_new = target.log_density_and_gradient(proposal)
        mean_back = proposal + 0.5 * h * h * (g_new @ omega)
        log_q_fwd = _gaussian_log_kernel(proposal - mean_fwd, chol, h)
        log_q_back = _gaussian_log_kernel(state.eta - mean_back, chol, h)
        ok = _accept(state, "mala", proposal, lp_new, lp_new - lp_old + log_q_back - log_q_fwd, generator, adapt)
        state.gradient = torch.where(ok[:, None], g_new, g_old)
    if kernels.get("follmer", 0):
        from .follmer import follmer_move
        for _ in range(kernels["follmer"]):
            follmer_move(target, state, generator)
    return state


def _gaussian_log_kernel(diff: torch.Tensor, chol: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``log N(diff; 0, h² Ω)`` up to terms that cancel in the ratio (same h, same Ω both ways)."""
    z = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1) / h
    return -0.5 * (z * z).sum(-1)


def sample_conditional(model: PopulationModel, values: PopulationValues, batch: SubjectBatch, *, n_draws: int = 200,
                       n_chains: int = 1, burn_in: int = 50, kernels: dict | None = None,
                       eta0: torch.Tensor | None = None, seed: int = 0, thin: int = 1) -> torch.Tensor:
    """Draws ``[S, N, K]`` of every subject's η from ``p(η_i | y_i)`` at fixed ``values``.

    ``n_chains`` chains per subject run side by side; after ``burn_in`` adaptive sweeps the
    scales are frozen (so the draws are from a valid Markov chain) and every ``thin``-th sweep
    contributes one draw per chain until ``n_draws`` draws per subject are collected.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> sample_conditional(model, values, data.batch, n_draws=20, burn_in=5).shape
    torch.Size([20, 12, 2])
    """
    kernels = validate_kernels(kernels or {"prior": 2, "random_walk": 2, "mala": 2})
    for label, v, low in (("n_draws", n_draws, 1), ("n_chains", n_chains, 1), ("burn_in", burn_in, 0),
                          ("thin", thin, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise EstimationError(f"{label} must be an integer >= {low} (found {v!r})")
    n = batch.n_subjects
    k = len(model.eta_names(batch))
    gen = torch.Generator(device=batch.device)
    gen.manual_seed(int(seed))
    rep = batch.repeat(n_chains) if n_chains > 1 else batch
    start = torch.zeros(n, k, dtype=batch.dtype, device=batch.device) if eta0 is None else eta0.detach()
    state = KernelState(eta=start.repeat(n_chains, 1))
    target = ConditionalTarget(model, values, rep)
    for _ in range(burn_in):
        apply_kernels(target, state, kernels, gen, adapt=True)
    draws, collected, sweep = [], 0, 0
    while collected < n_draws:
        apply_kernels(target, state, kernels, gen, adapt=False)
        sweep += 1
        if sweep % thin == 0:
            draws.append(state.eta.reshape(n_chains, n, k))
            collected += n_chains
    return torch.cat(draws, 0)[:n_draws]
