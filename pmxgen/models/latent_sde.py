"""Latent neural-SDE population models and their discrete-time special case, the DLGM.

Each subject i has a latent path ``z_i(t) ∈ R^d`` that follows, a priori, the Itô SDE

    dz = f_θ(z, x_i, u_i(t)) dt + g(t, z) dW,     z(t0) ~ N(m0, diag(s0²))

with ``f_θ = mechanistic(z; θ) + NN_θ(z, x_i)`` (x_i: standardised baseline covariates; the
network term starts at 0, so the mechanistic part dominates at first) and a diagonal diffusion
``g`` (constant ``G1..Gd`` or ``G_k·2·sigmoid(NN(z))_k``). Observations are
``y_ij ~ residual error(h(z_i(t_ij)))`` with ``h(z) = OBS_SCALE · link(z[observe])`` and pmxgen's
residual error models (additive, proportional, combined, ...), at each subject's own times only
(padding never enters a sum).

**Doses.** Every dose enters the *dose coordinate* (``dose_coordinate``, default 0, a latent
"depot"): a bolus of amount A makes the jump ``z[dose] += A / dose_scale`` at its time (an
observation at the same time sees it when the dose record comes first); an infusion adds its
rate ``R / dose_scale`` to the drift of that coordinate while it runs. The mechanistic part
``"1cmt"`` (``d = 2``) makes this a one-compartment model with first-order absorption:
``dz0 = −KA z0 dt``, ``dz1 = (KA z0 − KE z1) dt`` (plus network and noise), observed through
``z1``; ``"ou"`` is Ornstein–Uhlenbeck decay ``dz_k = −A_k z_k dt``.

**Posterior.** ``q`` is the SDE with drift ``f_θ + u_φ(t, z, c_i)``, where the context ``c_i`` and
``q(z_i(t0))`` come from a :class:`~pmxgen.models.latent_sde_networks.PathEncoder` of the
subject's record (times, DV, doses, covariates). By Girsanov's theorem
``KL(q‖p) = KL(q(z0)‖p(z0)) + E ∫ ½|u_φ/g|² dt``; the integral is carried as an extra state of
the SDE (as in torchsde's latent-SDE example), so

    ELBO_i = E_q[Σ_j log p(y_ij | z_i(t_ij))] − KL(q(z0)‖p(z0)) − E_q ∫ ½|u_φ/g|² dt ≤ log p(y_i).

Paths are reparameterised (``torchsde.sdeint`` with a seeded ``BrownianInterval``), all subjects
and draws in one batch, on the model's device, float64.

The **DLGM** (:class:`DeepLatentGaussianModel`) is the same model solved by Euler–Maruyama steps
from knot to knot (observation and dose times): ``z_{k+1} = z_k + f Δ_k + g √Δ_k ε_k``; its KL
between Gaussian transitions of equal covariance is exactly ``½|u/g|² Δ_k`` per step, the same
extra state.

This is not a :class:`~pmxgen.models.PopulationModel`: a subject's latent is a path, not a
finite η, so η-based estimators cannot fit it; :func:`~pmxgen.estimation.latent_sde_fit.fit_latent_sde`
does (amortized variational inference). It has the contract's ``networks`` (weights that are
population parameters) and a :class:`~pmxgen.models.ParameterSet` of its named parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..errors import EstimationError, IntegrationError, ModelError
from .latent_sde_networks import DriftNetwork, PathEncoder, PosteriorDrift, mlp
from .latent_sde_solve import Design, Schedule, Solution, brownian, build_schedule, design_from_batch, march, read_states
from .parameter_set import ParameterSet, PopulationValues, Theta
from .residual_error import ResidualError, censored_neg2ll, normal_neg2ll, residual_error

__all__ = ["LatentSDEModel", "DeepLatentGaussianModel", "LatentPaths", "ELBOTerms", "MECHANISMS"]

#: Mechanistic parts of the prior drift.
MECHANISMS = (None, "ou", "1cmt")
_LINKS = {"identity": lambda v: v, "exp": torch.exp, "softplus": torch.nn.functional.softplus}


@dataclass(frozen=True)
class ELBOTerms:
    """Per-subject ELBO ``[N]`` (mean over draws), its parts, and the per-draw values ``[S, N]``."""

    elbo: torch.Tensor
    log_likelihood: torch.Tensor
    kl_initial: torch.Tensor
    kl_path: torch.Tensor
    per_draw: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """Σ_i ELBO_i."""
        return self.elbo.sum()

    @property
    def se(self) -> float:
        """Monte Carlo SE of :attr:`total` (draws independent across subjects)."""
        s = self.per_draw.shape[0]
        if s < 2:
            return float("nan")
        return float(torch.sqrt((self.per_draw.var(0, unbiased=True) / s).sum()))


@dataclass(frozen=True)
class LatentPaths:
    """Sampled paths: ``time`` ``[N, T]``, ``mask`` ``[N, T]``, latent ``z`` ``[S, N, T, d]`` and
    predictions ``h(z)`` ``[S, N, T]`` (0 where ``mask`` is False)."""

    time: torch.Tensor
    mask: torch.Tensor
    z: torch.Tensor
    prediction: torch.Tensor
    ids: tuple = ()
    label: str = ""


def _as_batch(data):
    batch = getattr(data, "batch", data)
    ids = tuple(getattr(data, "ids", [f"#{i + 1}" for i in range(batch.n_subjects)]))
    return batch, ids


class _PathSDE(nn.Module):
    """The augmented SDE ``[z, ∫½|u/g|²]`` given to torchsde (Itô, diagonal noise)."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: "LatentSDEModel", values: PopulationValues, inputs: dict, context: torch.Tensor | None):
        super().__init__()
        self.nets = model.networks           # registered, so sdeint_adjoint finds the weights
        self._model, self._values, self._inputs, self._context = model, values, inputs, context

    def f(self, t, y):
        m, z = self._model, y[:, :-1]
        drift = m.prior_drift(t, z, self._values, self._inputs)
        if self._context is None:
            return torch.cat([drift, torch.zeros_like(y[:, -1:])], dim=-1)
        u = m.networks["posterior_drift"](t, z, self._context)
        g = m.diffusion(t, z, self._values)
        return torch.cat([drift + u, 0.5 * ((u / g) ** 2).sum(-1, keepdim=True)], dim=-1)

    def g(self, t, y):
        return torch.cat([self._model.diffusion(t, y[:, :-1], self._values), torch.zeros_like(y[:, -1:])], dim=-1)


