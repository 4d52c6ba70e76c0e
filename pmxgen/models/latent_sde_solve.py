"""Solving the latent SDE of many subjects at once: designs, knot schedules, piecewise integration.

Every subject has its own observation and dose times, but one batched solve needs one time
axis. The :class:`Schedule` of a :class:`Design` is the sorted union of all subjects' times
(observations, doses, infusion ends, the start ``t0`` and the ``horizon``), the *knots*.
The solve walks through the *break* knots (where some subject gets a bolus, an infusion starts
or ends, or — for the particle filter — is observed); between two breaks one
``torchsde.sdeint`` (or ``sdeint_adjoint``) call integrates all rows and returns the state at its
own fixed steps (:func:`step_grid`), and each record is read by linear interpolation between the
two steps around it — exactly what torchsde does for output times, but without making every
subject's observation time an output of the batched solve (:func:`read_states`). At a break a
callback changes the state (a bolus jump into the dose coordinate; particle re-weighting and
resampling). The discrete solver (the deep latent Gaussian model) takes Euler–Maruyama steps
exactly from knot to knot (optionally subdivided to ``max_step``) with increments of the same
Brownian interval, so both share the drift, diffusion, schedule and random numbers.

Observation records at the time of a bolus see it when the dose record comes first (NONMEM's
record order), as in the rest of pmxgen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import IntegrationError, ModelError

__all__ = ["Design", "design_from_batch", "Schedule", "build_schedule", "march", "brownian", "Solution",
           "read_states", "step_grid"]


@dataclass(frozen=True)
class Design:
    """What the solver needs of a set of subjects: observation slots, doses and covariates.

    ``obs_*`` are ``[N, J]`` (``obs_order`` = position of the record, ``inf`` for a grid point
    after every dose at its time), ``dose_*`` ``[N, D]`` (``dose_rate`` 0 for a bolus, > 0 for
    an infusion), ``covariates`` ``[N, C]``.
    """

    obs_time: torch.Tensor
    obs_mask: torch.Tensor
    obs_order: torch.Tensor
    dose_time: torch.Tensor
    dose_amt: torch.Tensor
    dose_rate: torch.Tensor
    dose_mask: torch.Tensor
    dose_order: torch.Tensor
    covariates: torch.Tensor

    @property
    def n_subjects(self) -> int:
        return int(self.obs_time.shape[0])


def design_from_batch(batch, ids=None) -> Design:
    """The :class:`Design` of a :class:`~pmxgen.data.SubjectBatch` (its own records and doses).

    EVID 3/4 resets, steady-state doses and modelled rates (RATE −1/−2) have no meaning for a
    latent SDE without compartments: they raise :class:`~pmxgen.errors.ModelError`.
    """
    d = batch.doses
    name = (lambda i: ids[i] if ids is not None else f"#{i + 1}")
    if bool(batch.resets.mask.any()):
        i = int(torch.nonzero(batch.resets.mask.any(1))[0])
        raise ModelError(f"subject {name(i)} has a reset (EVID 3/4 or SS=1 dose): the latent SDE model has no "
                         f"compartment amounts to reset or to bring to steady state; remove those records")
    bad = d.mask & (d.rate < 0)
    if bool(bad.any()):
        i = int(torch.nonzero(bad.any(1))[0])
        raise ModelError(f"subject {name(i)} has a dose with a modelled rate or duration (RATE -1/-2), which the "
                         f"latent SDE model cannot give; write the infusion rate in the data")
    return Design(obs_time=batch.obs.time, obs_mask=batch.obs.mask, obs_order=batch.obs.order,
                  dose_time=d.time, dose_amt=d.amt, dose_rate=d.rate, dose_mask=d.mask, dose_order=d.order,
                  covariates=batch.baseline)


@dataclass(frozen=True)
class Schedule:
    """Knots of a design: times ``[K]``, bolus jumps ``[N, K]``, each observation's knot ``[N, J]``,
    whether it sees the jump at its knot ``[N, J]``, and the break knots (sorted, without 0)."""

    t0: float
    horizon: float
    times: torch.Tensor
    jump: torch.Tensor
    obs_knot: torch.Tensor
    obs_after_jump: torch.Tensor
    breaks: tuple[int, ...]

    @property
    def n_knots(self) -> int:
        return int(self.times.shape[0])


def build_schedule(design: Design, *, t0: float = 0.0, horizon: float | None = None, extra_times=(),
                   break_at_observations: bool = False) -> Schedule:
    """The knots of ``design`` from ``t0`` to ``horizon`` (default: its last time).

    ``extra_times`` are added as break knots (used to give several regimens the same knots, so
    that they see the same Brownian path); ``break_at_observations`` makes every observation
    time a break (the particle filter).
    """
    obs_t = design.obs_time[design.obs_mask].detach().cpu().numpy()
    dm = design.dose_mask
    dose_t = design.dose_time[dm].detach().cpu().numpy()
    rate = design.dose_rate[dm].detach().cpu().numpy()
    amt = design.dose_amt[dm].detach().cpu().numpy()
    inf_end = (dose_t + amt / np.where(rate > 0, rate, 1.0))[rate > 0]
    extra = np.asarray(list(extra_times), dtype=np.float64)
    everything = np.concatenate([obs_t, dose_t, inf_end, extra])
    if len(everything) and everything.min() < t0:
        raise ModelError(f"a record at time {everything.min():g} is before the start t0 = {t0:g} of the latent SDE; "
                         f"give t0 <= the first time")
    last = float(max(everything.max(), t0)) if len(everything) else t0
    end = last if horizon is None else float(horizon)
    if end < last and len(obs_t) and obs_t.max() > end:
        raise ModelError(f"an observation at time {obs_t.max():g} is after the horizon {end:g}; give a later horizon")
    if not end > t0:
        raise ModelError(f"the latent SDE needs a horizon after t0 = {t0:g} (found {end:g}); the data have no "
                         f"records after t0")
    inside = everything[everything <= end]
    times_np = np.unique(np.concatenate([[t0, end], inside]))
    brk = np.concatenate([dose_t, inf_end, extra] + ([obs_t] if break_at_observations else []))
    brk = brk[(brk > t0) & (brk <= end)]
    breaks = sorted(set(np.searchsorted(times_np, np.unique(brk)).tolist()) | {len(times_np) - 1})
    dev, dtype = design.obs_time.device, design.obs_time.dtype
    times = torch.as_tensor(times_np, dtype=dtype, device=dev)
    n = design.n_subjects
    obs_knot = torch.searchsorted(times, design.obs_time.contiguous()).clamp(max=len(times_np) - 1)
    obs_knot = torch.where(design.obs_mask, obs_knot, torch.zeros_like(obs_knot))
    bolus = dm & (design.dose_rate == 0)
    dose_knot = torch.searchsorted(times, design.dose_time.contiguous()).clamp(max=len(times_np) - 1)
    jump = torch.zeros(n, len(times_np), dtype=dtype, device=dev)
    jump = jump.scatter_add(1, dose_knot, torch.where(bolus, design.dose_amt, torch.zeros_like(design.dose_amt)))
    same = (bolus[:, None, :] & (design.dose_time[:, None, :] == design.obs_time[:, :, None])
            & (design.dose_order[:, None, :] < design.obs_order[:, :, None]))
    return Schedule(t0=float(t0), horizon=end, times=times, jump=jump, obs_knot=obs_knot,
                    obs_after_jump=same.any(-1), breaks=tuple(int(b) for b in breaks))


def brownian(t0: float, t1: float, rows: int, width: int, *, seed: int, dtype, device, dt: float | None = None,
             method: str = "euler"):
    """A seeded ``torchsde.BrownianInterval`` of ``rows × width`` paths on ``[t0, t1]``."""
    import torchsde            # imported when used: it takes seconds to import
    return torchsde.BrownianInterval(t0=t0, t1=t1, size=(rows, width), dtype=dtype, device=device,
                                     entropy=int(seed) % (2 ** 62), dt=dt,
                                     levy_area_approximation="space-time" if method == "srk" else "none")


def _discrete_segment(sde, y: torch.Tensor, ts: torch.Tensor, bm, max_step: float | None) -> torch.Tensor:
    """Euler–Maruyama from knot to knot (subdivided to ``max_step``) with increments of ``bm``."""
    out = [y]
    for a, b in zip(ts[:-1].tolist(), ts[1:].tolist()):
        n = 1 if max_step is None else max(1, math.ceil((b - a) / max_step - 1e-9))
        grid = np.linspace(a, b, n + 1)
        for s, e in zip(grid[:-1], grid[1:]):
            t = torch.tensor(s, dtype=y.dtype, device=y.device)
            y = y + sde.f(t, y) * (e - s) + sde.g(t, y) * bm(float(s), float(e))
        out.append(y)
    return torch.stack(out)


def step_grid(a: float, b: float, dt: float) -> list[float]:
    """The times torchsde's fixed-step solvers step to from ``a`` to ``b`` (``t = min(t + dt, b)``, the same
    float arithmetic), so that asking for the solution there returns its steps without interpolation."""
    out, t = [a], a
    while t < b:
        t = min(t + dt, b)
        out.append(t)
    return out


@dataclass
class Solution:
    """A solve through a schedule: per segment between breaks its times ``[L]`` and states ``[L, B, D]``
    (the first one is the state after the events of the segment's first knot), the state before any
    event at ``t0``, and the state after the events of every break knot (``post``)."""

    segments: list
    initial: torch.Tensor
    post: dict

    @property
    def final(self) -> torch.Tensor:
        """The state at the horizon, before its events."""
        return self.segments[-1][1][-1] if self.segments else self.initial


def march(sde, y0: torch.Tensor, schedule: Schedule, on_break: Callable[[int, torch.Tensor], torch.Tensor], *,
          bm, solver: str = "continuous", method: str = "euler", dt: float | None = None,
          max_step: float | None = None, adjoint: bool = False, adjoint_params=None) -> Solution:
    """Integrate ``y0`` (the state at knot 0) from break to break. ``on_break(k, y)`` gives the state
    after knot ``k``'s events (it is also called at knot 0).

    The continuous solver returns each segment on its own step grid (:func:`step_grid`): states
    between steps are read by linear interpolation, exactly what torchsde does for output times,
    without making every subject's observation time an output of the batched solve.
    """
    import torchsde
    times = schedule.times
    post = {0: on_break(0, y0)}
    y = post[0]
    start = 0
    step = dt if dt is not None else (schedule.horizon - schedule.t0) / 100.0
    segments = []
    for b in schedule.breaks:
        if solver == "discrete":
            ts = times[start:b + 1]
            ys = _discrete_segment(sde, y, ts, bm, max_step)
        else:
            ts = torch.as_tensor(step_grid(float(times[start]), float(times[b]), step), dtype=times.dtype,
                                 device=times.device)
            kwargs = dict(bm=bm, method=method, dt=step)
            try:
                if adjoint:
                    ys = torchsde.sdeint_adjoint(sde, y, ts, adjoint_params=adjoint_params, **kwargs)
                else:
                    ys = torchsde.sdeint(sde, y, ts, **kwargs)
            except (RuntimeError, ValueError, AssertionError) as exc:
                raise IntegrationError(f"the latent SDE solve failed between t = {float(ts[0]):g} and "
                                       f"{float(ts[-1]):g} ({type(exc).__name__}: {exc}); check the solver "
                                       f"options (method, dt) and that the drift and diffusion are finite") from exc
        segments.append((ts, ys))
        y = on_break(b, ys[-1])
        post[b] = y
        start = b
    return Solution(segments=segments, initial=y0, post=post)


def read_states(solution: Solution, schedule: Schedule, obs_time: torch.Tensor, obs_mask: torch.Tensor,
                after_jump: torch.Tensor, repeats: int) -> torch.Tensor:
    """The states at the observation slots ``[N·repeats, J, D]``: linear interpolation between the
    solver's steps, the state after a bolus for records that see it (dose record first), before
    it otherwise (``obs_*`` and ``after_jump`` are ``[N, J]``, rows subject-major)."""
    times = schedule.times
    dev = times.device
    brk = torch.tensor([0] + list(schedule.breaks), device=dev)
    brk_t = times[brk]                                                      # [m+1] t0, B_1 .. B_m
    t = torch.where(obs_mask, obs_time, brk_t[0])
    # segment of a record that does not see a jump at its time: the first one ending at or after it
    seg = torch.searchsorted(brk_t[1:].contiguous(), t.contiguous()).clamp(max=len(solution.segments) - 1)
    lengths = [len(ts) for ts, _ in solution.segments]
    width = max(lengths)
    grid = torch.full((len(lengths), width), math.inf, dtype=times.dtype, device=dev)
    for s, (ts, _) in enumerate(solution.segments):
        grid[s, :len(ts)] = ts
    states = torch.stack([torch.cat([ys, ys[-1:].expand(width - len(ys), *ys.shape[1:])]) for _, ys in
                          solution.segments])                                # [S, L, B, D]
    g = grid[seg]                                                           # [N, J, L]
    hi = torch.searchsorted(g, t[..., None].contiguous())[..., 0].clamp(1, width - 1)
    lo = hi - 1
    t_lo, t_hi = g.gather(-1, lo[..., None])[..., 0], g.gather(-1, hi[..., None])[..., 0]
    w = torch.where(torch.isfinite(t_hi) & (t_hi > t_lo), (t - t_lo) / (t_hi - t_lo).clamp_min(1e-300),
                    torch.zeros_like(t)).clamp(0.0, 1.0)
    rep = (lambda v: v.repeat_interleave(repeats, 0))
    rows = torch.arange(states.shape[2], device=dev)[:, None]
    seg_r, lo_r, hi_r, w_r = rep(seg), rep(lo), rep(hi), rep(w)[..., None]
    out = states[seg_r, lo_r, rows] * (1 - w_r) + states[seg_r, hi_r, rows] * w_r
    # a record at t0 before the events there reads the initial state
    at_start = rep((t == brk_t[0]) & ~after_jump)[..., None]
    out = torch.where(at_start, solution.initial[:, None, :].expand_as(out), out)
    # a record that sees a bolus at its time reads the state after that knot's events
    post_k = torch.searchsorted(brk_t.contiguous(), t.contiguous()).clamp(max=len(brk) - 1)
    post = torch.stack([solution.post[int(k)] for k in brk.tolist()])       # [m+1, B, D]
    out = torch.where(rep(after_jump)[..., None], post[rep(post_k), rows], out)
    return out
