"""Shared helpers of :mod:`pmxgen.generative.score`: input checks, seeded draws on any device.

Examples
--------
>>> import torch
>>> from pmxgen.generative.score._common import check_batch, randn_like
>>> x = check_batch(torch.zeros(3, 2, dtype=torch.float64), "demo")
>>> tuple(randn_like(x, torch.Generator().manual_seed(0)).shape)
(3, 2)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...errors import DatasetError, ModelError
from ..flows.base import make_generator

__all__ = ["check_batch", "as_data", "make_generator", "randn_like", "rand_like", "check_sigmas", "check_positive",
           "check_int"]


def _first_bad(x: torch.Tensor) -> tuple[int, int, float]:
    """Row, column and value of the first non-finite entry of a 2-D tensor."""
    bad = (~torch.isfinite(x)).nonzero()[0]
    i, j = int(bad[0]), int(bad[1])
    return i, j, float(x[i, j])


def check_batch(x: object, who: str, dim: int | None = None, *, finite: bool = True) -> torch.Tensor:
    """Check a batch of points ``[B, D]`` (a floating tensor); return it unchanged.

    Raises :class:`~pmxgen.errors.DatasetError` naming the row and column of the first non-finite
    entry (when ``finite``), and :class:`~pmxgen.errors.ModelError` for a non-tensor, a wrong number
    of dimensions, an empty batch, an integer dtype or a width other than ``dim``.
    """
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"{who}: x must be a torch.Tensor [batch, dim]; found {type(x).__name__}")
    if x.dim() != 2:
        raise ModelError(f"{who}: x must be 2-D [batch, dim] (one row per point); found shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ModelError(f"{who}: x is empty (shape {tuple(x.shape)}); give at least one row and one column")
    if not x.dtype.is_floating_point:
        raise ModelError(f"{who}: x must be a floating tensor (e.g. torch.float64); found {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ModelError(f"{who}: x has {x.shape[1]} columns but the model has dim={dim}; found shape "
                         f"{tuple(x.shape)}, expected [batch, {dim}]")
    if finite and not bool(torch.isfinite(x).all()):
        i, j, v = _first_bad(x)
        raise DatasetError(f"{who}: x holds a non-finite value at row {i}, column {j} (counted from 0)", source="x",
                           row=i, column=str(j), value=v,
                           fix="remove or impute rows with NaN or infinite values before fitting or sampling")
    return x


def as_data(data: object, who: str, *, dtype: torch.dtype, device: torch.device | str | None,
            dim: int | None = None) -> torch.Tensor:
    """Tabular data (tensor, numpy array, pandas DataFrame, nested lists) as a finite ``[N, D]`` tensor.

    Raises :class:`~pmxgen.errors.DatasetError` naming the row and the column (the DataFrame's
    column name when there is one) of the first NaN or infinite value, and for data that are not
    2-D numbers; :class:`~pmxgen.errors.ModelError` when the width is not ``dim``.
    """
    columns: Sequence[str] | None = None
    rows: Sequence[object] | None = None
    if hasattr(data, "to_numpy") and hasattr(data, "columns"):
        columns = [str(c) for c in data.columns]
        rows = list(data.index)
        try:
            data = data.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetError(f"{who}: data must hold numbers only", source="data",
                               fix="convert or drop the non-numeric columns") from None
    if isinstance(data, torch.Tensor):
        if data.dtype.is_complex or data.dtype == torch.bool:
            raise DatasetError(f"{who}: data must be a real numeric tensor (found dtype {data.dtype})", source="data")
        t = data.detach()
    else:
        try:
            arr = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetError(f"{who}: data must be a 2-D array of numbers [rows, columns]", source="data",
                               fix="pass a tensor, a numpy array or a DataFrame of numbers") from None
        t = torch.tensor(arr)
    if t.dim() != 2:
        raise DatasetError(f"{who}: data must be 2-D [rows, columns] (one row per individual); found shape "
                           f"{tuple(t.shape)}", source="data", fix="reshape, e.g. x.reshape(-1, 1) for one column")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise DatasetError(f"{who}: data are empty (shape {tuple(t.shape)})", source="data",
                           fix="give at least one row and one column")
    if dim is not None and t.shape[1] != dim:
        raise ModelError(f"{who}: the data have {t.shape[1]} columns but the model has dim={dim}")
    t = t.to(dtype=dtype, device=device)
    if not bool(torch.isfinite(t).all()):
        i, j, v = _first_bad(t)
        where = "" if rows is not None else f" at row {i}, column {j} (counted from 0)"
        raise DatasetError(f"{who}: the data hold a non-finite value{where}", source="data",
                           row=rows[i] if rows is not None else i,
                           column=columns[j] if columns is not None else str(j), value=v,
                           fix="remove or impute rows with NaN or infinite values")
    return t


def _draw(fn, shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    if generator.device == like.device:
        return fn(*shape, generator=generator, dtype=like.dtype, device=like.device)
    return fn(*shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def randn_like(x: torch.Tensor, generator: torch.Generator, shape: Sequence[int] | None = None) -> torch.Tensor:
    """Standard normal draws with ``x``'s dtype and device (shape of ``x`` unless given), from ``generator``."""
    return _draw(torch.randn, tuple(x.shape) if shape is None else tuple(shape), generator, x)


def rand_like(x: torch.Tensor, generator: torch.Generator, shape: Sequence[int] | None = None) -> torch.Tensor:
    """Uniform(0, 1) draws with ``x``'s dtype and device, from ``generator``."""
    return _draw(torch.rand, tuple(x.shape) if shape is None else tuple(shape), generator, x)


def check_sigmas(sigmas: object, who: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """Noise levels as a 1-D strictly decreasing positive tensor (dtype/device of ``like``)."""
    t = torch.as_tensor(sigmas, dtype=torch.float64 if like is None else like.dtype)
    if like is not None:
        t = t.to(like.device)
    if t.dim() != 1 or t.numel() == 0:
        raise ModelError(f"{who}: sigmas must be a non-empty 1-D sequence of noise levels σ_1 > … > σ_L; "
                         f"found shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ModelError(f"{who}: sigmas must be finite and > 0; found {t.tolist()}")
    if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
        raise ModelError(f"{who}: sigmas must be strictly decreasing (σ_1 > … > σ_L); found {t.tolist()}. "
                         "Use geometric_sigmas(sigma_max, sigma_min, n_levels)")
    return t


def check_positive(value: object, name: str, who: str) -> float:
    """A finite number > 0 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (np.isfinite(value) and value > 0):
        raise ModelError(f"{who}: {name} must be a finite number > 0; found {value!r}")
    return float(value)


def check_int(value: object, name: str, who: str, minimum: int = 1) -> int:
    """An int >= minimum (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ModelError(f"{who}: {name} must be an int >= {minimum}; found {value!r}")
    return int(value)
