"""Mixed tabular data for generators: typed columns, bounds, and a bijective encoding to R^d.

A :class:`TabularSchema` says, for each column, whether it is continuous (with optional
bounds, e.g. weight > 0 or 0 ≤ fraction ≤ 1), binary or categorical. A :class:`TabularTransform`
maps a data frame to an unconstrained, standardised float tensor that every generator models,
and back:

- continuous with a lower bound ``a``: ``log(v − a)``; with an upper bound ``b``: ``log(b − v)``;
  with both: ``logit((v − a)/(b − a))``; then ``(u − mean)/sd``. The log-Jacobian of these maps
  is returned by :meth:`TabularTransform.log_abs_det_jacobian`, so a density learnt on the
  encoded scale is a density in the data's own units.
- binary (two levels): one coordinate, the level index ``k`` dequantised to ``k + U(0, 1)``
  while training (:meth:`TabularTransform.dequantize`), ``k + 0.5`` otherwise; decoded by
  ``floor`` (clamped).
- categorical (K levels): K one-hot coordinates, dequantised by ``0.5·U(0, 1)`` each; decoded
  by ``argmax``.

Decoded values therefore always respect bounds and levels. Missing values are refused with a
:class:`~pmxgen.errors.DatasetError` naming the row and column.

Examples
--------
>>> import pandas as pd
>>> frame = pd.DataFrame({"WT": [60.0, 72.5, 90.0], "SEX": ["F", "M", "F"], "FRAC": [0.2, 0.5, 0.9]})
>>> schema = TabularSchema.infer(frame, bounds={"FRAC": (0.0, 1.0)})
>>> [(c.name, c.kind, c.lower, c.upper) for c in schema.columns]
[('WT', 'continuous', 0.0, None), ('SEX', 'binary', None, None), ('FRAC', 'continuous', 0.0, 1.0)]
>>> transform = TabularTransform.fit(schema, frame)
>>> x = transform.encode(frame)
>>> x.shape
torch.Size([3, 3])
>>> back = transform.decode(x)
>>> bool((back["SEX"] == frame["SEX"]).all()), bool(((back["WT"] - frame["WT"]).abs() < 1e-9).all())
(True, True)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import DatasetError, ModelError

__all__ = ["ColumnSpec", "TabularSchema", "TabularTransform", "as_frame"]

KINDS = ("continuous", "binary", "categorical")


def _py(value: Any) -> Any:
    """A JSON-friendly Python scalar."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class ColumnSpec:
    """One column: its name, kind, bounds (continuous) or levels (binary, categorical).

    ``integer`` marks a continuous column whose values are whole numbers (e.g. age in years):
    generated values are rounded to whole numbers.
    """

    name: str
    kind: str
    lower: float | None = None
    upper: float | None = None
    levels: tuple = ()
    integer: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"column {self.name}: kind must be one of {KINDS} (found {self.kind!r})")
        if self.kind == "continuous" and self.lower is not None and self.upper is not None \
                and not self.lower < self.upper:
            raise ModelError(f"column {self.name}: lower bound {self.lower} must be below upper bound {self.upper}")
        if self.kind == "binary" and len(self.levels) != 2:
            raise ModelError(f"column {self.name}: a binary column has two levels (found {list(self.levels)})")
        if self.kind == "categorical" and len(self.levels) < 2:
            raise ModelError(f"column {self.name}: a categorical column needs at least two levels")

    @property
    def width(self) -> int:
        """Number of encoded coordinates."""
        return len(self.levels) if self.kind == "categorical" else 1


def as_frame(data, *, source: str = "<data>") -> tuple[pd.DataFrame, bool]:
    """``(frame, was_frame)``: a DataFrame as is, or a 2-D array/tensor as columns ``x0, x1, ...``."""
    if isinstance(data, pd.DataFrame):
        return data.reset_index(drop=True), True
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    array = np.asarray(data, dtype=np.float64)
    if array.ndim != 2:
        raise DatasetError(f"generator data must be a table (2-D); found an array of shape {array.shape}",
                           source=source, fix="pass a DataFrame or an array [n_rows, n_columns]")
    return pd.DataFrame(array, columns=[f"x{k}" for k in range(array.shape[1])]), False


