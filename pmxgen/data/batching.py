"""Validated records → padded per-subject tensors (:class:`SubjectBatch`).

Record-order semantics (NONMEM's) are encoded in two numbers per event:

``segment``
    Counts the resets before an event within its subject: EVID 3, EVID 4 and SS=1
    doses start a new segment (all amounts to zero). A dose acts only on
    observations of its own segment.
``order``
    The position of the record within its subject (0-based). An observation
    at the same time as a dose sees that dose only if the dose record comes first.
    Additional (ADDL) doses get ``k + 0.5`` where ``k`` is the last record of the
    segment at or before their time: an implied dose at the same time as a
    record is given after it (a trough sample at a dosing time sees the
    pre-dose level).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from .columns import column_list
from .reader import Records

__all__ = ["ObservationTable", "DoseTable", "ResetTable", "SubjectBatch", "RecordCovariates", "build_batch"]


class _TensorGroup:
    """Dataclass mixin: move every tensor field to a device / floating dtype."""

    def to(self, device=None, dtype: torch.dtype | None = None):
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                new_dtype = dtype if (dtype is not None and value.is_floating_point()) else value.dtype
                changes[f.name] = value.to(device=device if device is not None else value.device, dtype=new_dtype)
            elif isinstance(value, _TensorGroup):
                changes[f.name] = value.to(device, dtype)
        return replace(self, **changes)

    def select(self, index: torch.Tensor):
        """The subjects at ``index`` (a 1-d tensor of positions), in that order."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                changes[f.name] = value.index_select(0, index.to(value.device))
            elif isinstance(value, _TensorGroup):
                changes[f.name] = value.select(index)
        return replace(self, **changes)

    def repeat(self, times: int):
        """Every subject ``times`` times (copy-major: rows ``c*N + i``), for evaluating many draws at once."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                changes[f.name] = value.repeat(times, *([1] * (value.dim() - 1)))
            elif isinstance(value, _TensorGroup):
                changes[f.name] = value.repeat(times)
        return replace(self, **changes)


class _SharedTable:
    """A ``[R, C]`` tensor shared by every padded table made from one dataset.

    Not a tensor and not a dataclass, so code that walks a batch's fields to select, repeat
    or concatenate subjects passes it on unchanged (it is indexed by record, not by subject).
    """

    __slots__ = ("values", "_converted")

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values
        self._converted: tuple | None = None

    def to(self, device, dtype: torch.dtype) -> "_SharedTable":
        """On ``device`` with floating ``dtype``; the obs and dose tables converted together still share one."""
        values = self.values.to(device=device, dtype=dtype)
        if values is self.values:
            return self
        key = (values.device, values.dtype)
        if self._converted is None or self._converted[0] != key:
            self._converted = (key, _SharedTable(values))
        return self._converted[1]

    def __eq__(self, other) -> bool:
        return (isinstance(other, _SharedTable) and self.values.dtype == other.values.dtype
                and self.values.shape == other.values.shape and torch.equal(self.values, other.values))

    __hash__ = None

    def __repr__(self) -> str:
        return f"_SharedTable(shape={tuple(self.values.shape)}, dtype={self.values.dtype})"


@dataclass(frozen=True, eq=False)
class RecordCovariates(_TensorGroup):
    """The covariates on the records of a padded table, ``[N, J, C]``, gathered when read.

    A data set may have many covariate columns (every column that is not a NONMEM data item),
    so the ``[N, J, C]`` array is not stored: :attr:`table` holds each record's covariates once
    (``[R, C]``, one row per record of :meth:`Dataset.to_frame`, shared by the observation and
    dose tables and by every selection of subjects) and :attr:`row` which record sits in each
    slot. Indexing gathers only what is asked for: ``covariates[..., k]`` is the ``[N, J]``
    tensor of covariate ``k`` (0 on padding), ``covariates.tensor()`` the whole ``[N, J, C]``
    tensor. Any other index, ``torch`` function or ``numpy.asarray`` works on the whole tensor.

    Parameters
    ----------
    row : torch.Tensor
        ``[N, J]`` position of the record in the frame, -1 for padding.
    shared : torch.Tensor
        ``[R, C]`` covariates of every record (kept as it is when subjects are selected,
        repeated or concatenated); read it as :attr:`table`.

    Examples
    --------
    >>> import torch
    >>> cov = RecordCovariates(row=torch.tensor([[0, 2], [1, -1]]),
    ...                        shared=torch.tensor([[70.0, 1.0], [80.0, 0.0], [71.0, 1.0]]))
    >>> cov.shape
    torch.Size([2, 2, 2])
    >>> cov[..., 0].tolist()
    [[70.0, 71.0], [80.0, 0.0]]
    """

    row: torch.Tensor
    shared: _SharedTable

    def __post_init__(self) -> None:
        if isinstance(self.shared, torch.Tensor):
            object.__setattr__(self, "shared", _SharedTable(self.shared))

    @property
    def table(self) -> torch.Tensor:
        """``[R, C]`` covariates of every record of the dataset."""
        return self.shared.values

    def to(self, device=None, dtype: torch.dtype | None = None) -> "RecordCovariates":
        shared = self.shared.to(device if device is not None else self.table.device,
                                dtype if dtype is not None else self.table.dtype)
        return replace(self, row=self.row.to(device=device if device is not None else self.row.device), shared=shared)

    # selecting / repeating subjects changes the slots, never the record table
    def select(self, index: torch.Tensor) -> "RecordCovariates":
        return replace(self, row=self.row.index_select(0, index.to(self.row.device)))

    def repeat(self, times: int) -> "RecordCovariates":
        return replace(self, row=self.row.repeat(times, 1))

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.row.shape, self.table.shape[-1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    @property
    def device(self) -> torch.device:
        return self.table.device

    @property
    def ndim(self) -> int:
        return self.row.dim() + 1

    def dim(self) -> int:
        return self.ndim

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return int(self.row.shape[0])

    def _gather(self, columns: torch.Tensor) -> torch.Tensor:
        """``columns`` (``[R]`` or ``[R, K]``) at each slot, 0 on padding."""
        pad = self.row < 0
        values = columns[self.row.clamp(min=0)]
        mask = pad if values.dim() == pad.dim() else pad.unsqueeze(-1)
        return values.masked_fill(mask, 0)

    def tensor(self) -> torch.Tensor:
        """The whole ``[N, J, C]`` tensor (0 on padding)."""
        return self._gather(self.table)

    def __getitem__(self, index) -> torch.Tensor:
        if (isinstance(index, tuple) and len(index) == 2 and index[0] is Ellipsis
                and isinstance(index[1], (int, slice, list, torch.Tensor))):
            return self._gather(self.table[:, index[1]])
        return self.tensor()[index]

    def tolist(self) -> list:
        return self.tensor().tolist()

    def __array__(self, dtype=None, copy=None):
        out = self.tensor().detach().cpu().numpy()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"RecordCovariates(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def unwrap(x):
            if isinstance(x, RecordCovariates):
                return x.tensor()
            if isinstance(x, (list, tuple)):
                return type(x)(unwrap(v) for v in x)
            return x
        return func(*unwrap(args), **{k: unwrap(v) for k, v in (kwargs or {}).items()})


@dataclass(frozen=True)
class ObservationTable(_TensorGroup):
    """Observation records (EVID 0, MDV 0), padded to ``[N, J]``.

    ``row`` is the position of the record in :meth:`Dataset.to_frame` (-1 for padding);
    ``covariates`` is ``[N, J, C]``, the values on the record itself: a
    :class:`RecordCovariates` (gathered when indexed) for data read from a file or frame, or a
    plain tensor.
    """

    time: torch.Tensor
    dv: torch.Tensor
    cmt: torch.Tensor
    order: torch.Tensor
    segment: torch.Tensor
    mask: torch.Tensor
    row: torch.Tensor
    blq: torch.Tensor
    lloq: torch.Tensor
    occasion: torch.Tensor
    covariates: torch.Tensor


@dataclass(frozen=True)
class DoseTable(_TensorGroup):
    """Dose events after ADDL expansion, padded to ``[N, D]``.

    ``rate`` is NONMEM's RATE (0 bolus, > 0 infusion rate, -1 modelled rate, -2 modelled
    duration); ``implied`` marks additional (ADDL) doses; ``row`` is the dose record that
    gave the event; ``covariates`` (``[N, D, C]``, a :class:`RecordCovariates` or a tensor) are
    those of the record at or before the event (for an implied dose, the last record before it).
    """

    time: torch.Tensor
    amt: torch.Tensor
    cmt: torch.Tensor
    rate: torch.Tensor
    ss: torch.Tensor
    ii: torch.Tensor
    order: torch.Tensor
    segment: torch.Tensor
    mask: torch.Tensor
    row: torch.Tensor
    implied: torch.Tensor
    occasion: torch.Tensor
    covariates: torch.Tensor


@dataclass(frozen=True)
class ResetTable(_TensorGroup):
    """Records that set all amounts to zero (EVID 3, EVID 4, SS=1 doses), padded to ``[N, R]``.

    ``segment`` is the segment the reset starts.
    """

    time: torch.Tensor
    order: torch.Tensor
    segment: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class SubjectBatch(_TensorGroup):
    """All subjects of a dataset as padded tensors on one device.

    Attributes
    ----------
    obs, doses, resets : ObservationTable, DoseTable, ResetTable
    baseline : torch.Tensor
        ``[N, C]`` covariates of each subject's first record.
    covariate_names : tuple of str
    """

    obs: ObservationTable
    doses: DoseTable
    resets: ResetTable
    baseline: torch.Tensor
    covariate_names: tuple[str, ...]

    def baseline_covariates(self) -> "BaselineCovariates":
        """Baseline covariates by name (``[N]`` each), a read-only mapping that makes a column's
        tensor only when it is looked up (cheap with thousands of covariate columns)."""
        return BaselineCovariates(self.baseline, self.covariate_names)

    @property
    def n_subjects(self) -> int:
        return int(self.obs.time.shape[0])

    @property
    def device(self) -> torch.device:
        return self.obs.time.device

    @property
    def dtype(self) -> torch.dtype:
        return self.obs.time.dtype

    def covariate_index(self, name: str) -> int:
        """Column of covariate ``name`` in the covariate tensors (case-insensitive)."""
        k = covariate_positions(self.covariate_names).get(name, covariate_positions(self.covariate_names, upper=True)
                                                           .get(str(name).upper()))
        if k is None:
            raise KeyError(f"covariate {name!r} is not in the data; covariates are "
                           f"{column_list(self.covariate_names)}")
        return k


@functools.lru_cache(maxsize=16)
def covariate_positions(names: tuple[str, ...], upper: bool = False) -> dict[str, int]:
    """Name (or upper-case name: the first of equal ones) → position in ``names`` (cached per names tuple)."""
    out: dict[str, int] = {}
    for k, name in enumerate(names):
        out.setdefault(name.upper() if upper else name, k)
    return out


class BaselineCovariates(Mapping):
    """Baseline covariates by name, ``[N]`` each; a column's tensor is made only when looked up.

    Lookups are exact first, then case-insensitive.

    Parameters
    ----------
    baseline : torch.Tensor
        ``[N, C]`` covariates of each subject's first record.
    names : tuple of str
        The ``C`` covariate names.

    Examples
    --------
    >>> import torch
    >>> cov = BaselineCovariates(torch.tensor([[70.0, 1.0], [80.0, 0.0]]), ("WT", "SEX"))
    >>> cov["wt"].tolist(), list(cov), len(cov)
    ([70.0, 80.0], ['WT', 'SEX'], 2)
    """

    def __init__(self, baseline: torch.Tensor, names) -> None:
        self._baseline = baseline
        self._names = tuple(names)

    def position(self, key) -> int | None:
        """Column of ``key`` in ``baseline`` (exact, then case-insensitive), or None."""
        k = covariate_positions(self._names).get(key)
        if k is None and isinstance(key, str):
            k = covariate_positions(self._names, upper=True).get(key.upper())
        return k

    def name(self, key) -> str | None:
        """The covariate's name as in the data, or None."""
        k = self.position(key)
        return None if k is None else self._names[k]

    def __getitem__(self, key) -> torch.Tensor:
        k = self.position(key)
        if k is None:
            raise KeyError(key)
        return self._baseline[:, k]

    def __contains__(self, key) -> bool:
        return self.position(key) is not None

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _positions(subject: np.ndarray) -> np.ndarray:
    """Position of each element within its (contiguous or not) subject group, in array order."""
    order = np.argsort(subject, kind="stable")
    sorted_subj = subject[order]
    starts = np.r_[0, np.flatnonzero(sorted_subj[1:] != sorted_subj[:-1]) + 1]
    counts = np.diff(np.r_[starts, len(subject)])
    pos_sorted = np.arange(len(subject)) - np.repeat(starts, counts)
    pos = np.empty(len(subject), dtype=np.int64)
    pos[order] = pos_sorted
    return pos


