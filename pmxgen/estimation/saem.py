"""EM estimators with MCMC E-steps: SAEM (as Monolix and nlmixr2) and Monte Carlo EM.

Both move every subject's chains with the batched kernels of :mod:`.mcmc` and update the
parameters with the M-step of :mod:`.em_steps`:

* **SAEM**: one MCMC sweep per iteration; the sufficient statistics follow the stochastic
  approximation ``S ← S + γ_k (s(η_k) − S)`` with ``γ_k = 1`` in the exploration phase and
  ``γ_k = k^(−α)`` in the smoothing phase; the numerically updated parameters move the same
  fraction γ_k towards the maximiser of the current draws' likelihood. Ω is annealed in the
  exploration phase (each variance ≥ τ × its previous value) so that it shrinks slowly.
* **MCEM**: each iteration draws a Monte Carlo sample of growing size per subject, and the
  M-step maximises the Monte Carlo average of the complete-data likelihood; it stops when
  the parameters change less than ``tol`` (relative) on three successive iterations.

Both end with a status from :data:`EM_STATUSES` (``converged``, ``max_iterations`` or ``failed``)
and messages; SAEM judges its run by :func:`saem_convergence` (rule in :class:`SAEM`).

After the run (both): draws from each subject's conditional distribution at the estimates
give the conditional means and SDs (and ``FitResult.posterior_draws``), the modes are solved
by Newton (the EBEs), the −2LL comes from importance sampling with a t proposal matched to
the conditional mean and covariance, and the standard errors from Louis' formula on the
draws (default) or from the linearisation (FOCE-I R matrix).
"""
from __future__ import annotations

import math
import sys
from abc import abstractmethod
import time
import warnings
from typing import Callable

import numpy as np
import torch

from ..errors import ConvergenceWarning, EstimationError
from .base import CliOption, Estimator, check_integer
from .classical import COVARIANCE_INNER_TOL, approximate_objective, objective_covariance
from .em_steps import EMParameters, sufficient_statistics
from .louis import louis_covariance
from .mcmc import ConditionalTarget, KernelState, apply_kernels, validate_kernels
from .chain_posthoc import conditional_posthoc
from .posthoc import common_result_fields, estimate_messages
from .registry import register_estimator
from .results import FitResult

__all__ = ["SAEM", "MCEM", "EM_COVARIANCE", "EM_STATUSES", "saem_convergence", "parse_kernels"]

#: Standard-error methods of the EM estimators.
EM_COVARIANCE = ("louis", "linearization")

#: Statuses an EM fit can end with.
EM_STATUSES = ("converged", "max_iterations", "failed")

#: SAEM convergence rule (see :func:`saem_convergence` and the :class:`SAEM` docstring):
#: iterations the judged part of each phase needs at least,
SAEM_MIN_WINDOW = 20
#: effective sample size the smoothing average must reach (Monte Carlo error ≤ spread/√ESS),
SAEM_MIN_ESS = 10.0
#: and a parameter "still moves" when the means of the two halves of a window differ by more
#: than SAEM_DRIFT_SPREAD within-half standard deviations and SAEM_DRIFT_Z Monte Carlo SEs.
SAEM_DRIFT_SPREAD = 2.5
SAEM_DRIFT_Z = 3.0
_BATCHES = 10


def _long_run_variance(x: np.ndarray, n_batches: int) -> np.ndarray:
    """Per column of ``x`` ``[T, P]``: the variance of the mean times T (batch means, ``n_batches``
    equal batches of the last rows), never below the plain variance."""
    size = len(x) // n_batches
    rows = x[len(x) - size * n_batches:]
    means = rows.reshape(n_batches, size, -1).mean(1)
    return np.maximum(size * means.var(0, ddof=1), x.var(0, ddof=1))


