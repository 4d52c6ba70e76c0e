"""Variational EM: θ, Ω, σ and each subject's approximate posterior q_i(η) fitted together by
maximising the evidence lower bound.

For every subject the ELBO ``E_q[log p(y_i|η) + log p(η|Ω) − log q_i(η)] ≤ log p(y_i)`` is
estimated with reparameterised draws ``η = T_i(z)``, ``z ~ N(0, I)`` from a seeded generator,
and its gradient moves the population parameters (on the optimizer's unconstrained scale) and
the posterior parameters together (Adam with an exponentially decaying learning rate). The
posterior families are

* ``gaussian``: a full-covariance Gaussian per subject (an :class:`~pmxgen.generative.flows.AffineFlow`);
* ``flow``: a normalizing flow per subject (``flow="affine+planar*4"`` and other
  :func:`~pmxgen.generative.flows.build_flow` specifications), all subjects in one batched flow;
* ``amortized``: a Gaussian whose mean and Cholesky factor come from a
  :class:`~pmxgen.estimation.encoder.SubjectEncoder` of each subject's record (a VAE whose decoder
  is the population model); ``refine_iter`` iterations of per-subject Gaussian refinement may follow.

``bound="iwae"`` maximises the importance-weighted bound ``E log mean_k w_k`` of ``n_samples``
draws instead (Burda et al. 2016), which is tighter than the ELBO.

At the estimates the final ELBO is re-estimated with ``elbo_samples`` fresh draws; the −2LL
comes from importance sampling with the variational posterior as proposal (the same flow
pushed from a Student-t base, for heavier tails); the draws from q are
``FitResult.posterior_draws``; the modes are solved by Newton (the EBEs) and standard errors
come from the FOCE-I linearisation (``covariance="linearization"``), as for SAEM.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Callable

import numpy as np
import torch

from ..data.dataset import Dataset
from ..errors import ConvergenceWarning, EstimationError
from ..generative.flows import AffineFlow, ComposedFlow, FlowDistribution, build_flow
from ..models.base import capabilities, require_capabilities
from .base import CliOption, Estimator, check_integer, check_positive
from .classical import COVARIANCE_INNER_TOL, approximate_objective, objective_covariance
from .ebe import solve_ebes
from .encoder import SubjectEncoder
from .importance import importance_sampling_from_draws, importance_summary
from .objective import subject_objective
from .posthoc import common_result_fields, draw_summaries, estimate_messages, minus2ll_offset, network_summary, tables_for
from .registry import register_estimator
from .results import FitResult

__all__ = ["VariationalEM", "POSTERIORS", "BOUNDS"]

#: Posterior families of :class:`VariationalEM`.
POSTERIORS = ("gaussian", "flow", "amortized")
#: Bounds that :class:`VariationalEM` can maximise.
BOUNDS = ("elbo", "iwae")
_LOG2PI = math.log(2 * math.pi)


@register_estimator
class VariationalEM(Estimator):
    """Variational EM with Gaussian, normalizing-flow or amortized (encoder) posteriors.

    Parameters
    ----------
    posterior : {"gaussian", "flow", "amortized"}
        The family of each subject's q(η).
    flow : str or None
        Flow of the ``flow`` family (see :func:`~pmxgen.generative.flows.build_flow`), applied to
        the base draws in the order written; an affine layer is put first if there is none.
        None: ``affine+coupling*4`` (``affine+radial*4`` for a single η). (On the curved
        posteriors of ``tests/estimation/test_variational.py`` affine-first gained 1.7 nats over
        Gaussians and ``coupling*4+affine`` lost 4.5, though affine-last fits fixed banana
        densities better.)
    bound : {"elbo", "iwae"}
        The objective: the ELBO, or the importance-weighted bound of ``n_samples`` draws.
    n_samples : int
        Draws per subject in each gradient step.
    max_iter : int
        Gradient steps.
    learning_rate, final_learning_rate : float or None
        Adam's step size decays exponentially from the first to the second. None: 0.05 for
        ``gaussian``, 0.02 for ``flow`` (flow networks diverge at larger steps) and 0.01 for
        ``amortized``; the final rate defaults to 1/25 of the first.
    init : {"ebe", "prior"}
        Start each subject's Gaussian (or the affine layer of its flow) at the EBE and Laplace
        covariance of the initial estimates (``ebe``, NLME models only), or at 0 with half the
        prior's scale. (The amortized encoder starts near 0 with about a third of the prior's scale.)
    encoder_hidden, encoder_layers : int
        Size of the amortized encoder's networks.
    refine_iter : int
        ``amortized`` only: iterations of per-subject Gaussian refinement after the encoder fit
        (0: none); the population parameters keep moving with them.
    elbo_samples : int
        Draws per subject for the final ELBO.
    importance_samples, importance_df : int
        Draws per subject and Student-t degrees of freedom of the importance-sampling −2LL;
        ``importance_samples=0`` skips it, and the result then has no OFV/−2LL (ELBO only; the
        reason is in ``FitResult.unavailable``).
    posterior_draws : int
        Draws per subject from q stored in ``FitResult.posterior_draws``.
    covariance : {"linearization"} or None
        Standard errors from 2R⁻¹ of the FOCE-I objective at the estimates (models with Gaussian
        residuals and random effects; conditional on network weights if any); None skips.
    weight_decay : float
        Models with network weights (optimised with Adam together with everything else):
        ``weight_decay · ‖w‖²`` is subtracted from the bound (a Gaussian prior on the weights).
    seed : int
        Same seed, same result.
    progress, progress_every, cpu_threads
        As for :class:`~pmxgen.estimation.ClassicalEstimator`.

    Attributes
    ----------
    posterior_ : FlowDistribution
        The fitted per-subject posteriors (after :meth:`fit`).
    encoder_ : SubjectEncoder or None
        The fitted encoder (``amortized``); :meth:`encode` gives new subjects' posteriors.
    values_ : PopulationValues
        The estimates as the model uses them.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> vem = VariationalEM(max_iter=200, importance_samples=200, posterior_draws=20, covariance=None)
    >>> fit = vem.fit(model, data)
    >>> fit.method, fit.posterior_draws.shape
    ('vem', (20, 12, 2))
    >>> fit.elbo["elbo"] <= -fit.minus2ll / 2 + 3 * fit.importance_sampling["se"]
    True
    """

    method = name = "vem"
    summary = "variational EM: Gaussian, normalizing-flow or amortized (encoder) posteriors; ELBO or IWAE"
    requires = ()
    supports_network_weights = True
    needs_random_effects = True
    cli_options = (
        CliOption("--covariance", "covariance", str,
                  "standard errors: linearization (default; FOCE-I R matrix); none skips them",
                  ("linearization", "none"), none_value="none"),
        CliOption("--importance-samples", "importance_samples", int,
                  "draws per subject for the importance-sampling -2LL (default 1000; 0: ELBO only)"),
        CliOption("--max-iter", "max_iter", int, "gradient steps (default 1000)"),
        CliOption("--posterior", "posterior", str, "each subject's posterior family (default gaussian)", POSTERIORS),
        CliOption("--flow", "flow", str, "--posterior flow: the flow, e.g. affine+planar*4; default affine+coupling*4 "
                                         "(affine+radial*4 for one random effect)"),
        CliOption("--bound", "bound", str, "the bound maximised (default elbo)", BOUNDS),
        CliOption("--vem-samples", "n_samples", int, "draws per subject per gradient step (default 8)"),
        CliOption("--refine-iter", "refine_iter", int,
                  "--posterior amortized: per-subject refinement steps after the encoder fit (default 0)"),
        CliOption("--weight-decay", "weight_decay", float,
                  "models with network weights: penalty weight_decay*|w|^2 on the bound (default 0)"),
    )

    def __init__(self, *, posterior: str = "gaussian", flow: str | None = None, bound: str = "elbo",
                 n_samples: int = 8, max_iter: int = 1000, learning_rate: float | None = None,
                 final_learning_rate: float | None = None, init: str = "ebe", encoder_hidden: int = 64,
                 encoder_layers: int = 2, refine_iter: int = 0, elbo_samples: int = 200,
                 importance_samples: int = 1000, importance_df: int = 4, posterior_draws: int = 500,
                 covariance: str | None = "linearization", seed: int = 0, progress: bool | Callable = False,
                 progress_every: int = 100, cpu_threads: int | None = 1, weight_decay: float = 0.0):
        self.posterior = posterior
        self.flow = flow
        self.bound = bound
        self.n_samples = n_samples
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.final_learning_rate = final_learning_rate
        self.init = init
        self.encoder_hidden = encoder_hidden
        self.encoder_layers = encoder_layers
        self.refine_iter = refine_iter
        self.elbo_samples = elbo_samples
        self.importance_samples = importance_samples
        self.importance_df = importance_df
        self.posterior_draws = posterior_draws
        self.covariance = covariance
        self.seed = seed
        self.progress = progress
        self.progress_every = progress_every
        self.cpu_threads = cpu_threads
        self.weight_decay = weight_decay
        self.posterior_ = None
        self.encoder_ = None
        self.values_ = None

    # ------------------------------------------------------------ validation
    def _validate(self, model, data) -> None:
        name = type(self).__name__
        for key, low in (("n_samples", 1), ("max_iter", 1), ("encoder_hidden", 1), ("encoder_layers", 1),
                         ("refine_iter", 0), ("elbo_samples", 2), ("importance_samples", 0), ("importance_df", 1),
                         ("posterior_draws", 2), ("progress_every", 1)):
            check_integer(name, key, getattr(self, key), low)
        if self.importance_samples == 1:
            raise EstimationError(f"{name}: importance_samples must be 0 (skip: ELBO only) or >= 2")
        check_positive(name, "weight_decay", self.weight_decay, allow_zero=True)
        for key in ("learning_rate", "final_learning_rate"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf):
                raise EstimationError(f"{name}: {key} must be a positive number or None (found {v!r})")
        if self.posterior not in POSTERIORS:
            raise EstimationError(f"{name}: posterior must be one of {', '.join(POSTERIORS)} (found {self.posterior!r})")
        if self.bound not in BOUNDS:
            raise EstimationError(f"{name}: bound must be one of {', '.join(BOUNDS)} (found {self.bound!r})")
        if self.bound == "iwae" and self.n_samples < 2:
            raise EstimationError(f"{name}: the IWAE bound needs n_samples >= 2 (found {self.n_samples})")
        if self.init not in ("ebe", "prior"):
            raise EstimationError(f"{name}: init must be 'ebe' or 'prior' (found {self.init!r})")
        if self.covariance not in (None, "linearization"):
            raise EstimationError(f"{name}: covariance must be 'linearization' or None (found {self.covariance!r})")
        if self.covariance is not None:
            require_capabilities(model, ("gaussian_residual", "gaussian_random_effects"),
                                 "VEM with covariance='linearization' (pass covariance=None otherwise)")
        if self.init == "ebe":
            require_capabilities(model, ("gaussian_residual", "gaussian_random_effects"),
                                 "VEM with init='ebe' (pass init='prior' otherwise)")
        if self.posterior == "flow" and isinstance(data, Dataset):
            k = len(model.eta_names(data.batch))
            build_flow(self._flow_spec(k), k, ())      # raises on a bad specification

    def _flow_spec(self, k: int) -> str:
        if self.flow is None:
            return "affine+coupling*4" if k >= 2 else "affine+radial*4"
        spec = str(self.flow).replace(" ", "")
        return spec if "affine" in [part.split("*")[0] for part in spec.split("+")] else "affine+" + spec

    def _learning_rates(self) -> tuple[float, float]:
        first = self.learning_rate
        if first is None:
            first = {"gaussian": 0.05, "flow": 0.02, "amortized": 0.01}[self.posterior]
        final = self.final_learning_rate if self.final_learning_rate is not None else first / 25
        return float(first), float(final)

    # ------------------------------------------------------------------- fit
    def encode(self, data: Dataset | object) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean ``[N, K]`` and Cholesky factor ``[N, K, K]`` of q(η) for (new) subjects, by the
        fitted encoder (``posterior="amortized"`` only): one forward pass, no optimisation."""
        if self.encoder_ is None:
            raise EstimationError("encode needs a VariationalEM fitted with posterior='amortized'")
        batch = data.batch if isinstance(data, Dataset) else data
        with torch.no_grad():
            return self.encoder_(batch)

    def _fit(self, model, data) -> FitResult:
        started = time.perf_counter()
        batch = data.batch
        ps = model.parameter_set
        n, k = batch.n_subjects, len(model.eta_names(batch))
        dtype, device = batch.dtype, batch.device
        gen = torch.Generator(device=device)
        gen.manual_seed(int(self.seed))
        x = torch.nn.Parameter(ps.to_unconstrained(ps.initial_natural(dtype=dtype, device=device)).detach().clone())
        values0 = ps.unpack(ps.from_unconstrained(x.detach()))
        history: list[dict] = []
        messages: list[str] = []
        if self.posterior == "amortized":
            encoder = SubjectEncoder(k, batch.baseline.shape[1], hidden=int(self.encoder_hidden),
                                     n_layers=int(self.encoder_layers), seed=int(self.seed), dtype=dtype, device=device)
            prior_sd = torch.sqrt(torch.diagonal(model.omega_matrix(values0, batch).detach(), dim1=-2, dim2=-1))
            encoder.fit_scaling(batch, eta_scale=prior_sd.reshape(-1, k).mean(0))
            self.encoder_ = encoder

            def sample(s):
                loc, tril = encoder(batch)
                return _gaussian_rsample(loc, tril, s, gen)

            status = self._optimise(model, ps, x, list(encoder.parameters()), sample, batch, gen, history, messages,
                                    int(self.max_iter), "amortized")
            with torch.no_grad():
                loc, tril = encoder(batch)
            flow = AffineFlow(k, (n,), dtype=dtype, device=device)
            flow.set_(loc, tril)
            if self.refine_iter:
                dist = FlowDistribution(flow)
                status = self._optimise(model, ps, x, list(flow.parameters()), lambda s: dist.rsample(s, generator=gen),
                                        batch, gen, history, messages, int(self.refine_iter), "refine")
        else:
            if self.posterior == "gaussian":
                flow = AffineFlow(k, (n,), dtype=dtype, device=device)
            else:
                flow = build_flow(self._flow_spec(k), k, (n,), seed=int(self.seed), dtype=dtype, device=device)
            _affine_part(flow).set_(*self._initial_posterior(model, values0, batch, n, k))
            dist = FlowDistribution(flow)
            status = self._optimise(model, ps, x, list(flow.parameters()), lambda s: dist.rsample(s, generator=gen),
                                    batch, gen, history, messages, int(self.max_iter), self.posterior)
        for p in flow.parameters():
            p.requires_grad_(False)
        self.posterior_ = FlowDistribution(flow)
        return self._finish(model, data, ps, x.detach(), flow, gen, status, messages, history, started)

    def _initial_posterior(self, model, values, batch, n, k):
        """Each subject's starting mean and Cholesky factor: EBE and Laplace (FOCE-I) covariance, or the prior."""
        dtype, device = batch.dtype, batch.device
        omega = model.omega_matrix(values, batch).detach()
        prior_tril = torch.linalg.cholesky(omega).expand(n, k, k)
        if self.init == "prior":
            return torch.zeros(n, k, dtype=dtype, device=device), 0.5 * prior_tril
        eta = solve_ebes(model, values, batch, torch.zeros(n, k, dtype=dtype, device=device)).eta
        curvature = subject_objective(model, values, batch, eta, "focei").curvature.detach()
        chol, info = torch.linalg.cholesky_ex(curvature)
        cov = torch.cholesky_inverse(chol)
        tril, info2 = torch.linalg.cholesky_ex(0.5 * (cov + cov.transpose(-1, -2)))
        bad = (info != 0) | (info2 != 0) | ~torch.isfinite(tril).all(-1).all(-1) | ~torch.isfinite(eta).all(-1)
        eta = torch.where(bad[:, None], torch.zeros_like(eta), eta)
        tril = torch.where(bad[:, None, None], 0.5 * prior_tril, tril)
        return eta, tril

    def _optimise(self, model, ps, x, posterior_parameters, sample, batch, gen, history, messages, n_iter, phase):
        """Adam on (x, posterior parameters) for ``n_iter`` steps; returns the convergence status."""
        n = batch.n_subjects
        s = int(self.n_samples)
        rep = batch.repeat(s) if s > 1 else batch
        first, final = self._learning_rates()
        weights = list(model.networks.parameters())
        optimizer = torch.optim.Adam([x] + posterior_parameters + weights, lr=first)
        decay = (final / first) ** (1.0 / max(n_iter - 1, 1))
        schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
        trace, skipped = [], 0
        for it in range(n_iter):
            values = ps.unpack(ps.from_unconstrained(x))
            eta, log_q = sample(s)
            kdim = eta.shape[-1]
            flat = eta.reshape(s * n, kdim)
            log_p = model.log_likelihood(flat, values, rep) + model.log_prior(flat, values, rep)
            log_w = log_p.reshape(s, n) - log_q
            bound = _bound(log_w, self.bound)
            if weights and self.weight_decay:
                bound = bound - float(self.weight_decay) * sum((w * w).sum() for w in weights)
            optimizer.zero_grad()
            if not torch.isfinite(bound):
                skipped += 1
                if skipped > max(10, n_iter // 10):
                    messages.insert(0, f"the {self.bound.upper()} was not finite in {skipped} of {it + 1} steps "
                                       f"(overflow in the model for extreme draws); the fit was stopped")
                    return "failed"
                schedule.step()
                continue
            (-bound / n).backward()
            optimizer.step()
            schedule.step()
            value = float(bound.detach())
            trace.append(value)
            entry = {"iteration": len(history), "phase": phase, "ofv": float("nan"), self.bound: value,
                     **ps.full_natural(ps.from_unconstrained(x.detach()))}
            history.append(entry)
            self._report(entry)
        if skipped:
            messages.append(f"{skipped} of {n_iter} steps skipped: the {self.bound.upper()} was not finite for some "
                            f"draws")
        return self._status(trace, messages, phase, n)

    def _status(self, trace, messages, phase, n_subjects) -> str:
        """Converged when the bound's mean over the last 10 % of steps is no more than its noise (3 SE)
        plus ``0.5 + 0.01·N`` (one −2LL point, and 0.02 per subject: as the step size decays the
        posteriors' own jitter shrinks, which raises the bound a little for every subject) above its
        mean over the 10 % before."""
        w = max(5, len(trace) // 10)
        if len(trace) < 2 * w:
            messages.append(f"{phase}: too few steps to judge convergence")
            return "max_iterations"
        last, before = np.asarray(trace[-w:]), np.asarray(trace[-2 * w:-w])
        rise = last.mean() - before.mean()
        noise = 3.0 * math.sqrt(last.var(ddof=1) / w + before.var(ddof=1) / w)
        messages.append(f"{phase}: {len(trace)} steps; the {self.bound.upper()} changed by {rise:+.3f} over the last "
                        f"{w} steps (noise {noise:.3f})")
        if rise > noise + 0.5 + 0.01 * n_subjects:
            msg = (f"the {self.bound.upper()} still rose by {rise:.3f} over the last {w} steps; raise max_iter "
                   f"or learning_rate")
            messages.insert(0, msg)
            warnings.warn(f"VEM did not converge: {msg}", ConvergenceWarning, stacklevel=4)
            return "max_iterations"
        return "converged"

    def _report(self, entry: dict) -> None:
        if not self.progress or entry["iteration"] % int(self.progress_every):
            return
        if callable(self.progress):
            self.progress(entry["iteration"], entry)
        else:
            print(f"  VEM iteration {entry['iteration']:5d} ({entry['phase']})  {self.bound.upper()} "
                  f"{entry[self.bound]:.4f}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- finish
    def _finish(self, model, data, ps, x_hat, flow, gen, status, messages, history, started) -> FitResult:
        batch = data.batch
        n, k = batch.n_subjects, len(model.eta_names(batch))
        phi_hat = ps.from_unconstrained(x_hat).detach()
        values = ps.unpack(phi_hat)
        self.values_ = values
        jacobian_term = _log_scale_jacobian(model, batch)
        with torch.no_grad():
            # final ELBO (and IWAE bound) with fresh draws
            m = int(self.elbo_samples)
            eta, log_q = FlowDistribution(flow).rsample(m, generator=gen)
            log_w = _log_weights(model, values, batch, eta, log_q)
            per_subject = log_w.mean(0)
            elbo = float(per_subject.sum()) - jacobian_term
            elbo_se = float(torch.sqrt((log_w.var(0) / m).sum()))
            elbo_dict = {"elbo": elbo, "se": elbo_se, "n_samples": m, "bound": self.bound}
            if self.bound == "iwae" and m >= int(self.n_samples):
                groups = m // int(self.n_samples)
                lw = log_w[:groups * int(self.n_samples)].reshape(groups, int(self.n_samples), n)
                iw = torch.logsumexp(lw, 1) - math.log(int(self.n_samples))           # [groups, N]
                elbo_dict.update(iwae=float(iw.mean(0).sum()) - jacobian_term,
                                 iwae_se=float(torch.sqrt((iw.var(0) / groups).sum())) if groups > 1 else float("nan"),
                                 iwae_samples=int(self.n_samples))
            # importance sampling with the same flow pushed from a Student-t base
            isr = None
            if self.importance_samples:
                draws, log_q_t = FlowDistribution(flow, base="student_t", df=float(self.importance_df)).rsample(
                    int(self.importance_samples), generator=gen)
                isr = importance_sampling_from_draws(model, values, batch, draws, log_q_t,
                                                     df=int(self.importance_df))
            post, _ = FlowDistribution(flow).rsample(int(self.posterior_draws), generator=gen)
        unavailable = {}
        if isr is not None:
            is_dict = _importance_summary(isr, model, batch)
            minus2ll, ofv = float(is_dict["minus2ll"]), float(is_dict["ofv"])
        else:
            is_dict, minus2ll, ofv = None, None, None
            reason = "variational fit with importance_samples=0: ELBO only (no likelihood estimate)"
            unavailable.update(ofv=reason, minus2ll=reason)
        eta_names = tuple(model.eta_names(batch))
        cond_mean, cond_cov, extra = draw_summaries(post, eta_names)

        cov_result = None
        if {"gaussian_residual", "gaussian_random_effects"} <= capabilities(model):
            modes = solve_ebes(model, values, batch, cond_mean, max_iter=100, tol=1e-10).eta
            if self.covariance == "linearization":
                objective = approximate_objective(model, batch, "focei", inner_tol=COVARIANCE_INNER_TOL)
                cov_result = objective_covariance(ps, objective, phi_hat, modes, "R")
        else:
            modes = cond_mean
            messages.append("individual estimates are the posterior means of q (the model has no Gaussian-residual "
                            "tier for modes)")
        tables = tables_for(model, data, values, modes, extra)
        near, notes = estimate_messages(ps, phi_hat, is_dict)
        messages = list(messages) + notes
        return FitResult(
            method=self.method, **common_result_fields(model, data, phi_hat, cov_result, self.covariance),
            ofv=ofv, minus2ll=minus2ll, eta_names=eta_names, ebe=modes.detach().cpu().numpy(),
            ebe_covariance=cond_cov.cpu().numpy(), observations=tables.observations, individual=tables.individual,
            shrinkage=tables.shrinkage, history=tuple(history), status=status, messages=tuple(messages),
            near_bounds=tuple(near), importance_sampling=is_dict, elapsed_seconds=time.perf_counter() - started,
            options=self._options(k), posterior_draws=post.cpu().numpy(), elbo=elbo_dict,
            unavailable=unavailable, **network_summary(model))

    def _options(self, k: int) -> dict:
        first, final = self._learning_rates()
        return {**self.options(), "learning_rate": first, "final_learning_rate": final,
                "flow_spec": self._flow_spec(k) if self.posterior == "flow" else None}


# -------------------------------------------------------------------- helpers
def _bound(log_w: torch.Tensor, kind: str) -> torch.Tensor:
    """Total ELBO (mean over draws) or IWAE bound (log-mean-exp over draws) from log weights ``[S, N]``."""
    if kind == "elbo":
        return log_w.mean(0).sum()
    return (torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])).sum()


def _gaussian_rsample(loc: torch.Tensor, tril: torch.Tensor, s: int, gen: torch.Generator):
    """Reparameterised draws ``[S, N, K]`` of N(loc, tril trilᵀ) and their log densities ``[S, N]``."""
    z = torch.randn((s,) + tuple(loc.shape), generator=gen, dtype=loc.dtype, device=loc.device)
    eta = loc + (tril @ z[..., None])[..., 0]
    k = loc.shape[-1]
    log_q = (-0.5 * (z * z).sum(-1) - torch.log(torch.diagonal(tril, dim1=-2, dim2=-1)).sum(-1)
             - 0.5 * k * _LOG2PI)
    return eta, log_q


def _affine_part(flow) -> AffineFlow:
    """The (first) affine layer: set to each subject's starting Gaussian while the other layers are
    the identity, so that the whole flow starts as that Gaussian."""
    layers = flow.flows if isinstance(flow, ComposedFlow) else [flow]
    for layer in layers:
        if isinstance(layer, AffineFlow):
            return layer
    raise EstimationError("the posterior flow needs an affine layer")


def _log_weights(model, values, batch, eta: torch.Tensor, log_q: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``log p(y, η) − log q(η)`` for draws ``[S, N, K]``, evaluated ``chunk`` draws at a time."""
    s, n, k = eta.shape
    out = torch.empty(s, n, dtype=eta.dtype, device=eta.device)
    reps: dict[int, object] = {}
    for start in range(0, s, chunk):
        m = min(chunk, s - start)
        if m not in reps:
            reps[m] = batch.repeat(m)
        flat = eta[start:start + m].reshape(m * n, k)
        lp = model.log_likelihood(flat, values, reps[m]) + model.log_prior(flat, values, reps[m])
        out[start:start + m] = lp.reshape(m, n) - log_q[start:start + m]
    return out


def _log_scale_jacobian(model, batch) -> float:
    """Σ log DV for log-scale error models (the −2LL is reported on the DV scale), else 0."""
    if not getattr(model, "log_scale_observations", False):
        return 0.0
    offset, n_density = minus2ll_offset(model, batch)
    return 0.5 * (offset - n_density * _LOG2PI)


def _importance_summary(result, model, batch) -> dict:
    if "gaussian_residual" in capabilities(model):
        return importance_summary(result, model, batch)
    return result.as_dict(int(batch.obs.mask.sum()))
