"""What every structural model shares: its compartments, parameters and the dose resolution.

A structural model maps individual parameters (a dict of ``[N]`` tensors, one value per
subject) and a :class:`~pmxgen.data.SubjectBatch` to predictions ``[N, J]`` at the
observation records. Dose-related parameters follow NONMEM's names, numbered by
compartment: ``F1`` (bioavailability), ``ALAG1`` (lag time), ``R1`` (rate, for RATE=-1),
``D1`` (duration, for RATE=-2); absent ones default to F=1 and ALAG=0.
"""
from __future__ import annotations

import re

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping

import torch

from ..data.batching import SubjectBatch
from ..errors import DatasetError, ModelError

__all__ = ["StructuralModel", "ResolvedDoses", "resolve_doses", "Params", "DOSE_PARAMETER"]

Params = Mapping[str, torch.Tensor]

#: Names of dose-related parameters: F<n>, ALAG<n>, R<n>, D<n>.
DOSE_PARAMETER = re.compile(r"^(F|ALAG|R|D)\d+$")


@dataclass(frozen=True)
class ResolvedDoses:
    """Dose events with the model's F, ALAG, R and D applied, ``[N, D]`` each.

    ``cmt`` is the 0-based compartment index; ``arrival`` the dose time plus lag;
    ``duration`` is 0 for boluses.
    """

    record_time: torch.Tensor
    arrival: torch.Tensor
    amount: torch.Tensor
    rate: torch.Tensor
    duration: torch.Tensor
    infusion: torch.Tensor
    cmt: torch.Tensor
    ss: torch.Tensor
    ii: torch.Tensor
    order: torch.Tensor
    segment: torch.Tensor
    mask: torch.Tensor


class StructuralModel(ABC):
    """Base class: compartments (NONMEM numbering from 1), parameters and default compartments.

    Subclasses implement :meth:`predict`.
    """

    #: Compartment names; compartment k (1-based, as in CMT) is ``compartments[k-1]``.
    compartments: tuple[str, ...] = ()
    #: Names of the parameters :meth:`predict` requires.
    parameter_names: tuple[str, ...] = ()
    #: CMT used for doses whose CMT is 0 or absent.
    default_dose_cmt: int = 1
    #: CMT used for observations whose CMT is 0 or absent.
    default_obs_cmt: int = 1
    name: str = "model"

    @abstractmethod
    def predict(self, params: Params, batch: SubjectBatch) -> torch.Tensor:
        """Predictions ``[N, J]`` at the observation records (0 on padding)."""

    def __call__(self, params: Params, batch: SubjectBatch) -> torch.Tensor:
        return self.predict(params, batch)

    # ----------------------------------------------------------------- checks
    def check_parameters(self, params: Params, batch: SubjectBatch) -> dict[str, torch.Tensor]:
        """Broadcast every parameter to ``[N]`` on the batch's device; error on a missing one."""
        missing = [p for p in self.parameter_names if p not in params]
        if missing:
            raise ModelError(f"{self.name}: parameters {', '.join(missing)} are missing; the model needs "
                             f"{', '.join(self.parameter_names)}")
        n = batch.n_subjects
        out = {}
        for k, v in params.items():
            t = torch.as_tensor(v, dtype=batch.dtype, device=batch.device)
            if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, n)):
                raise ModelError(f"{self.name}: parameter {k} has shape {tuple(t.shape)}; give a scalar or one "
                                 f"value per subject ({n})")
            out[k] = t.expand(n) if t.dim() == 1 else t.expand(n).clone()
        return out

    def check_dataset(self, dataset) -> None:
        """Raise :class:`DatasetError` for a dose or observation into a compartment the model lacks."""
        n_cmt = len(self.compartments)
        frame = dataset.to_frame()
        cmt_col = dataset.columns.get("CMT")
        for table, what in ((dataset.batch.doses, "dose"), (dataset.batch.obs, "observation")):
            bad = table.mask & (table.cmt > n_cmt)
            if bool(bad.any()):
                pos = int(table.row[bad][0])
                raise DatasetError(f"a {what} goes into compartment {int(table.cmt[bad][0])}, which model "
                                   f"{self.name} lacks (it has {n_cmt}: " +
                                   ", ".join(f"{k + 1}={c}" for k, c in enumerate(self.compartments)) + ")",
                                   source=dataset.source, row=dataset.row_of(pos), column=cmt_col,
                                   value=int(frame.iloc[pos][cmt_col]) if cmt_col else None,
                                   fix="correct CMT, or choose a model with that compartment")

    def _per_compartment(self, params: Params, prefix: str, default: float | None, like: torch.Tensor) -> torch.Tensor:
        """``[N, n_cmt]`` of parameters ``F1, F2, ...`` (``default`` where absent, NaN if None)."""
        n_cmt = len(self.compartments)
        cols = []
        for k in range(1, n_cmt + 1):
            v = params.get(f"{prefix}{k}")
            if v is None:
                cols.append(torch.full_like(like, float("nan") if default is None else default))
            else:
                cols.append(torch.as_tensor(v, dtype=like.dtype, device=like.device).expand_as(like))
        return torch.stack(cols, dim=1)