@dataclass(frozen=True)
class TabularSchema:
    """The typed columns of a table (see the module docstring)."""

    columns: tuple[ColumnSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def __getitem__(self, name: str) -> ColumnSpec:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @classmethod
    def infer(cls, frame: pd.DataFrame, *, bounds: Mapping[str, tuple] | str | None = "auto",
              categorical: Sequence[str] | None = None, source: str = "<DataFrame>") -> "TabularSchema":
        """Infer column kinds and bounds from data.

        Parameters
        ----------
        frame : DataFrame
            The data. Missing values raise :class:`DatasetError` (row and column named).
        bounds : "auto", dict or None
            ``{column: (lower, upper)}`` with ``None`` for an open side. With ``"auto"`` (default) a
            continuous column whose values are all > 0 gets the bound ``(0, None)``; a dict adds
            explicit bounds on top of the automatic ones (give ``(None, None)`` to remove one).
            ``None``: no bounds at all.
        categorical : list of str, optional
            Columns to treat as categorical whatever their dtype. Non-numeric and boolean columns
            are always discrete; a numeric column with exactly two distinct values is binary.
        source : str
            Name of the data for error messages.
        """
        check_complete(frame, source=source)
        explicit = dict(bounds) if isinstance(bounds, Mapping) else {}
        auto = bounds == "auto" or isinstance(bounds, Mapping)
        for name in list(explicit) + list(categorical or ()):
            if name not in frame.columns:
                raise DatasetError(f"column {name!r} named in bounds/categorical is not in the data",
                                   source=source, fix=f"use one of {list(frame.columns)}")
        specs = []
        for name in frame.columns:
            values = frame[name]
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            levels = tuple(_py(v) for v in sorted(values.unique(), key=lambda v: (str(type(v)), v)))
            if name in (categorical or ()) or not numeric:
                kind = "binary" if len(levels) == 2 else "categorical"
                if len(levels) < 2:
                    raise DatasetError("a discrete column needs at least two distinct values", source=source,
                                       column=str(name), value=levels[0] if levels else None,
                                       fix="drop the constant column before fitting a generator")
                specs.append(ColumnSpec(str(name), kind, levels=levels))
                continue
            if len(levels) == 2:
                specs.append(ColumnSpec(str(name), "binary", levels=levels))
                continue
            array = values.to_numpy(dtype=np.float64)
            if not np.isfinite(array).all():
                row = int(np.flatnonzero(~np.isfinite(array))[0])
                raise DatasetError("values must be finite", source=source, row=row, column=str(name),
                                   value=float(array[row]), fix="remove or correct the row")
            lower = upper = None
            if auto and array.min() > 0:
                lower = 0.0
            if name in explicit:
                lower, upper = (None if b is None else float(b) for b in explicit[name])
            integer = bool(pd.api.types.is_integer_dtype(values) or np.all(array == np.round(array)))
            spec = ColumnSpec(str(name), "continuous", lower=lower, upper=upper, integer=integer)
            _check_inside(spec, array, source)
            specs.append(spec)
        return cls(tuple(specs))

    def to_json(self) -> str:
        return json.dumps([asdict(c) for c in self.columns])

    @classmethod
    def from_json(cls, text: str) -> "TabularSchema":
        return cls(tuple(ColumnSpec(**{**c, "levels": tuple(c["levels"])}) for c in json.loads(text)))


def check_complete(frame: pd.DataFrame, *, source: str = "<DataFrame>") -> None:
    """Refuse missing values, naming the first row and column that has one."""
    missing = frame.isna()
    if missing.to_numpy().any():
        column = next(c for c in frame.columns if missing[c].any())
        row = int(np.flatnonzero(missing[column].to_numpy())[0])
        raise DatasetError("missing value; generators need complete rows", source=source, row=row,
                           column=str(column), fix="impute or drop incomplete rows (or the column) first")


def _check_inside(spec: ColumnSpec, array: np.ndarray, source: str) -> None:
    for bound, bad in ((spec.lower, None if spec.lower is None else array <= spec.lower),
                       (spec.upper, None if spec.upper is None else array >= spec.upper)):
        if bad is not None and bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"value on or beyond the bound {bound} of this column", source=source, row=row,
                               column=spec.name, value=float(array[row]),
                               fix="correct the value, or give wider bounds=... (bounds are open intervals)")


