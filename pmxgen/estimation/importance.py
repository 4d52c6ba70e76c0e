"""−2 log-likelihood by importance sampling at given estimates (NONMEM's IMP with EONLY=1).

Each subject's proposal is a multivariate t centred at its EBE with the scale matrix of its
Laplace/FOCE posterior approximation (inverse of the curvature matrix). With weights
``w = p(y|η) p(η) / q(η)``, ``log p(y_i) ≈ log mean_s w_is``; the Monte Carlo SE of the total
−2LL is ``2 sqrt(Σ_i var(w_i) / (S mean(w_i)²))`` (delta method).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data.batching import SubjectBatch
from ..errors import EstimationError
from ..models.base import PopulationModel
from ..models.parameter_set import PopulationValues

__all__ = ["ImportanceSamplingResult", "importance_sampling", "importance_sampling_from_draws", "summarize_log_weights",
           "multivariate_t_log_density"]


@dataclass(frozen=True)
class ImportanceSamplingResult:
    """Total ``minus2ll`` and its Monte Carlo ``se``; per-subject ``log_marginal [N]`` and effective sample size."""

    minus2ll: float
    se: float
    n_samples: int
    df: int | None
    log_marginal: torch.Tensor
    ess: torch.Tensor

    def as_dict(self, n_density_observations: int) -> dict:
        return {"minus2ll": self.minus2ll, "ofv": self.minus2ll - n_density_observations * math.log(2 * math.pi),
                "se": self.se, "n_samples": self.n_samples, "df": self.df,
                "min_ess": float(self.ess.min()) if self.ess.numel() else float("nan")}


def multivariate_t_log_density(x: torch.Tensor, loc: torch.Tensor, chol: torch.Tensor, df: int) -> torch.Tensor:
    """log density of a multivariate t with ``df`` degrees of freedom, location ``loc`` and scale ``chol cholᵀ``."""
    k = x.shape[-1]
    z = torch.linalg.solve_triangular(chol.expand(x.shape[:-1] + (k, k)), (x - loc)[..., None], upper=False)[..., 0]
    maha = (z * z).sum(-1)
    logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return (math.lgamma((df + k) / 2) - math.lgamma(df / 2) - 0.5 * k * math.log(df * math.pi) - logdet
            - 0.5 * (df + k) * torch.log1p(maha / df))


def importance_sampling(model: PopulationModel, values: PopulationValues, batch: SubjectBatch, eta_hat: torch.Tensor,
                        precision: torch.Tensor, *, n_samples: int = 1000, df: int = 4, seed: int = 0,
                        chunk_size: int | None = None) -> ImportanceSamplingResult:
    """Importance-sampling estimate of −2 log L (full, with constants) at ``values``.

    Parameters
    ----------
    model : PopulationModel
    values : PopulationValues
    batch : SubjectBatch
    eta_hat : Tensor
        Proposal centres ``[N, K]`` (the EBEs).
    precision : Tensor
        Proposal scale as a precision matrix ``[N, K, K]`` (the curvature of the Laplace/FOCE approximation).
    n_samples : int
        Draws per subject.
    df : int
        Degrees of freedom of the t proposal (an integer >= 1).
    seed : int
    chunk_size : int, optional
        Draws evaluated together (each draw evaluates all subjects); default keeps about 10⁶
        observation slots per chunk.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise EstimationError(f"n_samples must be an integer >= 2 (found {n_samples!r})")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise EstimationError(f"df must be an integer >= 1 (found {df!r})")
    n, k = eta_hat.shape
    dtype, device = eta_hat.dtype, eta_hat.device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    eta_hat = eta_hat.detach()
    if k == 0:
        with torch.no_grad():
            ll = model.log_likelihood(eta_hat, values, batch)
        return ImportanceSamplingResult(float(-2 * ll.sum()), 0.0, n_samples, df, ll, torch.full_like(ll, n_samples))
    cov = torch.cholesky_inverse(torch.linalg.cholesky(precision.detach()))
    chol = torch.linalg.cholesky(0.5 * (cov + cov.transpose(-1, -2)))
    # All random numbers up front, so that chunk_size changes memory use only, not the draws.
    z_all = torch.randn(n_samples, n, k, generator=gen, dtype=dtype, device=device)
    chi2_all = (torch.randn(n_samples, n, df, generator=gen, dtype=dtype, device=device) ** 2).sum(-1)
    draws = eta_hat + (chol @ z_all[..., None])[..., 0] * torch.sqrt(df / chi2_all)[..., None]
    log_q = multivariate_t_log_density(draws, eta_hat, chol, df)
    return importance_sampling_from_draws(model, values, batch, draws, log_q, df=df, chunk_size=chunk_size)


