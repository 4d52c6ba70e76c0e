"""Closed-form linear compartment models (NONMEM ADVAN1-4, 11, 12) by superposition.

A linear mammillary model's response in the central compartment to a unit bolus into
compartment ``c`` is a sum of exponentials ``h_c(t) = Σ_m a_cm exp(-λ_m t)``. Every
dose event — bolus, zero-order infusion, steady state (SS=1/2, infinite past of doses
every II), lagged, with bioavailability — is a closed-form functional of ``h``; the
prediction at an observation is the sum over the doses of its reset segment that precede
it (NONMEM's record order). Everything is batched over subjects × observations × doses
as torch operations, so it runs on any device and is differentiable.

Steady state of a dose with interval τ, time ``s`` since the last dose of the infinite
series (``s`` may be negative with a lag) uses ``Σ_k≥0 h(s + kτ)``:

* bolus: ``a exp(-λ s) / (1 - exp(-λ τ))``;
* infusion of rate r over T (any T, also longer than τ):
  ``r a/λ [n + (exp(-λ(s + nτ - T)) - exp(-λ s)) / (1 - exp(-λ τ))]`` with
  ``n = #{k ≥ 0: s + kτ < T}``.
"""
from __future__ import annotations

import math
from abc import abstractmethod

import torch

from ..data.batching import SubjectBatch
from .base import Params, ResolvedDoses, StructuralModel, observation_compartment, resolve_doses

__all__ = [
    "LinearCompartmentModel", "OneCompartmentIV", "OneCompartmentOral", "TwoCompartmentIV",
    "TwoCompartmentOral", "ThreeCompartmentIV", "ThreeCompartmentOral", "superpose",
]

#: Relative separation below which two rate constants are treated as coincident and nudged apart.
_COINCIDENT = 1e-7
#: Elements per chunk of the [subjects, observations, doses, modes] superposition.
_CHUNK_ELEMENTS = 1 << 23