@dataclass
class TabularTransform:
    """Encoding of modelled columns (and of conditioning columns) to standardised tensors.

    Build it with :meth:`fit`. ``modelled`` are the columns a generator models, ``conditions`` the
    columns it conditions on (encoded without dequantisation noise).
    """

    schema: TabularSchema
    modelled: tuple[str, ...]
    conditions: tuple[str, ...]
    mean: list = field(default_factory=list)
    sd: list = field(default_factory=list)
    cond_mean: list = field(default_factory=list)
    cond_sd: list = field(default_factory=list)

    @classmethod
    def fit(cls, schema: TabularSchema, frame: pd.DataFrame,
            conditions: Sequence[str] | None = None, *, source: str = "<DataFrame>") -> "TabularTransform":
        """Choose the standardisation from ``frame``; ``conditions`` are conditioning columns."""
        conditions = tuple(conditions or ())
        for name in conditions:
            if name not in schema.names:
                raise DatasetError(f"condition column {name!r} is not in the data", source=source,
                                   fix=f"use one of {list(schema.names)}")
        modelled = tuple(n for n in schema.names if n not in conditions)
        if not modelled:
            raise DatasetError("every column is a condition; nothing is left to generate", source=source)
        out = cls(schema, modelled, conditions)
        raw = out._raw(frame, modelled)
        out.mean, out.sd = _moments(raw)
        if conditions:
            raw_c = out._raw(frame, conditions)
            out.cond_mean, out.cond_sd = _moments(raw_c)
        return out

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Encoded width of the modelled columns."""
        return sum(self.schema[n].width for n in self.modelled)

    @property
    def cond_dim(self) -> int:
        """Encoded width of the conditioning columns (0 without conditions)."""
        return sum(self.schema[n].width for n in self.conditions)

    @property
    def all_continuous(self) -> bool:
        """Whether every modelled column is continuous (so that a density in data units exists)."""
        return all(self.schema[n].kind == "continuous" for n in self.modelled)

    # -- encode ---------------------------------------------------------------------------------
    def _raw(self, frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
        blocks = []
        for name in names:
            spec = self.schema[name]
            if name not in frame.columns:
                raise DatasetError(f"column {name!r} is missing", fix=f"give the columns {list(names)}")
            values = frame[name]
            if spec.kind == "continuous":
                array = values.to_numpy(dtype=np.float64)
                _check_inside(spec, array, "<data>")
                blocks.append(_to_unbounded(spec, array)[:, None])
                continue
            index = _level_index(spec, values)
            if spec.kind == "binary":
                blocks.append(index[:, None] + 0.5)
            else:
                onehot = np.zeros((len(index), len(spec.levels)))
                onehot[np.arange(len(index)), index] = 1.0
                blocks.append(onehot + 0.25)
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))

    def encode(self, frame: pd.DataFrame, *, device=None, dtype=torch.float64) -> torch.Tensor:
        """Modelled columns → standardised tensor ``[n, dim]`` (discrete levels at their midpoints)."""
        raw = (self._raw(frame, self.modelled) - np.asarray(self.mean)) / np.asarray(self.sd)
        return torch.as_tensor(raw, dtype=dtype, device=device)

    def encode_conditions(self, conditions, n: int | None = None, *, device=None,
                          dtype=torch.float64) -> torch.Tensor | None:
        """Conditioning values → ``[n, cond_dim]``: a DataFrame with the columns, or a dict of one value each
        (repeated ``n`` times); ``None`` without conditions."""
        if not self.conditions:
            if conditions is not None and len(conditions):
                raise ModelError("this generator was fitted without conditions; do not pass conditions")
            return None
        if conditions is None:
            raise ModelError(f"this generator is conditional on {list(self.conditions)}; pass conditions=... "
                             f"(a dict of one value per column or a DataFrame)")
        if isinstance(conditions, Mapping):
            if n is None:
                raise ModelError("give n with a dict of condition values")
            frame = pd.DataFrame({k: [v] * n for k, v in conditions.items()})
        else:
            frame = conditions.reset_index(drop=True)
        raw = (self._raw(frame, self.conditions) - np.asarray(self.cond_mean)) / np.asarray(self.cond_sd)
        return torch.as_tensor(raw, dtype=dtype, device=device)

    def dequantize(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training noise on discrete coordinates: ``k + U(0,1)`` for binary, ``onehot + 0.5·U`` for categorical."""
        width = torch.as_tensor(self._dequant_width(), dtype=x.dtype, device=x.device)
        if not bool((width > 0).any()):
            return x
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return x + (u - 0.5) * width

    def _dequant_width(self) -> list[float]:
        widths = []
        for k, name in enumerate(self.modelled):
            spec = self.schema[name]
            w = {"continuous": 0.0, "binary": 1.0, "categorical": 0.5}[spec.kind]
            widths.extend([w] * spec.width)
        return [w / s for w, s in zip(widths, self.sd)]

    def log_abs_det_jacobian(self, frame: pd.DataFrame) -> torch.Tensor:
        """``log |d encode / d data|`` per row (continuous modelled columns only), float64 ``[n]``."""
        if not self.all_continuous:
            raise ModelError("a density in data units exists only when every modelled column is continuous; "
                             "condition on the discrete columns (conditions=[...]) to get log_prob")
        total = np.zeros(len(frame))
        for name, sd in zip(self.modelled, self.sd):
            spec = self.schema[name]
            v = frame[name].to_numpy(dtype=np.float64)
            total -= np.log(sd)
            if spec.lower is not None and spec.upper is not None:
                total += np.log(spec.upper - spec.lower) - np.log(v - spec.lower) - np.log(spec.upper - v)
            elif spec.lower is not None:
                total -= np.log(v - spec.lower)
            elif spec.upper is not None:
                total -= np.log(spec.upper - v)
        return torch.as_tensor(total, dtype=torch.float64)

    # -- decode ---------------------------------------------------------------------------------
    def decode(self, x: torch.Tensor) -> pd.DataFrame:
        """Standardised tensor ``[n, dim]`` → DataFrame of the modelled columns, within bounds and levels."""
        raw = x.detach().to(torch.float64).cpu().numpy() * np.asarray(self.sd) + np.asarray(self.mean)
        out, k = {}, 0
        for name in self.modelled:
            spec = self.schema[name]
            block = raw[:, k:k + spec.width]
            k += spec.width
            if spec.kind == "continuous":
                values = _from_unbounded(spec, block[:, 0])
                if spec.integer:
                    values = np.round(values)
                    if spec.lower is not None:
                        values = np.maximum(values, np.floor(spec.lower) + 1)
                    if spec.upper is not None:
                        values = np.minimum(values, np.ceil(spec.upper) - 1)
                out[name] = values
            elif spec.kind == "binary":
                index = np.clip(np.floor(block[:, 0]), 0, 1).astype(int)
                out[name] = np.asarray(spec.levels, dtype=object)[index]
            else:
                out[name] = np.asarray(spec.levels, dtype=object)[np.argmax(block, axis=1)]
        frame = pd.DataFrame(out)
        for name in self.modelled:
            spec = self.schema[name]
            if spec.kind != "continuous":
                frame[name] = pd.Series(list(frame[name]), dtype=_level_dtype(spec.levels))
        return frame

    # -- persistence ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"schema": json.loads(self.schema.to_json()), "modelled": self.modelled,
                           "conditions": self.conditions, "mean": list(self.mean), "sd": list(self.sd),
                           "cond_mean": list(self.cond_mean), "cond_sd": list(self.cond_sd)})

    @classmethod
    def from_json(cls, text: str) -> "TabularTransform":
        d = json.loads(text)
        return cls(TabularSchema.from_json(json.dumps(d["schema"])), tuple(d["modelled"]), tuple(d["conditions"]),
                   d["mean"], d["sd"], d["cond_mean"], d["cond_sd"])


