"""Exposure metrics: exact AUC for closed-form models, Cmax/Cmin/Ctrough, time above a threshold, targets.

Exact integrals
---------------
A closed-form linear model's central amount is a superposition over doses of sums of
exponentials (see :mod:`pmxgen.structural.closed_form`). :func:`exact_auc` integrates each
dose's contribution analytically over ``[t1, t2] ∩ [record time, end of its reset segment)``:
with ``x`` the time since the dose arrives and one mode ``(λ, c)`` of the response to a unit
bolus,

* bolus of amount A: ``U(x) = A c (1 − e^{−λx⁺}) / λ``;
* infusion at rate r for T: ``U(x) = r c [H(x⁺) − H((x − T)⁺)]``, ``H(y) = (y + (e^{−λy} − 1)/λ) / λ``;
* steady state of doses every τ (SS=1): ``W(x) = Σ_{k≥0} [U(x + kτ) − U(∞)]``, summed in closed
  form: the first terms explicitly (while ``x + kτ < T``), the rest as a geometric series
  ``−R(x + k₀τ) / (1 − e^{−λτ})`` with ``U(y) = U(∞) − R(y)`` for ``y ≥ T``.

So ``AUC(t1, t2) = Σ_doses [F(hi − arrival) − F(lo − arrival)] / V`` to rounding error
(steady-state AUC over τ equals F·Dose/CL to ~1e-15 relative).

Grid metrics
------------
On an arm's grid (post-dose points, plus pre-dose points at doses and window ends):
``cmax``/``tmax`` and ``cmin`` (refined by golden-section search on the exact model between
the neighbouring grid points when ``refine``), ``ctrough`` (pre-dose level at the window end),
``cavg = auc / width``, ``t_above``/``ft_above`` (time / fraction of the window above a
threshold, linear interpolation between grid points: O(h²) error). Models without a
closed form get AUC by the trapezoid rule on the grid (exact at bolus jumps thanks to the
pre/post pairs; O(h²) elsewhere).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..structural.base import resolve_doses
from ..structural.closed_form import LinearCompartmentModel
from .regimen import RegimenError

__all__ = ["exact_auc", "grid_metrics", "refine_extrema", "Target", "parse_target", "METRICS", "wilson_interval"]

#: Exposure metrics computed per window (``t_above``/``ft_above`` need a threshold).
METRICS = ("auc", "cmax", "tmax", "cmin", "ctrough", "cavg", "t_above", "ft_above")


def _single_antiderivative(x, amount, rate, dur, infusion, lam, c, any_infusion: bool = True):
    """∫_0^x of one dose's contribution per mode (x: time since arrival), and its limit U(∞)."""
    xp = x.clamp(min=0.0)
    bolus = -amount * c / lam * torch.expm1(-lam * xp)
    bolus_inf = amount * c / lam
    if not any_infusion:
        return bolus, bolus_inf

    def h2(y):
        return (y + torch.expm1(-lam * y) / lam) / lam
    inf_val = rate * c * (h2(xp) - h2((x - dur).clamp(min=0.0)))
    inf_lim = rate * dur * c / lam
    return torch.where(infusion, inf_val, bolus), torch.where(infusion, inf_lim, bolus_inf)