def _pad(subject: np.ndarray, pos: np.ndarray, n: int, values: np.ndarray, fill) -> np.ndarray:
    width = int(pos.max()) + 1 if len(pos) else 0
    shape = (n, max(width, 1)) + values.shape[1:]
    out = np.full(shape, fill, dtype=values.dtype)
    out[subject, pos] = values
    return out


def build_batch(rec: Records, dtype: torch.dtype, device) -> tuple[SubjectBatch, np.ndarray]:
    """Build padded tensors; returns the batch and the number of observations per subject."""
    n_subj = len(rec.ids)
    n_rec = len(rec.time)
    cov_names = tuple(rec.covariate_names)
    cov = rec.covariate_values                                   # [records, C]
    table = _SharedTable(torch.as_tensor(cov, dtype=dtype))      # shared by obs and dose covariates
    occ = rec.occasion if rec.occasion is not None else np.zeros(n_rec, dtype=np.int64)
    rec_pos = _positions(rec.subject)
    is_dose = np.isin(rec.evid, (1, 4))
    starts_segment = np.isin(rec.evid, (3, 4)) | (is_dose & (rec.ss == 1))
    # cumulative resets within each (contiguous) subject, without a loop over subjects
    cum = np.cumsum(starts_segment)
    first_of_subject = np.r_[True, rec.subject[1:] != rec.subject[:-1]]
    before_subject = np.where(first_of_subject, cum - starts_segment, 0)
    segment = (cum - np.maximum.accumulate(before_subject)).astype(np.int64)
    is_obs = (rec.evid == 0) & (rec.mdv == 0)

    # --- observations
    o = np.flatnonzero(is_obs)
    o_pos = _positions(rec.subject[o])
    n_obs_per_subject = np.bincount(rec.subject[o], minlength=n_subj)

    def pad_o(values, fill):
        return _pad(rec.subject[o], o_pos, n_subj, values, fill)

    obs = ObservationTable(
        time=torch.as_tensor(pad_o(rec.time[o], 0.0), dtype=dtype),
        dv=torch.as_tensor(pad_o(rec.dv[o], 0.0), dtype=dtype),
        cmt=torch.as_tensor(pad_o(rec.cmt[o], 0)),
        order=torch.as_tensor(pad_o(rec_pos[o].astype(np.float64), 0.0), dtype=dtype),
        segment=torch.as_tensor(pad_o(segment[o], 0)),
        mask=torch.as_tensor(pad_o(np.ones(len(o), dtype=bool), False)),
        row=torch.as_tensor(pad_o(o.astype(np.int64), -1)),
        blq=torch.as_tensor(pad_o(rec.blq[o], False)),
        lloq=torch.as_tensor(pad_o(np.nan_to_num(rec.lloq[o], nan=0.0), 0.0), dtype=dtype),
        occasion=torch.as_tensor(pad_o(occ[o], 0)),
        covariates=RecordCovariates(row=torch.as_tensor(pad_o(o.astype(np.int64), -1)), shared=table),
    )

    # --- doses: explicit records, then ADDL-implied doses
    d = np.flatnonzero(is_dose)
    cols = {"time": rec.time[d], "amt": rec.amt[d], "cmt": rec.cmt[d], "rate": rec.rate[d], "ss": rec.ss[d],
            "ii": rec.ii[d], "order": rec_pos[d].astype(np.float64), "segment": segment[d], "row": d,
            "implied": np.zeros(len(d), dtype=bool), "subject": rec.subject[d], "src": d}
    implied = _implied_doses(rec, d, segment, rec_pos)
    if implied is not None:
        cols = {k: np.concatenate([cols[k], implied[k]]) for k in cols}
    # sort each subject's doses by (segment, time, order)
    key = np.lexsort((cols["order"], cols["time"], cols["segment"], cols["subject"]))
    cols = {k: v[key] for k, v in cols.items()}
    d_pos = _positions(cols["subject"])

    def pad_d(values, fill):
        return _pad(cols["subject"], d_pos, n_subj, values, fill)

    doses = DoseTable(
        time=torch.as_tensor(pad_d(cols["time"], 0.0), dtype=dtype),
        amt=torch.as_tensor(pad_d(cols["amt"], 0.0), dtype=dtype),
        cmt=torch.as_tensor(pad_d(cols["cmt"], 0)),
        rate=torch.as_tensor(pad_d(cols["rate"], 0.0), dtype=dtype),
        ss=torch.as_tensor(pad_d(cols["ss"], 0)),
        ii=torch.as_tensor(pad_d(cols["ii"], 0.0), dtype=dtype),
        order=torch.as_tensor(pad_d(cols["order"], 0.0), dtype=dtype),
        segment=torch.as_tensor(pad_d(cols["segment"], 0)),
        mask=torch.as_tensor(pad_d(np.ones(len(cols["time"]), dtype=bool), False)),
        row=torch.as_tensor(pad_d(cols["row"].astype(np.int64), -1)),
        implied=torch.as_tensor(pad_d(cols["implied"], False)),
        occasion=torch.as_tensor(pad_d(occ[cols["src"]], 0)),
        covariates=RecordCovariates(row=torch.as_tensor(pad_d(cols["src"].astype(np.int64), -1)), shared=table),
    )

    # --- resets
    r = np.flatnonzero(starts_segment)
    r_pos = _positions(rec.subject[r])

    def pad_r(values, fill):
        return _pad(rec.subject[r], r_pos, n_subj, values, fill)

    resets = ResetTable(
        time=torch.as_tensor(pad_r(rec.time[r], 0.0), dtype=dtype),
        order=torch.as_tensor(pad_r(rec_pos[r].astype(np.float64), 0.0), dtype=dtype),
        segment=torch.as_tensor(pad_r(segment[r], 0)),
        mask=torch.as_tensor(pad_r(np.ones(len(r), dtype=bool), False)),
    )
    first = np.r_[0, np.flatnonzero(rec.subject[1:] != rec.subject[:-1]) + 1]
    baseline = torch.as_tensor(cov[first], dtype=dtype)
    batch = SubjectBatch(obs=obs, doses=doses, resets=resets, baseline=baseline, covariate_names=cov_names)
    return batch.to(device=device), n_obs_per_subject