def disposition_eigenvalues(k10: torch.Tensor, k12: list[torch.Tensor], k21: list[torch.Tensor]) -> torch.Tensor:
    """Rates λ (positive, descending) of a mammillary model with 0, 1 or 2 peripheral compartments. ``[N, M]``."""
    if not k12:
        return k10.unsqueeze(-1)
    if len(k12) == 1:
        s = k10 + k12[0] + k21[0]
        p = k10 * k21[0]
        disc = torch.clamp(s * s - 4 * p, min=0.0)
        big = 0.5 * (s + torch.sqrt(disc))
        return torch.stack([big, p / big], dim=-1)
    (k12_, k13), (k21_, k31) = k12, k21
    a2 = k10 + k12_ + k13 + k21_ + k31
    a1 = k10 * k31 + k21_ * k31 + k21_ * k13 + k10 * k21_ + k31 * k12_
    a0 = k10 * k21_ * k31
    p = a1 - a2 * a2 / 3
    q = 2 * a2 ** 3 / 27 - a1 * a2 / 3 + a0
    r1 = torch.sqrt(torch.clamp(-p ** 3 / 27, min=torch.finfo(k10.dtype).tiny))
    phi = torch.acos(torch.clamp(-q / (2 * r1), -1 + 1e-15, 1 - 1e-15)) / 3
    r2 = 2 * torch.exp(torch.log(r1) / 3)
    roots = [-(torch.cos(phi + off) * r2 - a2 / 3) for off in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    return -torch.sort(-torch.stack(roots, dim=-1), dim=-1).values


def _separate(rates: torch.Tensor) -> torch.Tensor:
    """Nudge coincident rates apart (relative gap ≥ 1e-7) so partial fractions stay finite.

    The error this adds is of the order of the nudge (1e-7 relative), far below
    measurement error; exact coincidence otherwise gives 0/0.
    """
    out = [rates[..., 0]]
    for m in range(1, rates.shape[-1]):
        r = rates[..., m]
        for prev in out:
            gap = r - prev
            close = gap.abs() < _COINCIDENT * prev.abs()
            r = torch.where(close, prev * (1 - 2 * _COINCIDENT), r)
        out.append(r)
    return torch.stack(out, dim=-1)


def central_bolus_coefficients(lam: torch.Tensor, k21: list[torch.Tensor]) -> torch.Tensor:
    """``a_m`` of the central amount after a unit bolus into the central compartment. ``[N, M]``.

    ``a_m = Π_j (k_j1 - λ_m) / Π_{l≠m} (λ_l - λ_m)``.
    """
    m_count = lam.shape[-1]
    coefs = []
    for m in range(m_count):
        num = torch.ones_like(lam[..., m])
        for kj in k21:
            num = num * (kj - lam[..., m])
        den = torch.ones_like(num)
        for l in range(m_count):
            if l != m:
                den = den * (lam[..., l] - lam[..., m])
        coefs.append(num / den)
    return torch.stack(coefs, dim=-1)


class LinearCompartmentModel(StructuralModel):
    """Base of the closed-form models: subclasses give rates and per-compartment coefficients.

    Observations are concentrations in the central compartment (amount / central volume).
    """

    central_volume: str = "V"
    has_depot: bool = False

    @abstractmethod
    def disposition(self, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list, list]:
        """(k10, [k12, k13], [k21, k31]) for this model's parameterisation."""

    def modes(self, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rates ``λ [N, M]`` and coefficients ``[N, n_cmt, M]`` (central amount per unit bolus into each compartment).

        Compartments that are neither depot nor central (peripherals) get NaN
        coefficients: dosing into them is refused in :meth:`predict`.
        """
        k10, k12, k21 = self.disposition(p)
        lam = disposition_eigenvalues(k10, k12, k21)
        n_cmt = len(self.compartments)
        if not self.has_depot:
            lam = _separate(lam)
            a = central_bolus_coefficients(lam, k21)
            coef = torch.full(lam.shape[:-1] + (n_cmt, lam.shape[-1]), float("nan"), dtype=lam.dtype,
                              device=lam.device)
            coef[..., 0, :] = a
            return lam, coef
        ka = p["KA"]
        lam = _separate(torch.cat([ka.unsqueeze(-1), lam], dim=-1))
        ka, lam_d = lam[..., 0], lam[..., 1:]
        a = central_bolus_coefficients(lam_d, k21)
        via_depot = a * ka.unsqueeze(-1) / (ka.unsqueeze(-1) - lam_d)
        depot_row = torch.cat([-via_depot.sum(-1, keepdim=True), via_depot], dim=-1)
        central_row = torch.cat([torch.zeros_like(ka).unsqueeze(-1), a], dim=-1)
        coef = torch.full(lam.shape[:-1] + (n_cmt, lam.shape[-1]), float("nan"), dtype=lam.dtype, device=lam.device)
        coef[..., 0, :] = depot_row
        coef[..., 1, :] = central_row
        return lam, coef

    def central_index(self) -> int:
        return 1 if self.has_depot else 0

    def predict(self, params: Params, batch: SubjectBatch) -> torch.Tensor:
        """Concentrations ``[N, J]`` in the central compartment at the observation records."""
        p = self.check_parameters(params, batch)
        doses = resolve_doses(self, p, batch)
        lam, coef = self.modes(p)
        obs_cmt = observation_compartment(self, batch)
        if bool(((obs_cmt != self.central_index()) & batch.obs.mask).any()):
            from ..errors import ModelError
            raise ModelError(f"{self.name} predicts the central compartment (CMT {self.central_index() + 1}) only; "
                             f"an observation record names another CMT")
        dose_coef = coef.gather(1, doses.cmt.unsqueeze(-1).expand(-1, -1, coef.shape[-1]))
        if bool((doses.mask & (doses.cmt > self.central_index())).any()):
            from ..errors import ModelError
            raise ModelError(f"{self.name}: doses into a peripheral compartment are not supported; dose into "
                             f"CMT {'1 (depot) or 2 (central)' if self.has_depot else '1 (central)'}")
        amounts = superpose(lam, dose_coef, doses, batch.obs.time, batch.obs.order, batch.obs.segment,
                            batch.obs.mask)
        return amounts / p[self.central_volume].unsqueeze(-1)

    def as_ode(self, **solver_options):
        """The same model as an :class:`~pmxgen.structural.ode.ODEModel` (for checks and nonlinear extensions)."""
        from .ode import ODEModel, linear_rhs
        return ODEModel(linear_rhs(self), compartments=self.compartments, parameter_names=self.parameter_names,
                        default_dose_cmt=self.default_dose_cmt, default_obs_cmt=self.default_obs_cmt,
                        scale={self.default_obs_cmt: self.central_volume}, name=f"{self.name}_ode", **solver_options)


def superpose(lam: torch.Tensor, dose_coef: torch.Tensor, doses: ResolvedDoses, obs_time: torch.Tensor,
              obs_order: torch.Tensor, obs_segment: torch.Tensor, obs_mask: torch.Tensor) -> torch.Tensor:
    """Central amounts ``[N, J]``: the sum over doses of each dose's closed-form contribution.

    Parameters
    ----------
    lam : ``[N, M]`` rates; dose_coef : ``[N, D, M]`` coefficients of each dose's compartment.
    doses : resolved dose events; obs_* : observation times, record order, segment, mask ``[N, J]``.
    """
    n, j_count = obs_time.shape
    d_count, m_count = dose_coef.shape[1], dose_coef.shape[2]
    any_inf = bool(doses.infusion.any())
    any_ss = bool((doses.ss > 0).any())
    chunk = max(1, _CHUNK_ELEMENTS // max(1, j_count * d_count * m_count))
    out = []
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        out.append(_superpose_chunk(lam[sl], dose_coef[sl], _slice_doses(doses, sl), obs_time[sl], obs_order[sl],
                                    obs_segment[sl], obs_mask[sl], any_inf, any_ss))
    return torch.cat(out, dim=0) if len(out) > 1 else out[0]


def _slice_doses(doses: ResolvedDoses, sl: slice) -> ResolvedDoses:
    return ResolvedDoses(**{k: getattr(doses, k)[sl] for k in doses.__dataclass_fields__})


def _superpose_chunk(lam, dose_coef, doses: ResolvedDoses, t_obs, o_obs, seg_obs, m_obs, any_inf, any_ss):
    # pair tensors [n, J, D]
    t_o = t_obs.unsqueeze(-1)
    same_segment = seg_obs.unsqueeze(-1) == doses.segment.unsqueeze(1)
    mask = m_obs.unsqueeze(-1) & doses.mask.unsqueeze(1) & same_segment
    record_before = doses.order.unsqueeze(1) < o_obs.unsqueeze(-1)
    dt = t_o - doses.arrival.unsqueeze(1)                       # time since arrival
    dt_record = t_o - doses.record_time.unsqueeze(1)
    # a steady-state dose acts from its record on (its infinite past precedes it)
    is_ss = (doses.ss > 0).unsqueeze(1)
    since = torch.where(is_ss, dt_record, dt)
    active = mask & ((since > 0) | ((since == 0) & record_before))
    lam4 = lam[:, None, None, :]                                 # [n,1,1,M]
    coef4 = dose_coef.unsqueeze(1)                               # [n,1,D,M]
    dt_pos = torch.where(active, dt, torch.zeros_like(dt)).clamp(min=0.0).unsqueeze(-1)
    amount = doses.amount.unsqueeze(1)
    total = torch.zeros_like(dt)
    bolus = active & ~doses.infusion.unsqueeze(1) & ~is_ss
    total = total + torch.where(bolus, amount * (coef4 * torch.exp(-lam4 * dt_pos)).sum(-1), 0.0)
    if any_inf:
        rate = doses.rate.unsqueeze(1)
        dur = doses.duration.unsqueeze(1).unsqueeze(-1)
        inf = active & doses.infusion.unsqueeze(1) & ~is_ss
        elapsed_end = dt_pos - torch.minimum(dt_pos, dur)
        inf_val = (coef4 / lam4 * (torch.exp(-lam4 * elapsed_end) - torch.exp(-lam4 * dt_pos))).sum(-1)
        total = total + torch.where(inf, rate * inf_val, 0.0)
    if any_ss:
        tau = torch.where(doses.ss > 0, doses.ii, torch.ones_like(doses.ii)).unsqueeze(1)
        s = torch.where(active & is_ss, dt, torch.zeros_like(dt))
        s_eff = (s + tau * torch.clamp(torch.ceil(-s / tau), min=0.0)).unsqueeze(-1)
        tau4 = tau.unsqueeze(-1)
        geometric = -torch.expm1(-lam4 * tau4)
        ss_bolus = active & is_ss & ~doses.infusion.unsqueeze(1)
        total = total + torch.where(ss_bolus, amount * (coef4 * torch.exp(-lam4 * s_eff) / geometric).sum(-1), 0.0)
        if any_inf:
            ss_inf = active & is_ss & doses.infusion.unsqueeze(1)
            n_running = torch.clamp(torch.ceil((dur - s_eff) / tau4), min=0.0)
            val = n_running + (torch.exp(-lam4 * (s_eff + n_running * tau4 - dur)) - torch.exp(-lam4 * s_eff)) / geometric
            total = total + torch.where(ss_inf, rate * (coef4 / lam4 * val).sum(-1), 0.0)
    return total.sum(-1)


# ---------------------------------------------------------------------------------- library
class OneCompartmentIV(LinearCompartmentModel):
    """One compartment, IV bolus/infusion into the central compartment (NONMEM ADVAN1). Parameters CL, V.

    Examples
    --------
    >>> import torch, pandas as pd, pmxgen
    >>> ds = pmxgen.read_nonmem(pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 2.0], "AMT": [100.0, 0.0],
    ...                                       "DV": [float("nan"), 1.0]}))
    >>> c = OneCompartmentIV().predict({"CL": torch.tensor(2.0), "V": torch.tensor(10.0)}, ds.batch)
    >>> round(float(c[0, 0]), 6) == round(10 * float(torch.exp(torch.tensor(-0.4))), 6)
    True
    """

    compartments = ("central",)
    parameter_names = ("CL", "V")
    name = "1cmt_iv"

    def disposition(self, p):
        return p["CL"] / p["V"], [], []


class OneCompartmentOral(LinearCompartmentModel):
    """One compartment with first-order absorption from a depot (NONMEM ADVAN2). Parameters KA, CL, V.

    CMT 1 is the depot (default for doses), CMT 2 the central compartment (observations).
    """

    compartments = ("depot", "central")
    parameter_names = ("KA", "CL", "V")
    default_dose_cmt, default_obs_cmt = 1, 2
    has_depot = True
    name = "1cmt_oral"

    def disposition(self, p):
        return p["CL"] / p["V"], [], []


class TwoCompartmentIV(LinearCompartmentModel):
    """Two compartments, IV (NONMEM ADVAN3). Parameters CL, V1 (central), Q, V2 (peripheral)."""

    compartments = ("central", "peripheral")
    parameter_names = ("CL", "V1", "Q", "V2")
    central_volume = "V1"
    name = "2cmt_iv"

    def disposition(self, p):
        return p["CL"] / p["V1"], [p["Q"] / p["V1"]], [p["Q"] / p["V2"]]


class TwoCompartmentOral(LinearCompartmentModel):
    """Two compartments with first-order absorption (NONMEM ADVAN4). Parameters KA, CL, V1, Q, V2.

    CMT 1 depot, 2 central, 3 peripheral.
    """

    compartments = ("depot", "central", "peripheral")
    parameter_names = ("KA", "CL", "V1", "Q", "V2")
    central_volume = "V1"
    default_dose_cmt, default_obs_cmt = 1, 2
    has_depot = True
    name = "2cmt_oral"

    def disposition(self, p):
        return p["CL"] / p["V1"], [p["Q"] / p["V1"]], [p["Q"] / p["V2"]]


class ThreeCompartmentIV(LinearCompartmentModel):
    """Three compartments, IV (NONMEM ADVAN11). Parameters CL, V1, Q2, V2, Q3, V3."""

    compartments = ("central", "peripheral1", "peripheral2")
    parameter_names = ("CL", "V1", "Q2", "V2", "Q3", "V3")
    central_volume = "V1"
    name = "3cmt_iv"

    def disposition(self, p):
        return (p["CL"] / p["V1"], [p["Q2"] / p["V1"], p["Q3"] / p["V1"]], [p["Q2"] / p["V2"], p["Q3"] / p["V3"]])


class ThreeCompartmentOral(LinearCompartmentModel):
    """Three compartments with first-order absorption (NONMEM ADVAN12). Parameters KA, CL, V1, Q2, V2, Q3, V3.

    CMT 1 depot, 2 central, 3 and 4 peripheral.
    """

    compartments = ("depot", "central", "peripheral1", "peripheral2")
    parameter_names = ("KA", "CL", "V1", "Q2", "V2", "Q3", "V3")
    central_volume = "V1"
    default_dose_cmt, default_obs_cmt = 1, 2
    has_depot = True
    name = "3cmt_oral"

    def disposition(self, p):
        return (p["CL"] / p["V1"], [p["Q2"] / p["V1"], p["Q3"] / p["V1"]], [p["Q2"] / p["V2"], p["Q3"] / p["V3"]])
