"""Arms of a simulation as tensors: dose events of a regimen (or a subject's own), time grid, windows.

Every arm has one time grid shared by its rows. A grid point is either *post* (it sees the
doses given at its time, NONMEM's dose-record-first order) or *pre* (it does not: the
concentration just before a dose). Pre points sit at dose times and at the ends of exposure
windows, so that a trapezoid across a bolus sees the jump and ``Ctrough`` is the pre-dose level.
Rows are built directly as :class:`~pmxgen.data.SubjectBatch` tensors (no data frame), so a
chunk of 10^5 virtual subjects costs a few tensor expansions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..data.batching import DoseTable, ObservationTable, ResetTable, SubjectBatch
from .regimen import Regimen, RegimenError, body_size, dose_compartment

__all__ = ["Arm", "regimen_arm", "observed_arm", "arm_batch", "observation_table"]

#: Record order of post points (after every dose at the same time) and pre points (before them).
_POST, _PRE = 1e12, -1.0


@dataclass(frozen=True)
class Arm:
    """One arm: a regimen (or the subjects' own doses), its grid and exposure windows.

    Attributes
    ----------
    label : str
    regimen : Regimen or None
        None for the observed-regimen arm.
    time, pre : numpy.ndarray
        Grid times ``[G]`` and whether each point is pre-dose.
    windows : dict
        Name → (start, end).
    """

    label: str
    regimen: Regimen | None
    time: np.ndarray
    pre: np.ndarray
    windows: dict

    @property
    def n_points(self) -> int:
        return len(self.time)

    def window_index(self, name: str) -> tuple[int, int]:
        """Grid positions of the window's start (post point) and end (pre point), inclusive."""
        a, b = self.windows[name]
        post = np.flatnonzero(~self.pre & np.isclose(self.time, a, rtol=0, atol=1e-9))
        pre = np.flatnonzero(self.pre & np.isclose(self.time, b, rtol=0, atol=1e-9))
        return int(post[0]), int(pre[-1])


def _grid(dose_times: np.ndarray, infusion_ends: np.ndarray, windows: dict, horizon: float, start: float,
          points_per_interval: int, within_windows: bool) -> tuple[np.ndarray, np.ndarray]:
    dose_times = np.unique(dose_times)
    knots = np.unique(np.r_[start, dose_times[dose_times < horizon], horizon])
    regular = [np.linspace(a, b, points_per_interval + 1) for a, b in zip(knots[:-1], knots[1:])]
    post = np.unique(np.concatenate(regular + [infusion_ends[infusion_ends <= horizon]] +
                                    [np.array(w) for w in windows.values()]))
    pre = np.unique(np.r_[dose_times[(dose_times > start) & (dose_times <= horizon)],
                          np.array([w[1] for w in windows.values()])])
    if within_windows:
        keep = np.zeros(len(post), dtype=bool)
        keep_pre = np.zeros(len(pre), dtype=bool)
        for a, b in windows.values():
            keep |= (post >= a - 1e-12) & (post <= b + 1e-12)
            keep_pre |= (pre >= a - 1e-12) & (pre <= b + 1e-12)
        post, pre = post[keep], pre[keep_pre]
    time = np.r_[pre, post]
    flag = np.r_[np.ones(len(pre), dtype=bool), np.zeros(len(post), dtype=bool)]
    order = np.lexsort((~flag, time))           # by time, pre point first
    return time[order], flag[order]


def _windows(spec, default: dict, horizon: float) -> dict:
    if spec is None:
        return dict(default)
    out = {}
    items = spec.items() if isinstance(spec, dict) else [(s, None) for s in spec]
    for name, value in items:
        if value is None:
            if name == "total":
                out[name] = (min(v[0] for v in default.values()), horizon)
            elif name in default:
                out[name] = default[name]
            else:
                raise RegimenError(f"unknown window {name!r}: use 'first', 'last', 'total' or give (start, end)")
        else:
            a, b = float(value[0]), float(value[1])
            if not (0 <= a < b):
                raise RegimenError(f"window {name!r} must have 0 <= start < end (found {value!r})")
            out[str(name)] = (a, b)
    return out


def regimen_arm(regimen: Regimen, *, horizon: float | None = None, windows=None, points_per_interval: int = 24,
                within_windows: bool = False, follow_up: float = 24.0) -> Arm:
    """The grid and windows of ``regimen``.

    ``horizon`` defaults to :attr:`Regimen.end` (last dose + τ), or for a regimen without an
    interval (single dose, event table) to its last dose + ``follow_up``.
    """
    if horizon is not None:
        end = float(horizon)
    elif regimen.interval is None:
        end = max(regimen.last_dose + follow_up, regimen.end)
    else:
        end = regimen.end
    if end <= regimen.start:
        raise RegimenError(f"regimen {regimen.label!r}: the horizon {end:g} is not after the first dose")
    wins = _windows(windows, regimen.windows(end), end)
    for name, (a, b) in wins.items():
        if b > end + 1e-9:
            end = b
    times = np.array([e.time for e in regimen.events])
    ends = np.array([e.time + e.duration for e in regimen.events if e.duration > 0])
    time, pre = _grid(times, ends, wins, end, min(regimen.start, 0.0), points_per_interval, within_windows)
    return Arm(regimen.label, regimen, time, pre, wins)


def observed_arm(batch: SubjectBatch, *, horizon: float | None = None, windows=None, points: int = 200,
                 label: str = "observed") -> Arm:
    """Grid over ``[0, horizon]`` (default: last record) with every subject's dose times; window ``total``."""
    d = batch.doses
    dose_times = d.time[d.mask].cpu().numpy()
    rate, amt = d.rate[d.mask].cpu().numpy(), d.amt[d.mask].cpu().numpy()
    ends = (dose_times + np.where(rate > 0, amt / np.where(rate > 0, rate, 1.0), 0.0))[rate > 0]
    last = float(batch.obs.time[batch.obs.mask].max()) if bool(batch.obs.mask.any()) else float(dose_times.max())
    end = last if horizon is None else float(horizon)
    start = min(0.0, float(dose_times.min()) if len(dose_times) else 0.0)
    wins = _windows(windows, {"total": (start, end)}, end)
    n_int = max(1, points // 24)
    time, pre = _grid(dose_times, ends, wins, end, start, max(2, points // n_int), False)
    return Arm(label, None, time, pre, wins)


def _expand(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.unsqueeze(0).expand(n, *x.shape)


def observation_table(time: torch.Tensor, pre: torch.Tensor, resets: ResetTable, n_covariates: int,
                      shared: bool = False) -> ObservationTable:
    """Observation records at ``time [B, P]`` (``pre [B, P]``: before doses at the same time) in the right segment.

    ``shared``: every row has the same resets, so segments are computed once and broadcast
    (constant fields are broadcast views, so a chunk costs no ``[B, P]`` copies beyond its times).
    """
    b, p = time.shape
    r = resets
    if shared:
        r = ResetTable(time=r.time[:1], order=r.order[:1], segment=r.segment[:1], mask=r.mask[:1])
        t, q = time[:1], pre[:1]
    else:
        t, q = time, pre
    started = r.mask.unsqueeze(1) & ((r.time.unsqueeze(1) < t.unsqueeze(-1)) |
                                     ((r.time.unsqueeze(1) == t.unsqueeze(-1)) & ~q.unsqueeze(-1)))
    segment = torch.where(started, r.segment.unsqueeze(1), torch.zeros_like(r.segment).unsqueeze(1)).amax(-1)
    segment = segment.expand(b, p)
    dev = time.device
    zeros_i = torch.zeros((), dtype=torch.int64, device=dev).expand(b, p)
    return ObservationTable(
        time=time, dv=torch.zeros((), dtype=time.dtype, device=dev).expand(b, p), cmt=zeros_i,
        order=torch.where(q, _PRE, _POST).to(time.dtype).expand(b, p), segment=segment,
        mask=torch.ones((), dtype=torch.bool, device=dev).expand(b, p),
        row=torch.full((), -1, dtype=torch.int64, device=dev).expand(b, p),
        blq=torch.zeros((), dtype=torch.bool, device=dev).expand(b, p),
        lloq=torch.zeros((), dtype=time.dtype, device=dev).expand(b, p), occasion=zeros_i,
        covariates=torch.zeros((), dtype=time.dtype, device=dev).expand(b, p, n_covariates))


def with_observations(batch: SubjectBatch, time: torch.Tensor, pre: torch.Tensor, shared: bool = False
                      ) -> SubjectBatch:
    """``batch`` with its observation records replaced by ``time [B, P]`` / ``pre [B, P]``."""
    return replace(batch, obs=observation_table(time, pre, batch.resets, batch.baseline.shape[-1], shared=shared))


def regimen_doses(regimen: Regimen, structural, baseline: torch.Tensor, covariate_names
                  ) -> tuple[DoseTable, ResetTable]:
    """Dose events ``[B, D]`` of ``regimen`` for subjects with covariates ``baseline [B, C]``."""
    n = baseline.shape[0]
    dtype, device = baseline.dtype, baseline.device
    ev = regimen.events
    amt = torch.tensor([e.amount for e in ev], dtype=dtype, device=device).expand(n, -1)
    scale_cols = []
    for e in ev:
        if e.per is None:
            scale_cols.append(None)
        else:
            cov = {name: baseline[:, k].cpu().numpy() for k, name in enumerate(covariate_names)}
            scale_cols.append(torch.as_tensor(body_size(e.per, cov), dtype=dtype, device=device))
    if any(s is not None for s in scale_cols):
        amt = torch.stack([amt[:, k] * (s if s is not None else 1.0) for k, s in enumerate(scale_cols)], dim=1)
        if not bool(torch.isfinite(amt).all() & (amt > 0).all()):
            raise RegimenError(f"regimen {regimen.label!r}: weight/BSA-based amounts are not all finite and > 0 "
                               f"(check the WT/HT/BSA covariates)")
    cmt = torch.tensor([dose_compartment(e, structural) for e in ev], dtype=torch.int64, device=device)
    dur = torch.tensor([e.duration for e in ev], dtype=dtype, device=device)
    rate = torch.where(dur > 0, amt / torch.where(dur > 0, dur, torch.ones_like(dur)), torch.zeros_like(amt))
    ss = torch.tensor([int(e.steady_state) for e in ev], dtype=torch.int64, device=device)
    ii = torch.tensor([e.interval for e in ev], dtype=dtype, device=device)
    time = torch.tensor([e.time for e in ev], dtype=dtype, device=device)
    seg = int(ev[0].steady_state)
    d = len(ev)
    c = baseline.shape[-1]
    doses = DoseTable(
        time=_expand(time, n), amt=amt, cmt=_expand(cmt, n), rate=rate, ss=_expand(ss, n), ii=_expand(ii, n),
        order=_expand(torch.arange(d, dtype=dtype, device=device) * 2 + 1, n),
        segment=torch.full((n, d), seg, dtype=torch.int64, device=device),
        mask=torch.ones(n, d, dtype=torch.bool, device=device), row=torch.full((n, d), -1, device=device),
        implied=torch.zeros(n, d, dtype=torch.bool, device=device),
        occasion=torch.zeros(n, d, dtype=torch.int64, device=device),
        covariates=baseline.unsqueeze(1).expand(n, d, c))
    resets = ResetTable(time=time[:1].expand(n, 1), order=torch.ones(n, 1, dtype=dtype, device=device),
                        segment=torch.full((n, 1), seg, dtype=torch.int64, device=device),
                        mask=torch.full((n, 1), bool(seg), dtype=torch.bool, device=device))
    return doses, resets


def arm_batch(arm: Arm, structural, baseline: torch.Tensor, covariate_names, observed: SubjectBatch | None = None
              ) -> SubjectBatch:
    """Rows ``[B]`` of ``arm`` on its grid: regimen doses for ``baseline``, or the ``observed`` rows' own doses."""
    n = baseline.shape[0]
    if arm.regimen is None:
        doses, resets = observed.doses, observed.resets
    else:
        doses, resets = regimen_doses(arm.regimen, structural, baseline, covariate_names)
    time = _expand(torch.as_tensor(arm.time, dtype=baseline.dtype, device=baseline.device), n)
    pre = _expand(torch.as_tensor(arm.pre, device=baseline.device), n)
    obs = observation_table(time, pre, resets, baseline.shape[-1], shared=arm.regimen is not None)
    return SubjectBatch(obs=obs, doses=doses, resets=resets, baseline=baseline, covariate_names=tuple(covariate_names))
