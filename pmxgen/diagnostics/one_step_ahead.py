r"""One-step-ahead predictive log-likelihood of every observation: ``log p(y_ij | y_i,<j, doses)``.

For an NLME-type model each term is a difference of two marginal likelihoods,

    log p(y_ij | y_i,<j) = log p(y_i,≤j) − log p(y_i,<j),   p(y_i,≤j) = ∫ Π_{l≤j} p(y_il | η) p(η) dη,

and every marginal comes from **one** set of importance draws η_s per subject: the per-observation
log densities ℓ_sl under each draw (the model's own, so M3 for BLQ observations and any residual
error model), their cumulative sums along the observations, then a log-sum-exp over the draws
(all subjects, draws and prefixes in one batched evaluation, no loop over subjects or
observations). The prefixes are in record order (the order of the data file). Summed over a
subject's observations the terms telescope to the importance-sampling estimate of log p(y_i),
the marginal likelihood of the importance-sampling −2LL.

Proposal, good for every prefix at once: the posterior given no observation is the prior
p(η) = N(0, Ω), given all of them about the Laplace/FOCE approximation N(η̂, Σ) of the fit (EBE and
its covariance). The posteriors in between are bridged by a deterministic mixture (Veach &
Guibas 1995; Owen & Zhou 2000) of ``n_bridge`` components with precisions
``(1 − λ)Ω⁻¹ + λΣ⁻¹`` and means ``P_λ⁻¹ λ Σ⁻¹ η̂`` for λ = 0, 1/(L−1), …, 1, i.e. the geometric
path between the prior and the Gaussian posterior, which holds the exact prefix posteriors of a
linear-Gaussian model when the observations inform η evenly. The λ = 0 component is the prior
itself, so the weights of the first prefix are bounded (by L); the others are multivariate t
with ``df`` degrees of freedom and their scale inflated by ``inflation`` for heavier tails.
Draws are stratified over the components (S/L each) and weighed by the mixture density, which
keeps the estimator unbiased. The effective sample size of every prefix is reported
(``OSA_ESS``); a small one says the proposal misses that prefix's posterior (raise ``n_samples``
or ``n_bridge``).

Monte Carlo standard errors (delta method, draws shared by the two prefixes): with normalised
weights ``u_sj = w_sj / mean_s(w_sj)``, ``SE_j = sd_s(u_sj − u_s,j−1)/√S``.

On a log-transform-both-sides (exponential error) model the terms are densities of DV on its
own scale (the Jacobian −log DV added), like the fit's −2LL. Models that define their own
``one_step_ahead_log_likelihood(data, *, n_particles, seed)`` (e.g. a latent SDE by particle
filtering, ``[N, max_obs]`` on the padded observation grid, or a pair (values, standard errors))
are asked for it instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..errors import EstimationError, ModelError

__all__ = ["OneStepAhead", "one_step_ahead", "observation_log_density"]


@dataclass(frozen=True)
class OneStepAhead:
    """One-step-ahead predictive log-likelihoods (made by :func:`one_step_ahead`).

    Attributes
    ----------
    table : pandas.DataFrame
        One row per observation in data-row order: ``ID``, ``TIME``, ``DV``, ``ROW``, ``OSA_LOGLIK``
        (log p(y_ij | y_i,<j)), ``OSA_SE`` (its Monte Carlo SE) and ``OSA_ESS`` (effective sample size of
        the weights of the prefix up to this observation; NaN where the model computed the terms itself).
    subjects : pandas.DataFrame
        Per subject: ``ID``, ``n_obs``, ``OSA_LOGLIK`` (the sum, = log p(y_i)) and ``OSA_SE``.
    total, se : float
        The sum over all observations (the marginal log-likelihood) and its Monte Carlo SE.
    method : str
        ``"importance sampling"``, ``"exact (no random effects)"`` or ``"model"`` (the model's
        ``one_step_ahead_log_likelihood``).
    n_samples : int
    seed : int
    log_lik, log_lik_se : torch.Tensor
        ``[N, J]`` on the padded observation grid (NaN on padding).
    notes : tuple of str
    """

    table: pd.DataFrame
    subjects: pd.DataFrame
    total: float
    se: float
    method: str
    n_samples: int
    seed: int
    log_lik: torch.Tensor
    log_lik_se: torch.Tensor
    notes: tuple = field(default_factory=tuple)

    @property
    def min_ess(self) -> float:
        """Smallest effective sample size over all prefixes (NaN without importance sampling)."""
        ess = self.table["OSA_ESS"].to_numpy(dtype=float)
        return float(np.nanmin(ess)) if np.isfinite(ess).any() else float("nan")

    @property
    def minus2ll(self) -> float:
        """−2 × the summed log-likelihood (comparable with the importance-sampling −2LL)."""
        return -2.0 * self.total

    def summary(self) -> dict:
        """Total, SE, −2LL, method, draws, smallest ESS and observation count."""
        return {"total": self.total, "se": self.se, "minus2ll": self.minus2ll, "method": self.method,
                "n_samples": self.n_samples, "min_ess": self.min_ess, "n_observations": int(len(self.table))}


def observation_log_density(model, eta: torch.Tensor, values, batch) -> torch.Tensor:
    """``log p(y_ij | η_i)`` of each observation ``[N, J]`` (0 on padding) on the likelihood scale.

    Uses the model's ``observation_log_likelihood(eta, values, batch)`` when it has one, else the
    ``gaussian_residual`` tier (``moments`` and ``observation_neg2ll``: M3 for BLQ observations).

    Examples
    --------
    >>> import pmxgen, torch
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, iiv=("KA", "CL"))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> eta = torch.zeros(12, 2, dtype=torch.float64)
    >>> per_obs = observation_log_density(model, eta, values, data.batch)
    >>> bool(torch.allclose(per_obs.sum(-1), model.log_likelihood(eta, values, data.batch)))
    True
    """
    own = getattr(model, "observation_log_likelihood", None)
    if callable(own):
        return own(eta, values, batch)
    from ..models.base import capabilities
    if "gaussian_residual" not in capabilities(model):
        raise ModelError(f"one-step-ahead log-likelihoods need each observation's log density; "
                         f"{getattr(model, 'name', type(model).__name__)} has neither the gaussian_residual tier "
                         f"(moments, observation_neg2ll) nor observation_log_likelihood(eta, values, batch) -> [N, J]; "
                         f"add one of them, or one_step_ahead_log_likelihood(data, n_particles=, seed=)")
    mean, var = model.moments(eta, values, batch)
    return -0.5 * model.observation_neg2ll(mean, var, model.observed(batch))


def _check_additivity(model, values, batch, eta: torch.Tensor) -> None:
    """The per-observation densities must add up to the model's log-likelihood (else the terms mean nothing)."""
    with torch.no_grad():
        per_obs = observation_log_density(model, eta, values, batch).sum(-1)
        total = model.log_likelihood(eta, values, batch)
    bad = ~torch.isclose(per_obs, total, rtol=1e-8, atol=1e-8) & torch.isfinite(total)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ModelError(f"the per-observation log densities of {getattr(model, 'name', type(model).__name__)} sum "
                         f"to {float(per_obs[i]):.6g} for subject position {i}, but its log_likelihood is "
                         f"{float(total[i]):.6g}; the model's observation densities and likelihood disagree")