def importance_sampling_from_draws(model: PopulationModel, values: PopulationValues, batch: SubjectBatch,
                                   draws: torch.Tensor, log_q: torch.Tensor, *, df: int | None = None,
                                   chunk_size: int | None = None) -> ImportanceSamplingResult:
    """Importance-sampling −2 log L from given proposal draws ``[S, N, K]`` and their log proposal density ``[S, N]``.

    Any proposal works (a t around the EBEs, a variational posterior); ``df`` is recorded only.

    Examples
    --------
    >>> import torch, pmxgen
    >>> from pmxgen.estimation.importance import importance_sampling_from_draws
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, iiv=("KA", "CL"))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> prior = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), values.omega)
    >>> draws = prior.sample((50, data.n_subjects))
    >>> result = importance_sampling_from_draws(model, values, data.batch, draws, prior.log_prob(draws))
    >>> result.n_samples, result.log_marginal.shape
    (50, torch.Size([12]))
    """
    n_samples, n, k = draws.shape
    if n_samples < 2:
        raise EstimationError(f"importance sampling needs at least 2 draws per subject (found {n_samples})")
    if log_q.shape != (n_samples, n):
        raise EstimationError(f"log_q must have shape {(n_samples, n)} like the draws (found {tuple(log_q.shape)})")
    j = max(batch.obs.time.shape[1], 1)
    if chunk_size is None:
        chunk_size = max(1, min(n_samples, 1_000_000 // max(n * j, 1)))
    log_w = torch.empty(n_samples, n, dtype=draws.dtype, device=draws.device)
    start = 0
    rep_cache: dict[int, SubjectBatch] = {}
    with torch.no_grad():
        draws, log_q = draws.detach(), log_q.detach()
        while start < n_samples:
            m = min(chunk_size, n_samples - start)
            if m not in rep_cache:
                rep_cache[m] = batch.repeat(m)
            flat = draws[start:start + m].reshape(m * n, k)
            rep = rep_cache[m]
            target = model.log_likelihood(flat, values, rep) + model.log_prior(flat, values, rep)
            log_w[start:start + m] = target.reshape(m, n) - log_q[start:start + m]
            start += m
    return summarize_log_weights(log_w, df=df)


def summarize_log_weights(log_w: torch.Tensor, *, df: int | None = None) -> ImportanceSamplingResult:
    """Total −2LL, its delta-method Monte Carlo SE and per-subject ESS from log weights ``[S, N]``."""
    n_samples = log_w.shape[0]
    log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -float("inf")))
    top = log_w.max(0).values
    w = torch.exp(log_w - top)
    mean_w = w.mean(0)
    log_marginal = top + torch.log(mean_w)
    var_log = w.var(0) / (n_samples * mean_w ** 2)
    ess = w.sum(0) ** 2 / (w * w).sum(0)
    minus2ll = float(-2.0 * log_marginal.sum())
    se = float(2.0 * torch.sqrt(var_log.sum()))
    return ImportanceSamplingResult(minus2ll, se, n_samples, df, log_marginal, ess)


def importance_summary(result: ImportanceSamplingResult, model: PopulationModel, batch: SubjectBatch) -> dict:
    """The FitResult entry of an importance-sampling run: −2LL (with the log-DV Jacobian on a log
    scale, like ``minus2ll``), its Monte Carlo SE, the OFV-convention value and the ESS summary."""
    from .posthoc import minus2ll_offset
    offset, n_density = minus2ll_offset(model, batch)
    summary = result.as_dict(n_density)
    if getattr(model, "log_scale_observations", False):
        summary["note"] = "on the log scale plus the Jacobian 2*sum(log DV), like minus2ll"
        summary["minus2ll"] += offset - n_density * math.log(2 * math.pi)
    return summary
