"""General ODE structural models, batched over subjects (pmxgen's dopri5 or a torchdiffeq solver).

Each subject's events (observations, boluses, infusion starts and ends, resets,
steady-state initialisations) are merged into one time line sorted by (reset segment,
time, record order). Between consecutive events every subject's interval
``[t_e-1, t_e]`` is mapped onto ``s ∈ [0, 1]`` (``dA/ds = Δ_e · (f(t, A) + infusion)``),
so that one solver call advances all subjects at once whatever their own times:
the Python loop runs over event index, never over subjects.

Steady state (SS=1/2) is the fixed point of the dosing-cycle map (lag, dose, infusion, rest
of the interval), found by Newton's method with the map's Jacobian from autograd (exact in
one step for linear systems); a last Newton step taken with gradients on gives the
implicit-function derivative. SS=1 replaces the
amounts by the steady-state ones, SS=2 adds them (NONMEM's definitions).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torchdiffeq import odeint

from ..data.batching import SubjectBatch
from ..errors import IntegrationError, ModelError
from .base import Params, ResolvedDoses, StructuralModel, observation_compartment, resolve_doses
from .dopri5 import integrate_unit_interval

__all__ = ["ODEModel", "linear_rhs", "michaelis_menten_rhs", "indirect_response_rhs", "RHS"]

#: ``rhs(t, amounts [B, n_cmt], params {name: [B]}) -> d amounts / dt [B, n_cmt]``
RHS = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]

_OBS, _BOLUS, _INF_START, _INF_END, _RESET, _SS = range(6)


class ODEModel(StructuralModel):
    """A structural model given by a right-hand side, integrated numerically.

    Parameters
    ----------
    rhs : callable
        ``rhs(t, A, p) -> dA/dt`` for a batch: ``A`` is ``[B, n_cmt]``, ``p`` maps names to
        ``[B]`` tensors, ``t`` is a ``[B]`` tensor of times. Dosing inputs are added by the engine.
    compartments : tuple of str
        Compartment names; CMT k is ``compartments[k-1]``.
    parameter_names : tuple of str
        Parameters ``rhs`` needs.
    default_dose_cmt, default_obs_cmt : int
        CMT of doses / observations whose CMT is 0 or absent.
    scale : dict, optional
        CMT → parameter name dividing that compartment's amount for observations
        (e.g. ``{2: "V"}`` for concentrations); compartments not listed are observed as is.
    method : str
        ``"dopri5"`` (default: pmxgen's lean batched Dormand–Prince 5(4), :mod:`.dopri5`, the
        same scheme as torchdiffeq's at a fraction of its per-step cost) or any other
        torchdiffeq solver (``"dopri8"``, ``"bosh3"``, ``"rk4"``, ...).
    rtol, atol : float
        Tolerances of adaptive solvers.
    max_steps : int
        Step limit per interval of adaptive solvers; exceeded → :class:`IntegrationError` (stiffness).
    fixed_steps : int
        Steps per interval between events for fixed-step solvers (``"rk4"``, ``"euler"``, ``"midpoint"``).
    ss_rtol, ss_max_cycles : float, int
        Convergence tolerance and iteration limit of the steady-state Newton iteration on the
        dosing-cycle map (one iteration for linear systems).
    initial : callable, optional
        ``initial(p) -> [B, n_cmt]`` amounts at the start and after a reset (EVID 3/4, SS=1);
        zero by default. Use it for turnover models (e.g. response baseline KIN/KOUT).

    Examples
    --------
    >>> import torch, pandas as pd, pmxgen
    >>> from pmxgen.structural import ODEModel, michaelis_menten_rhs
    >>> ds = pmxgen.read_nonmem(pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 2.0], "AMT": [100.0, 0.0],
    ...                                       "DV": [float("nan"), 1.0]}))
    >>> mm = ODEModel(michaelis_menten_rhs, ("central",), ("VM", "KM", "V"), scale={1: "V"})
    >>> c = mm.predict({"VM": torch.tensor(10.0), "KM": torch.tensor(1.0), "V": torch.tensor(10.0)}, ds.batch)
    >>> conc = float(c[0, 0])
    >>> round(conc, 4)
    8.1986

    It solves ``C + KM·log C = C0 + KM·log C0 − (VM/V)·t`` (C0 = 100/10, t = 2), the implicit
    solution of Michaelis-Menten elimination:

    >>> import math
    >>> abs(conc + math.log(conc) - (10.0 + math.log(10.0) - 2.0)) < 1e-8
    True
    """

    def __init__(self, rhs: RHS, compartments: tuple[str, ...], parameter_names: tuple[str, ...], *,
                 default_dose_cmt: int = 1, default_obs_cmt: int = 1, scale: Mapping[int, str] | None = None,
                 method: str = "dopri5", rtol: float = 1e-7, atol: float = 1e-10, max_steps: int = 20000,
                 fixed_steps: int = 50,
                 ss_rtol: float = 1e-10, ss_max_cycles: int = 50, initial: Callable | None = None,
                 name: str = "ode") -> None:
        if not compartments:
            raise ModelError("an ODE model needs at least one compartment")
        for cmt in (default_dose_cmt, default_obs_cmt, *(scale or {})):
            if not 1 <= cmt <= len(compartments):
                raise ModelError(f"compartment {cmt} is out of range 1..{len(compartments)}")
        if rtol <= 0 or atol <= 0 or max_steps < 1:
            raise ModelError("rtol and atol must be > 0 and max_steps >= 1")
        self.rhs = rhs
        self.compartments = tuple(compartments)
        self.parameter_names = tuple(parameter_names)
        self.default_dose_cmt, self.default_obs_cmt = default_dose_cmt, default_obs_cmt
        self.scale = dict(scale or {})
        if fixed_steps < 1:
            raise ModelError("fixed_steps must be >= 1")
        self.method, self.rtol, self.atol, self.max_steps = method, rtol, atol, max_steps
        self.fixed_steps = fixed_steps
        self.ss_rtol, self.ss_max_cycles = ss_rtol, ss_max_cycles
        self.initial = initial
        self.name = name

    def _initial_state(self, p: Mapping[str, torch.Tensor], n: int, like: torch.Tensor) -> torch.Tensor:
        n_cmt = len(self.compartments)
        if self.initial is None:
            return torch.zeros(n, n_cmt, dtype=like.dtype, device=like.device)
        y0 = torch.as_tensor(self.initial(p), dtype=like.dtype, device=like.device)
        if y0.shape != (n, n_cmt):
            raise ModelError(f"{self.name}: initial(p) returned shape {tuple(y0.shape)}, expected ({n}, {n_cmt})")
        return y0

    # ------------------------------------------------------------------ solve
    def _advance(self, y: torch.Tensor, t0: torch.Tensor, delta: torch.Tensor, infusion: torch.Tensor,
                 p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Integrate every row from ``t0`` over its own ``delta`` (≥ 0) with constant infusion inputs."""
        if not bool((delta > 0).any()):
            return y
        d = delta.unsqueeze(-1)

        def field(s, state):
            return d * (self.rhs(t0 + s * delta, state, p) + infusion)

        try:
            if self.method == "dopri5":
                out = integrate_unit_interval(field, y, rtol=self.rtol, atol=self.atol, max_steps=self.max_steps)
            else:
                grid = torch.tensor([0.0, 1.0], dtype=y.dtype, device=y.device)
                options = ({"max_num_steps": self.max_steps} if self.method in _ADAPTIVE
                           else {"step_size": 1.0 / self.fixed_steps})
                out = odeint(field, y, grid, rtol=self.rtol, atol=self.atol, method=self.method,
                             options=options)[-1]
        except (AssertionError, RuntimeError) as exc:      # IntegrationError is a RuntimeError
            raise IntegrationError(
                f"{self.name}: the {self.method} solver failed ({exc}). The system may be stiff or its "
                f"parameters extreme: check the parameters, loosen rtol/atol, or raise max_steps") from exc
        if not bool(torch.isfinite(out).all()):
            raise IntegrationError(f"{self.name}: the solution became non-finite (overflow); check the parameters "
                                   f"and the right-hand side")
        return out

    def _steady_state(self, doses: ResolvedDoses, p: dict[str, torch.Tensor], n_cmt: int) -> torch.Tensor:
        """Amounts at the record time of each SS dose at steady state, ``[N, D, n_cmt]`` (0 elsewhere)."""
        n, d_count = doses.ss.shape
        out = torch.zeros(n, d_count, n_cmt, dtype=doses.amount.dtype, device=doses.amount.device)
        sel = doses.mask & (doses.ss > 0)
        if not bool(sel.any()):
            return out
        subj = torch.arange(n, device=sel.device).unsqueeze(1).expand(n, d_count)[sel]
        pb = {k: v[subj] for k, v in p.items()}
        lag = (doses.arrival - doses.record_time)[sel]
        tau, amount, cmt = doses.ii[sel], doses.amount[sel], doses.cmt[sel]
        inf = doses.infusion[sel]
        dur = torch.where(inf, doses.duration[sel], torch.zeros_like(tau))
        if bool((lag + dur > tau).any()):
            raise ModelError(f"{self.name}: a steady-state dose whose lag plus infusion duration exceeds II is not "
                             f"supported by the ODE path; use a closed-form model")
        onehot = torch.nn.functional.one_hot(cmt, n_cmt).to(amount.dtype)
        rate_in = onehot * torch.where(inf, doses.rate[sel], torch.zeros_like(tau)).unsqueeze(-1)
        bolus_in = onehot * torch.where(inf, torch.zeros_like(tau), amount).unsqueeze(-1)
        t0 = doses.record_time[sel]
        zero_in = torch.zeros_like(rate_in)

        def cycle(y, prm, copies=1):
            def rep(x):
                return x.repeat(copies, *([1] * (x.dim() - 1))) if copies > 1 else x
            y = self._advance(y, rep(t0), rep(lag), rep(zero_in), prm) + rep(bolus_in)
            y = self._advance(y, rep(t0 + lag), rep(dur), rep(rate_in), prm)
            return self._advance(y, rep(t0 + lag + dur), rep(tau - lag - dur), rep(zero_in), prm)

        y = self._initial_state(pb, len(tau), amount).detach()
        fixed = {k: v.detach() for k, v in pb.items()}
        eye = torch.eye(n_cmt, dtype=y.dtype, device=y.device)
        jac = None
        for _ in range(self.ss_max_cycles):
            jac, mapped = _cycle_jacobian(cycle, y, fixed)
            step = torch.linalg.solve(eye - jac, (mapped - y).unsqueeze(-1)).squeeze(-1)
            y = y + step
            if bool((step.abs() <= self.ss_rtol * y.abs() + self.atol).all()):
                break
        else:
            raise IntegrationError(f"{self.name}: steady state not reached within {self.ss_max_cycles} Newton "
                                   f"iterations; check the parameters")
        # one Newton step with gradients on: its value is the fixed point, its derivative the
        # implicit-function derivative (I - J)^-1 dPhi/dparams
        y = y + torch.linalg.solve(eye - jac, (cycle(y, pb) - y).unsqueeze(-1)).squeeze(-1)
        out[sel] = y
        return out

    def predict(self, params: Params, batch: SubjectBatch) -> torch.Tensor:
        """Amounts (scaled per ``scale``) ``[N, J]`` at the observation records."""
        p = self.check_parameters(params, batch)
        doses = resolve_doses(self, p, batch)
        n_cmt = len(self.compartments)
        n = batch.n_subjects
        obs = batch.obs
        obs_cmt = observation_compartment(self, batch)
        if bool(((obs_cmt >= n_cmt) & obs.mask).any()):
            raise ModelError(f"{self.name}: an observation names a compartment the model lacks")
        ss_state = self._steady_state(doses, p, n_cmt)
        ev = _timeline(batch, doses, obs_cmt)
        dtype, device = obs.time.dtype, obs.time.device
        y0 = self._initial_state(p, n, obs.time)
        y = y0
        infusion = torch.zeros(n, n_cmt, dtype=dtype, device=device)
        pred = torch.zeros(n, obs.time.shape[1] + 1, dtype=dtype, device=device)
        rows = torch.arange(n, device=device)
        t_prev = ev["time"][:, 0]
        seg_prev = ev["segment"][:, 0]
        for e in range(ev["time"].shape[1]):
            t, kind, seg = ev["time"][:, e], ev["kind"][:, e], ev["segment"][:, e]
            valid = ev["valid"][:, e]
            delta = torch.where(valid & (seg == seg_prev), t - t_prev, torch.zeros_like(t))
            y = self._advance(y, t_prev, delta.clamp(min=0.0), infusion, p)
            cmt = ev["cmt"][:, e]
            onehot = torch.nn.functional.one_hot(cmt, n_cmt).to(dtype)
            value = ev["value"][:, e].unsqueeze(-1)
            y = torch.where((valid & (kind == _RESET)).unsqueeze(-1), y0, y)
            ss_idx = ev["index"][:, e].clamp(max=ss_state.shape[1] - 1)
            # SS=1: after the reset y = y0, so y becomes the steady state; SS=2 adds the steady-state excess
            y = y + torch.where((valid & (kind == _SS)).unsqueeze(-1), ss_state[rows, ss_idx] - y0, 0.0)
            y = y + torch.where((valid & (kind == _BOLUS)).unsqueeze(-1), onehot * value, 0.0)
            sign = torch.where(kind == _INF_START, 1.0, torch.where(kind == _INF_END, -1.0, 0.0)).to(dtype)
            infusion = infusion + torch.where(valid.unsqueeze(-1), onehot * value * sign.unsqueeze(-1), 0.0)
            is_obs = valid & (kind == _OBS)
            obs_idx = torch.where(is_obs, ev["index"][:, e], torch.full_like(ev["index"][:, e], pred.shape[1] - 1))
            pred = pred.index_put((rows, obs_idx), torch.where(is_obs, y[rows, cmt], pred[rows, obs_idx]))
            t_prev = torch.where(valid, t, t_prev)
            seg_prev = torch.where(valid, seg, seg_prev)
        pred = pred[:, :-1]
        divisor = torch.ones_like(pred)
        for cmt_number, pname in self.scale.items():
            divisor = torch.where(obs_cmt == cmt_number - 1, p[pname].unsqueeze(-1).expand_as(pred), divisor)
        return torch.where(obs.mask, pred / divisor, torch.zeros_like(pred))