def _implied_doses(rec: Records, d: np.ndarray, segment: np.ndarray, rec_pos: np.ndarray) -> dict | None:
    """Expand ADDL into dose events; an implied dose is given after records at the same time.

    Implied doses later than the last record of a segment that a reset ends are cancelled
    by the reset (they could act on nothing in their segment).
    """
    parents = d[rec.addl[d] > 0]
    if len(parents) == 0:
        return None
    group = rec.subject * (int(segment.max()) + 1) + segment   # contiguous in file order
    out: dict[str, list] = {k: [] for k in ("time", "order", "src")}
    par: list[int] = []
    for p in parents:
        g_idx = np.flatnonzero(group == group[p])
        g_times = rec.time[g_idx]
        last_segment = segment[p] == segment[rec.subject == rec.subject[p]].max()
        k = np.arange(1, rec.addl[p] + 1)
        times = rec.time[p] + k * rec.ii[p]
        if not last_segment:
            times = times[times <= g_times[-1]]
        at = np.searchsorted(g_times, times, side="right") - 1
        src = g_idx[at]
        out["time"].append(times)
        out["order"].append(rec_pos[src] + 0.5)
        out["src"].append(src)
        par.append(np.full(len(times), p))
    parent = np.concatenate(par)
    return {"time": np.concatenate(out["time"]), "amt": rec.amt[parent], "cmt": rec.cmt[parent],
            "rate": rec.rate[parent], "ss": np.zeros(len(parent), dtype=np.int64), "ii": rec.ii[parent],
            "order": np.concatenate(out["order"]), "segment": segment[parent], "row": parent,
            "implied": np.ones(len(parent), dtype=bool), "subject": rec.subject[parent],
            "src": np.concatenate(out["src"])}