def _posterior_approximation(model, values, batch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres ``[N, K]``, covariances ``[N, K, K]``) of each subject's posterior: EBEs and the inverse FOCE-I
    curvature for Gaussian-residual models, the moments of short MCMC runs otherwise."""
    from ..models.base import capabilities
    n, k = batch.n_subjects, len(model.eta_names(batch))
    zeros = torch.zeros(n, k, dtype=batch.dtype, device=batch.device)
    if "gaussian_residual" in capabilities(model):
        from ..estimation.ebe import solve_ebes
        from ..estimation.objective import subject_objective
        eta = solve_ebes(model, values, batch, zeros).eta.detach()
        curvature = subject_objective(model, values, batch, eta, "focei").curvature.detach()
        return eta, torch.cholesky_inverse(torch.linalg.cholesky(curvature))
    from ..estimation.mcmc import sample_conditional
    from ..estimation.posthoc import draw_summaries
    draws = sample_conditional(model, values, batch, n_draws=400, burn_in=100, eta0=zeros, seed=seed + 1)
    mean, cov, _ = draw_summaries(draws, model.eta_names(batch))
    return mean, cov


def _bridge(omega: torch.Tensor, centre: torch.Tensor, cov: torch.Tensor, n_bridge: int, inflation: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Means ``[L, N, K]`` and Cholesky scales ``[L, N, K, K]`` of the prior-to-posterior components."""
    n, k = centre.shape
    eye = torch.eye(k, dtype=centre.dtype, device=centre.device)
    prior_prec = torch.cholesky_inverse(torch.linalg.cholesky(omega)).expand(n, k, k)
    post_cov = 0.5 * (cov + cov.transpose(-1, -2)) + 1e-10 * eye
    post_prec = torch.cholesky_inverse(torch.linalg.cholesky(post_cov))
    means, chols = [], []
    for lam in torch.linspace(0.0, 1.0, n_bridge).tolist():
        prec = (1.0 - lam) * prior_prec + lam * post_prec
        c = torch.cholesky_inverse(torch.linalg.cholesky(prec))
        c = 0.5 * (c + c.transpose(-1, -2))
        means.append((c @ (lam * post_prec @ centre[..., None]))[..., 0])
        chols.append(torch.linalg.cholesky(c * (1.0 if lam == 0.0 else inflation)))
    return torch.stack(means), torch.stack(chols)