def _half_drift(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difference of the means of the second and first half of ``x`` ``[T, P]`` (T even, ≥ 20), its
    Monte Carlo SE (batch means, 5 batches per half) and the within-half standard deviation."""
    h = len(x) // 2
    a, b = x[:h], x[h:2 * h]
    se = np.sqrt((_long_run_variance(a, 5) + _long_run_variance(b, 5)) / h)
    spread = np.sqrt(0.5 * (a.var(0, ddof=1) + b.var(0, ddof=1)))
    return b.mean(0) - a.mean(0), se, spread


def saem_convergence(trajectory: np.ndarray, names: list[str], n_explore: int,
                     step_exponent: float = 1.0) -> tuple[str, list[str], dict]:
    """Status (``converged`` or ``max_iterations``), messages and per-parameter diagnostics of a SAEM run.

    Parameters
    ----------
    trajectory : ndarray
        ``[n_explore + n_smooth, P]``: the estimated parameters (natural scale) after each iteration.
    names : list of str
        The P parameter names.
    n_explore : int
        Iterations of the exploration phase (the first rows).
    step_exponent : float
        α of the smoothing steps ``γ_k = k^(−α)``.

    Returns
    -------
    status : str
        ``converged`` or ``max_iterations``.
    messages : list of str
        What was measured; on ``max_iterations`` the first message names the parameters and the fix.
    diagnostics : dict
        Per parameter: ``ess`` (effective sample size of the smoothing average), ``mc_se`` (its
        Monte Carlo SE), ``explore_z``/``explore_drift`` and ``smooth_z``/``smooth_drift`` (half-window
        mean differences in Monte Carlo SEs and in within-half SDs).

    Notes
    -----
    The rule is documented in :class:`SAEM`. In the smoothing phase each parameter moves
    ``φ_k = φ_{k−1} + γ_k (x_k − φ_{k−1})`` towards the value ``x_k`` the current draws alone would
    give (exactly for the numerically updated parameters and the statistics, to first order in γ
    for the closed-form ones), so ``x_k`` is recovered from the trajectory, and the final estimate
    is ``Σ w_k x_k`` with ``w_k = γ_k Π_{j>k}(1 − γ_j)`` (the plain average for α = 1).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> flat = 1.0 + 0.01 * rng.standard_normal((100, 1))
    >>> saem_convergence(flat, ["CL"], n_explore=50)[0]
    'converged'
    >>> trend = flat + np.linspace(0, 0.5, 100)[:, None]
    >>> status, messages, _ = saem_convergence(trend, ["CL"], n_explore=50)
    >>> status, messages[0][:39]
    ('max_iterations', 'CL still moved in the exploration phase')
    """
    x_all = np.asarray(trajectory, dtype=float)
    n_smooth = len(x_all) - n_explore
    if n_explore < SAEM_MIN_WINDOW or n_smooth < SAEM_MIN_WINDOW:
        return "max_iterations", [f"{n_explore} exploratory and {n_smooth} smoothing iterations are too few to judge "
                                  f"convergence (each phase needs {SAEM_MIN_WINDOW}: the parameters' trends and "
                                  f"Monte Carlo error cannot be measured); raise n_explore and n_smooth"], {}
    explore, smooth = x_all[:n_explore], x_all[n_explore:]
    gamma = np.arange(1, n_smooth + 1, dtype=float) ** (-float(step_exponent))
    previous = np.vstack([explore[-1:], smooth[:-1]])
    instant = previous + (smooth - previous) / gamma[:, None]
    weights = gamma * np.concatenate([np.cumprod((1.0 - gamma)[:0:-1])[::-1], [1.0]])
    variance = instant.var(0, ddof=1)
    lrv = _long_run_variance(instant, _BATCHES)
    mc_se = np.sqrt(lrv * np.sum(weights ** 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        ess = np.where(lrv > 0, variance / (lrv * np.sum(weights ** 2)), np.inf)
    window = max(SAEM_MIN_WINDOW, n_explore // 2) // 2 * 2
    d_e, se_e, sp_e = _half_drift(explore[-window:])
    d_s, se_s, sp_s = _half_drift(instant[len(instant) % 2:])
    with np.errstate(divide="ignore", invalid="ignore"):
        z_e, r_e = d_e / se_e, d_e / sp_e
        z_s, r_s = d_s / se_s, d_s / sp_s

    def moving(d, z, r):
        return [j for j in range(len(names)) if d[j] != 0 and abs(z[j]) > SAEM_DRIFT_Z
                and abs(r[j]) > SAEM_DRIFT_SPREAD]

    diagnostics = {name: {"ess": float(ess[j]), "mc_se": float(mc_se[j]), "explore_z": float(z_e[j]),
                          "explore_drift": float(r_e[j]), "smooth_z": float(z_s[j]), "smooth_drift": float(r_s[j])}
                   for j, name in enumerate(names)}
    final = x_all[-1]

    def rel(j, value):
        return f"{100 * value / abs(final[j]):.2g} %" if final[j] != 0 else f"{value:.3g}"

    problems = []
    still = moving(d_e, z_e, r_e)
    if still:
        problems.append(f"{', '.join(names[j] for j in still)} still moved in the exploration phase (mean of the "
                        f"last {window // 2} iterations minus that of the {window // 2} before: "
                        + ", ".join(f"{names[j]} {d_e[j]:+.4g} = {r_e[j]:+.1f} SD" for j in still)
                        + "); raise n_explore")
    still = moving(d_s, z_s, r_s)
    if still:
        problems.append(f"{', '.join(names[j] for j in still)} still moved in the smoothing phase (second half "
                        f"minus first half of the smoothing iterations: "
                        + ", ".join(f"{names[j]} {d_s[j]:+.4g} = {r_s[j]:+.1f} SD" for j in still)
                        + "); raise n_explore and n_smooth")
    noisy = [j for j in range(len(names)) if ess[j] < SAEM_MIN_ESS]
    if noisy:
        problems.append(f"the Monte Carlo error of {', '.join(names[j] for j in noisy)} is large (effective sample "
                        f"size of the smoothing average " + ", ".join(f"{names[j]} {ess[j]:.1f}" for j in noisy)
                        + f" < {SAEM_MIN_ESS:g}); raise n_smooth or n_chains")
    worst = int(np.argmin(ess))
    summary = (f"smoothing average: smallest effective sample size {ess[worst]:.0f} ({names[worst]}, Monte Carlo SE "
               f"{rel(worst, mc_se[worst])}); largest half-window drift {np.nanmax(np.abs(r_e)):.1f} SD in "
               f"exploration, {np.nanmax(np.abs(r_s)):.1f} SD in smoothing")
    if problems:
        return "max_iterations", problems + [summary], diagnostics
    return "converged", [summary], diagnostics


def _nonfinite_names(names: list[str], phi: torch.Tensor) -> list[str]:
    """The names of the non-finite entries of ``phi``."""
    bad = ~torch.isfinite(phi.detach())
    return [names[j] for j in range(len(names)) if bool(bad[j])]


def _subjects_without_likelihood(model, em: EMParameters, rep, eta: torch.Tensor, chains: int,
                                 ids: list) -> list:
    """IDs of the subjects whose log-likelihood is not finite in any of their chains at the current estimates."""
    with torch.no_grad():
        density = ConditionalTarget(model, em.values(), rep).log_density(eta)
    finite = torch.isfinite(density).reshape(chains, -1).any(0)
    return [ids[i] for i in range(len(ids)) if not bool(finite[i])]


def _lost_subjects_failure(model, em, rep, eta, chains: int, ids) -> str | None:
    """The failure message when some subjects' log-likelihood is not finite in every chain at the end, else None."""
    lost = _subjects_without_likelihood(model, em, rep, eta, chains, ids)
    if not lost:
        return None
    return (f"the log-likelihood is not finite at the final estimates for subject(s) "
            f"{', '.join(map(str, lost[:10]))}{' ...' if len(lost) > 10 else ''} in every chain; "
            f"check the model and the data of these subjects")


def _move_numeric(em: EMParameters, step, gamma: float) -> list[str]:
    """Move the numerically updated parameters towards ``step``; the names that became non-finite (else [])."""
    try:
        em.move_numeric(step, gamma)
    except EstimationError:
        return [name for name, v in zip(em.numeric_names, step.tolist()) if not math.isfinite(v)] or \
            list(em.numeric_names)
    return []


def _failure_message(names: list[str], iteration: int) -> str:
    return (f"{', '.join(names)} became non-finite at iteration {iteration}; the estimates are those of the "
            f"iteration before. Check the model (e.g. parameters that can overflow) and the initial estimates")


def parse_kernels(text: str) -> dict[str, int]:
    """``"prior=2,random_walk=2,mala=2,follmer=1"`` → ``{"prior": 2, ...}`` (the ``--kernels`` option);
    names and counts are checked at fit time (:func:`~pmxgen.estimation.mcmc.validate_kernels`).

    Examples
    --------
    >>> parse_kernels("follmer=1, mala=2")
    {'follmer': 1, 'mala': 2}
    """
    out = {}
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        name, sep, count = item.partition("=")
        if not sep or not count.strip().lstrip("-").isdigit():
            raise ValueError(f"kernel {item!r}: expected name=count")
        out[name.strip()] = int(count)
    if not out:
        raise ValueError("no kernels given")
    return out


parse_kernels.__name__ = "kernel list such as prior=2,random_walk=2,mala=2 or follmer=1"

#: Command-line options SAEM and MCEM share.
_EM_CLI = (
    CliOption("--covariance", "covariance", str,
              "standard errors: louis (default) or linearization (FOCE-I R matrix); none skips them",
              ("louis", "linearization", "none"), none_value="none"),
    CliOption("--importance-samples", "importance_samples", int,
              "draws per subject for the importance-sampling -2LL (default 1000)"),
    CliOption("--chains", "n_chains", int, "MCMC chains per subject (default ceil(200/N))"),
    CliOption("--kernels", "kernels", parse_kernels,
              "MCMC kernels and their applications per iteration, e.g. prior=2,random_walk=2,mala=2 (default) or "
              "follmer=1 (Schrödinger-Föllmer path proposals, Metropolis-corrected)"),
)


class _EMEstimator(Estimator):
    """Options and the parts of a fit common to SAEM and MCEM.

    Needs Gaussian random effects (closed-form Ω and mu-referenced θ updates) and Gaussian
    residuals (the EBEs and residual tables after the run); mu-referencing uses the model's
    individual parameters when it offers them (otherwise every θ is updated numerically).
    """

    method = "em"
    requires = ("gaussian_random_effects", "gaussian_residual")
    needs_random_effects = True

    def __init__(self, *, n_chains: int | None = None, kernels: dict | None = None, covariance: str | None = "louis",
                 importance_samples: int = 1000, importance_df: int = 4, posterior_draws: int = 500,
                 posterior_burn_in: int = 50, seed: int = 0, progress: bool | Callable = False,
                 progress_every: int = 50, cpu_threads: int | None = 1):
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
    def _integers(self) -> tuple[tuple[str, int], ...]:
        return (("importance_samples", 2), ("importance_df", 1), ("posterior_draws", 2), ("posterior_burn_in", 0),
                ("progress_every", 1))

    def _validate(self, model, data) -> dict[str, int]:
        for name, low in self._integers():
            check_integer(type(self).__name__, name, getattr(self, name), low)
        if self.n_chains is not None and (isinstance(self.n_chains, bool) or not isinstance(self.n_chains, int)
                                          or self.n_chains < 1):
            raise EstimationError(f"n_chains must be a positive integer or None for automatic (found "
                                  f"{self.n_chains!r})")
        if self.covariance is not None and self.covariance not in EM_COVARIANCE:
            raise EstimationError(f"covariance must be one of {', '.join(EM_COVARIANCE)} or None "
                                  f"(found {self.covariance!r})")
        return validate_kernels(self.kernels)

    def chains(self, n_subjects: int) -> int:
        """Chains per subject: by default enough for 200 subject-chains in all (Monolix's rule asks for
        50; batched chains cost little, and more of them cut the Monte Carlo error on small data)."""
        return self.n_chains if self.n_chains is not None else max(1, math.ceil(200 / n_subjects))

    # ------------------------------------------------------------------- fit
    def _fit(self, model, data) -> FitResult:
        kernels = validate_kernels(self.kernels)
        started = time.perf_counter()
        gen = torch.Generator(device=data.device)
        gen.manual_seed(int(self.seed))
        em = EMParameters(model, data.batch)
        history: list[dict] = []
        status, messages, state = self._run(model, data, em, kernels, gen, history)
        return self._finish(model, data, em, kernels, state, status, messages, history, started)

    @abstractmethod
    def _run(self, model, data, em, kernels, gen, history):
        """Run the iterations; return (status, messages, final kernel state)."""

    def _record(self, history: list, em: EMParameters, iteration: int, phase: str) -> None:
        entry = {"iteration": iteration, "phase": phase, "ofv": float("nan"), **em.ps.full_natural(em.phi)}
        history.append(entry)
        if self.progress and iteration % self.progress_every == 0:
            if callable(self.progress):
                self.progress(iteration, entry)
            else:
                shown = ", ".join(f"{k}={entry[k]:.4g}" for k in em.ps.names[:6])
                print(f"  {self.method.upper()} iteration {iteration:4d} ({phase})  {shown}", file=sys.stderr,
                      flush=True)

    def _finish(self, model, data, em, kernels, state, status, messages, history, started) -> FitResult:
        batch = data.batch
        ps = model.parameter_set
        n, k = batch.n_subjects, em.k
        phi_hat = em.phi.detach()
        values = ps.unpack(phi_hat)
        chains = self.chains(n)
        start = state.eta.reshape(chains, n, k)[0]
        post = conditional_posthoc(model, data, values, start, n_chains=chains, kernels=kernels,
                                   posterior_draws=self.posterior_draws, burn_in=self.posterior_burn_in,
                                   importance_samples=self.importance_samples, importance_df=self.importance_df,
                                   seed=int(self.seed))
        draws, modes, cond_cov, is_dict = post.draws, post.modes, post.cov, post.importance
        minus2ll, ofv, eta_names = post.minus2ll, post.ofv, tuple(model.eta_names(batch))
        if not math.isfinite(minus2ll) and status != "failed":
            messages = [f"the importance-sampling -2LL is not finite at the final estimates ({minus2ll}); check the "
                        f"model and the data"] + list(messages)
            status = "failed"
            warnings.warn(f"{self.method.upper()} failed: {messages[0]}", ConvergenceWarning, stacklevel=3)

        cov_result = None
        if self.covariance == "louis":
            # Louis' formula on at most ~2·10⁵ subject-draws (its Monte Carlo error shrinks with N too)
            used = min(draws.shape[0], max(100, 200_000 // n))
            cov_result = louis_covariance(model, phi_hat, batch, draws[:used], em.mu_refs)
        elif self.covariance == "linearization":
            objective = approximate_objective(model, batch, "focei", inner_tol=COVARIANCE_INNER_TOL)
            cov_result = objective_covariance(ps, objective, phi_hat, modes, "R")
        tables = post.tables
        near, notes = estimate_messages(ps, phi_hat, is_dict)
        messages = list(messages) + em.messages[:5] + notes
        return FitResult(
            method=self.method, **common_result_fields(model, data, phi_hat, cov_result, self.covariance),
            ofv=ofv, minus2ll=minus2ll, eta_names=eta_names, ebe=modes.detach().cpu().numpy(),
            ebe_covariance=cond_cov.cpu().numpy(), observations=tables.observations, individual=tables.individual,
            shrinkage=tables.shrinkage, history=tuple(history), status=status, messages=tuple(messages),
            near_bounds=tuple(near), importance_sampling=is_dict, elapsed_seconds=time.perf_counter() - started,
            options=self._options(chains), posterior_draws=draws.cpu().numpy())

    def _options(self, chains: int) -> dict:
        return {**self.options(), "n_chains": chains}


@register_estimator
class SAEM(_EMEstimator):
    """Stochastic approximation EM (Kuhn & Lavielle 2005), batched over subjects and chains.

    Parameters
    ----------
    n_explore : int
        Iterations of the exploration phase (step 1). Monolix: up to 500.
    n_smooth : int
        Iterations of the smoothing phase (decreasing steps). Monolix: 200.
    step_exponent : float
        α in ``γ_k = k^(−α)`` of the smoothing phase, in (0.5, 1].
    annealing : float or None
        τ: in the exploration phase each Ω variance stays ≥ τ × its previous value
        (Monolix: 0.95); None switches annealing off.
    n_chains : int or None
        Chains per subject; None: ``ceil(200 / N)``.
    kernels : dict
        Applications per iteration of each kernel (``prior``, ``random_walk``, ``mala``,
        ``follmer``); default ``{"prior": 2, "random_walk": 2, "mala": 2}``. ``{"follmer": 1}``
        moves every chain by a Schrödinger–Föllmer path proposal with a Metropolis correction
        (:func:`~pmxgen.estimation.follmer.follmer_move`): independent of the current state (it can
        jump between modes of a multimodal conditional distribution) and untuned, at about
        2 × 10 × 16 model evaluations per move (command line: ``--kernels follmer=1``).
    covariance : {"louis", "linearization"} or None
        Standard errors from Louis' formula on conditional draws, or 2R⁻¹ of the FOCE-I
        objective at the estimates; None skips them.
    importance_samples, importance_df : int
        Draws per subject and t degrees of freedom of the importance-sampling −2LL.
    posterior_draws, posterior_burn_in : int
        Conditional draws per subject after the run (conditional means, SDs, Louis' formula).
    seed : int
        Same seed, same result.
    progress, progress_every, cpu_threads
        As for :class:`~pmxgen.estimation.ClassicalEstimator`.

    Notes
    -----
    **Status** (one of :data:`EM_STATUSES`; a :class:`~pmxgen.errors.ConvergenceWarning` unless
    ``converged``), judged from the run itself by :func:`saem_convergence`:

    * ``failed``: a parameter became non-finite (the message names it; the estimates are those
      of the iteration before), or some subject's log-likelihood is not finite in any of its
      chains at the final estimates, or the importance-sampling −2LL is not finite.
    * ``max_iterations`` when either phase has fewer than ``SAEM_MIN_WINDOW`` = 20 iterations
      (too few to measure a trend or a Monte Carlo error), or when a parameter still moves:
      over the last half of the exploration phase (at least 20 iterations), or over the
      smoothing phase (on the values ``x_k`` each iteration's draws alone would give, recovered
      from ``φ_k = φ_{k−1} + γ_k (x_k − φ_{k−1})``), the means of the second and first half
      differ by more than ``SAEM_DRIFT_SPREAD`` = 2.5 within-half standard deviations *and*
      ``SAEM_DRIFT_Z`` = 3 Monte Carlo SEs (batch means, 5 batches per half), or when the
      smoothing average has an effective sample size below ``SAEM_MIN_ESS`` = 10 (its Monte
      Carlo SE is then above 1/√10 of the draws' spread). The message names the parameters and
      says what to raise (n_explore, n_smooth or n_chains).
    * ``converged`` otherwise.

    Thresholds, measured on the bundled data (``largest drift`` in within-half SDs, smallest
    ESS): stationary runs, theophylline 60+40, 100+80 and 300+200 iterations (5 seeds each)
    ≤ 1.5 SD, ESS ≥ 16; sim_1cmt_oral_1000 and the linear-Gaussian test model ≤ 1.3 SD;
    sim_2cmt_iv_infusion 100+80 and 300+200 ≤ 2.4 SD, ESS ≥ 12. Still-trending runs
    (theophylline with Ω started 30× too large, annealed by ≤ 5 % per iteration, 20–60
    exploratory iterations) 2.7–3.4 SD with z > 3. A drift statistic alone is heavy-tailed
    (a stationary 300+200 theophylline run gave z = 6.9 at 0.7 SD), hence both conditions.
    The ESS bound keeps the Monte Carlo error small next to the standard errors: the spread of
    the per-iteration values is at most about SE/(2√n_chains) (missing-information principle),
    so ESS ≥ 10 gives a Monte Carlo SE below about 0.16 SE. Slow excursions of parameters
    that are not mu-referenced count as movement: on sim_1cmt_oral_wt with the defaults
    (seed 1) WT_ON_CL wanders by about one SE over ~100 exploratory iterations and the run
    ends ``max_iterations``.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = SAEM(n_explore=60, n_smooth=40, importance_samples=200, posterior_draws=50, seed=1).fit(model, data)
    >>> fit.method, fit.status, len(fit.history)
    ('saem', 'converged', 100)
    """

    method = name = "saem"
    summary = "stochastic approximation EM (as Monolix, nlmixr2) with batched MCMC"
    cli_options = _EM_CLI + (
        CliOption("--n-explore", "n_explore", int, "exploratory iterations (default 300)"),
        CliOption("--n-smooth", "n_smooth", int, "smoothing iterations (default 200)"),
    )

    def __init__(self, *, n_explore: int = 300, n_smooth: int = 200, step_exponent: float = 1.0,
                 annealing: float | None = 0.95, **options):
        super().__init__(**options)
        self.n_explore = n_explore
        self.n_smooth = n_smooth
        self.step_exponent = step_exponent
        self.annealing = annealing

    def _integers(self):
        return super()._integers() + (("n_explore", 1), ("n_smooth", 1))

    def _validate(self, model, data):
        kernels = super()._validate(model, data)
        a = self.step_exponent
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.5 < a <= 1.0:
            raise EstimationError(f"step_exponent must be in (0.5, 1] (found {a!r}): the steps k^-a must sum to "
                                  f"infinity while their squares stay finite")
        t = self.annealing
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1):
            raise EstimationError(f"annealing must be in (0, 1) or None (found {t!r})")
        return kernels

    def _run(self, model, data, em, kernels, gen, history):
        batch = data.batch
        n, k = batch.n_subjects, em.k
        chains = self.chains(n)
        rep = batch.repeat(chains) if chains > 1 else batch
        state = KernelState(eta=torch.zeros(chains * n, k, dtype=batch.dtype, device=batch.device))
        s1 = s2 = None
        total = self.n_explore + self.n_smooth
        trajectory = np.empty((total, len(em.ps.names)))
        failure = None
        for it in range(total):
            exploring = it < self.n_explore
            gamma = 1.0 if exploring else (it - self.n_explore + 1) ** (-float(self.step_exponent))
            target = ConditionalTarget(model, em.values(), rep)
            state.log_density = None
            # adaptive scales in the exploration phase only: adaptation that never stops would
            # bias the chains' stationary distribution
            apply_kernels(target, state, kernels, gen, adapt=exploring)
            phi_before, eta_before = em.phi, state.eta
            z = state.eta.reshape(chains, n, k) + em.mean_vector()
            new1, new2 = sufficient_statistics(z)
            s1 = new1 if s1 is None else s1 + gamma * (new1 - s1)
            s2 = new2 if s2 is None else s2 + gamma * (new2 - s2)
            shift = em.closed_form_update(s1, s2, anneal=self.annealing if exploring else None)
            state.eta = state.eta - shift
            # one Newton step from the current values per iteration: the stochastic approximation
            # averages the steps, as it averages the statistics
            bad = _nonfinite_names(em.ps.names, em.phi)
            if not bad:
                bad = _move_numeric(em, em.numeric_optimum(state.eta, rep, weights=1.0 / chains, max_iter=1), gamma)
            if bad:
                em.phi, state.eta = phi_before, eta_before
                failure = _failure_message(bad, it + 1)
                break
            trajectory[it] = em.phi.detach().cpu().numpy()
            self._record(history, em, it, "explore" if exploring else "smooth")
        messages = [f"{self.n_explore} exploratory and {self.n_smooth} smoothing iterations, {chains} chain(s) per "
                    f"subject; acceptance " + ", ".join(f"{k} {v:.2f}" for k, v in state.acceptance().items())]
        if failure is None:
            failure = _lost_subjects_failure(model, em, rep, state.eta, chains, data.ids)
        if failure is not None:
            status, found = "failed", [failure]
        else:
            status, found, _ = saem_convergence(trajectory, list(em.ps.names), self.n_explore,
                                                float(self.step_exponent))
        messages = found + messages
        if status != "converged":
            warnings.warn(f"SAEM did not converge: {messages[0]}", ConvergenceWarning, stacklevel=3)
        return status, messages, state

@register_estimator
class MCEM(_EMEstimator):
    """Monte Carlo EM with the same batched MCMC kernels and M-step as :class:`SAEM`.

    Parameters
    ----------
    max_iter : int
        EM iterations at most.
    initial_draws, max_draws : int
        Monte Carlo draws per subject (and chain) in the first iteration, growing by
        ``growth`` per iteration up to ``max_draws``.
    growth : float
        Factor (≥ 1) by which the Monte Carlo sample grows each iteration.
    burn_in : int
        Sweeps before collecting the draws of an iteration (the chains are warm).
    tol : float
        Converged when every estimated parameter changes by less than ``tol`` relative
        (``|Δ| ≤ tol·max(|φ|, 0.01)``) on three successive iterations; ``max_iterations`` when
        ``max_iter`` is reached first, ``failed`` when a parameter or a subject's log-likelihood
        becomes non-finite (a :class:`~pmxgen.errors.ConvergenceWarning` unless ``converged``).
    Other parameters as :class:`SAEM`.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = MCEM(max_iter=15, importance_samples=200, posterior_draws=50, seed=1).fit(model, data)  # too few
    >>> fit.method, fit.status, len(fit.history)
    ('mcem', 'max_iterations', 15)
    """

    method = name = "mcem"
    summary = "Monte Carlo EM with growing MCMC samples"
    cli_options = _EM_CLI + (CliOption("--max-iter", "max_iter", int, "EM iterations (default 100)"),)

    def __init__(self, *, max_iter: int = 100, initial_draws: int = 10, max_draws: int = 200, growth: float = 1.2,
                 burn_in: int = 5, tol: float = 5e-3, **options):
        super().__init__(**options)
        self.max_iter = max_iter
        self.initial_draws = initial_draws
        self.max_draws = max_draws
        self.growth = growth
        self.burn_in = burn_in
        self.tol = tol

    def _integers(self):
        return super()._integers() + (("max_iter", 1), ("initial_draws", 1), ("max_draws", 1), ("burn_in", 0))

    def _validate(self, model, data):
        kernels = super()._validate(model, data)
        if isinstance(self.growth, bool) or not isinstance(self.growth, (int, float)) or self.growth < 1:
            raise EstimationError(f"growth must be a number >= 1 (found {self.growth!r})")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not self.tol > 0:
            raise EstimationError(f"tol must be a positive number (found {self.tol!r})")
        if self.max_draws < self.initial_draws:
            raise EstimationError(f"max_draws ({self.max_draws}) must be >= initial_draws ({self.initial_draws})")
        return kernels

    def _run(self, model, data, em, kernels, gen, history):
        batch = data.batch
        n, k = batch.n_subjects, em.k
        chains = self.chains(n)
        rep = batch.repeat(chains) if chains > 1 else batch
        state = KernelState(eta=torch.zeros(chains * n, k, dtype=batch.dtype, device=batch.device))
        calm, status = 0, "max_iterations"
        reps = {}
        failure = None
        for it in range(self.max_iter):
            m = min(self.max_draws, int(math.ceil(self.initial_draws * self.growth ** it)))
            target = ConditionalTarget(model, em.values(), rep)
            state.log_density = None
            for _ in range(self.burn_in):
                apply_kernels(target, state, kernels, gen, adapt=True)
            collected = []
            for _ in range(m):
                apply_kernels(target, state, kernels, gen, adapt=False)
                collected.append(state.eta)
            draws = torch.stack(collected)                                   # [m, C·N, K]
            z = draws.reshape(m * chains, n, k) + em.mean_vector()
            s1, s2 = sufficient_statistics(z)
            before, eta_before = em.phi.clone(), state.eta
            shift = em.closed_form_update(s1, s2)
            bad = _nonfinite_names(em.ps.names, em.phi)
            if not bad:
                state.eta = state.eta - shift
                draws = draws - shift
                rows = m * chains
                if rows not in reps:
                    reps[rows] = batch.repeat(rows)
                bad = _move_numeric(em, em.numeric_optimum(draws.reshape(rows * n, k), reps[rows], weights=1.0 / rows),
                                    1.0)
            if bad:
                em.phi, state.eta = before, eta_before
                failure = _failure_message(bad, it + 1)
                break
            self._record(history, em, it, f"draws={m}")
            change = (em.phi - before).abs() / torch.clamp(before.abs(), min=1e-2)
            calm = calm + 1 if float(change.max()) < self.tol else 0
            if calm >= 3:
                status = "converged"
                break
        messages = [f"{len(history)} iterations, up to {m} draws per subject and chain, {chains} chain(s)"]
        if failure is None:
            failure = _lost_subjects_failure(model, em, rep, state.eta, chains, data.ids)
        if failure is not None:
            status = "failed"
            messages.insert(0, failure)
        elif status != "converged":
            messages.insert(0, f"parameters still changed by more than tol={self.tol} after {self.max_iter} "
                               f"iterations; raise max_iter or max_draws")
        if status != "converged":
            warnings.warn(f"MCEM did not converge: {messages[0]}", ConvergenceWarning, stacklevel=3)
        return status, messages, state

