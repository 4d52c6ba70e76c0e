"""What an MCMC-based estimator (SAEM, MCEM, the Fisher-score estimator) reports at its estimates.

From the final chains: draws of every subject's conditional distribution ``p(η_i | y_i)``
(conditional means and SDs, ``FitResult.posterior_draws``), the individual estimates (the
modes by Newton, :func:`~pmxgen.estimation.ebe.solve_ebes`, where the model offers the
``gaussian_residual`` tier; the conditional means otherwise), the −2LL by importance sampling
with a t proposal matched to the conditional mean and covariance, and the residual and
individual tables (:func:`~pmxgen.estimation.posthoc.tables_for`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.dataset import Dataset
from ..models.base import capabilities
from ..models.parameter_set import PopulationValues
from .ebe import solve_ebes
from .importance import importance_sampling, importance_summary
from .mcmc import sample_conditional
from .posthoc import PosthocTables, draw_summaries, minus2ll_offset, tables_for

__all__ = ["ConditionalPosthoc", "conditional_posthoc"]


@dataclass
class ConditionalPosthoc:
    """Draws ``[S, N, K]``, conditional means ``[N, K]`` and covariances ``[N, K, K]``, the individual
    estimates ``[N, K]`` (modes or means), the importance-sampling summary, −2LL and OFV, the tables
    and messages about how the individual estimates were taken."""

    draws: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor
    modes: torch.Tensor
    importance: dict
    minus2ll: float
    ofv: float
    tables: PosthocTables
    messages: list[str] = field(default_factory=list)


def conditional_posthoc(model, data: Dataset, values: PopulationValues, start: torch.Tensor, *, n_chains: int,
                        kernels: dict, posterior_draws: int, burn_in: int, importance_samples: int,
                        importance_df: int, seed: int) -> ConditionalPosthoc:
    """Posterior draws (seed ``seed + 1``), individual estimates, importance-sampling −2LL (seed
    ``seed + 2``) and tables at ``values``; the chains start at ``start`` ``[N, K]``."""
    batch = data.batch
    k = start.shape[-1]
    draws = sample_conditional(model, values, batch, n_draws=int(posterior_draws), n_chains=n_chains,
                               burn_in=int(burn_in), kernels=kernels, eta0=start, seed=int(seed) + 1)
    eta_names = tuple(model.eta_names(batch))
    cond_mean, cond_cov, extra = draw_summaries(draws, eta_names)
    messages = []
    gaussian_residual = "gaussian_residual" in capabilities(model)
    if gaussian_residual:
        modes = solve_ebes(model, values, batch, cond_mean, max_iter=100, tol=1e-10).eta
    else:
        modes = cond_mean
        messages.append("individual estimates are the conditional means (the model has no Gaussian-residual tier "
                        "for modes)")
    # Importance sampling with a t proposal matched to the conditional mean and covariance
    # (slightly widened so that its tails cover the target's).
    ridge = 1e-8 * torch.eye(k, dtype=cond_cov.dtype, device=cond_cov.device)
    precision = torch.cholesky_inverse(torch.linalg.cholesky(1.1 * cond_cov + ridge))
    isr = importance_sampling(model, values, batch, cond_mean, precision, n_samples=int(importance_samples),
                              df=int(importance_df), seed=int(seed) + 2)
    if gaussian_residual:
        is_dict = importance_summary(isr, model, batch)
        offset, _ = minus2ll_offset(model, batch)
        minus2ll = float(is_dict["minus2ll"])
        ofv = minus2ll - offset
    else:
        is_dict = isr.as_dict(int(batch.obs.mask.sum()))
        minus2ll, ofv = float(is_dict["minus2ll"]), float(is_dict["ofv"])
    tables = tables_for(model, data, values, modes, extra)
    return ConditionalPosthoc(draws, cond_mean, cond_cov, modes, is_dict, minus2ll, ofv, tables, messages)