def exact_auc(structural: LinearCompartmentModel, params: dict, batch, windows: torch.Tensor) -> torch.Tensor:
    """∫ C dt over each window for a closed-form model, exactly. ``windows [W, 2]`` or ``[B, W, 2]`` → ``[B, W]``.

    Examples
    --------
    >>> import torch, pmxgen
    >>> from pmxgen.simulation.regimen import Regimen
    >>> from pmxgen.simulation.schedule import regimen_arm, arm_batch
    >>> model = pmxgen.get_model("1cmt_iv")
    >>> reg = Regimen.every(12, dose=100, n=5).at_steady_state()
    >>> b = arm_batch(regimen_arm(reg), model, torch.zeros(1, 0, dtype=torch.float64), ())
    >>> p = {"CL": torch.tensor([2.0], dtype=torch.float64), "V": torch.tensor([10.0], dtype=torch.float64)}
    >>> auc = exact_auc(model, p, b, torch.tensor([[0.0, 12.0]], dtype=torch.float64))
    >>> abs(float(auc[0, 0]) / (100 / 2.0) - 1) < 1e-12
    True
    """
    if not isinstance(structural, LinearCompartmentModel):
        raise TypeError(f"exact_auc needs a closed-form linear model (found {type(structural).__name__})")
    p = structural.check_parameters(params, batch)
    doses = resolve_doses(structural, p, batch)
    lam, coef = structural.modes(p)
    m = lam.shape[-1]
    dose_coef = coef.gather(1, doses.cmt.unsqueeze(-1).expand(-1, -1, m))            # [B, D, M]
    if bool((doses.mask & (doses.cmt > structural.central_index())).any()):
        raise RegimenError(f"{structural.name}: doses into a peripheral compartment are not supported")
    dose_coef = torch.where(doses.mask.unsqueeze(-1), dose_coef, torch.zeros_like(dose_coef))
    r = batch.resets
    nxt = r.mask.unsqueeze(1) & (r.segment.unsqueeze(1) == doses.segment.unsqueeze(-1) + 1)
    seg_end = torch.where(nxt, r.time.unsqueeze(1), torch.full_like(r.time.unsqueeze(1), math.inf)).amin(-1)
    w = windows.to(dtype=lam.dtype, device=lam.device)
    if w.dim() == 2:
        w = w.unsqueeze(0).expand(lam.shape[0], -1, -1)
    t1, t2 = w[..., 0].unsqueeze(-1), w[..., 1].unsqueeze(-1)                           # [B, W, 1]
    lo = torch.maximum(t1, doses.record_time.unsqueeze(1))
    hi = torch.maximum(torch.minimum(t2, seg_end.unsqueeze(1)), lo)                     # [B, W, D]
    lam4, c4 = lam[:, None, None, :], dose_coef.unsqueeze(1)                            # [B,1,1,M], [B,1,D,M]

    def per_dose(v):
        return v.unsqueeze(1).unsqueeze(-1)                                             # [B,1,D,1]
    amount, rate, dur = per_dose(doses.amount), per_dose(doses.rate), per_dose(doses.duration)
    infusion = per_dose(doses.infusion)
    is_ss = per_dose((doses.ss > 0) & doses.mask)
    tau = per_dose(torch.where(doses.ss > 0, doses.ii, torch.ones_like(doses.ii)))
    arrival = per_dose(doses.arrival)
    geometric = -torch.expm1(-lam4 * tau)
    any_inf = bool(doses.infusion.any())
    k_max = 0
    if bool(is_ss.any()):
        # explicit terms while x + kτ < T, with x >= -lag: k < ceil((T + lag) / τ)
        lag = (doses.arrival - doses.record_time).clamp(min=0)
        span = torch.where((doses.ss > 0) & doses.mask, (doses.duration + lag) / torch.where(
            doses.ss > 0, doses.ii, torch.ones_like(doses.ii)), torch.zeros_like(lag))
        k_max = int(torch.ceil(span.max()).item()) + 1

    def antiderivative(t):
        x = (t.unsqueeze(-1) - arrival)                                                 # [B, W, D, 1]
        u, u_inf = _single_antiderivative(x, amount, rate, dur, infusion, lam4, c4, any_inf)
        if k_max == 0:
            return u
        k0 = torch.clamp(torch.ceil((dur - x) / tau), min=0.0)
        ss_sum = torch.zeros_like(u)
        for k in range(k_max):
            uk, _ = _single_antiderivative(x + k * tau, amount, rate, dur, infusion, lam4, c4, any_inf)
            ss_sum = ss_sum + torch.where(k < k0, uk - u_inf, torch.zeros_like(uk))
        y = x + k0 * tau
        tail_bolus = amount * c4 / lam4 * torch.exp(-lam4 * y)
        tail_inf = rate * c4 / (lam4 * lam4) * torch.exp(-lam4 * (y - dur)) * (-torch.expm1(-lam4 * dur))
        ss_val = ss_sum - torch.where(infusion, tail_inf, tail_bolus) / geometric
        return torch.where(is_ss, ss_val, u)
    total = (antiderivative(hi) - antiderivative(lo)).sum(-1)                              # [B, W, D]
    total = torch.where(doses.mask.unsqueeze(1), total, torch.zeros_like(total)).sum(-1)
    return total / p[structural.central_volume].unsqueeze(-1)


