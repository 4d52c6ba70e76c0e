r"""Schrödinger–Föllmer sampler: draws from π(x) ∝ exp(−U(x)) on R^d by an SDE on [0, 1].

The Föllmer process ``dX = b(X, t) dt + dW``, ``X_0 = 0``, with the drift

    b(x, t) = E_Z[∇f(x + √(1−t) Z)] / E_Z[f(x + √(1−t) Z)],   f = π / N(0, I),   Z ~ N(0, I),

has ``X_1 ~ π`` exactly (Föllmer 1985; Huang et al. 2021, "Schrödinger–Föllmer sampler"). Here the
drift is estimated by Monte Carlo with ``n_mc`` draws of Z (antithetic pairs by default) in its
stable *score form* ``b = Σ_j softmax_j(log f(y_j)) ∇log f(y_j)``, ``y_j = x + √(1−t) Z_j``, and the
SDE is integrated by Euler–Maruyama with ``n_steps`` steps. Both approximations bias the draws
slightly; the sampler also returns each draw's exact **Girsanov log weight**

    log w = log f(X_K) − Σ_k [b̂_k·ΔW_k + ½ h |b̂_k|²],

the log density ratio of the Gaussian random walk (whose end point is N(0, I)) to the simulated
path, times f at its end: ``E[w] = ∫ π`` for any drift estimate (the Monte Carlo draws of Z are
auxiliary variables independent of the path's noise). So the draws can be reweighted
(self-normalised importance sampling, :attr:`FollmerResult.ess`), their mean weight is an
unbiased estimate of the normalising constant (:func:`follmer_importance_sampling`: the marginal
likelihood p(y_i) of every subject), and the path proposal can be Metropolis-corrected
(:func:`follmer_move`, the ``"follmer"`` kernel of :mod:`.mcmc`, usable in SAEM, MCEM and the
posterior draws: ``SAEM(kernels={"follmer": 1})``): the current state's path is refreshed by a
Brownian bridge from 0 to it (under the exact Föllmer drift the process has the bridges of the
reference walk, so this is a Gibbs step on the extended target), then a new Föllmer path is
proposed and accepted with probability ``min(1, w_new / w_old)``. This kernel leaves the target
exactly invariant, needs no tuning, and jumps between modes, where local kernels (random walk,
MALA) stay in the mode they are in.

Everything is batched: ``log_prob`` receives ``x`` ``[M, B, D]`` (M points for each of B rows) and
returns ``[M, B]``; row b may be its own target (one subject's η posterior in one chain). For
η-posteriors the sampler works in whitened coordinates ``η = L x`` (``L Lᵀ = Ω``), where f is the
likelihood p(y_i | L x) itself.

Examples
--------
>>> import math, torch
>>> from pmxgen.estimation.follmer import follmer_sample
>>> log_prob = lambda x: -0.5 * ((x - 2.0) ** 2).sum(-1) / 0.25       # N(2, 0.5²) in 2-d
>>> out = follmer_sample(log_prob, 2000, 2, n_steps=50, n_mc=8, generator=0)
>>> [round(v, 1) for v in out.samples.mean(0).tolist()], out.ess > 1600
([2.0, 2.0], True)
>>> round(out.log_normalizer(), 2), round(math.log(2 * math.pi * 0.25), 2)     # ∫ exp(log_prob)
(0.45, 0.45)
"""
from __future__ import annotations

import copy as _copy
import math
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import EstimationError, ModelError

__all__ = ["FollmerResult", "follmer_sample", "follmer_drift", "follmer_move", "follmer_importance_sampling",
           "FOLLMER_STEPS", "FOLLMER_DRAWS"]

#: Euler–Maruyama steps and Monte Carlo draws of the drift used by the ``"follmer"`` MCMC kernel.
FOLLMER_STEPS = 10
FOLLMER_DRAWS = 16

