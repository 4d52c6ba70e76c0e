"""FO, FOCE, FOCE-I and Laplace estimation of NLME models (NONMEM's classical methods).

The outer problem is quasi-Newton (BFGS) on the unconstrained parameters with the exact
gradient of the approximate marginal likelihood (see :mod:`.objective`); the inner problem
(EBEs) is solved for all subjects at once by :func:`.ebe.solve_ebes`, warm-started.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Callable

import numpy as np
import torch
from scipy import optimize

from ..errors import ConvergenceWarning, DatasetWarning, EstimationError, IntegrationError, ModelError
from ..models.base import PopulationModel, network_weight_count
from ..models.weights import assign_weights_vector, weight_tensors, weights_vector
from .base import CliOption, Estimator, check_integer, check_positive
from .covariance import COVARIANCE_KINDS, covariance_step
from .ebe import solve_ebes
from .importance import importance_sampling, importance_summary
from .expansion import DERIVATIVES, resolve_derivatives
from .objective import METHODS, subject_objective, variance_reference
from .posthoc import common_result_fields, estimate_messages, minus2ll_offset, network_summary, posthoc_tables
from .registry import normalise_method, register_estimator
from .results import FitResult

__all__ = ["ClassicalEstimator", "FO", "FOCE", "FOCEI", "Laplace", "approximate_objective",
           "objective_covariance", "minimization_status", "CONVERGED_DECREMENT"]

_LOG2PI = math.log(2 * math.pi)
_PENALTY = 1e12
#: Default inner (EBE) tolerance on the Newton decrement (see ``inner_tol``).
DEFAULT_INNER_TOL = 1e-12
#: Inner (EBE) tolerance on the Newton decrement for the covariance step's re-solved EBEs.
COVARIANCE_INNER_TOL = 1e-14
#: Every subject's EBEs are solved from several starts (the best point's, the last evaluation's,
#: and at the result of the minimization also η = 0), and the first (the best point's, tracked
#: along a line search) is kept unless another start's converged mode is lower by more than this
#: (−2LL units): rounding-level differences between starts that reach the same mode do not
#: switch it, any real difference between modes does.
WARM_START_MARGIN = 1e-9
#: EBEs of this many latest objective evaluations are kept by point, so that the final EBEs start
#: from the accepted iterate's own.
_EBE_MEMORY = 64
#: Times the minimization may restart from its result, where the EBE search from η = 0 there finds
#: lower modes than it had or where it stopped at precision loss far from a minimum.
MAX_EBE_RESTARTS = 5
#: BFGS stopped by precision loss still counts as converged when its quasi-Newton model predicts
#: less than this further OFV decrease, ½ gᵀH⁻¹g (see :func:`minimization_status`).
CONVERGED_DECREMENT = 1e-4


class ClassicalEstimator(Estimator):
    """Maximum (approximate) likelihood by FO, FOCE, FOCE-I or Laplace.

    Needs a model with Gaussian residuals given η and Gaussian random effects (the
    ``gaussian_residual`` and ``gaussian_random_effects`` tiers of
    :mod:`pmxgen.models.base`): NLME models, PPCA, or any model offering them. Network weights
    of the model (``model.networks``) are optimised with the named parameters (L-BFGS on the
    flattened weights and the unconstrained named parameters, instead of BFGS); the covariance
    step then gives the named parameters' SEs conditional on the fitted weights.

    Parameters
    ----------
    method : {"fo", "foce", "focei", "laplace"}
        The approximation of the marginal likelihood.
    max_iter : int
        Maximum outer (BFGS) iterations.
    gtol : float
        Convergence when the largest gradient element on the unconstrained scale is below it
        (OFV units).
    gradient : {"exact", "finite"}
        Exact gradients (implicit differentiation through the EBEs) or central finite
        differences of the whole objective.
    covariance : {"sandwich", "R", "S"} or None
        Covariance step (``None`` skips it).
    importance_samples : int
        Draws per subject for the importance-sampling −2LL at the estimates (0 skips it).
    importance_df : int
        Degrees of freedom of the multivariate-t proposal.
    inner_max_iter : int
        EBE Newton iterations.
    inner_tol : float or None
        Tolerance on the EBEs' Newton decrement (objective units); None: 1e-12. The
        log-determinant term of FOCE, FOCE-I and Laplace is not stationary in η, so EBE error
        enters the outer gradient at first order, summed over subjects: at 1e-8, Laplace on
        sim_1cmt_oral_1000 and FOCE-I there from 3× the initial θ ended in BFGS precision loss
        (max |g| 0.011 and 0.004); at 1e-12 both converge, at no measurable extra cost.
    derivatives : {"auto", "expansion", "autograd"}
        How the derivatives of the predictions with respect to η and the parameters are
        taken: from a Taylor expansion in the individual parameters built by central
        differences in one batched model evaluation (:mod:`.expansion`; second order, relative
        error about 1e-8; third order for Laplace's objective, relative error about 1e-6; an
        order of magnitude faster for ODE models), or by automatic differentiation through the
        structural model (exact; always used by models with inter-occasion variability).
        ``"auto"``: expansion for ODE models, autograd for closed forms.
    seed : int
        Seed for importance sampling.
    progress : bool or callable
        Print (or call ``progress(iteration, ofv)``) every ``progress_every`` iterations.
    progress_every : int
    cpu_threads : int or None
        Torch intra-op threads during the fit on CPU (restored afterwards). The batched
        per-subject linear algebra is small, and extra threads mostly add synchronisation
        (several times slower on a loaded machine); None keeps torch's setting.
    weight_decay : float
        Models with network weights: ``weight_decay · ‖w‖²`` is added to the objective (OFV
        units; a Gaussian prior on the weights). 0: none.

    Examples
    --------
    >>> import pmxgen
    >>> from pmxgen.models import build_model
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = ClassicalEstimator("focei", covariance=None).fit(model, data)
    >>> fit.status, round(fit.ofv, 1)   # doctest: +SKIP
    ('converged', 115.9)
    """

    name = "classical"
    requires = ("gaussian_residual", "gaussian_random_effects")
    supports_network_weights = True
    supports_occasions = True
    cli_options = (
        CliOption("--covariance", "covariance", str, "standard errors: sandwich (default), R or S; none skips them",
                  ("sandwich", "R", "S", "none"), none_value="none"),
        CliOption("--importance-samples", "importance_samples", int,
                  "draws per subject for an importance-sampling -2LL at the estimates (default 0: skip)"),
        CliOption("--max-iter", "max_iter", int, "BFGS iterations (default 500)"),
        CliOption("--derivatives", "derivatives", str,
                  "derivatives of the predictions from a Taylor expansion (second order; third for Laplace; central "
                  "differences in one batched evaluation) or autograd; auto (default) expands ODE models",
                  ("auto", "expansion", "autograd")),
        CliOption("--weight-decay", "weight_decay", float,
                  "models with network weights: penalty weight_decay*|w|^2 in OFV units (default 0)"),
    )

    def __init__(self, method: str = "focei", *, max_iter: int = 500, gtol: float = 1e-4, gradient: str = "exact",
                 covariance: str | None = "sandwich", importance_samples: int = 0, importance_df: int = 4,
                 inner_max_iter: int = 100, inner_tol: float | None = None, derivatives: str = "auto", seed: int = 0,
                 progress: bool | Callable = False, progress_every: int = 10, cpu_threads: int | None = 1,
                 weight_decay: float = 0.0):
        self.method = method
        self.name = normalise_method(method) if isinstance(method, str) else str(method)
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.gtol = gtol
        self.gradient = gradient
        self.covariance = covariance
        self.importance_samples = importance_samples
        self.importance_df = importance_df
        self.inner_max_iter = inner_max_iter
        self.inner_tol = inner_tol
        self.derivatives = derivatives
        self.seed = seed
        self.progress = progress
        self.progress_every = progress_every
        self.cpu_threads = cpu_threads

    # ------------------------------------------------------------ validation
    def _validate(self, model, data) -> None:
        m = normalise_method(self.method)
        if m not in METHODS:
            raise EstimationError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        self.method = self.name = m
        for name, lo in (("max_iter", 1), ("inner_max_iter", 1), ("progress_every", 1), ("importance_samples", 0),
                         ("importance_df", 1)):
            check_integer(type(self).__name__, name, getattr(self, name), lo)
        check_positive(type(self).__name__, "weight_decay", self.weight_decay, allow_zero=True)
        if self.importance_samples == 1:
            raise EstimationError("importance_samples must be 0 (skip) or >= 2")
        for name in ("gtol", "inner_tol"):
            v = getattr(self, name)
            if name == "inner_tol" and v is None:
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise EstimationError(f"{name} must be a positive number (found {v!r})")
        if self.derivatives not in DERIVATIVES:
            raise EstimationError(f"derivatives must be one of {', '.join(DERIVATIVES)} (found {self.derivatives!r})")
        if self.gradient not in ("exact", "finite"):
            raise EstimationError(f"gradient must be 'exact' or 'finite' (found {self.gradient!r})")
        if self.covariance is not None and self.covariance not in COVARIANCE_KINDS:
            raise EstimationError(f"covariance must be one of {', '.join(COVARIANCE_KINDS)} or None "
                                  f"(found {self.covariance!r})")
        if getattr(data, "n_blq", 0) and self.method != "laplace":
            raise EstimationError(f"the data have {data.n_blq} observations below the LLOQ, handled by the M3 "
                                  f"likelihood, which needs method='laplace' (as NONMEM's LAPLACIAN); or drop "
                                  f"the BLQ flags to treat them as ordinary observations")

    # ------------------------------------------------------------------- fit
    def _fit(self, model: PopulationModel, data) -> FitResult:
        started = time.perf_counter()
        batch = data.batch
        ps = model.parameter_set
        method = self.method
        n, k = batch.n_subjects, len(model.eta_names(batch))
        dtype, device = batch.dtype, batch.device
        phi0 = ps.initial_natural(dtype=dtype, device=device)
        # The optimiser's vector: the unconstrained named parameters, then the network weights.
        n_named = ps.n_estimated
        weights = weight_tensors(model)
        x0 = np.concatenate([ps.to_unconstrained(phi0).detach().cpu().numpy(), weights_vector(model).numpy()])
        zeros = torch.zeros(n, k, dtype=dtype, device=device)
        # EBE starts (see solve_ebes' alternatives): the best point's and the last evaluation's
        # EBEs, and η = 0 where "explore" (at the result of the minimization); "ebes_at": the EBEs
        # of the latest evaluations by point.
        state = {"eta": zeros, "eta_best": zeros, "evals": 0, "best": math.inf, "ebes_at": {}, "explore": False}
        messages: list[str] = []

        inner_tol = self._inner_tol()
        objective_at_phi = approximate_objective(model, batch, method, self.inner_max_iter, inner_tol,
                                                 self.derivatives)

        def fun(x: np.ndarray):
            state["evals"] += 1
            if weights:
                assign_weights_vector(model, x[n_named:])
            xt = torch.as_tensor(x[:n_named], dtype=dtype, device=device).requires_grad_(self.gradient == "exact")
            try:
                phi = ps.from_unconstrained(xt)
                starts = (state["eta_best"], state["eta"]) + ((zeros,) if state["explore"] else ())
                total, eta = objective_at_phi(phi, starts)
                if weights and self.weight_decay:
                    total = total + float(self.weight_decay) * sum((w * w).sum() for w in weights)
                if not bool(torch.isfinite(total)):
                    return _PENALTY, np.zeros_like(x)
                if self.gradient == "exact":
                    grads = torch.autograd.grad(total, [xt] + weights, allow_unused=True)
                    g = np.concatenate([(torch.zeros_like(t) if d is None else d).detach().reshape(-1).cpu().numpy()
                                        for d, t in zip(grads, [xt] + weights)])
                else:
                    g = self._finite_difference(x, lambda xx: self._value(ps, objective_at_phi, xx, eta, dtype,
                                                                          device, model, n_named))
            except (torch.linalg.LinAlgError, ModelError, IntegrationError) as exc:
                # Trial points of the line search may leave the region where the model can be
                # evaluated (overflowing parameters, stiff ODEs): make them unattractive.
                if state["evals"] == 1:
                    raise EstimationError(f"the objective cannot be evaluated at the initial estimates: {exc}") \
                        from exc
                return _PENALTY, np.zeros_like(x)
            if not np.all(np.isfinite(g)):
                return _PENALTY, np.zeros_like(x)
            value = float(total.detach())
            # The best point's EBEs (the current iterate's: line-search trial points lie on a ray
            # from it) are tracked continuously; the last evaluation's are another start (a far
            # trial point can carry them into another local mode). An objective that depends on
            # where its EBE search started stalls BFGS: each subject keeps its lowest mode.
            state["eta"] = eta.detach()
            state["ebes_at"][x.tobytes()] = state["eta"]
            if len(state["ebes_at"]) > _EBE_MEMORY:
                del state["ebes_at"][next(iter(state["ebes_at"]))]
            if value < state["best"]:
                state["best"], state["eta_best"] = value, eta.detach()
            return value, g

        history: list[dict] = []

        def record(x):
            phi = ps.from_unconstrained(torch.as_tensor(x[:n_named], dtype=dtype, device=device)).detach()
            it = len(history)
            ofv = state.get("last_ofv", float("nan"))
            history.append({"iteration": it, "ofv": ofv, **ps.full_natural(phi)})
            if self.progress and it % self.progress_every == 0:
                if callable(self.progress):
                    self.progress(it, ofv)
                else:
                    print(f"  {method.upper()} iteration {it:4d}  OFV {ofv:.4f}", file=sys.stderr, flush=True)

        def fun_recorded(x):
            value, g = fun(x)
            state["last_ofv"] = value
            state["last_x"] = x.copy()
            return value, g

        initial_value, initial_grad = fun_recorded(x0)
        record(x0)
        x_hat, restarts = x0, {"lower EBE modes": 0, "precision loss": 0}
        while True:
            # BFGS keeps a dense inverse Hessian: with network weights, L-BFGS (limited memory) instead.
            result = optimize.minimize(fun_recorded, x_hat, jac=True, method="L-BFGS-B" if weights else "BFGS",
                                       options={"gtol": self.gtol, "maxiter": self.max_iter} if not weights else
                                       {"gtol": self.gtol, "maxiter": self.max_iter, "ftol": 1e-13, "maxcor": 20},
                                       callback=lambda xk: (None if np.array_equal(xk, state["last_x"])
                                                            else fun_recorded(xk), record(xk)))
            x_hat = result.x
            # The final EBEs start from the accepted iterate's own EBEs, not the last evaluation's
            # (e.g. a rejected trial point of the last line search), and every subject also from η = 0.
            state["eta"] = state["ebes_at"].get(x_hat.tobytes(), state["eta_best"])
            state["explore"] = True
            final_value, final_grad = fun_recorded(x_hat)
            state["explore"] = False
            status, status_messages = minimization_status(result, final_value, final_grad, self.gtol,
                                                          self.max_iter, state["evals"])
            # Restart from the result with a fresh quasi-Newton matrix where η = 0 found lower
            # modes than the minimization had there, or where it stalled far from a minimum.
            lower = final_value < result.fun - max(1e-6, 1e-10 * abs(result.fun))
            stalled = status == "failed" and "precision loss" in str(result.message) and result.nit > 0
            if not (lower or stalled):
                break
            if sum(restarts.values()) == MAX_EBE_RESTARTS:
                if lower:
                    status, status_messages = "failed", [
                        f"EBE searches from η = 0 still found lower modes after {MAX_EBE_RESTARTS} restarts of "
                        f"the minimization ({state['evals']} objective evaluations)"]
                break
            restarts["lower EBE modes" if lower else "precision loss"] += 1
        if any(restarts.values()):
            status_messages.append("the minimization restarted from its result (" + ", ".join(
                f"{why}: {times}" for why, times in restarts.items() if times) + ")")
        messages.extend(status_messages)
        flat, notes = _identifiability_notes(ps, n, initial_grad, final_grad, max(initial_value, final_value))
        if flat:
            status = "failed"
            messages.insert(0, flat)
        if status != "converged":
            warnings.warn(f"{method.upper()} did not converge: {messages[0]}", ConvergenceWarning, stacklevel=2)
        messages.extend(notes)

        phi_hat = ps.from_unconstrained(torch.as_tensor(x_hat[:n_named], dtype=dtype, device=device)).detach()
        values = ps.unpack(phi_hat)
        if weights:
            assign_weights_vector(model, x_hat[n_named:])
        # Final EBEs (posthoc for FO, with interaction as FOCE-I).
        with torch.no_grad():
            ref = variance_reference(model, values, batch, method if method != "fo" else "focei")
        eta_hat = solve_ebes(model, values, batch, state["eta"] if method != "fo" else zeros,
                             variance_at=ref, max_iter=self.inner_max_iter, tol=inner_tol, derivatives=self.derivatives,
                             alternatives=(state["eta_best"],) if method != "fo" else (),
                             switch_margin=WARM_START_MARGIN).eta
        so = subject_objective(model, values, batch, eta_hat, method, derivatives=self.derivatives)
        ofv = float(so.ofv.detach().sum())
        offset, n_density = minus2ll_offset(model, batch)
        minus2ll = ofv + offset
        curvature = so.curvature
        if curvature is None:
            so_post = subject_objective(model, values, batch, eta_hat, "focei")
            curvature = so_post.curvature
        curvature = curvature.detach()
        ebe_cov = torch.cholesky_inverse(torch.linalg.cholesky(curvature)) if k else curvature

        # Covariance step.
        cov_result = None
        if self.covariance is not None and status != "failed":
            # R is a central difference of gradients at φ ± 1e-4·φ: the EBEs at those points must
            # be solved far below the step's effect on them, or their error enters R at O(1).
            precise = approximate_objective(model, batch, method, self.inner_max_iter, COVARIANCE_INNER_TOL,
                                            self.derivatives)
            cov_result = objective_covariance(ps, precise, phi_hat, eta_hat, self.covariance)
        # Importance sampling.
        is_dict = None
        if self.importance_samples:
            isr = importance_sampling(model, values, batch, eta_hat, curvature, n_samples=int(self.importance_samples),
                                      df=int(self.importance_df), seed=self.seed)
            is_dict = importance_summary(isr, model, batch)

        tables = posthoc_tables(model, data, values, eta_hat, variance_at=ref)  # CWRES: V at η = 0 for FOCE
        eta_names = model.eta_names(batch)
        eta_np = eta_hat.detach().cpu().numpy()
        near, notes = estimate_messages(ps, phi_hat)
        messages.extend(notes)
        if weights:
            penalty = float(self.weight_decay) * float(weights_vector(model).pow(2).sum())
            messages.append(f"{network_weight_count(model)} network weights fitted with the named parameters (L-BFGS)"
                            + ("; SEs are conditional on them" if cov_result is not None else "")
                            + (f"; weight decay {self.weight_decay:g}: the minimised objective was OFV + "
                               f"{penalty:.4g}" if self.weight_decay else ""))
        options = {**self.options(), "inner_tol": inner_tol, "derivatives": resolve_derivatives(self.derivatives, model)}
        return FitResult(
            method=method, **common_result_fields(model, data, phi_hat, cov_result, self.covariance),
            ofv=ofv, minus2ll=minus2ll, eta_names=tuple(eta_names), ebe=eta_np, ebe_covariance=ebe_cov.cpu().numpy(),
            observations=tables.observations, individual=tables.individual, shrinkage=tables.shrinkage,
            history=tuple(history), status=status, messages=tuple(messages), near_bounds=tuple(near),
            importance_sampling=is_dict, elapsed_seconds=time.perf_counter() - started, options=options,
            **network_summary(model))

    # --------------------------------------------------------------- helpers
    def _inner_tol(self) -> float:
        if self.inner_tol is not None:
            return float(self.inner_tol)
        return DEFAULT_INNER_TOL

    @staticmethod
    def _value(ps, objective_at_phi, x, eta, dtype, device, model=None, n_named=None) -> float:
        n_named = len(x) if n_named is None else n_named
        if model is not None and len(x) > n_named:
            assign_weights_vector(model, x[n_named:])
        with torch.no_grad():
            phi = ps.from_unconstrained(torch.as_tensor(x[:n_named], dtype=dtype, device=device))
        total, _ = objective_at_phi(phi, eta)
        return float(total.detach())

    @staticmethod
    def _finite_difference(x: np.ndarray, value: Callable[[np.ndarray], float], step: float = 1e-5) -> np.ndarray:
        g = np.empty_like(x)
        for i in range(x.size):
            e = np.zeros_like(x)
            e[i] = step * max(1.0, abs(x[i]))
            g[i] = (value(x + e) - value(x - e)) / (2 * e[i])
        return g


def minimization_status(result: optimize.OptimizeResult, final_value: float, final_grad: np.ndarray, gtol: float,
                        max_iter: int, evaluations: int) -> tuple[str, list[str]]:
    """Status (``converged``, ``max_iterations`` or ``failed``) and messages of a BFGS outer minimization.

    Converged: BFGS succeeded, or the largest gradient element is below ``max(10·gtol, 1e-3)``,
    or BFGS stopped at precision loss (its line search found no lower OFV: the objective's own
    noise, e.g. an ODE solver's, at this scale) with a small gradient (below 0.1) and an OFV
    decrease still predicted by its quasi-Newton model, ``½ gᵀH⁻¹g``, below
    :data:`CONVERGED_DECREMENT`: the OFV is then within that of its minimum, far below any
    difference that matters in model comparison.

    Examples
    --------
    >>> from scipy.optimize import OptimizeResult
    >>> stalled = OptimizeResult(success=False, nit=40, hess_inv=np.eye(2) * 0.5,
    ...                          message="Desired error not necessarily achieved due to precision loss.")
    >>> minimization_status(stalled, 10.0, np.array([2e-3, 0.0]), 1e-4, 500, 60)[0]
    'converged'
    >>> minimization_status(stalled, 10.0, np.array([0.5, 0.0]), 1e-4, 500, 60)[0]
    'failed'
    """
    grad_max = float(np.max(np.abs(final_grad))) if final_grad.size else 0.0
    decrement = math.inf
    hess_inv = getattr(result, "hess_inv", None)
    if isinstance(hess_inv, np.ndarray) and hess_inv.shape == (final_grad.size, final_grad.size):
        decrement = 0.5 * float(final_grad @ hess_inv @ final_grad)
        if not (math.isfinite(decrement) and decrement >= 0):
            decrement = math.inf
    stalled = not result.success and "precision loss" in str(result.message)
    messages: list[str] = []
    if final_value >= _PENALTY:
        return "failed", ["the objective is not finite at the final estimates"]
    near_optimum = stalled and grad_max < 0.1 and decrement < CONVERGED_DECREMENT
    if result.success or grad_max < max(10 * gtol, 1e-3) or near_optimum:
        messages.append(f"gradient max |g| = {grad_max:.2g} after {result.nit} iterations "
                        f"({evaluations} objective evaluations)")
        if not result.success:
            messages.append(f"optimizer note: {result.message}" + (
                f" (predicted further OFV decrease {decrement:.2g})" if math.isfinite(decrement) else ""))
        return "converged", messages
    if result.nit >= max_iter:
        return "max_iterations", [f"stopped after {result.nit} iterations with max |gradient| {grad_max:.3g}; "
                                  f"raise max_iter or improve initial estimates"]
    tail = f", predicted further OFV decrease {decrement:.3g}" if math.isfinite(decrement) else ""
    return "failed", [f"{result.message} (max |gradient| {grad_max:.3g}{tail}); try other initial estimates"]


def _identifiability_notes(ps, n_subjects: int, initial_grad: np.ndarray, final_grad: np.ndarray,
                           worst_value: float) -> tuple[str, list[str]]:
    """What the data cannot determine: (a message that fails the minimization, or "", other messages).

    * A gradient element exactly 0 at the initial *and* the final estimates (both finite): the
      objective does not depend on that parameter (nothing in the data responds to it, e.g. data
      without any dose, whose predictions are 0 for every parameter value), so it is not
      identifiable and its "estimate" is its initial value: the minimization fails, as NONMEM's
      zero-gradient termination, instead of converging silently at the initial values.
    * One subject: Ω is the variance of the random effects *between* subjects, of which one
      subject gives one draw, so its estimate is not meaningful and η-shrinkage is not defined
      (a warning and a message; the fit runs, as NONMEM's would).
    """
    flat = ""
    if worst_value < _PENALTY:
        names = [name for name, g0, g1 in zip(ps.names, np.asarray(initial_grad), np.asarray(final_grad))
                 if g0 == 0.0 and g1 == 0.0]
        if names:
            flat = (f"the objective does not depend on {', '.join(names)} (gradient exactly 0 at the initial and "
                    f"final estimates): not identifiable from these data (is there a dose?); their estimates are "
                    f"the initial values")
    notes = []
    omegas = [b.label(r, r) for b in ps.omega if not b.fixed for r in range(b.size)]
    if n_subjects == 1 and omegas:
        notes.append(f"one subject: the between-subject variances {', '.join(omegas)} cannot be estimated from one "
                     f"subject (their estimates are not meaningful and η-shrinkage is not defined); fix Ω "
                     f"(model.with_fixed) or fit more subjects")
        warnings.warn(notes[-1], DatasetWarning, stacklevel=4)
    return flat, notes


def approximate_objective(model: PopulationModel, batch, method: str, inner_max_iter: int = 100,
                          inner_tol: float = DEFAULT_INNER_TOL, derivatives: str = "auto") -> Callable:
    """``objective_at_phi(phi, eta0, per_subject=False) -> (OFV, EBEs)`` of ``method``, differentiable in φ.

    The EBEs are re-solved at each φ from ``eta0`` (not for FO), a tensor ``[N, K]`` or a tuple
    of them (each subject is solved from all of them and keeps its lowest converged mode, the
    first start's unless another is lower by more than :data:`WARM_START_MARGIN`; see
    :func:`.ebe.solve_ebes`); ``phi`` may be ``[P]`` or
    ``[N, P]`` (one row per subject, for per-subject gradients). ``derivatives`` as in
    :func:`.objective.subject_objective`.
    """
    ps = model.parameter_set
    cache: dict = {}

    def ebes(values, eta0):
        starts = tuple(eta0) if isinstance(eta0, (tuple, list)) else (eta0,)
        if method == "fo":
            return starts[0]
        with torch.no_grad():
            ref = variance_reference(model, values, batch, method)
        return solve_ebes(model, values, batch, starts[0], variance_at=ref, max_iter=inner_max_iter, tol=inner_tol,
                          derivatives=derivatives, alternatives=starts[1:], switch_margin=WARM_START_MARGIN).eta

    def objective_at_phi(phi: torch.Tensor, eta0: torch.Tensor | tuple, *, per_subject: bool = False):
        values = ps.unpack(phi)
        eta = ebes(ps.unpack(phi.detach()), eta0)
        so = subject_objective(model, values, batch, eta, method, derivatives=derivatives, cache=cache)
        return (so.ofv if per_subject else so.ofv.sum()), eta

    return objective_at_phi


def objective_covariance(ps, objective_at_phi: Callable, phi_hat: torch.Tensor, eta_hat: torch.Tensor,
                         kind: str):
    """NONMEM's covariance step (``kind`` sandwich/R/S) for an objective from :func:`approximate_objective`."""
    dtype, device = phi_hat.dtype, phi_hat.device
    n = eta_hat.shape[0]

    def total_gradient(phi_np):
        phi = torch.as_tensor(phi_np, dtype=dtype, device=device).requires_grad_(True)
        total, _ = objective_at_phi(phi, eta_hat)
        (g,) = torch.autograd.grad(total, phi)
        return g.detach().cpu().numpy()

    def subject_gradients(phi_np):
        phi = torch.as_tensor(phi_np, dtype=dtype, device=device)
        rows = phi.expand(n, phi.numel()).clone().requires_grad_(True)
        ofv, _ = objective_at_phi(rows, eta_hat, per_subject=True)
        (g,) = torch.autograd.grad(ofv.sum(), rows)
        return g.detach().cpu().numpy()

    return covariance_step(phi_hat.cpu().numpy(), ps.names, total_gradient, subject_gradients, kind=kind)


class _Method(ClassicalEstimator):
    """A :class:`ClassicalEstimator` with its method fixed by the class (what the registry holds)."""

    def __init__(self, **kwargs):
        if "method" in kwargs:
            raise EstimationError(f"{type(self).__name__} fixes the method ({self.name}); use ClassicalEstimator "
                                  f"to choose it")
        super().__init__(self.name, **kwargs)

    def get_params(self) -> dict:
        params = super().get_params()
        params.pop("method", None)
        return params


@register_estimator
class FO(_Method):
    """First-order estimation (linearisation at η = 0). See :class:`ClassicalEstimator`."""

    name = "fo"
    summary = "first-order (NONMEM FO): linearisation at eta = 0"


@register_estimator
class FOCE(_Method):
    """First-order conditional estimation without interaction. See :class:`ClassicalEstimator`."""

    name = "foce"
    summary = "first-order conditional estimation (residual variance at eta = 0)"


@register_estimator
class FOCEI(_Method):
    """First-order conditional estimation with interaction. See :class:`ClassicalEstimator`."""

    name = "focei"
    summary = "first-order conditional estimation with interaction (the default)"


@register_estimator
class Laplace(_Method):
    """Laplace approximation (exact Hessian of the conditional objective). See :class:`ClassicalEstimator`."""

    name = "laplace"
    summary = "Laplace approximation (exact eta-Hessian; needed for BLQ/M3 data)"