def grid_metrics(conc: torch.Tensor, time: np.ndarray, index: tuple[int, int], threshold: float | None
                 ) -> dict[str, torch.Tensor]:
    """Metrics of one window from concentrations ``[B, G]`` on a grid; ``index`` = (start, end) positions."""
    i0, i1 = index
    sub = conc[:, i0:i1 + 1]
    t = torch.as_tensor(time[i0:i1 + 1], dtype=conc.dtype, device=conc.device)
    width = float(time[i1] - time[i0])
    cmax, imax = sub.max(-1)
    cmin, imin = sub.min(-1)
    dt = t[1:] - t[:-1]
    y0, y1 = sub[:, :-1], sub[:, 1:]
    out = {"auc": (0.5 * (y0 + y1) * dt).sum(-1), "cmax": cmax, "tmax": t[imax], "cmin": cmin,
           "ctrough": sub[:, -1], "imax": imax + i0, "imin": imin + i0}
    if threshold is not None:
        thr = float(threshold)
        a0, a1 = y0 >= thr, y1 >= thr
        with torch.no_grad():
            frac = torch.where(a0 & a1, torch.ones_like(y0), torch.zeros_like(y0))
            cross = a0 ^ a1
            denom = torch.where(cross, y0 - y1, torch.ones_like(y0))
            part = torch.where(a0, (y0 - thr) / denom, (thr - y1) / denom)
            frac = torch.where(cross, part.clamp(0.0, 1.0), frac)
        above = (frac * dt).sum(-1)
        out["t_above"] = above
        out["ft_above"] = above / width
    return out