def resolve_doses(model: StructuralModel, params: Params, batch: SubjectBatch) -> ResolvedDoses:
    """Apply bioavailability, lag, modelled rate/duration and default compartments to the dose events."""
    d = batch.doses
    like = next(iter(params.values())) if params else torch.zeros(batch.n_subjects, dtype=batch.dtype,
                                                                   device=batch.device)
    cmt = torch.where(d.cmt == 0, torch.full_like(d.cmt, model.default_dose_cmt), d.cmt) - 1
    cmt = torch.where(d.mask, cmt, torch.zeros_like(cmt))
    if bool(((cmt >= len(model.compartments)) & d.mask).any()):
        raise ModelError(f"{model.name}: a dose goes into a compartment the model lacks; run "
                         f"model.check_dataset(dataset) for the row")
    f = model._per_compartment(params, "F", 1.0, like).gather(1, cmt)
    lag = model._per_compartment(params, "ALAG", 0.0, like).gather(1, cmt)
    amount = d.amt * f
    modelled_rate = model._per_compartment(params, "R", None, like).gather(1, cmt)
    modelled_dur = model._per_compartment(params, "D", None, like).gather(1, cmt)
    is_r = d.mask & (d.rate == -1)
    is_d = d.mask & (d.rate == -2)
    for flag, values, name in ((is_r, modelled_rate, "R"), (is_d, modelled_dur, "D")):
        if bool(flag.any()) and bool((~(values[flag] > 0)).any()):
            raise ModelError(f"{model.name}: doses with RATE={-1 if name == 'R' else -2} need a positive modelled "
                             f"{name}<cmt> parameter (e.g. {name}1) for their compartment")
    safe_rate = torch.where(d.rate > 0, d.rate, torch.ones_like(d.rate))
    rate = torch.where(d.rate > 0, d.rate, torch.where(is_r, modelled_rate.nan_to_num(1.0),
                                                        torch.zeros_like(d.rate)))
    duration = torch.where(d.rate > 0, amount / safe_rate,
                           torch.where(is_r, amount / modelled_rate.nan_to_num(1.0),
                                       torch.where(is_d, modelled_dur.nan_to_num(1.0), torch.zeros_like(amount))))
    rate = torch.where(is_d, amount / modelled_dur.nan_to_num(1.0), rate)
    infusion = d.mask & (d.rate != 0)
    if bool((d.mask & (f <= 0)).any()) or bool((d.mask & (lag < 0)).any()):
        raise ModelError(f"{model.name}: bioavailability F must be > 0 and lag time ALAG >= 0")
    return ResolvedDoses(record_time=d.time, arrival=d.time + lag, amount=amount, rate=rate, duration=duration,
                         infusion=infusion, cmt=cmt, ss=d.ss, ii=d.ii, order=d.order, segment=d.segment, mask=d.mask)


def observation_compartment(model: StructuralModel, batch: SubjectBatch) -> torch.Tensor:
    """0-based observed compartment per observation ``[N, J]`` (default where CMT is 0)."""
    c = batch.obs.cmt
    return torch.where(c == 0, torch.full_like(c, model.default_obs_cmt), c) - 1