def _moments(raw: np.ndarray) -> tuple[list, list]:
    mean = raw.mean(axis=0)
    sd = raw.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return [float(v) for v in mean], [float(v) for v in sd]


def _level_dtype(levels: tuple):
    if all(isinstance(v, (bool, np.bool_)) for v in levels):
        return bool
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in levels):
        return np.int64
    if all(isinstance(v, (int, float, np.number)) for v in levels):
        return np.float64
    return object


def _level_index(spec: ColumnSpec, values: pd.Series) -> np.ndarray:
    codes = pd.Categorical([_py(v) for v in values.tolist()], categories=list(spec.levels)).codes
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise DatasetError("value is not one of this column's levels", row=row, column=spec.name,
                           value=_py(values.iloc[row]), fix=f"use one of {list(spec.levels)}")
    return codes.astype(int)


def _to_unbounded(spec: ColumnSpec, v: np.ndarray) -> np.ndarray:
    a, b = spec.lower, spec.upper
    if a is not None and b is not None:
        p = (v - a) / (b - a)
        return np.log(p) - np.log1p(-p)
    if a is not None:
        return np.log(v - a)
    if b is not None:
        return np.log(b - v)
    return v


def _from_unbounded(spec: ColumnSpec, u: np.ndarray) -> np.ndarray:
    a, b = spec.lower, spec.upper
    if a is not None and b is not None:
        return a + (b - a) / (1.0 + np.exp(-u))
    if a is not None:
        return a + np.exp(u)
    if b is not None:
        return b - np.exp(u)
    return u
