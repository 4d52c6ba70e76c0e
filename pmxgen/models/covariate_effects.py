"""Covariate relations for individual-parameter functions (torch expressions, batched).

Examples
--------
>>> import torch
>>> wt = torch.tensor([35.0, 70.0, 140.0], dtype=torch.float64)
>>> power_effect(wt, 70.0, torch.tensor(0.75, dtype=torch.float64)).tolist()
[0.5946035575013605, 1.0, 1.681792830507429]
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ModelError

__all__ = ["power_effect", "exponential_effect", "linear_effect", "categorical_effect"]


def power_effect(covariate: torch.Tensor, reference: float, exponent) -> torch.Tensor:
    """``(cov / reference) ** exponent`` (allometric scaling, e.g. ``(WT/70)^0.75``)."""
    return (covariate / reference) ** exponent


def exponential_effect(covariate: torch.Tensor, reference: float, coefficient) -> torch.Tensor:
    """``exp(coefficient · (cov − reference))``."""
    return torch.exp(coefficient * (covariate - reference))


def linear_effect(covariate: torch.Tensor, reference: float, slope) -> torch.Tensor:
    """``1 + slope · (cov − reference)``."""
    return 1.0 + slope * (covariate - reference)


def categorical_effect(codes: torch.Tensor, effects: Sequence) -> torch.Tensor:
    """Multiplicative effect per category: 1 for code 0 (the reference), ``effects[k-1]`` for code k.

    ``codes`` are the integer codes pmxgen gives a categorical covariate (``Dataset.categories``
    lists the labels in code order).

    Examples
    --------
    >>> codes = torch.tensor([0.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    >>> categorical_effect(codes, [torch.tensor(1.5), torch.tensor(0.5)]).tolist()
    [1.0, 1.5, 0.5, 1.5]
    """
    dtype = codes.dtype if codes.is_floating_point() else torch.float64
    codes = codes.round().long()
    if bool((codes < 0).any()) or bool((codes > len(effects)).any()):
        raise ModelError(f"categorical codes run from {int(codes.min())} to {int(codes.max())}, but "
                         f"{len(effects)} effects (for codes 1..{len(effects)}; code 0 is the reference) were given")
    out = torch.ones(codes.shape, dtype=dtype, device=codes.device)
    for k, effect in enumerate(effects, start=1):
        out = torch.where(codes == k, torch.as_tensor(effect, dtype=out.dtype, device=out.device) * 1.0, out)
    return out