LogProb = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FollmerResult:
    """End points ``samples`` ``[B, D]``, their Girsanov ``log_weight`` ``[B]`` (``E[exp] = ∫π``) and how many
    rows found no finite drift at some step (``failed_rows``)."""

    samples: torch.Tensor
    log_weight: torch.Tensor
    n_steps: int
    n_mc: int
    failed_rows: int = 0

    def normalized_weights(self) -> torch.Tensor:
        """Self-normalised importance weights ``[B]`` (all rows one target)."""
        return torch.softmax(self.log_weight, 0)

    @property
    def ess(self) -> float:
        """Effective sample size of the weights (all rows one target): B when the drift is exact."""
        w = self.normalized_weights()
        return float(1.0 / (w * w).sum())

    def log_normalizer(self) -> float:
        """log ∫π estimated by log mean w (all rows one target); exact in expectation of w."""
        n = self.log_weight.numel()
        return float(torch.logsumexp(self.log_weight, 0) - math.log(n))


def _generator(generator, device) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    gen = torch.Generator(device=device)
    gen.manual_seed(0 if generator is None else int(generator))
    return gen


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise EstimationError(f"Föllmer sampler: {name} must be an integer >= {low} (found {value!r})")
    return value


def _log_f_and_grad(log_prob: LogProb, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log f = log π + ½|y|² + (d/2) log 2π and its gradient at ``y`` ``[M, B, D]``; non-finite → (−inf, 0)."""
    d = y.shape[-1]
    with torch.enable_grad():
        yg = y.detach().requires_grad_(True)
        lp = log_prob(yg)
        if not isinstance(lp, torch.Tensor) or lp.shape != y.shape[:-1]:
            found = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
            raise ModelError(f"Föllmer sampler: log_prob must map x {tuple(y.shape)} to {tuple(y.shape[:-1])} (one "
                             f"value per point and row); found {found}")
        finite = torch.isfinite(lp)
        if bool(finite.any()):
            (g,) = torch.autograd.grad(torch.where(finite, lp, torch.zeros_like(lp)).sum(), yg, allow_unused=True)
        else:
            g = None
    g = torch.zeros_like(y) if g is None else g.detach()
    ok = finite & torch.isfinite(g).all(-1)
    log_f = torch.where(ok, lp.detach() + 0.5 * (y * y).sum(-1) + 0.5 * d * math.log(2 * math.pi),
                        torch.full_like(lp.detach(), -math.inf))
    return log_f, torch.where(ok[..., None], g + y, torch.zeros_like(g))


def _curvature(log_prob: LogProb, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient ``[P, B, D]`` and Hessian ``[P, B, D, D]`` of log f at ``x`` ``[P, B, D]`` (rows are independent,
    so one backward pass per dimension gives every row's Hessian row); zeros where not finite."""
    d = x.shape[-1]
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        lp = log_prob(xg)
        finite = torch.isfinite(lp)
        if not bool(finite.any()):
            return torch.zeros_like(x), torch.zeros(x.shape + (d,), dtype=x.dtype, device=x.device)
        (g,) = torch.autograd.grad(torch.where(finite, lp, torch.zeros_like(lp)).sum(), xg, create_graph=True)
        rows = []
        for j in range(d):
            (hj,) = torch.autograd.grad(g[..., j].sum(), xg, retain_graph=j < d - 1, allow_unused=True)
            rows.append(torch.zeros_like(x) if hj is None else hj)
    hess = torch.stack(rows, -2).detach()
    g = g.detach()
    ok = finite & torch.isfinite(g).all(-1) & torch.isfinite(hess).flatten(-2).all(-1)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    g = torch.where(ok[..., None], g + x.detach(), torch.zeros_like(g))                 # ∇log f = ∇log π + x
    hess = torch.where(ok[..., None, None], 0.5 * (hess + hess.transpose(-1, -2)) + eye, torch.zeros_like(hess))
    return g, hess


def follmer_drift(log_prob: LogProb, x: torch.Tensor, t: float, *, n_mc: int, generator: torch.Generator,
                  antithetic: bool = True, laplace: bool = True, defensive: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo Föllmer drift at time ``t`` for points ``x`` ``[P, B, D]`` (P paths of each of B rows).

    The drift is the mean of ∇log f under the smoothed density ∝ f(y) N(y; x, s²I), s² = 1 − t,
    estimated by self-normalised importance sampling. With ``laplace`` (default) the draws come from
    that density's Laplace approximation at x (Gaussian with precision ``I/s² − ∇²log f(x)``, an
    eigenvalue below 0.05/s² replaced by 1/s²), so that a Gaussian target gets its exact drift from any number of
    antithetic draws; otherwise from N(x, s²I) (the plain estimator, whose weights degenerate when
    f is far from flat). Where the Laplace fit is unreliable (an eigenvalue had to be replaced), and
    everywhere with ``defensive`` (for multimodal targets, where a locally concave log f can still
    hide a second mode), half the draws come from N(x, s²I), weighed against the mixture density. Returns the drift ``[P, B, D]`` and a flag ``[P, B]`` of rows where some draw
    had a finite density (the drift is 0 where none had).

    Examples
    --------
    For π = N(μ, σ²) the exact drift is (μ/σ² − (1/σ² − 1)x)/(1 + (1/σ² − 1)s²); at x = 0, t = 0,
    μ = 2, σ² = 0.25 that is 8/4 = 2:

    >>> import torch
    >>> x = torch.zeros(1, 3, 1, dtype=torch.float64)
    >>> b, ok = follmer_drift(lambda y: -0.5 * ((y - 2.0) ** 2).sum(-1) / 0.25, x, 0.0, n_mc=4,
    ...                       generator=torch.Generator().manual_seed(0))
    >>> [round(v, 10) for v in b.flatten().tolist()], bool(ok.all())
    ([2.0, 2.0, 2.0], True)
    """
    s2 = max(1.0 - t, 0.0)
    d = x.shape[-1]
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    if antithetic:
        half = (n_mc + 1) // 2
        z = torch.randn((half,) + tuple(x.shape), generator=generator, dtype=x.dtype, device=x.device)
        z = torch.cat([z, -z])[:n_mc]
    else:
        z = torch.randn((n_mc,) + tuple(x.shape), generator=generator, dtype=x.dtype, device=x.device)
    if laplace and s2 > 0 and n_mc >= 2:
        # Draws from the Laplace approximation of the smoothed density at x. Where its precision is
        # not positive (below 0.05/s²: between modes, say) that eigenvalue is replaced by 1/s², the
        # Laplace fit is unreliable, and half the draws come from N(x, s²I) instead, weighed
        # against the mixture density (a defensive deterministic mixture).
        g0, hess = _curvature(log_prob, x)
        evals, evecs = torch.linalg.eigh(eye / s2 - hess)
        bad = evals < 0.05 / s2                   # not concave there: a Newton step means nothing
        clamped = bad.any(-1) | defensive                                  # [P, B]
        evals = torch.where(bad, torch.full_like(evals, 1.0 / s2), evals)
        cov = (evecs * (1.0 / evals)[..., None, :]) @ evecs.transpose(-1, -2)
        mean = x + (cov @ g0[..., None])[..., 0]
        root = evecs * evals.rsqrt()[..., None, :]                         # root rootᵀ = cov
        idx = torch.arange(n_mc, device=x.device)
        if antithetic:         # pairs (j, j + ceil(m/2)): the second quarter's pairs come from N(x, s²I)
            pair = (n_mc + 1) // 2
            ref_draw = (idx % pair) >= (pair + 1) // 2
        else:
            ref_draw = idx % 2 == 1
        from_ref = clamped[None] & ref_draw[:, None, None]
        half = int(ref_draw.sum())
        y_lap = mean[None] + (root[None] @ z[..., None])[..., 0]
        y_ref = x[None] + math.sqrt(s2) * z
        y = torch.where(from_ref[..., None], y_ref, y_lap)
        u = (evecs.transpose(-1, -2)[None] @ (y - mean[None])[..., None])[..., 0]
        log_q_lap = -0.5 * (u * u * evals[None]).sum(-1) + 0.5 * torch.log(evals).sum(-1)[None]
        log_ref = -0.5 * ((y - x[None]) ** 2).sum(-1) / s2 - 0.5 * d * math.log(s2)
        a = math.log(1 - half / n_mc)
        b = math.log(half / n_mc)
        log_q = torch.where(clamped[None], torch.logaddexp(a + log_q_lap, b + log_ref), log_q_lap)
        correction = log_ref - log_q
    else:
        y = x[None] + math.sqrt(s2) * z                                    # [m, P, B, D]
        correction = torch.zeros(y.shape[:-1], dtype=x.dtype, device=x.device)
    m, p, b, _ = y.shape
    log_f, grad = _log_f_and_grad(log_prob, y.reshape(m * p, b, d))
    log_f, grad = log_f.reshape(m, p, b) + correction, grad.reshape(m, p, b, d)
    ok = torch.isfinite(log_f).any(0)
    w = torch.softmax(torch.where(torch.isfinite(log_f), log_f, torch.full_like(log_f, -math.inf))
                      .where(ok[None], torch.zeros_like(log_f)), 0)
    w = torch.where(torch.isfinite(log_f), w, torch.zeros_like(w))
    drift = (w[..., None] * grad).sum(0)
    return torch.where(ok[..., None], drift, torch.zeros_like(drift)), ok


def _simulate(log_prob: LogProb, n_rows: int, dim: int, *, n_steps: int, n_mc: int, gen: torch.Generator,
              dtype, device, antithetic: bool, bridge_to: torch.Tensor | None = None, defensive: bool = False):
    """Forward Föllmer paths ``[1, B, D]`` and, when ``bridge_to`` ``[B, D]`` is given, Brownian-bridge paths
    to it ``[1, B, D]``, advanced together (one drift evaluation per step). Returns (end points ``[P, B, D]``,
    path log weights without log f ``[P, B]``, all-steps-finite flags ``[P, B]``)."""
    h = 1.0 / n_steps
    p = 1 if bridge_to is None else 2
    x = torch.zeros(p, n_rows, dim, dtype=dtype, device=device)
    log_w = torch.zeros(p, n_rows, dtype=dtype, device=device)
    good = torch.ones(p, n_rows, dtype=torch.bool, device=device)
    for k in range(n_steps):
        t = k * h
        b, ok = follmer_drift(log_prob, x, t, n_mc=n_mc, generator=gen, antithetic=antithetic, defensive=defensive)
        good &= ok
        xi = torch.randn(p, n_rows, dim, generator=gen, dtype=dtype, device=device)
        fwd_dw = math.sqrt(h) * xi[0]
        fwd_step = h * b[0] + fwd_dw
        log_w[0] -= (b[0] * fwd_dw).sum(-1) + 0.5 * h * (b[0] * b[0]).sum(-1)
        steps = [fwd_step]
        if bridge_to is not None:
            remaining = 1.0 - t
            mean = (bridge_to - x[1]) * (h / remaining)
            sd = math.sqrt(h * max(remaining - h, 0.0) / remaining)
            step = mean + sd * xi[1]
            log_w[1] -= (b[1] * step).sum(-1) - 0.5 * h * (b[1] * b[1]).sum(-1)
            steps.append(step)
        x = x + torch.stack(steps)
    if bridge_to is not None:
        x[1] = bridge_to                                                   # exact (rounding only)
    return x, log_w, good


def follmer_sample(log_prob: LogProb, n: int, dim: int, *, n_steps: int = 50, n_mc: int = 32,
                   generator: torch.Generator | int | None = None, dtype: torch.dtype = torch.float64, device=None,
                   antithetic: bool = True, defensive: bool = False) -> FollmerResult:
    """Draws of π ∝ exp(log_prob) by the Schrödinger–Föllmer SDE (see the module docstring).

    Parameters
    ----------
    log_prob : callable
        ``x [M, n, dim] → [M, n]``: the log density (up to a constant) of row r's target at M points;
        a function of the last axis alone when all rows share one target.
    n : int
        Rows (chains, or chains × subjects).
    dim : int
        Dimension d.
    n_steps : int
        Euler–Maruyama steps on [0, 1].
    n_mc : int
        Monte Carlo draws of Z per drift evaluation (antithetic pairs when ``antithetic``).
    generator : torch.Generator, int or None
        The random numbers (an int seeds a new generator on ``device``).
    dtype, device
        Of the draws.
    antithetic : bool
        Antithetic pairs of Monte Carlo draws in the drift.
    defensive : bool
        Half the drift's draws from N(x, s²I) everywhere (:func:`follmer_drift`): for multimodal
        targets.

    Returns
    -------
    FollmerResult
        End points and their Girsanov log weights.

    Examples
    --------
    Mode weights of a two-component mixture (0.3 at −2, 0.7 at +2):

    >>> import math, torch
    >>> def log_prob(x):
    ...     a = math.log(0.3) - 0.5 * ((x + 2) / 0.5) ** 2
    ...     b = math.log(0.7) - 0.5 * ((x - 2) / 0.5) ** 2
    ...     return torch.logaddexp(a, b).sum(-1)
    >>> out = follmer_sample(log_prob, 2000, 1, n_steps=25, n_mc=32, generator=1, defensive=True)
    >>> round(float((out.samples[:, 0] > 0).double().mean()), 1)
    0.7
    """
    n = _check_int("n", n, 1)
    dim = _check_int("dim", dim, 1)
    n_steps = _check_int("n_steps", n_steps, 1)
    n_mc = _check_int("n_mc", n_mc, 1)
    device = torch.device("cpu") if device is None else torch.device(device)
    gen = _generator(generator, device)
    with torch.no_grad():
        x, log_w, good = _simulate(log_prob, n, dim, n_steps=n_steps, n_mc=n_mc, gen=gen, dtype=dtype, device=device,
                                   antithetic=antithetic, defensive=defensive)
        log_f_end, _ = _log_f_and_grad(log_prob, x)
    log_weight = torch.where(good[0], log_w[0] + log_f_end[0], torch.full_like(log_w[0], -math.inf))
    return FollmerResult(x[0], log_weight, n_steps, n_mc, int((~good[0]).sum()))


# ------------------------------------------------------------------------------- η posteriors of a model
_REPEATS: dict = {}


def _repeated(batch, times: int):
    """``batch.repeat(times)``, cached for the last few batches (SAEM builds a new target every iteration)."""
    key = (id(batch), times)
    hit = _REPEATS.get(key)
    if hit is not None and hit[0]() is batch:
        return hit[1]
    rep = batch.repeat(times)
    if len(_REPEATS) >= 8:
        _REPEATS.pop(next(iter(_REPEATS)))
    _REPEATS[key] = (weakref.ref(batch), rep)
    return rep


def _whitened(log_joint: Callable, chol: torch.Tensor, batch) -> LogProb:
    """log π_x(x) = log_joint(L x) + log|L| on rows of ``batch``, for x ``[M, B, K]``."""
    logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        m, b, k = x.shape
        eta = (chol @ x[..., None])[..., 0]
        return log_joint(eta.reshape(m * b, k), _repeated(batch, m)).reshape(m, b) + logdet
    return log_prob


def follmer_move(target, state, generator: torch.Generator, *, n_steps: int = FOLLMER_STEPS,
                 n_mc: int = FOLLMER_DRAWS) -> torch.Tensor:
    """One Metropolis-corrected Föllmer move of every row of an MCMC ``state`` (the ``"follmer"`` kernel).

    ``target`` is a :class:`~pmxgen.estimation.mcmc.ConditionalTarget`, ``state`` a
    :class:`~pmxgen.estimation.mcmc.KernelState`; the current η's path is refreshed by a Brownian
    bridge, a new Föllmer path is proposed, and it is accepted with probability
    ``min(1, w_new / w_old)`` (module docstring). Returns the acceptance flags ``[R]``.

    Examples
    --------
    >>> import pmxgen, torch
    >>> from pmxgen.estimation.mcmc import ConditionalTarget, KernelState
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> state = KernelState(eta=torch.zeros(12, 2, dtype=torch.float64))
    >>> target = ConditionalTarget(model, values, data.batch)
    >>> state.log_density = target.log_density(state.eta)
    >>> ok = follmer_move(target, state, torch.Generator().manual_seed(0))
    >>> ok.shape, state.acceptance()["follmer"] > 0.5
    (torch.Size([12]), True)
    """
    from .mcmc import _accept
    chol = target.chol
    rows, k = state.eta.shape
    if state.log_density is None:
        state.log_density = target.log_density(state.eta).detach()
    log_prob = _whitened(lambda eta, rep: _conditional(target, eta, rep), chol, target.batch)
    current = torch.linalg.solve_triangular(chol.expand(rows, k, k), state.eta.detach()[..., None],
                                            upper=False)[..., 0]
    with torch.no_grad():
        x, log_w, good = _simulate(log_prob, rows, k, n_steps=n_steps, n_mc=n_mc, gen=generator,
                                   dtype=state.eta.dtype, device=state.eta.device, antithetic=True, bridge_to=current)
        log_f_end, _ = _log_f_and_grad(log_prob, x)
    log_w = log_w + log_f_end
    new_w = torch.where(good[0], log_w[0], torch.full_like(log_w[0], -math.inf))
    old_w = log_w[1]
    proposal = (chol @ x[0][..., None])[..., 0]
    with torch.no_grad():
        lp_new = target.log_density(proposal)
    # A current path without a finite weight (drift lost on the bridge) accepts any finite proposal.
    ratio = torch.where(torch.isfinite(old_w), new_w - old_w, torch.where(torch.isfinite(new_w),
                        torch.zeros_like(new_w), torch.full_like(new_w, -math.inf)))
    ok = _accept(state, "follmer", proposal, lp_new, ratio, generator, adapt=False)
    return ok


def _conditional(target, eta: torch.Tensor, rep) -> torch.Tensor:
    """The target's own log density (``log p(y|η) + log p(η)``, −inf where it cannot be evaluated) on the
    repeated rows ``rep``: a shallow copy of ``target`` whose batch is ``rep``."""
    copy_ = _copy.copy(target)
    copy_.batch = rep
    return copy_.log_density(eta)


def follmer_importance_sampling(model, values, batch, *, n_samples: int = 200, n_steps: int = 20, n_mc: int = 16,
                                seed: int = 0, chunk_size: int | None = None):
    """Importance-sampling log p(y_i) of every subject with Föllmer paths as the proposal.

    Each subject's Girsanov weights ``w = p(y_i | L X_K) · (reference / path density)`` have mean
    p(y_i) exactly (module docstring), whatever the quality of the drift; a good drift makes them
    nearly constant. Returns an :class:`~pmxgen.estimation.importance.ImportanceSamplingResult`
    (−2LL, its Monte Carlo SE, per-subject log p(y_i) and ESS), like the t-proposal estimate.

    Parameters
    ----------
    model, values, batch
        Population model, population values and subjects.
    n_samples : int
        Paths per subject.
    n_steps, n_mc : int
        Euler–Maruyama steps and Monte Carlo draws of the drift.
    seed : int
    chunk_size : int, optional
        Paths per subject simulated together (default all); bounds memory, and the random
        numbers are drawn chunk by chunk, so another chunk size gives other (equally valid) draws.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> result = follmer_importance_sampling(model, values, data.batch, n_samples=20, n_steps=5, n_mc=4)
    >>> tuple(result.log_marginal.shape), result.n_samples
    ((12,), 20)
    """
    from .importance import summarize_log_weights
    n_samples = _check_int("n_samples", n_samples, 2)
    n_steps = _check_int("n_steps", n_steps, 1)
    n_mc = _check_int("n_mc", n_mc, 1)
    chunk = n_samples if chunk_size is None else _check_int("chunk_size", chunk_size, 1)
    n = batch.n_subjects
    k = len(model.eta_names(batch))
    if k == 0:
        raise EstimationError("Föllmer importance sampling needs random effects (the model has none)")
    omega = model.omega_matrix(values, batch).detach()
    chol = torch.linalg.cholesky(omega)
    gen = torch.Generator(device=batch.device)
    gen.manual_seed(int(seed))

    def log_joint(eta, rep):
        ll = model.log_likelihood(eta, values, rep)
        return torch.where(torch.isfinite(ll), ll, torch.full_like(ll, -math.inf)) + model.log_prior(eta, values, rep)

    log_w = []
    for start in range(0, n_samples, chunk):
        m = min(chunk, n_samples - start)
        rows = _repeated(batch, m)
        chol_rows = chol if chol.dim() == 2 else chol.repeat(m, 1, 1)
        out = follmer_sample(_whitened(log_joint, chol_rows, rows), m * n, k, n_steps=n_steps, n_mc=n_mc,
                             generator=gen, dtype=batch.dtype, device=batch.device)
        log_w.append(out.log_weight.reshape(m, n))
    return summarize_log_weights(torch.cat(log_w))