def _mixture_draws(omega, centre, cov, *, n_samples: int, n_bridge: int, inflation: float, df: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified draws ``[S, N, K]`` of the bridge mixture and their log mixture density ``[S, N]``."""
    from ..estimation.importance import multivariate_t_log_density
    means, chols = _bridge(omega, centre, cov, n_bridge, inflation)
    n, k = centre.shape
    dtype, device = centre.dtype, centre.device
    counts = [n_samples // n_bridge + (1 if l < n_samples % n_bridge else 0) for l in range(n_bridge)]
    comp = torch.repeat_interleave(torch.arange(n_bridge, device=device), torch.tensor(counts, device=device))
    z = torch.randn(n_samples, n, k, generator=generator, dtype=dtype, device=device)
    chi2 = (torch.randn(n_samples, n, df, generator=generator, dtype=dtype, device=device) ** 2).sum(-1)
    scale = torch.where(comp[:, None] == 0, torch.ones_like(chi2), torch.sqrt(df / chi2))      # λ = 0: Gaussian prior
    draws = means[comp] + (chols[comp] @ z[..., None])[..., 0] * scale[..., None]
    log_alpha = torch.log(torch.tensor(counts, dtype=dtype, device=device) / n_samples)
    dens = []
    for l in range(n_bridge):
        if l == 0:
            from ..models.base import gaussian_log_prior
            dens.append(gaussian_log_prior(draws, omega))
        else:
            dens.append(multivariate_t_log_density(draws, means[l], chols[l], df))
    log_q = torch.logsumexp(torch.stack(dens) + log_alpha[:, None, None], 0)
    return draws, log_q


def _prefix_estimates(log_w0: torch.Tensor, cum: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """log p(y_≤j) ``[N, J]``, the one-step terms, their SEs and the ESS from log weights of the empty prefix
    ``[S, N]`` and cumulative per-observation log densities ``[S, N, J]``."""
    s = log_w0.shape[0]
    a = log_w0[..., None] + cum                                         # [S, N, J]
    a = torch.where(torch.isnan(a), torch.full_like(a, -math.inf), a)
    top = a.max(0).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(a - top)
    mean_w = w.mean(0)
    log_marg = top + torch.log(mean_w)                                  # log p(y_≤j)
    u = w / mean_w                                                      # normalised weights, mean 1
    prev_log = torch.cat([torch.zeros_like(log_marg[:, :1]), log_marg[:, :-1]], 1)
    u_prev = torch.cat([torch.zeros_like(u[..., :1]), u[..., :-1]], -1)  # the empty prefix is exact: p = 1
    terms = log_marg - prev_log
    se = (u - u_prev).std(0) / math.sqrt(s)
    ess = w.sum(0) ** 2 / (w * w).sum(0)
    total_se = u.std(0) / math.sqrt(s)                                  # SE of log p(y_≤j) itself
    return log_marg, terms, se, ess, total_se


def _run_and_model(fit_or_model, data, values, model):
    """(model, dataset, values, proposal centres or None, their covariances or None)."""
    from ..estimation.results import FitResult
    from ..models.base import PopulationModel
    from ..runs import Run, load_run
    if isinstance(fit_or_model, PopulationModel) or callable(getattr(fit_or_model, "one_step_ahead_log_likelihood",
                                                                      None)):
        if data is None:
            raise EstimationError("one_step_ahead(model, data): give the data with the model")
        if values is None and isinstance(fit_or_model, PopulationModel):
            ps = fit_or_model.parameter_set
            values = ps.unpack(ps.initial_natural(dtype=data.dtype, device=data.device))
        return fit_or_model, data, values, None, None
    if isinstance(fit_or_model, (FitResult, Run)) or isinstance(fit_or_model, (str, bytes)) or hasattr(
            fit_or_model, "__fspath__"):
        run = fit_or_model if isinstance(fit_or_model, Run) else load_run(fit_or_model, model=model, data=data)
        centre = cov = None
        if run.fit.ebe is not None and run.fit.ebe_covariance is not None:
            centre = torch.as_tensor(np.asarray(run.fit.ebe), dtype=run.data.dtype, device=run.data.device)
            cov = torch.as_tensor(np.asarray(run.fit.ebe_covariance), dtype=run.data.dtype, device=run.data.device)
        return run.model, run.data, values if values is not None else run.values, centre, cov
    raise EstimationError(f"one_step_ahead needs a FitResult, a Run, a results folder or a population model "
                          f"(found {type(fit_or_model).__name__})")


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise EstimationError(f"one_step_ahead: {name} must be an integer >= {low} (found {value!r})")
    return int(value)


def one_step_ahead(fit_or_model, data=None, *, n_samples: int = 1000, seed: int = 0, values=None, df: int = 4,
                   n_bridge: int = 4, inflation: float = 1.2, chunk_size: int | None = None, model=None
                   ) -> OneStepAhead:
    """One-step-ahead predictive log-likelihood ``log p(y_ij | y_i,<j, doses)`` of every observation.

    Parameters
    ----------
    fit_or_model : FitResult, Run, results folder, or a population model
        A fit is reloaded with :func:`pmxgen.load_run` (``data`` and ``model`` passed on); its
        EBEs and their covariance centre the proposal. A model is evaluated at ``values``
        (default: its initial estimates), the proposal centred by solving its EBEs.
    data : Dataset, optional
        Required with a model; optional with a fit (re-read from its recipe otherwise).
    n_samples : int
        Importance draws per subject (particles for a model with its own method).
    seed : int
        Same seed, same numbers.
    values : PopulationValues, optional
        Population values to evaluate at (default: the fit's estimates).
    df : int
        Degrees of freedom of the t components of the proposal.
    n_bridge : int
        Components of the prior-to-posterior bridge mixture (≥ 2; see the module docstring).
    inflation : float
        Factor (≥ 1) on the covariances of the non-prior components.
    chunk_size : int, optional
        Draws evaluated together (memory only; the numbers do not depend on it).
    model : PopulationModel, optional
        Passed to :func:`pmxgen.load_run` with a fit.

    Returns
    -------
    OneStepAhead

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = pmxgen.fit(model, data, method="focei", covariance=None)
    >>> osa = one_step_ahead(fit, data, n_samples=400, seed=1)
    >>> list(osa.table.columns)
    ['ID', 'TIME', 'DV', 'ROW', 'OSA_LOGLIK', 'OSA_SE', 'OSA_ESS']
    >>> len(osa.table), bool(abs(osa.total - osa.subjects["OSA_LOGLIK"].sum()) < 1e-9)
    (132, True)
    """
    n_samples = _check_int("n_samples", n_samples, 2)
    df = _check_int("df", df, 1)
    n_bridge = _check_int("n_bridge", n_bridge, 2)
    if isinstance(inflation, bool) or not isinstance(inflation, (int, float)) or not inflation >= 1.0:
        raise EstimationError(f"one_step_ahead: inflation must be a number >= 1 (found {inflation!r})")
    mdl, dataset, values, centre, cov = _run_and_model(fit_or_model, data, values, model)
    batch = dataset.batch
    if callable(getattr(mdl, "one_step_ahead_log_likelihood", None)):
        return _from_model_method(mdl, dataset, n_samples, int(seed))
    k = len(mdl.eta_names(batch))
    gen = torch.Generator(device=batch.device)
    gen.manual_seed(int(seed))
    notes = []
    zeros = torch.zeros(batch.n_subjects, k, dtype=batch.dtype, device=batch.device)
    _check_additivity(mdl, values, batch, zeros)
    if centre is None or centre.shape != (batch.n_subjects, k):
        if k:
            centre, cov = _posterior_approximation(mdl, values, batch, int(seed))
            notes.append("proposal centred at the EBEs solved at the given values")
    omega = mdl.omega_matrix(values, batch).detach()
    if k == 0:
        with torch.no_grad():
            per_obs = observation_log_density(mdl, zeros, values, batch)
        log_w0 = torch.zeros(2, batch.n_subjects, dtype=batch.dtype, device=batch.device)
        cum = per_obs.cumsum(-1)[None].expand(2, -1, -1)
        n_samples = 2
    else:
        draws, log_q = _mixture_draws(omega, centre.detach(), cov.detach(), n_samples=n_samples, n_bridge=n_bridge,
                                      inflation=float(inflation), df=df, generator=gen)
        log_w0, cum = _cumulative_log_densities(mdl, values, batch, draws, log_q, chunk_size)
    log_marg, terms, se, ess, total_se = _prefix_estimates(log_w0, cum)
    method = "importance sampling"
    if k == 0:
        method, ess = "exact (no random effects)", torch.full_like(ess, float("nan"))
    mask = batch.obs.mask
    if getattr(mdl, "log_scale_observations", False):
        jac = torch.where(mask & ~batch.obs.blq, torch.log(torch.where(mask, batch.obs.dv, torch.ones_like(
            batch.obs.dv)).clamp_min(1e-300)), torch.zeros_like(terms))
        terms = terms - jac
        notes.append("exponential error: densities of DV on its own scale (Jacobian -log DV included)")
    nan = torch.full_like(terms, float("nan"))
    terms, se, ess = (torch.where(mask, t, nan) for t in (terms, se, ess))
    # the SE of a subject's sum is that of its last prefix's log p(y_i)
    last = torch.where(mask, torch.arange(mask.shape[1], device=mask.device), -1).max(-1).values
    has = last >= 0
    subj_se = torch.where(has, total_se.gather(1, last.clamp_min(0)[:, None])[:, 0], torch.zeros_like(total_se[:, 0]))
    return _assemble(dataset, terms, se, ess, subj_se, method, n_samples, int(seed), notes)


def _cumulative_log_densities(model, values, batch, draws, log_q, chunk_size):
    """(log p(η) − log q ``[S, N]``, cumulative per-observation log densities ``[S, N, J]``), in chunks of draws."""
    s, n, k = draws.shape
    j = batch.obs.time.shape[1]
    if chunk_size is None:
        chunk_size = max(1, min(s, 1_000_000 // max(n * max(j, 1), 1)))
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    log_w0 = torch.empty(s, n, dtype=draws.dtype, device=draws.device)
    cum = torch.empty(s, n, j, dtype=draws.dtype, device=draws.device)
    reps: dict[int, object] = {}
    mask = batch.obs.mask
    with torch.no_grad():
        for start in range(0, s, chunk_size):
            m = min(chunk_size, s - start)
            if m not in reps:
                reps[m] = batch.repeat(m)
            flat = draws[start:start + m].reshape(m * n, k)
            per_obs = observation_log_density(model, flat, values, reps[m]).reshape(m, n, j)
            per_obs = torch.where(mask, per_obs, torch.zeros_like(per_obs))
            cum[start:start + m] = per_obs.cumsum(-1)
            log_w0[start:start + m] = model.log_prior(flat, values, reps[m]).reshape(m, n) - log_q[start:start + m]
    return log_w0, cum


def _from_model_method(model, dataset, n_samples: int, seed: int) -> OneStepAhead:
    """Terms from the model's own ``one_step_ahead_log_likelihood`` (e.g. particle filtering)."""
    batch = dataset.batch
    out = model.one_step_ahead_log_likelihood(dataset, n_particles=n_samples, seed=seed)
    se = None
    if isinstance(out, tuple):
        out, se = out
    mask = batch.obs.mask
    name = getattr(model, "name", type(model).__name__)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(mask.shape):
        found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{name}.one_step_ahead_log_likelihood must return a tensor [n_subjects, max_obs] = "
                         f"{tuple(mask.shape)} (found {found})")
    out = out.detach().to(dtype=batch.dtype, device=batch.device)
    bad = mask & ~torch.isfinite(out)
    if bool(bad.any()):
        i, j = (int(v) for v in torch.nonzero(bad)[0])
        raise ModelError(f"{name}.one_step_ahead_log_likelihood returned {float(out[i, j])} for observation {j} "
                         f"of subject {dataset.ids[i]}; a log-likelihood must be finite")
    nan = torch.full_like(out, float("nan"))
    se = nan if se is None else se.detach().to(dtype=batch.dtype, device=batch.device)
    terms, se = torch.where(mask, out, nan), torch.where(mask, se, nan)
    subj_se = torch.sqrt(torch.where(mask, se * se, torch.zeros_like(se)).sum(-1))
    return _assemble(dataset, terms, se, nan, subj_se, "model", n_samples, seed,
                     [f"terms from {name}.one_step_ahead_log_likelihood"])


def _assemble(dataset, terms, se, ess, subj_se, method, n_samples, seed, notes) -> OneStepAhead:
    from .simulate import observation_index
    batch = dataset.batch
    subject, sample, row = observation_index(batch)
    ids = np.asarray(dataset.ids, dtype=object)
    t_np, se_np, ess_np = (x.detach().cpu().numpy() for x in (terms, se, ess))
    table = pd.DataFrame({"ID": ids[subject].tolist(), "TIME": batch.obs.time.cpu().numpy()[subject, sample],
                          "DV": batch.obs.dv.cpu().numpy()[subject, sample], "ROW": row,
                          "OSA_LOGLIK": t_np[subject, sample], "OSA_SE": se_np[subject, sample],
                          "OSA_ESS": ess_np[subject, sample]})
    mask = batch.obs.mask
    sums = torch.where(mask, terms, torch.zeros_like(terms)).sum(-1)
    subjects = pd.DataFrame({"ID": list(dataset.ids), "n_obs": mask.sum(-1).cpu().numpy(),
                             "OSA_LOGLIK": sums.cpu().numpy(), "OSA_SE": subj_se.detach().cpu().numpy()})
    total = float(sums.sum())
    se_total = float(torch.sqrt((subj_se ** 2).sum())) if bool(torch.isfinite(subj_se).all()) else float("nan")
    if not math.isfinite(total):
        raise EstimationError(f"the one-step-ahead log-likelihood is not finite ({total}); some observation has no "
                              f"positive density under any draw. Check the fit, or raise n_samples")
    return OneStepAhead(table=table, subjects=subjects, total=total, se=se_total, method=method, n_samples=n_samples,
                        seed=seed, log_lik=terms.detach(), log_lik_se=se.detach(), notes=tuple(notes))
