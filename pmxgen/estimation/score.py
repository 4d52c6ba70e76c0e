"""NLME by the score: Fisher-preconditioned stochastic gradient ascent with MCMC scores (Fisher's identity).

The score of the marginal likelihood is the conditional expectation of the complete-data
score (Fisher's identity),

    ∇_x log p(y | x) = Σ_i E[∇_x log p(y_i, η_i | x) | y_i],

in the unconstrained parameters ``x = ps.to_unconstrained(φ)``. Batched MCMC chains (every
subject × chain at once, the kernels of :mod:`.mcmc`, warm-started between iterations) give
draws of ``p(η_i | y_i, x)``; autograd gives every row's complete-data score in one backward
pass. :class:`FisherScore` ascends the likelihood with these scores, preconditioned by a
running estimate of the Fisher information, and averages its iterates (Polyak–Ruppert).
:func:`fisher_identity_score` estimates the score itself at fixed parameters.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.batching import SubjectBatch
from ..data.dataset import Dataset
from ..errors import ConvergenceWarning, EstimationError
from ..models.base import PopulationModel
from .base import CliOption, Estimator, check_integer
from .chain_posthoc import conditional_posthoc
from .covariance import CovarianceResult
from .louis import louis_covariance
from .mcmc import ConditionalTarget, KernelState, apply_kernels, validate_kernels
from .mu_reference import MuReference, find_mu_references
from .posthoc import common_result_fields, estimate_messages
from .registry import register_estimator
from .results import FitResult
from .saem import _long_run_variance

__all__ = ["FisherScore", "SCORE_COVARIANCE", "complete_data_scores", "fisher_identity_score", "ScoreEstimate"]

#: Standard-error methods of :class:`FisherScore`.
SCORE_COVARIANCE = ("louis", "fisher")

#: The part of the decreasing-step phase whose iterates are averaged (the first part lets the
#: iterates settle after the heating phase: averaging all of it left a transient of ~0.2 SE on
#: the linear-Gaussian test model, 400 iterations, 20 chains, 4 seeds; the last half: ≤ 0.13 SE).
AVERAGED_PART = 0.5

#: Convergence rule of :class:`FisherScore` (measurements in its docstring): iterations each
#: phase needs at least,
SCORE_MIN_WINDOW = 20
#: the averaged score is "not zero" when its Fisher-preconditioned value exceeds SCORE_Z Monte
#: Carlo SEs *and* SCORE_BIAS standard errors of the estimate,
SCORE_Z = 3.5
SCORE_BIAS = 0.1
#: and the Polyak average is "too noisy" when its Monte Carlo SE exceeds SCORE_PRECISION
#: standard errors.
SCORE_PRECISION = 0.25
_BATCHES = 10


def _mu_shift(mu_refs: Sequence[MuReference], values, reference_theta: dict, rows: int, k: int,
              like: torch.Tensor) -> torch.Tensor:
    """``[R, K]``: μ(θ_row) − μ(θ_ref) at the mu-referenced η, 0 elsewhere (differentiable in θ_row)."""
    shift = torch.zeros(rows, k, dtype=like.dtype, device=like.device)
    for ref in mu_refs:
        delta = ref.mu(values.theta[ref.theta]) - ref.mu(reference_theta[ref.theta])
        shift = shift.index_put((torch.arange(rows, device=like.device),
                                 torch.full((rows,), ref.eta_index, device=like.device)), delta.expand(rows))
    return shift


def complete_data_scores(model: PopulationModel, phi: torch.Tensor, batch: SubjectBatch, eta: torch.Tensor,
                         mu_refs: Sequence[MuReference] = ()) -> torch.Tensor:
    """``∇_φ [log p(y_r | η_r, φ) + log p(η_r | φ)]`` for every row r of ``eta`` ``[R, K]`` / ``batch``: ``[R, P]``
    (NaN in the rows whose complete log density is not finite).

    One backward pass: each row gets its own copy of φ. With ``mu_refs`` the latent variable of a
    mu-referenced η is ``z = μ(θ) + η`` (held fixed while θ varies), as in
    :func:`~pmxgen.estimation.louis.louis_information`: the expectation is the same, the Monte
    Carlo variance is smaller where the data say little about η.
    """
    ps = model.parameter_set
    rows, k = eta.shape
    p = phi.numel()
    with torch.enable_grad():
        phi_rows = phi.detach().expand(rows, p).clone().requires_grad_(True)
        values = ps.unpack(phi_rows)
        e = eta.detach()
        if mu_refs:
            reference = {ref.theta: values.theta[ref.theta].detach() for ref in mu_refs}
            e = e - _mu_shift(mu_refs, values, reference, rows, k, e)
        complete = model.log_likelihood(e, values, batch) + model.log_prior(e, values, batch)
        (g,) = torch.autograd.grad(complete.sum(), phi_rows)
    # a row whose complete log density is not finite has no score (NaN), whatever autograd says
    return torch.where(torch.isfinite(complete.detach())[:, None], g.detach(), torch.full_like(g, math.nan))


def _jacobian(ps, x: torch.Tensor) -> torch.Tensor:
    """``∂φ/∂x`` ``[P, P]`` at ``x``."""
    return torch.autograd.functional.jacobian(ps.from_unconstrained, x.detach())


def _mean_vector(mu_refs: Sequence[MuReference], values, k: int, like: torch.Tensor) -> torch.Tensor:
    m = torch.zeros(k, dtype=like.dtype, device=like.device)
    for ref in mu_refs:
        m[ref.eta_index] = ref.mu(values.theta[ref.theta].detach())
    return m


def _mu_references(model, values, batch) -> list[MuReference]:
    if not callable(getattr(model, "individual_parameters", None)):
        return []
    estimated = {t.name for t in model.parameter_set.theta if not t.fixed}
    return find_mu_references(model, values, batch, estimated, n_iiv=len(model.eta_names(batch)))


class ScoreEstimate:
    """The Monte Carlo estimate of the marginal score at fixed parameters (see :func:`fisher_identity_score`).

    Attributes: ``names``; ``score`` ``[P]`` (in φ, the natural parameters), ``mc_se`` ``[P]``
    (its Monte Carlo SE, batch means), ``z`` = score / mc_se, ``per_iteration`` ``[T, P]``.
    """

    def __init__(self, names, per_iteration: np.ndarray):
        self.names = tuple(names)
        self.per_iteration = per_iteration
        t = len(per_iteration)
        self.score = per_iteration.mean(0)
        self.mc_se = np.sqrt(_long_run_variance(per_iteration, _BATCHES) / t)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.z = self.score / self.mc_se

    def __repr__(self) -> str:
        return "ScoreEstimate(" + ", ".join(f"{n}: {s:.3g} ± {e:.2g}" for n, s, e in
                                            zip(self.names, self.score, self.mc_se)) + ")"


def fisher_identity_score(model: PopulationModel, data: Dataset, values: dict | None = None, *, n_iterations: int = 200,
                          n_chains: int = 4, burn_in: int = 50, kernels: dict | None = None,
                          seed: int = 0) -> ScoreEstimate:
    """Estimate ``∇_φ log p(y | φ)`` at fixed ``values`` (natural scale, by name; default the initial ones).

    Each of ``n_iterations`` MCMC sweeps (after ``burn_in`` adaptive ones) over ``n_chains`` chains
    per subject gives ``Σ_i mean_c ∇_φ log p(y_i, η_ic | φ)``; their mean is the score (Fisher's
    identity) and batch means over the sweeps give its Monte Carlo SE.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> est = fisher_identity_score(model, data, n_iterations=20, burn_in=5)
    >>> est.names, est.score.shape
    (('KA', 'CL', 'V', 'OMEGA(KA)', 'OMEGA(CL)', 'SIGMA(ADD)'), (6,))
    """
    for label, v, low in (("n_iterations", n_iterations, 2 * _BATCHES), ("n_chains", n_chains, 1),
                          ("burn_in", burn_in, 0)):
        check_integer("fisher_identity_score", label, v, low)
    kernels = validate_kernels(kernels or {"prior": 2, "random_walk": 2, "mala": 2})
    ps = model.parameter_set
    batch = data.batch
    phi = ps.initial_natural(dtype=batch.dtype, device=batch.device)
    if values:
        phi = torch.tensor([float(values.get(name, phi[j])) for j, name in enumerate(ps.names)], dtype=batch.dtype,
                           device=batch.device)
    unpacked = ps.unpack(phi)
    n, k = batch.n_subjects, len(model.eta_names(batch))
    rep = batch.repeat(n_chains) if n_chains > 1 else batch
    mu_refs = _mu_references(model, unpacked, batch)
    gen = torch.Generator(device=batch.device).manual_seed(int(seed))
    state = KernelState(eta=torch.zeros(n_chains * n, k, dtype=batch.dtype, device=batch.device))
    target = ConditionalTarget(model, unpacked, rep)
    for _ in range(burn_in):
        apply_kernels(target, state, kernels, gen, adapt=True)
    rows = []
    for _ in range(n_iterations):
        apply_kernels(target, state, kernels, gen, adapt=False)
        s = complete_data_scores(model, phi, rep, state.eta, mu_refs)
        rows.append((s.sum(0) / n_chains).cpu().numpy())
    return ScoreEstimate(ps.names, np.array(rows))


@register_estimator
class FisherScore(Estimator):
    """Maximum likelihood by Fisher-preconditioned stochastic gradient with MCMC scores (Fisher-SGD).

    The score ``∇_x log p(y | x)`` in the unconstrained parameters x is, by Fisher's identity,
    the sum over subjects of ``E[∇_x log p(y_i, η_i | x) | y_i]``. Each iteration k

    1. moves every subject's chains (``n_chains`` per subject, all subjects and chains in one
       batch, warm-started from the previous iteration) by one sweep of the MCMC kernels of
       :mod:`~pmxgen.estimation.mcmc` at the current x (their scales adapt in the heating phase
       only);
    2. takes every row's complete-data score by autograd in the natural parameters φ (one
       backward pass; mu-referenced η as ``z = μ(θ) + η``, as Louis' formula in SAEM) and
       maps it to x with the Jacobian of ``ps.from_unconstrained``; ``s_i`` is subject i's mean
       over its chains and ``g_k = Σ_i s_i``;
    3. steps ``x_{k+1} = x_k + γ_k I_{k−1}⁻¹ g_k`` (a Fisher-scoring step on the noisy score,
       preconditioned by the estimate of the iterations before, so independent of this
       iteration's draws), each component limited to ``max_step · max(1, |x|)``, with
       ``γ_k = 1`` in the heating phase (the first ``heat_fraction`` of ``iterations``) and
       ``γ_k = m^(−α)`` in the m-th iteration after it (α = ``step_exponent`` in (0.5, 1]);
       mu-referenced chains are shifted so that z stays put;
    4. updates the Fisher information estimate ``I_k = I_{k−1} + ρ_k (Σ_i s_i s_iᵀ − I_{k−1})``
       (the empirical Fisher of Baey, Delattre, Kuhn et al. 2023; ``ρ_k = 1/k`` for the first 10
       iterations, then ``min(0.1, γ_k)``).

    The estimate is the Polyak–Ruppert average of the iterates over the last half
    (``AVERAGED_PART``) of the decreasing-step phase, the averaging phase.
    After the run, as for :class:`~pmxgen.estimation.SAEM`: conditional draws, modes (the
    EBEs, by Newton, when the model has Gaussian residuals; conditional means otherwise),
    −2LL by importance sampling and the tables.

    Parameters
    ----------
    iterations : int
        Iterations in all: heating, then decreasing steps, the last half of which are averaged.
    heat_fraction : float
        Fraction of ``iterations`` with step 1 (in (0, 1)).
    step_exponent : float
        α of the steps ``γ_m = m^(−α)`` after heating, in (0.5, 1]. 0.75 (α < 1, as Polyak
        averaging wants): with α = 1 the steps shrink too fast for the mismatch between the
        empirical Fisher and the observed information, and on the linear-Gaussian test model
        (400 iterations, 20 chains) 3 of 4 seeds ended ``max_iterations`` with estimates
        0.3–0.4 SE off; α = 0.75 and 0.6: all converged, ≤ 0.13 and ≤ 0.17 SE off.
    max_step : float
        Largest move of one unconstrained parameter in one iteration, relative to ``max(1, |x|)``
        (protects the heating phase from far initial estimates).
    n_chains : int or None
        Chains per subject, at least 2 (the Monte Carlo error is measured between them);
        None: ``max(2, ceil(200 / N))``.
    kernels : dict
        Applications per iteration of each MCMC kernel; default ``{"prior": 2, "random_walk": 2, "mala": 2}``.
    covariance : {"louis", "fisher"} or None
        Standard errors from Louis' observed information on conditional draws at the estimates
        (default, as SAEM), or from the inverse of the empirical Fisher information
        ``Σ_i s_i s_iᵀ`` averaged over the averaging phase (less its Monte Carlo part, the
        between-chain variance of each subject's mean score), mapped from x to φ by the Jacobian
        of ``from_unconstrained``. The empirical Fisher is consistent but not the observed
        information with few subjects: on the 30-subject linear-Gaussian test model its SEs
        (with the exact scores, and as estimated here within 10 %) are 7–50 % above the exact
        ones; Louis' are within 12 %.
    importance_samples, importance_df, posterior_draws, posterior_burn_in : int
        As :class:`~pmxgen.estimation.SAEM`.
    seed : int
        Same seed, same result.
    progress, progress_every, cpu_threads
        As :class:`~pmxgen.estimation.ClassicalEstimator`.

    Notes
    -----
    **Status** (``converged``, ``max_iterations`` or ``failed``; a
    :class:`~pmxgen.errors.ConvergenceWarning` unless ``converged``):

    * ``failed`` when a score, step or parameter is not finite (the message names the
      parameters and the iteration; the estimates are those of the iteration before), or the
      importance-sampling −2LL is not finite.
    * ``max_iterations`` when either phase has fewer than ``SCORE_MIN_WINDOW`` = 20 iterations;
      when the averaged score over the averaging phase is not zero: its Fisher-preconditioned
      value ``d = I⁻¹ ḡ`` (≈ x* − x̄, how far the average is from the optimum) exceeds
      ``SCORE_Z`` = 3.5 Monte Carlo SEs *and* ``SCORE_BIAS`` = 0.1 standard errors
      (``√diag I⁻¹``) for some parameter; or when the Monte Carlo SE of the Polyak average
      exceeds ``SCORE_PRECISION`` = 0.25 standard errors. The Monte Carlo covariance of the
      averaged score is measured between the chains of each subject (they share the
      trajectory of x and differ only by their draws: ``Σ_i Cov_c(s̄_ic) / C``), that of the
      average as ``I⁻¹ Cov(ḡ) I⁻¹`` (Polyak and Juditsky). Batch means over the iterations
      cannot measure it: the steps make successive scores cancel (a stationary run with
      estimates 0.5 SE off reported 0.06 SE). The message names the parameters and what to
      raise.
    * ``converged`` otherwise.

    Measured: stationary runs (linear-Gaussian model, 400 iterations, 20 chains, 4 seeds;
    theophylline, 200 and 400 iterations, 17 chains, 5 seeds each) have ``d`` ≤ 0.2 SE and
    ≤ 2 Monte Carlo SEs and a Monte Carlo SE of the average ≤ 0.15 SE, and all converged
    (theophylline: every estimate within 0.13 SE of a 300 + 200 iteration SAEM fit at 200
    iterations, within 0.12 SE at 400); a run from CL, V and Ω(CL) 3× too large with
    ``max_step=0.02`` (80 iterations) ends with ``d`` 0.6 SE = 5 Monte Carlo SEs.

    Network weights are not optimised (``supports_network_weights = False``).

    References
    ----------
    Baey C, Delattre M, Kuhn E, Leger J-B, Lemler S (2023). Efficient preconditioned stochastic
    gradient descent for estimation in latent variable models. Proceedings of the 40th
    International Conference on Machine Learning (ICML), PMLR 202.
    Polyak BT, Juditsky AB (1992). Acceleration of stochastic approximation by averaging.
    SIAM J Control Optim 30:838–855. Louis TA (1982). Finding the observed information matrix
    when using the EM algorithm. JRSS B 44:226–233.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = FisherScore(iterations=120, importance_samples=200, posterior_draws=50, seed=1).fit(model, data)
    >>> fit.method, fit.status, len(fit.history)
    ('score', 'converged', 120)
    """

    name = "score"
    summary = "stochastic gradient with MCMC scores (Fisher's identity), Fisher-preconditioned"
    requires = ("gaussian_random_effects",)
    needs_random_effects = True
    cli_options = (
        CliOption("--iterations", "iterations", int, "score iterations in all (default 400)"),
        CliOption("--heat-fraction", "heat_fraction", float, "fraction of the iterations with step 1 (default 0.5)"),
        CliOption("--covariance", "covariance", str,
                  "standard errors: louis (default) or fisher (empirical Fisher); none skips them",
                  ("louis", "fisher", "none"), none_value="none"),
        CliOption("--importance-samples", "importance_samples", int,
                  "draws per subject for the importance-sampling -2LL (default 1000)"),
        CliOption("--chains", "n_chains", int, "MCMC chains per subject (default ceil(200/N))"),
    )

    def __init__(self, *, iterations: int = 400, heat_fraction: float = 0.5, step_exponent: float = 0.75,
                 max_step: float = 1.0, n_chains: int | None = None, kernels: dict | None = None,
                 covariance: str | None = "louis", importance_samples: int = 1000, importance_df: int = 4,
                 posterior_draws: int = 500, posterior_burn_in: int = 50, seed: int = 0,
                 progress: bool | Callable = False, progress_every: int = 50, cpu_threads: int | None = 1):
        self.iterations = iterations
        self.heat_fraction = heat_fraction
        self.step_exponent = step_exponent
        self.max_step = max_step
        self.n_chains = n_chains
        self.kernels = {"prior": 2, "random_walk": 2, "mala": 2} if kernels is None else kernels
        self.covariance = covariance
        self.importance_samples = importance_samples
        self.importance_df = importance_df
        self.posterior_draws = posterior_draws
        self.posterior_burn_in = posterior_burn_in
        self.seed = seed
        self.progress = progress
        self.progress_every = progress_every
        self.cpu_threads = cpu_threads

    # ------------------------------------------------------------ validation
    def _validate(self, model, data) -> None:
        who = type(self).__name__
        for name, low in (("iterations", 2), ("importance_samples", 2), ("importance_df", 1), ("posterior_draws", 2),
                          ("posterior_burn_in", 0), ("progress_every", 1), ("seed", 0)):
            check_integer(who, name, getattr(self, name), low)
        if self.n_chains is not None:
            check_integer(who, "n_chains", self.n_chains, 2)
        h = self.heat_fraction
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0 < h < 1:
            raise EstimationError(f"{who}: heat_fraction must be in (0, 1) (found {h!r})")
        a = self.step_exponent
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.5 < a <= 1.0:
            raise EstimationError(f"{who}: step_exponent must be in (0.5, 1] (found {a!r}): the steps m^-a must sum "
                                  f"to infinity while their squares stay finite")
        m = self.max_step
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (math.isfinite(m) and m > 0):
            raise EstimationError(f"{who}: max_step must be a finite number > 0 (found {m!r})")
        if self.covariance is not None and self.covariance not in SCORE_COVARIANCE:
            raise EstimationError(f"{who}: covariance must be one of {', '.join(SCORE_COVARIANCE)} or None "
                                  f"(found {self.covariance!r})")
        validate_kernels(self.kernels)

    def chains(self, n_subjects: int) -> int:
        """Chains per subject (default ``ceil(200 / N)``, at least 2)."""
        return self.n_chains if self.n_chains is not None else max(2, math.ceil(200 / n_subjects))

    def phases(self) -> tuple[int, int, int]:
        """Iterations (heating, decreasing steps before the average, averaged): the decreasing-step
        phase is the part after heating; its last ``AVERAGED_PART`` are averaged."""
        heat = min(max(1, int(round(self.heat_fraction * self.iterations))), self.iterations - 1)
        averaged = max(1, int(round(AVERAGED_PART * (self.iterations - heat))))
        return heat, self.iterations - heat - averaged, averaged

    # ------------------------------------------------------------------- fit
    def _fit(self, model, data) -> FitResult:
        started = time.perf_counter()
        kernels = validate_kernels(self.kernels)
        batch = data.batch
        ps = model.parameter_set
        n, k, p = batch.n_subjects, len(model.eta_names(batch)), len(ps.names)
        chains = self.chains(n)
        rep = batch.repeat(chains) if chains > 1 else batch
        gen = torch.Generator(device=batch.device).manual_seed(int(self.seed))
        phi = ps.initial_natural(dtype=batch.dtype, device=batch.device)
        x = ps.to_unconstrained(phi).detach()
        mu_refs = _mu_references(model, ps.unpack(phi), batch)
        state = KernelState(eta=torch.zeros(chains * n, k, dtype=batch.dtype, device=batch.device))
        n_heat, n_decrease, n_avg = self.phases()
        alpha = float(self.step_exponent)
        fisher = None
        fisher_se = torch.zeros(p, p, dtype=batch.dtype, device=batch.device)
        x_sum = torch.zeros_like(x)
        chain_sum = torch.zeros(chains, n, p, dtype=batch.dtype, device=batch.device)
        scores, history = [], []
        failure = None
        names = list(ps.names)
        for it in range(self.iterations):
            heating = it < n_heat
            gamma = 1.0 if heating else (it - n_heat + 1) ** (-alpha)
            values = ps.unpack(phi)
            target = ConditionalTarget(model, values, rep)
            state.log_density = None
            apply_kernels(target, state, kernels, gen, adapt=heating)
            jac = _jacobian(ps, x)
            rows = complete_data_scores(model, phi, rep, state.eta, mu_refs) @ jac          # [C·N, P] in x
            per_chain = rows.reshape(chains, n, p)
            s = per_chain.mean(0)                                                           # [N, P]
            g = s.sum(0)
            if not bool(torch.isfinite(g).all()):
                bad = [names[j] for j in range(p) if not bool(torch.isfinite(g[j]))]
                failure = (f"the score of {', '.join(bad)} is not finite at iteration {it + 1}; the estimates are "
                           f"those of the iteration before. Check the model and the initial estimates")
                break
            outer = s.T @ s
            # the step uses the Fisher estimate of the previous iterations (independent of this
            # iteration's draws, so that the preconditioned step is unbiased given the past)
            precond = _regularised(outer if fisher is None else fisher)
            rho = max(1.0 / (it + 1), min(0.1, gamma))
            fisher = outer if fisher is None else fisher + rho * (outer - fisher)
            step = gamma * torch.linalg.solve(precond, g)
            limit = float(self.max_step) * torch.clamp(x.abs(), min=1.0)
            step = step * torch.clamp((limit / step.abs().clamp(min=1e-300)).min(), max=1.0)
            x_new = x + step
            phi_new = ps.from_unconstrained(x_new).detach()
            if not bool(torch.isfinite(phi_new).all()):
                bad = [names[j] for j in range(p) if not bool(torch.isfinite(phi_new[j]))]
                failure = (f"{', '.join(bad) or 'the parameters'} became non-finite at iteration {it + 1}; the "
                           f"estimates are those of the iteration before. Check the model (e.g. parameters that can "
                           f"overflow) and the initial estimates")
                break
            if mu_refs:
                shift = _mean_vector(mu_refs, ps.unpack(phi_new), k, x) - _mean_vector(mu_refs, values, k, x)
                state.eta = state.eta - shift
            averaging = it >= n_heat + n_decrease
            if averaging:
                scores.append(g)
                x_sum = x_sum + x_new
                chain_sum = chain_sum + per_chain
                centred = per_chain - s
                between = torch.einsum("cnp,cnq->pq", centred, centred) / max(chains - 1, 1) / chains
                fisher_se = fisher_se + (outer - between - fisher_se) / len(scores)
            x, phi = x_new, phi_new
            self._record(history, ps, phi, it, "heat" if heating else "average" if averaging else "decrease",
                         float(torch.linalg.norm(step)))
        messages = [f"{n_heat} heating and {n_decrease + n_avg} decreasing-step iterations (steps m^-{alpha:g}), the "
                    f"last {n_avg} averaged; {chains} chain(s) per subject; acceptance "
                    + ", ".join(f"{name} {v:.2f}" for name, v in state.acceptance().items())]
        # the Polyak average; after a failure the last finite iterate (the messages say so)
        x_hat = x_sum / len(scores) if scores and failure is None else x
        phi_hat = ps.from_unconstrained(x_hat).detach()
        if failure is not None:
            status, found = "failed", [failure]
        else:
            status, found = _score_convergence(torch.stack(scores).cpu().numpy(), (chain_sum / max(len(scores), 1)).cpu(
            ).numpy(), _regularised(fisher).cpu().numpy(), names, n_heat, n_avg)
        messages = found + messages
        if status != "converged":
            warnings.warn(f"SCORE did not converge: {messages[0]}", ConvergenceWarning, stacklevel=3)
        return self._finish(model, data, phi_hat, x_hat, mu_refs, kernels, state, chains, fisher_se, len(scores),
                            status, messages, history, started)

    def _record(self, history: list, ps, phi: torch.Tensor, iteration: int, phase: str, step: float) -> None:
        entry = {"iteration": iteration, "phase": phase, "ofv": float("nan"), "step_norm": step, **ps.full_natural(phi)}
        history.append(entry)
        if self.progress and iteration % self.progress_every == 0:
            if callable(self.progress):
                self.progress(iteration, entry)
            else:
                shown = ", ".join(f"{name}={entry[name]:.4g}" for name in ps.names[:6])
                print(f"  SCORE iteration {iteration:4d} ({phase})  {shown}", file=sys.stderr, flush=True)

    def _finish(self, model, data, phi_hat, x_hat, mu_refs, kernels, state, chains, fisher_se, n_averaged, status,
                messages, history, started) -> FitResult:
        batch = data.batch
        ps = model.parameter_set
        n, k = batch.n_subjects, len(model.eta_names(batch))
        values = ps.unpack(phi_hat)
        start = state.eta.reshape(chains, n, k)[0]
        post = conditional_posthoc(model, data, values, start, n_chains=chains, kernels=kernels,
                                   posterior_draws=self.posterior_draws, burn_in=self.posterior_burn_in,
                                   importance_samples=self.importance_samples, importance_df=self.importance_df,
                                   seed=int(self.seed))
        if not math.isfinite(post.minus2ll) and status != "failed":
            messages = [f"the importance-sampling -2LL is not finite at the final estimates ({post.minus2ll}); check "
                        f"the model and the data"] + list(messages)
            status = "failed"
            warnings.warn(f"SCORE failed: {messages[0]}", ConvergenceWarning, stacklevel=3)
        cov_result = None
        if self.covariance == "louis":
            used = min(post.draws.shape[0], max(100, 200_000 // n))
            cov_result = louis_covariance(model, phi_hat, batch, post.draws[:used], mu_refs)
        elif self.covariance == "fisher":
            cov_result = _fisher_covariance(ps, x_hat, fisher_se, n_averaged)
        near, notes = estimate_messages(ps, phi_hat, post.importance)
        messages = list(messages) + post.messages + notes
        tables = post.tables
        return FitResult(
            method=self.name, **common_result_fields(model, data, phi_hat, cov_result, self.covariance),
            ofv=post.ofv, minus2ll=post.minus2ll, eta_names=tuple(model.eta_names(batch)),
            ebe=post.modes.detach().cpu().numpy(), ebe_covariance=post.cov.cpu().numpy(),
            observations=tables.observations, individual=tables.individual, shrinkage=tables.shrinkage,
            history=tuple(history), status=status, messages=tuple(messages), near_bounds=tuple(near),
            importance_sampling=post.importance, elapsed_seconds=time.perf_counter() - started,
            options={**self.options(), "n_chains": chains}, posterior_draws=post.draws.cpu().numpy())


def _regularised(fisher: torch.Tensor) -> torch.Tensor:
    """The Fisher estimate with its eigenvalues raised to ≥ 1e-8 × the largest (a usable preconditioner)."""
    sym = 0.5 * (fisher + fisher.T)
    w, v = torch.linalg.eigh(sym)
    floor = 1e-8 * float(w.abs().max().clamp(min=1e-300))
    return (v * w.clamp(min=floor)) @ v.T


def _fisher_covariance(ps, x_hat: torch.Tensor, fisher: torch.Tensor, n_averaged: int) -> CovarianceResult:
    """``J I⁻¹ Jᵀ`` (``J = ∂φ/∂x`` at x̂) from the averaged empirical Fisher information in x."""
    names = ps.names
    if n_averaged == 0:
        return CovarianceResult(None, "failed", "no averaging iterations: no Fisher information", float("nan"),
                                "fisher")
    info = (0.5 * (fisher + fisher.T)).cpu().numpy()
    if not np.all(np.isfinite(info)):
        return CovarianceResult(None, "failed", "the Fisher information has non-finite elements", float("nan"),
                                "fisher", r_matrix=info)
    d = np.diag(info)
    if np.any(d <= 0):
        j = int(np.argmin(d))
        return CovarianceResult(None, "failed", f"the Fisher information is not positive definite (diagonal of "
                                f"{names[j]} is {d[j]:.3g})", float("nan"), "fisher", r_matrix=info)
    w = np.linalg.eigvalsh(info / np.sqrt(np.outer(d, d)))
    condition = float(w[-1] / w[0]) if w[0] > 0 else float("inf")
    if w[0] <= 1e-8 * w[-1]:
        return CovarianceResult(None, "failed", f"the Fisher information is not positive definite (smallest "
                                f"eigenvalue of the scaled matrix {w[0]:.3g})", condition, "fisher", r_matrix=info)
    jac = _jacobian(ps, x_hat).cpu().numpy()
    cov = jac @ np.linalg.inv(info) @ jac.T
    return CovarianceResult(0.5 * (cov + cov.T), "ok", "", condition, "fisher", r_matrix=info)


def _score_convergence(scores: np.ndarray, chain_means: np.ndarray, fisher: np.ndarray, names: list[str],
                       n_heat: int, n_avg: int) -> tuple[str, list[str]]:
    """Status and messages from the averaging phase: the total scores ``g_k`` ``[T, P]`` and each chain's
    and subject's score averaged over the phase ``[C, N, P]`` (all in x), and the Fisher estimate ``[P, P]``.

    The Monte Carlo error of the averages is measured between the chains of each subject: they
    share the trajectory of x (whose effect on the scores cancels) and differ only by their
    draws, so ``Cov(ḡ) = Σ_i Cov_c(s̄_ic) / C``; by Polyak and Juditsky the Monte Carlo
    covariance of the averaged iterates is ``I⁻¹ Cov(ḡ) I⁻¹``.
    """
    if n_heat < SCORE_MIN_WINDOW or n_avg < SCORE_MIN_WINDOW:
        return "max_iterations", [f"{n_heat} heating and {n_avg} averaged iterations are too few to judge convergence "
                                  f"(each needs {SCORE_MIN_WINDOW}: the averaged score's Monte Carlo error cannot be "
                                  f"measured); raise iterations"]
    chains = chain_means.shape[0]
    inverse = np.linalg.inv(fisher)
    se = np.sqrt(np.diag(inverse))                                   # statistical SE in x
    centred = chain_means - chain_means.mean(0)
    cov_g = np.einsum("cnp,cnq->pq", centred, centred) / (chains - 1) / chains
    mc_se = np.sqrt(np.clip(np.diag(inverse @ cov_g @ inverse), 0.0, None))
    d = inverse @ scores.mean(0)                                     # ≈ optimum − average
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(d) / mc_se
        bias = np.abs(d) / se
        precision = mc_se / se
    problems = []
    off = [j for j in range(len(names)) if z[j] > SCORE_Z and bias[j] > SCORE_BIAS]
    if off:
        problems.append(f"the averaged score is not zero for {', '.join(names[j] for j in off)} (Fisher-preconditioned "
                        f"score over the last {len(scores)} iterations: " + ", ".join(
                            f"{names[j]} {d[j]:+.3g} = {bias[j]:.2f} SE = {z[j]:.1f} Monte Carlo SE" for j in off)
                        + "): the estimates have not reached the optimum; raise iterations")
    noisy = [j for j in range(len(names)) if precision[j] > SCORE_PRECISION]
    if noisy:
        problems.append(f"the Monte Carlo error of {', '.join(names[j] for j in noisy)} is large (Monte Carlo SE of "
                        f"the Polyak average " + ", ".join(f"{names[j]} {precision[j]:.2f}" for j in noisy)
                        + f" standard errors > {SCORE_PRECISION}); raise iterations or n_chains")
    worst = int(np.nanargmax(z))
    summary = (f"averaged score: largest |I^-1 g| {np.nanmax(bias):.3f} SE ({np.nanmax(z):.1f} Monte Carlo SE, "
               f"{names[worst]}); Monte Carlo SE of the average at most {np.nanmax(precision):.3f} SE")
    if problems:
        return "max_iterations", problems + [summary]
    return "converged", [summary]