def refine_extrema(evaluate: Callable[[torch.Tensor], torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
                   sign: torch.Tensor, iterations: int = 12, f_lo: torch.Tensor | None = None,
                   f_hi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum of ``sign · C(t)`` in each bracket ``[lo, hi]`` (``[B, Q]``), all brackets at once.

    Golden-section search (``iterations`` evaluations), then one parabolic step through the best
    point and its neighbours (needs ``f_lo``/``f_hi``, the values at the bracket ends as seen from
    inside). ``evaluate(times [B, Q]) -> C [B, Q]``. Only interior points are evaluated, so a dose
    given exactly at a bracket end is never seen. Returns (best ``sign · C``, its time).
    """
    g = (math.sqrt(5.0) - 1.0) / 2.0
    x1 = hi - g * (hi - lo)
    x2 = lo + g * (hi - lo)
    f = torch.cat([sign, sign], dim=-1) * evaluate(torch.cat([x1, x2], dim=-1))
    q = lo.shape[-1]
    f1, f2 = f[..., :q], f[..., q:]
    track = f_lo is not None and f_hi is not None
    if track:
        f_lo, f_hi = sign * f_lo, sign * f_hi
    for _ in range(iterations):
        left = f1 >= f2                      # the maximum lies in [lo, x2]
        if track:
            f_hi = torch.where(left, f2, f_hi)
            f_lo = torch.where(left, f_lo, f1)
        hi = torch.where(left, x2, hi)
        lo = torch.where(left, lo, x1)
        new_x = torch.where(left, hi - g * (hi - lo), lo + g * (hi - lo))
        fn = sign * evaluate(new_x)
        x1, x2, f1, f2 = (torch.where(left, new_x, x2), torch.where(left, x1, new_x),
                          torch.where(left, fn, f2), torch.where(left, f1, fn))
    best_left = f1 >= f2
    best, at = torch.where(best_left, f1, f2), torch.where(best_left, x1, x2)
    if track:
        # one parabolic step through the best point and its two neighbours
        a, fa = torch.where(best_left, lo, x1), torch.where(best_left, f_lo, f1)
        c, fc = torch.where(best_left, x2, hi), torch.where(best_left, f2, f_hi)
        b, fb = at, best
        num = (b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)
        den = (b - a) * (fb - fc) - (b - c) * (fb - fa)
        safe = torch.where(den != 0, den, torch.ones_like(den))
        x = torch.where(den != 0, b - 0.5 * num / safe, b)
        x = torch.minimum(torch.maximum(x, a + 1e-3 * (b - a)), c - 1e-3 * (c - b))
        fx = sign * evaluate(x)
        better = torch.isfinite(fx) & (fx > best)
        best, at = torch.where(better, fx, best), torch.where(better, x, at)
    return best, at


# ---------------------------------------------------------------------------- targets
_TARGET = re.compile(r"^\s*([a-z_]+)\s*(?:\[\s*([\w\-\. ]+?)\s*\])?\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Target:
    """A target on one exposure metric of one window, e.g. ``auc[last] >= 400``.

    Examples
    --------
    >>> t = parse_target("ft_above[last] >= 0.5")
    >>> t.metric, t.window, t.op, t.value, str(t)
    ('ft_above', 'last', '>=', 0.5, 'ft_above[last]>=0.5')
    >>> bool(t.attained(np.array([0.4, 0.6])).tolist() == [False, True])
    True
    """

    metric: str
    window: str | None
    op: str
    value: float

    def __post_init__(self):
        if self.metric not in METRICS:
            raise RegimenError(f"unknown exposure metric {self.metric!r} in a target; metrics: {', '.join(METRICS)}")
        if self.op not in (">=", "<=", ">", "<"):
            raise RegimenError(f"target comparison must be >=, <=, > or < (found {self.op!r})")

    def attained(self, values):
        v = values
        return {">=": v >= self.value, "<=": v <= self.value, ">": v > self.value, "<": v < self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.metric}{'[' + self.window + ']' if self.window else ''}{self.op}{self.value:g}"


def parse_target(text) -> Target:
    """``METRIC[WINDOW] OP VALUE`` (window optional: the last window of each arm), e.g. ``cmin[last]>=2``."""
    if isinstance(text, Target):
        return text
    m = _TARGET.match(str(text).lower())
    if not m:
        raise RegimenError(f"target {text!r} is not METRIC[WINDOW] OP VALUE, e.g. 'auc[last]>=400' or "
                           f"'ft_above[last]>=0.5' (metrics: {', '.join(METRICS)})")
    try:
        value = float(m.group(4))
    except ValueError:
        raise RegimenError(f"target {text!r}: {m.group(4)!r} is not a number") from None
    return Target(m.group(1), m.group(2), m.group(3), value)


def wilson_interval(hits: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion (vectorised).

    Examples
    --------
    >>> lo, hi = wilson_interval(np.array([90]), np.array([100]))
    >>> round(float(lo[0]), 4), round(float(hi[0]), 4)
    (0.8256, 0.9448)
    """
    from scipy.stats import norm
    z = norm.ppf(0.5 + level / 2)
    n = np.asarray(n, dtype=float)
    p = np.asarray(hits, dtype=float) / np.maximum(n, 1)
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return centre - half, centre + half


def refine_time_above(evaluate: Callable[[torch.Tensor], torch.Tensor], conc: torch.Tensor, time: np.ndarray,
                      index: tuple[int, int], threshold: float, iterations: int = 12) -> torch.Tensor:
    """Time above ``threshold`` in a window with each crossing located by Illinois (regula falsi) iterations.

    Grid cells entirely above count in full; in a cell where the concentration crosses the
    threshold the crossing time is solved on the exact model ``evaluate(times [B, K]) -> C``.
    """
    i0, i1 = index
    sub = conc[:, i0:i1 + 1]
    t = torch.as_tensor(time[i0:i1 + 1], dtype=conc.dtype, device=conc.device)
    dt = t[1:] - t[:-1]
    y0, y1 = sub[:, :-1], sub[:, 1:]
    a0, a1 = y0 >= threshold, y1 >= threshold
    above = ((a0 & a1) * dt).sum(-1)
    cross = (a0 ^ a1) & (dt > 0)
    k = int(cross.sum(-1).max()) if cross.numel() else 0
    if k == 0:
        return above
    idx = torch.argsort((~cross).to(torch.int8), dim=-1, stable=True)[:, :k]
    valid = cross.gather(1, idx)
    t_lo, t_hi = t[idx], t[idx + 1]
    g_lo, g_hi = y0.gather(1, idx) - threshold, y1.gather(1, idx) - threshold
    starts_above = a0.gather(1, idx)
    lo, hi, glo, ghi = t_lo, t_hi, g_lo, g_hi
    x = t_lo
    for _ in range(iterations):
        den = ghi - glo
        x = torch.where(valid & (den != 0), (lo * ghi - hi * glo) / torch.where(den != 0, den, torch.ones_like(den)),
                        0.5 * (lo + hi))
        x = torch.minimum(torch.maximum(x, torch.minimum(lo, hi)), torch.maximum(lo, hi))
        gx = evaluate(x) - threshold
        flip = gx * ghi < 0
        lo, glo = torch.where(flip, hi, lo), torch.where(flip, ghi, glo * 0.5)
        hi, ghi = x, gx
    partial = torch.where(starts_above, x - t_lo, t_hi - x).clamp(min=0.0)
    partial = torch.minimum(partial, t_hi - t_lo)
    return above + torch.where(valid, partial, torch.zeros_like(partial)).sum(-1)


class WindowEvaluator:
    """Fast concentrations of a closed-form model inside one window ``[a, b]``.

    Doses whose input is complete by ``a`` (not steady-state ones) are folded into one amplitude
    per exponential mode at ``a``, so ``C(t) = Σ_m amp_m e^{−λ_m (t − a)} / V`` plus the
    superposition of the few doses still acting in the window (those arriving or infusing
    after ``a``). Exact (the same sums, regrouped); an evaluation costs O(modes + doses in the
    window) instead of O(all doses). For rows whose doses all lie in one reset segment.

    Examples
    --------
    >>> import torch, pmxgen
    >>> from pmxgen.simulation.regimen import Regimen
    >>> from pmxgen.simulation.schedule import regimen_arm, arm_batch
    >>> model = pmxgen.get_model("1cmt_oral")
    >>> arm = regimen_arm(Regimen.every(12, dose=100, n=10))
    >>> batch = arm_batch(arm, model, torch.zeros(2, 0, dtype=torch.float64), ())
    >>> p = {"KA": torch.tensor([1.0, 2.0]), "CL": torch.tensor([2.0, 3.0]), "V": torch.tensor([20.0, 30.0])}
    >>> ev = WindowEvaluator(model, p, batch, 108.0, 120.0)
    >>> t = torch.tensor([[110.0], [115.5]], dtype=torch.float64)
    >>> from pmxgen.simulation.schedule import with_observations
    >>> ref = model.predict(p, with_observations(batch, t, torch.zeros_like(t, dtype=torch.bool)))
    >>> bool(torch.allclose(ev(t), ref, rtol=1e-13, atol=0))
    True
    """

    def __init__(self, structural: LinearCompartmentModel, params: dict, batch, a: float, b: float):
        from ..structural.base import ResolvedDoses
        p = structural.check_parameters(params, batch)
        d = resolve_doses(structural, p, batch)
        lam, coef = structural.modes(p)
        m = lam.shape[-1]
        dose_coef = coef.gather(1, d.cmt.unsqueeze(-1).expand(-1, -1, m))
        dose_coef = torch.where(d.mask.unsqueeze(-1), dose_coef, torch.zeros_like(dose_coef))
        end = d.arrival + torch.where(d.infusion, d.duration, torch.zeros_like(d.duration))
        folded = d.mask & (d.ss == 0) & (end <= a)
        x = (a - d.arrival).clamp(min=0.0).unsqueeze(-1)
        lam3 = lam.unsqueeze(1)
        bolus = d.amount.unsqueeze(-1) * dose_coef * torch.exp(-lam3 * x)
        dur = d.duration.unsqueeze(-1)
        inf = d.rate.unsqueeze(-1) * dose_coef / lam3 * torch.exp(-lam3 * (x - dur)) * (-torch.expm1(-lam3 * dur))
        contrib = torch.where(d.infusion.unsqueeze(-1), inf, bolus)
        self.amp = torch.where(folded.unsqueeze(-1), contrib, torch.zeros_like(contrib)).sum(1)    # [B, M]
        # doses arriving at or after b act only after the window (its end is a pre-dose point)
        explicit = d.mask & ~folded & ((d.arrival < b) | ((d.ss > 0) & (d.record_time < b)))
        cols = torch.nonzero(explicit.any(0)).flatten()
        self.doses = ResolvedDoses(**{k: getattr(d, k).index_select(1, cols) for k in d.__dataclass_fields__})
        self.doses = ResolvedDoses(**{**{k: getattr(self.doses, k) for k in d.__dataclass_fields__},
                                      "mask": explicit.index_select(1, cols)})
        self.dose_coef = dose_coef.index_select(1, cols)
        self.lam, self.a = lam, float(a)
        self.volume = p[structural.central_volume]
        self.segment = d.segment[:, :1] if d.segment.shape[1] else torch.zeros_like(d.mask[:, :1], dtype=torch.int64)

    def __call__(self, times: torch.Tensor, pre: torch.Tensor | None = None) -> torch.Tensor:
        """Concentrations at ``times [B, P]`` in the window (``pre``: before doses at the same time)."""
        from ..structural.closed_form import superpose
        folded = (self.amp.unsqueeze(1) * torch.exp(-self.lam.unsqueeze(1) * (times - self.a).unsqueeze(-1))).sum(-1)
        if self.doses.mask.shape[1] == 0:
            return folded / self.volume.unsqueeze(-1)
        order = torch.full_like(times, 1e12) if pre is None else torch.where(pre, -1.0, 1e12).to(times.dtype)
        seg = self.segment.expand_as(times)
        mask = torch.ones_like(times, dtype=torch.bool)
        amounts = superpose(self.lam, self.dose_coef, self.doses, times, order, seg, mask)
        return (folded + amounts) / self.volume.unsqueeze(-1)