def _cycle_jacobian(cycle, y: torch.Tensor, params: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and per-row Jacobian ``[B, n, n]`` of the dosing-cycle map by central differences.

    All 2n+1 evaluations run as one batched solve (rows are independent). Exact up to
    rounding for linear (affine) cycle maps; O(h²) with h = 1e-5 relative otherwise.
    """
    b, n = y.shape
    h = 1e-5 * torch.clamp(y.abs().amax(dim=1, keepdim=True), min=1e-3)          # [B, 1]
    eye = torch.eye(n, dtype=y.dtype, device=y.device)
    shifts = torch.cat([torch.zeros(1, n, dtype=y.dtype, device=y.device), eye, -eye], dim=0)   # [2n+1, n]
    y_aug = (y.unsqueeze(0) + shifts.unsqueeze(1) * h.unsqueeze(0)).reshape(-1, n)
    p_aug = {k: v.unsqueeze(0).expand(2 * n + 1, *v.shape).reshape(-1, *v.shape[1:]) for k, v in params.items()}
    with torch.no_grad():
        out = cycle(y_aug, p_aug, 2 * n + 1).reshape(2 * n + 1, b, n)
    jac = ((out[1:n + 1] - out[n + 1:]) / (2 * h.unsqueeze(0))).permute(1, 2, 0)   # [B, n_out, n_in]
    return jac, out[0]


_ADAPTIVE = {"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"}


def _timeline(batch: SubjectBatch, doses: ResolvedDoses, obs_cmt: torch.Tensor) -> dict[str, torch.Tensor]:
    """All events of every subject, sorted by (segment, time, record order), padded ``[N, E]``.

    ``obs_cmt`` is the 0-based observed compartment of each observation.
    """
    obs, resets = batch.obs, batch.resets
    n, j_count = obs.time.shape
    d_count = doses.amount.shape[1]
    dev = obs.time.device
    j_idx = torch.arange(j_count, device=dev).expand(n, j_count)
    d_idx = torch.arange(d_count, device=dev).expand(n, d_count)
    zeros_d = torch.zeros_like(doses.amount)
    is_ss = doses.mask & (doses.ss > 0)
    parts = [
        # kind, time, order, segment, cmt, value, index, valid
        (_OBS, obs.time, obs.order, obs.segment, obs_cmt, torch.zeros_like(obs.time), j_idx, obs.mask),
        (_BOLUS, doses.arrival, doses.order + 0.2, doses.segment, doses.cmt, doses.amount, d_idx,
         doses.mask & ~doses.infusion),
        (_INF_START, doses.arrival, doses.order + 0.2, doses.segment, doses.cmt, doses.rate, d_idx,
         doses.mask & doses.infusion),
        (_INF_END, doses.arrival + doses.duration, doses.order + 0.3, doses.segment, doses.cmt, doses.rate, d_idx,
         doses.mask & doses.infusion),
        (_SS, doses.record_time, doses.order + 0.1, doses.segment, doses.cmt, zeros_d, d_idx, is_ss),
        (_RESET, resets.time, resets.order, resets.segment, torch.zeros_like(resets.segment),
         torch.zeros_like(resets.time), torch.zeros_like(resets.segment), resets.mask),
    ]
    cols = {k: [] for k in ("kind", "time", "order", "segment", "cmt", "value", "index", "valid")}
    for kind, time, order, segment, cmt, value, index, valid in parts:
        cols["kind"].append(torch.full_like(segment, kind))
        for name, v in zip(("time", "order", "segment", "cmt", "value", "index", "valid"),
                           (time, order, segment, cmt, value, index, valid)):
            cols[name].append(v)
    ev = {k: torch.cat(v, dim=1) for k, v in cols.items()}
    big_seg = ev["segment"].max() + 1 if ev["segment"].numel() else 1
    seg_key = torch.where(ev["valid"], ev["segment"], torch.full_like(ev["segment"], int(big_seg)))
    order = torch.argsort(ev["order"], dim=1, stable=True)
    order = order.gather(1, torch.argsort(ev["time"].detach().gather(1, order), dim=1, stable=True))
    order = order.gather(1, torch.argsort(seg_key.gather(1, order), dim=1, stable=True))
    return {k: v.gather(1, order) for k, v in ev.items()}


# ------------------------------------------------------------------------ right-hand sides
def linear_rhs(model) -> RHS:
    """The right-hand side of a closed-form :class:`LinearCompartmentModel`, for ODE cross-checks."""
    depot = model.has_depot

    def rhs(t, a, p):
        k10, k12, k21 = model.disposition(p)
        c = 1 if depot else 0
        central = a[:, c]
        d_central = -k10 * central
        derivs = []
        if depot:
            derivs.append(-p["KA"] * a[:, 0])
            d_central = d_central + p["KA"] * a[:, 0]
        periph = []
        for j, (out_rate, back_rate) in enumerate(zip(k12, k21)):
            aj = a[:, c + 1 + j]
            d_central = d_central - out_rate * central + back_rate * aj
            periph.append(out_rate * central - back_rate * aj)
        derivs.append(d_central)
        derivs.extend(periph)
        return torch.stack(derivs, dim=-1)

    return rhs


def michaelis_menten_rhs(t, a, p):
    """One compartment with Michaelis-Menten elimination: ``dA/dt = -VM·C/(KM + C)``, ``C = A/V``.

    Parameters VM (amount/time), KM (concentration), V. With a depot as CMT 1, use
    :func:`michaelis_menten_oral_rhs`.
    """
    c = a[:, 0] / p["V"]
    return (-p["VM"] * c / (p["KM"] + c)).unsqueeze(-1)


def michaelis_menten_oral_rhs(t, a, p):
    """Depot (CMT 1, KA) into a central compartment (CMT 2) with Michaelis-Menten elimination (VM, KM, V)."""
    c = a[:, 1] / p["V"]
    absorbed = p["KA"] * a[:, 0]
    return torch.stack([-absorbed, absorbed - p["VM"] * c / (p["KM"] + c)], dim=-1)


def indirect_response_rhs(t, a, p):
    """One-compartment IV PK (CL, V) driving an indirect response with inhibited production.

    CMT 1 drug amount, CMT 2 response R: ``dR/dt = KIN·(1 - IMAX·C/(IC50 + C)) - KOUT·R``.
    The response starts at zero amounts; give a baseline through an initial dose into CMT 2
    or use its value relative to KIN/KOUT. Parameters CL, V, KIN, KOUT, IMAX, IC50.
    """
    c = a[:, 0] / p["V"]
    d_drug = -p["CL"] / p["V"] * a[:, 0]
    inhibition = 1 - p["IMAX"] * c / (p["IC50"] + c)
    d_resp = p["KIN"] * inhibition - p["KOUT"] * a[:, 1]
    return torch.stack([d_drug, d_resp], dim=-1)