class LatentSDEModel:
    """A population model whose subjects follow latent neural SDEs (see the module docstring).

    Parameters
    ----------
    latent_dim : int
        Dimension d of z.
    n_covariates : int
        Baseline covariates the networks read (``batch.baseline.shape[1]``).
    error : str, dict or ResidualError
        Residual error model (σ² are estimated unless fixed).
    mechanism : {None, "ou", "1cmt"}
        Mechanistic part of the prior drift; its rates (``A1..Ad`` or ``KA``, ``KE``) are θ.
    rates : dict, optional
        Initial rates of the mechanism; ``fix_rates`` keeps them fixed.
    network : bool
        Add the network term ``NN_θ(z, x)`` to the prior drift.
    diffusion : float or sequence
        Initial diffusion SDs ``G1..Gd``; ``fix_diffusion`` keeps them fixed;
        ``state_diffusion=True`` multiplies them by ``2·sigmoid(NN(z))`` (starts at 1).
    z0_mean, z0_sd : float or sequence
        Prior of ``z(t0)`` (θ ``M0_k``, ``S0_k``, fixed unless ``fit_z0_prior``).
    observe : int
        Observed coordinate (default: 1 for ``"1cmt"``, else 0); ``link`` ``identity``, ``exp``
        or ``softplus``; ``obs_scale`` the factor ``OBS_SCALE`` (fixed unless ``fit_obs_scale``).
    dose_coordinate, dose_scale : int, float
        Where doses enter, and the amount that makes a jump of 1.
    context_dim, hidden, n_layers, activation
        Sizes of the networks (``hidden`` of the posterior drift; the prior network and the
        encoder use ``prior_hidden`` and ``encoder_hidden``).
    time_scale : float
        τ of the posterior drift's time features ``sin(t/τ), cos(t/τ)``.
    t0 : float
        Start of every path.
    solver : {"continuous", "discrete"}
        ``torchsde.sdeint`` (``method``, ``dt``) or Euler–Maruyama from knot to knot
        (``max_step`` subdivides; the DLGM).
    seed : int
        Initial weights.
    device, dtype
        Of the weights and parameters.

    Examples
    --------
    >>> import torch, pandas as pd, pmxgen
    >>> frame = pd.DataFrame({"ID": [1, 1, 1, 2, 2], "TIME": [0.5, 1.0, 2.0, 0.5, 1.5],
    ...                       "DV": [0.3, 0.1, -0.2, 0.5, 0.2], "AMT": 0, "EVID": 0, "MDV": 0})
    >>> data = pmxgen.read_nonmem(frame, require_doses=False)
    >>> model = LatentSDEModel(1, 0, mechanism="ou", network=False, hidden=8, context_dim=2, dt=0.1)
    >>> terms = model.elbo(data, n_samples=4, seed=0)
    >>> tuple(terms.elbo.shape), bool(torch.isfinite(terms.total))
    ((2,), True)
    """

    name = "latent SDE"
    recipe = None

    def __init__(self, latent_dim: int, n_covariates: int = 0, *, error="additive", mechanism: str | None = None,
                 rates: dict | None = None, fix_rates: bool = False, network: bool = True,
                 diffusion=0.5, fix_diffusion: bool = False, state_diffusion: bool = False,
                 z0_mean=0.0, z0_sd=1.0, fit_z0_prior: bool = False, observe: int | None = None,
                 link: str = "identity", obs_scale: float = 1.0, fit_obs_scale: bool = False,
                 dose_coordinate: int = 0, dose_scale: float = 1.0, context_dim: int = 8, hidden: int = 64,
                 n_layers: int = 2, prior_hidden: int = 32, encoder_hidden: int = 32, activation: str = "tanh",
                 time_scale: float = 1.0, t0: float = 0.0, solver: str = "continuous", method: str = "euler",
                 dt: float | None = None, max_step: float | None = None, seed: int = 0,
                 device=None, dtype: torch.dtype = torch.float64):
        for what, v, low in (("latent_dim", latent_dim, 1), ("n_covariates", n_covariates, 0),
                             ("context_dim", context_dim, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ModelError(f"LatentSDEModel: {what} must be an integer >= {low} (found {v!r})")
        if mechanism not in MECHANISMS:
            raise ModelError(f"LatentSDEModel: unknown mechanism {mechanism!r}; choose one of {MECHANISMS}")
        if mechanism == "1cmt" and latent_dim != 2:
            raise ModelError(f"the '1cmt' mechanism needs latent_dim=2 (depot, central); found {latent_dim}")
        if link not in _LINKS:
            raise ModelError(f"LatentSDEModel: unknown link {link!r}; choose one of {', '.join(_LINKS)}")
        if solver not in ("continuous", "discrete"):
            raise ModelError(f"LatentSDEModel: solver must be 'continuous' or 'discrete' (found {solver!r})")
        if method not in ("euler", "milstein", "srk"):
            raise ModelError(f"LatentSDEModel: method must be 'euler', 'milstein' or 'srk' (found {method!r})")
        observe = (1 if mechanism == "1cmt" else 0) if observe is None else int(observe)
        for what, v in (("observe", observe), ("dose_coordinate", dose_coordinate)):
            if not 0 <= v < latent_dim:
                raise ModelError(f"LatentSDEModel: {what} = {v} is not a coordinate of z (0..{latent_dim - 1})")
        d = latent_dim
        self.latent_dim, self.n_covariates, self.context_dim = d, n_covariates, context_dim
        self.error: ResidualError = residual_error(error)
        self.mechanism, self.link, self.observe = mechanism, link, observe
        self.dose_coordinate, self.dose_scale = int(dose_coordinate), float(dose_scale)
        self.state_diffusion = bool(state_diffusion)
        self.t0, self.solver, self.method, self.dt, self.max_step = float(t0), solver, method, dt, max_step
        self.dtype = dtype

        def vec(v, what):
            out = [float(x) for x in (v if isinstance(v, (list, tuple, np.ndarray)) else [v] * d)]
            if len(out) != d:
                raise ModelError(f"LatentSDEModel: {what} needs {d} values (found {len(out)})")
            return out
        thetas = []
        default_rates = {"ou": {f"A{k + 1}": 1.0 for k in range(d)}, "1cmt": {"KA": 1.0, "KE": 0.1}}.get(mechanism, {})
        given = dict(rates or {})
        unknown = sorted(set(given) - set(default_rates))
        if unknown:
            raise ModelError(f"mechanism {mechanism!r} has rates {', '.join(default_rates) or 'none'}; found {unknown}")
        for name, v in default_rates.items():
            thetas.append(Theta(name, float(given.get(name, v)), lower=0.0, fixed=fix_rates))
        thetas += [Theta(f"G{k + 1}", g, lower=0.0, fixed=fix_diffusion) for k, g in enumerate(vec(diffusion, "diffusion"))]
        thetas += [Theta(f"M0_{k + 1}", m, fixed=not fit_z0_prior) for k, m in enumerate(vec(z0_mean, "z0_mean"))]
        thetas += [Theta(f"S0_{k + 1}", s, lower=0.0, fixed=not fit_z0_prior) for k, s in enumerate(vec(z0_sd, "z0_sd"))]
        thetas.append(Theta("OBS_SCALE", float(obs_scale), lower=0.0, fixed=not fit_obs_scale))
        self.parameter_set = ParameterSet(thetas, [], self.error.sigmas())
        self.unconstrained = nn.Parameter(self.parameter_set.to_unconstrained(
            self.parameter_set.initial_natural(dtype=dtype, device=device)).detach().clone())
        state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
        try:
            nets = {"posterior_drift": PosteriorDrift(d, context_dim, hidden=hidden, n_layers=n_layers,
                                                      activation=activation, time_scale=time_scale, dtype=dtype,
                                                      device=device),
                    "encoder": PathEncoder(d, context_dim, n_covariates, hidden=encoder_hidden, activation=activation,
                                           seed=seed, dtype=dtype, device=device)}
            if network:
                nets["prior_drift"] = DriftNetwork(d, n_covariates, hidden=prior_hidden, activation=activation,
                                                   dtype=dtype, device=device)
            if state_diffusion:
                nets["diffusion"] = mlp([d, prior_hidden, d], activation, dtype=dtype, device=device)
        finally:
            torch.random.set_rng_state(state)
        self._networks = nn.ModuleDict(nets)

    # ------------------------------------------------------------------ parameters
    @property
    def networks(self) -> nn.ModuleDict:
        """Network weights that are population parameters (prior drift, posterior drift, encoder, ...)."""
        return self._networks

    @networks.setter
    def networks(self, modules) -> None:
        self._networks = nn.ModuleDict(dict(modules))

    def parameters(self) -> list[torch.Tensor]:
        """Everything the fit optimises: the unconstrained named parameters and the network weights."""
        return [self.unconstrained] + [p for p in self.networks.parameters() if p.requires_grad]

    def values(self) -> PopulationValues:
        """θ and σ at the current (unconstrained) parameters, differentiable."""
        ps = self.parameter_set
        return ps.unpack(ps.from_unconstrained(self.unconstrained))

    def estimates(self) -> dict[str, float]:
        """All named parameters at their current values."""
        return self.parameter_set.full_natural(self.parameter_set.from_unconstrained(self.unconstrained.detach()))

    def set_values(self, natural: dict) -> None:
        """Set named parameters (natural scale), e.g. ``{"G1": 0.3, "SIGMA(ADD)": 0.01}``."""
        ps = self.parameter_set
        phi = ps.from_unconstrained(self.unconstrained.detach()).clone()
        unknown = sorted(set(natural) - set(ps.all_names))
        if unknown:
            raise ModelError(f"unknown parameter(s) {unknown}; the model has {', '.join(ps.all_names)}")
        fixed = [k for k in natural if k not in ps.names]
        if fixed:
            raise ModelError(f"parameter(s) {fixed} are fixed; build the model with other initial values instead")
        for k, v in natural.items():
            phi[ps.names.index(k)] = float(v)
        with torch.no_grad():
            self.unconstrained.copy_(ps.to_unconstrained(phi))

    def load_fit(self, fit) -> "LatentSDEModel":
        """Set the weights and named parameters from a fit of a model built the same way (in place).

        ``fit`` is a :class:`~pmxgen.estimation.FitResult` of :func:`fit_latent_sde` (also one read
        back with ``FitResult.from_json``: its weights come from safetensors, checked by SHA-256).
        """
        from .weights import load_weights_state
        if not fit.network_weights:
            raise ModelError("the fit has no network weights; it is not a latent-SDE fit")
        load_weights_state(self, fit.network_weights)
        ps = self.parameter_set
        if tuple(fit.parameter_names) != tuple(ps.all_names):
            raise ModelError(f"the fit's parameters {list(fit.parameter_names)} are not this model's "
                             f"{list(ps.all_names)}; build the model with the same options as the fitted one")
        self.set_values({name: fit.estimates[name] for name in ps.names})
        return self

    def to(self, device) -> "LatentSDEModel":
        """Move the weights and parameters to ``device`` (in place); returns the model."""
        self.networks.to(device)
        self.unconstrained.data = self.unconstrained.data.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.unconstrained.device

    # ------------------------------------------------------------------ dynamics
    def _vector(self, values: PopulationValues, prefix: str) -> torch.Tensor:
        return torch.stack([values.theta[f"{prefix}{k + 1}"] for k in range(self.latent_dim)])

    def prior_drift(self, t, z: torch.Tensor, values: PopulationValues, inputs: dict) -> torch.Tensor:
        """``f_θ(z, x, u(t))`` ``[B, d]``: mechanism + network + infusion input."""
        th = values.theta
        if self.mechanism == "ou":
            drift = -self._vector(values, "A") * z
        elif self.mechanism == "1cmt":
            ka, ke = th["KA"], th["KE"]
            drift = torch.stack([-ka * z[:, 0], ka * z[:, 0] - ke * z[:, 1]], dim=-1)
        else:
            drift = torch.zeros_like(z)
        if "prior_drift" in self.networks:
            drift = drift + self.networks["prior_drift"](z, inputs["covariates"])
        if inputs.get("infusion") is not None:
            start, end, rate = inputs["infusion"]
            on = (start <= t) & (t < end)
            r = torch.where(on, rate, torch.zeros_like(rate)).sum(-1) / self.dose_scale
            drift = drift.index_add(1, torch.tensor([self.dose_coordinate], device=z.device), r[:, None])
        return drift

    def diffusion(self, t, z: torch.Tensor, values: PopulationValues) -> torch.Tensor:
        """Diagonal ``g(t, z)`` ``[B, d]``."""
        g = self._vector(values, "G").expand_as(z)
        if self.state_diffusion:
            g = g * 2.0 * torch.sigmoid(self.networks["diffusion"](z))
        return g

    def observe_prediction(self, z: torch.Tensor, values: PopulationValues) -> torch.Tensor:
        """``h(z) = OBS_SCALE · link(z[observe])`` for ``z [..., d]``."""
        return values.theta["OBS_SCALE"] * _LINKS[self.link](z[..., self.observe])

    def z0_prior(self, values: PopulationValues) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and SD ``[d]`` of ``z(t0)``."""
        return self._vector(values, "M0_"), self._vector(values, "S0_")

    def observation_log_density(self, f: torch.Tensor, y: torch.Tensor, blq: torch.Tensor, lloq: torch.Tensor,
                                values: PopulationValues) -> torch.Tensor:
        """``log p(y | f)`` elementwise (density of y on its own scale; BLQ: M3 censoring)."""
        err = self.error
        var = err.variance(f, values.sigma)
        mean = err.transform(f)
        y_safe = torch.where(blq | (y <= 0) if err.log_scale else blq, torch.ones_like(y), y)
        ll = -0.5 * normal_neg2ll(err.transform(y_safe), mean, var)
        if err.log_scale:
            ll = ll - torch.log(y_safe)
        lloq_safe = torch.where(blq, lloq, torch.ones_like(lloq)) if err.log_scale else lloq
        return torch.where(blq, -0.5 * censored_neg2ll(err.transform(lloq_safe), mean, var), ll)

    # ------------------------------------------------------------------ solving
    def _inputs(self, design: Design, repeats: int) -> dict:
        cov = design.covariates
        enc = self.networks["encoder"]
        x = (cov - enc.covariate_shift) / enc.covariate_scale if cov.shape[1] else cov
        inputs = {"covariates": x.repeat_interleave(repeats, 0)}
        infusing = design.dose_mask & (design.dose_rate > 0)
        if bool(infusing.any()):
            rate = torch.where(infusing, design.dose_rate, torch.zeros_like(design.dose_rate))
            dur = torch.where(infusing, design.dose_amt / torch.where(infusing, design.dose_rate, 1.0), 0.0)
            inputs["infusion"] = tuple(v.repeat_interleave(repeats, 0)
                                       for v in (design.dose_time, design.dose_time + dur, rate))
        return inputs

    def _solve(self, design: Design, schedule: Schedule, y0: torch.Tensor, repeats: int, context, values, *,
               seed: int, on_break=None, before_jump=None, adjoint: bool = False, ids=()) -> Solution:
        """Integrate rows ``[N·repeats, d+1]`` (subject-major) through the schedule."""
        sde = _PathSDE(self, values, self._inputs(design, repeats), context)
        jump = schedule.jump.repeat_interleave(repeats, 0) / self.dose_scale
        d = self.latent_dim

        def apply(k, y):
            if before_jump is not None:
                y = before_jump(k, y)
            if bool((schedule.jump[:, k] != 0).any()):
                add = torch.zeros_like(y)
                add[:, self.dose_coordinate] = jump[:, k]
                y = y + add
            if on_break is not None:
                y = on_break(k, y)
            return y
        bm = brownian(schedule.t0, schedule.horizon, y0.shape[0], d + 1, seed=seed, dtype=y0.dtype,
                      device=y0.device, dt=self.dt, method=self.method)
        params = None
        if adjoint:
            # everything the drift and diffusion read that needs a gradient: the weights (the encoder's
            # too: its context enters the drift, and the adjoint's vector-Jacobian products reach its
            # weights through it) and θ/σ
            params = tuple(p for p in self.networks.parameters() if p.requires_grad) + (self.unconstrained,)
        solution = march(sde, y0, schedule, apply, bm=bm, solver=self.solver, method=self.method, dt=self.dt,
                         max_step=self.max_step, adjoint=adjoint, adjoint_params=params)
        last = solution.final
        if not bool(torch.isfinite(last).all()):
            bad = (~torch.isfinite(last)).any(-1).reshape(-1, repeats).any(-1)
            i = int(torch.nonzero(bad)[0])
            who = ids[i] if i < len(ids) else f"#{i + 1}"
            raise IntegrationError(f"the latent SDE path of subject {who} is not finite (the drift or diffusion "
                                   f"returned NaN/inf or the path diverged); check the networks' outputs, lower "
                                   f"the learning rate or dt")
        return solution

    @staticmethod
    def _gather(design: Design, schedule: Schedule, solution: Solution, repeats: int) -> torch.Tensor:
        """States at the observation slots ``[N·repeats, J, D]``."""
        return read_states(solution, schedule, design.obs_time, design.obs_mask, schedule.obs_after_jump, repeats)

    def _encode(self, batch, ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_obs = batch.obs.mask.sum(1)
        if bool((n_obs == 0).any()):
            empty = [ids[i] for i in torch.nonzero(n_obs == 0).flatten().tolist()]
            raise EstimationError(f"subject(s) {empty[:10]} have no observations: the encoder of the latent SDE has "
                                  f"no record to read for them; remove them (Dataset.subset) or add observations")
        mean, log_sd, context = self.networks["encoder"](batch)
        for what, v in (("mean", mean), ("log-SD", log_sd), ("context", context)):
            if not bool(torch.isfinite(v).all()):
                raise EstimationError(f"the encoder returned a non-finite {what} of q(z(t0)); check its weights "
                                      f"and the data (DV, TIME, covariates must be finite)")
        return mean, log_sd, context

    def elbo(self, data, *, n_samples: int = 8, seed: int = 0, horizon: float | None = None,
             adjoint: bool = False) -> ELBOTerms:
        """The ELBO of every subject with ``n_samples`` reparameterised posterior paths each.

        Parameters
        ----------
        data : Dataset or SubjectBatch
        n_samples : int
            Paths per subject (``[N·S]`` rows solved together).
        seed : int
            Draws of ``z(t0)`` and the Brownian paths (same seed, same value).
        horizon : float, optional
            End of the paths (default: the last record); the Girsanov KL is integrated up to it.
        adjoint : bool
            Gradients by ``torchsde.sdeint_adjoint`` (stochastic adjoint) instead of backpropagation
            through the solver (continuous solver only).
        """
        batch, ids = _as_batch(data)
        if adjoint and self.solver == "discrete":
            raise ModelError("adjoint=True needs the continuous solver (the DLGM backpropagates through its steps)")
        values = self.values()
        design = design_from_batch(batch, ids)
        schedule = build_schedule(design, t0=self.t0, horizon=horizon)
        mean, log_sd, context = self._encode(batch, ids)
        m0, s0 = self.z0_prior(values)
        q_mean, q_sd = m0 + s0 * mean, s0 * torch.exp(log_sd)
        kl0 = (torch.log(s0 / q_sd) + (q_sd ** 2 + (q_mean - m0) ** 2) / (2 * s0 ** 2) - 0.5).sum(-1)   # [N]
        s, n, d = int(n_samples), batch.n_subjects, self.latent_dim
        gen = torch.Generator(device=q_mean.device).manual_seed(int(seed))
        eps = torch.randn(n * s, d, generator=gen, dtype=q_mean.dtype, device=q_mean.device)
        z0 = q_mean.repeat_interleave(s, 0) + q_sd.repeat_interleave(s, 0) * eps
        y0 = torch.cat([z0, torch.zeros_like(z0[:, :1])], dim=-1)
        solution = self._solve(design, schedule, y0, s, context.repeat_interleave(s, 0), values, seed=seed,
                               adjoint=adjoint, ids=ids)
        z_obs = self._gather(design, schedule, solution, s)[..., :d]
        obs = batch.obs
        f = self.observe_prediction(z_obs, values)
        rep = (lambda v: v.repeat_interleave(s, 0))
        ll = self.observation_log_density(f, rep(obs.dv), rep(obs.blq), rep(obs.lloq), values)
        ll = torch.where(rep(obs.mask), ll, torch.zeros_like(ll)).sum(-1).reshape(n, s)
        kl_path = solution.final[:, -1].reshape(n, s)
        per_draw = (ll - kl_path - kl0[:, None]).T
        return ELBOTerms(elbo=per_draw.mean(0), log_likelihood=ll.mean(1), kl_initial=kl0, kl_path=kl_path.mean(1),
                         per_draw=per_draw)

    # ------------------------------------------------------------------ sampling
    def _grid_design(self, design: Design, times) -> Design:
        t = torch.as_tensor(np.asarray(times, dtype=np.float64), dtype=design.obs_time.dtype,
                            device=design.obs_time.device)
        if t.dim() != 1 or t.numel() == 0:
            raise ModelError("times must be a non-empty 1-d sequence of output times")
        n = design.n_subjects
        return replace(design, obs_time=t.expand(n, -1), obs_mask=torch.ones(n, t.numel(), dtype=torch.bool,
                                                                           device=t.device),
                       obs_order=torch.full((n, t.numel()), math.inf, dtype=t.dtype, device=t.device))

    def _paths(self, design: Design, n_paths: int, seed: int, posterior, ids, extra_times=(), label: str = ""
               ) -> LatentPaths:
        values = self.values()
        schedule = build_schedule(design, t0=self.t0, extra_times=extra_times)
        n, s, d = design.n_subjects, int(n_paths), self.latent_dim
        m0, s0 = self.z0_prior(values)
        if posterior is None:
            mean, sd, context = m0.expand(n, d), s0.expand(n, d), None
        else:
            mean, log_sd, context = posterior
            mean, sd = m0 + s0 * mean, s0 * torch.exp(log_sd)
            context = context.repeat_interleave(s, 0)
        gen = torch.Generator(device=m0.device).manual_seed(int(seed))
        eps = torch.randn(n * s, d, generator=gen, dtype=m0.dtype, device=m0.device)
        z0 = mean.repeat_interleave(s, 0) + sd.repeat_interleave(s, 0) * eps
        y0 = torch.cat([z0, torch.zeros_like(z0[:, :1])], dim=-1)
        solution = self._solve(design, schedule, y0, s, context, values, seed=seed, ids=ids)
        z = self._gather(design, schedule, solution, s)[..., :d]                       # [N·S, J, d]
        z = z.reshape(n, s, *z.shape[1:]).transpose(0, 1)
        f = self.observe_prediction(z, values)
        f = torch.where(design.obs_mask, f, torch.zeros_like(f))
        return LatentPaths(time=design.obs_time, mask=design.obs_mask, z=z, prediction=f, ids=tuple(ids), label=label)

    @torch.no_grad()
    def sample_prior(self, data, *, times=None, n_paths: int = 100, seed: int = 0) -> LatentPaths:
        """Paths from the prior SDE with each subject's own doses and covariates, at its observation
        times or at ``times`` (a common grid).

        Examples
        --------
        >>> import pandas as pd, pmxgen
        >>> frame = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 0.0], "DV": [0, 0], "AMT": [100, 0],
        ...                       "EVID": [1, 0], "MDV": [1, 0]})
        >>> data = pmxgen.read_nonmem(frame)
        >>> model = LatentSDEModel(2, 0, mechanism="1cmt", network=False, diffusion=0.0, fix_diffusion=True,
        ...                        z0_sd=1e-12, dose_scale=100.0, rates={"KA": 1.0, "KE": 0.5}, dt=0.01)
        >>> p = model.sample_prior(data, times=[0.0, 1.0, 2.0], n_paths=1)
        >>> import math
        >>> exact = [(math.exp(-0.5 * t) - math.exp(-t)) / 0.5 for t in (0.0, 1.0, 2.0)]   # Bateman function
        >>> max(abs(float(v) - e) for v, e in zip(p.prediction[0, 0], exact)) < 0.005     # Euler error, dt = 0.01
        True
        """
        batch, ids = _as_batch(data)
        design = design_from_batch(batch, ids)
        if times is not None:
            design = self._grid_design(design, times)
        return self._paths(design, n_paths, seed, None, ids)

    @torch.no_grad()
    def sample_posterior(self, data, *, times=None, n_paths: int = 100, seed: int = 0) -> LatentPaths:
        """Paths from each subject's posterior (encoder context and ``q(z(t0))`` from its record)."""
        batch, ids = _as_batch(data)
        design = design_from_batch(batch, ids)
        if times is not None:
            design = self._grid_design(design, times)
        return self._paths(design, n_paths, seed, self._encode(batch, ids), ids)

    @torch.no_grad()
    def simulate_regimens(self, data, regimens, *, times, n_paths: int = 100, seed: int = 0,
                          posterior: bool = True, include_observed: bool = False) -> dict[str, LatentPaths]:
        """Each subject under other dosing regimens (``pmxgen.simulation`` syntax, e.g. ``"100 mg q12h x3"``).

        Every regimen is solved on the same knots (the union of all regimens' dose times) with
        the same seed, so all arms see the same ``z(t0)`` draws and the same Brownian paths
        (common random numbers): differences between arms are the effect of the doses alone.
        ``posterior=True`` uses each subject's posterior (context from its record), else the prior.
        Returns ``{label: LatentPaths}`` (label: the regimen's text; ``observed`` for the own doses).
        """
        from ..simulation.regimen import RegimenError, as_regimens, body_size
        batch, ids = _as_batch(data)
        base = design_from_batch(batch, ids)
        grid = self._grid_design(base, times)
        n, dev, dtype = base.n_subjects, base.obs_time.device, base.obs_time.dtype
        arms: list[tuple[str, Design]] = []
        if include_observed:
            arms.append(("observed", grid))
        for reg in as_regimens(regimens):
            ev = reg.events
            if any(e.steady_state for e in ev):
                raise RegimenError(f"regimen {reg.label or str(reg)!r}: steady state has no meaning for a latent SDE")
            cov = {name: batch.baseline[:, k].cpu().numpy() for k, name in enumerate(batch.covariate_names)}
            amt = torch.stack([torch.full((n,), e.amount, dtype=dtype, device=dev) if e.per is None else
                               e.amount * torch.as_tensor(body_size(e.per, cov), dtype=dtype, device=dev)
                               for e in ev], dim=1)
            dur = torch.tensor([e.duration for e in ev], dtype=dtype, device=dev).expand(n, -1)
            rate = torch.where(dur > 0, amt / torch.where(dur > 0, dur, 1.0), torch.zeros_like(amt))
            time = torch.tensor([e.time for e in ev], dtype=dtype, device=dev).expand(n, -1)
            arms.append((reg.label or str(reg), replace(
                grid, dose_time=time, dose_amt=amt, dose_rate=rate, dose_mask=torch.ones(n, len(ev), dtype=torch.bool,
                                                                                        device=dev),
                dose_order=torch.zeros(n, len(ev), dtype=dtype, device=dev))))
        extra = set()
        for _, des in arms:
            t = des.dose_time[des.dose_mask]
            r = des.dose_rate[des.dose_mask]
            a = des.dose_amt[des.dose_mask]
            extra |= set(t.cpu().tolist()) | set((t + a / torch.where(r > 0, r, 1.0))[r > 0].cpu().tolist())
        extra = tuple(sorted(v for v in extra if v > self.t0))
        post = self._encode(batch, ids) if posterior else None
        return {label: self._paths(des, n_paths, seed, post, ids, extra_times=extra, label=label)
                for label, des in arms}

    # ------------------------------------------------------------------ diagnostics
    def one_step_ahead_log_likelihood(self, data, *, n_particles: int = 1000, seed: int = 0) -> torch.Tensor:
        """``log p(y_ij | y_i,<j, doses)`` per observation ``[N, J]`` by a bootstrap particle filter
        (NaN where there is no observation); its sum over a subject's observations is the filter's
        estimate of ``log p(y_i)``. See :mod:`pmxgen.models.latent_sde_filter`."""
        from .latent_sde_filter import particle_filter
        return particle_filter(self, data, n_particles=n_particles, seed=seed).log_predictive


class DeepLatentGaussianModel(LatentSDEModel):
    """The deep latent Gaussian model: a :class:`LatentSDEModel` in discrete time.

    Euler–Maruyama transitions from knot to knot (observation and dose times, subdivided to
    ``max_step`` when given): ``z_{k+1} = z_k + f_θ(z_k)Δ_k + g √Δ_k ε_k`` a priori, with the
    posterior drift added in ``q``; same networks, encoder, residual error, fit and sampling.

    Examples
    --------
    >>> model = DeepLatentGaussianModel(1, 0, mechanism="ou", network=False, hidden=8)
    >>> model.solver
    'discrete'
    """

    name = "deep latent Gaussian model"

    def __init__(self, latent_dim: int, n_covariates: int = 0, *, max_step: float | None = None, **kwargs):
        kwargs.pop("solver", None)
        super().__init__(latent_dim, n_covariates, solver="discrete", max_step=max_step, **kwargs)
