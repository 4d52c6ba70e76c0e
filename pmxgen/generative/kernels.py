"""Kernel two-sample statistics shared by the metrics and the generators trained on them.

``mmd2(x, y, bandwidths)`` is the squared maximum mean discrepancy with a sum of Gaussian
kernels ``k(a, b) = Σ_s exp(−|a − b|² / (2 s²))`` (a multiscale kernel), unbiased (U-statistic,
default) or biased (V-statistic); it is differentiable, so a generator can be trained on it (the
BSDE generator's loss). ``median_bandwidth`` is the median heuristic.

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(400, 2, dtype=torch.float64, generator=g)
>>> y = torch.randn(400, 2, dtype=torch.float64, generator=g)
>>> s = median_bandwidth(x, y)
>>> abs(float(mmd2(x, y, [s]))) < 0.01, float(mmd2(x, y + 1.0, [s])) > 0.1
(True, True)
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["mmd2", "median_bandwidth", "multiscale_bandwidths"]


def _kernel_sum(d2: torch.Tensor, bandwidths: torch.Tensor) -> torch.Tensor:
    return torch.exp(-d2[..., None] / (2 * bandwidths ** 2)).sum(-1)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] | torch.Tensor, *,
         unbiased: bool = True) -> torch.Tensor:
    """Squared MMD between samples ``x`` ``[n, d]`` and ``y`` ``[m, d]`` with a multiscale Gaussian kernel."""
    s = torch.as_tensor(bandwidths, dtype=x.dtype, device=x.device).reshape(-1)
    kxx = _kernel_sum(torch.cdist(x, x) ** 2, s)
    kyy = _kernel_sum(torch.cdist(y, y) ** 2, s)
    kxy = _kernel_sum(torch.cdist(x, y) ** 2, s)
    n, m = x.shape[0], y.shape[0]
    if unbiased:
        sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        sxx, syy = kxx.mean(), kyy.mean()
    return sxx + syy - 2 * kxy.mean()


def median_bandwidth(x: torch.Tensor, y: torch.Tensor | None = None, *, max_points: int = 2000) -> float:
    """Median pairwise distance of the pooled sample (first ``max_points`` rows of each)."""
    z = x[:max_points] if y is None else torch.cat([x[:max_points], y[:max_points]])
    d = torch.cdist(z, z)
    off = d[~torch.eye(d.shape[0], dtype=torch.bool, device=d.device)]
    return float(off.median().clamp_min(1e-12))


def multiscale_bandwidths(x: torch.Tensor, y: torch.Tensor | None = None,
                          factors: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> list[float]:
    """The median bandwidth times ``factors`` (a multiscale kernel robust to the choice of scale)."""
    s = median_bandwidth(x, y)
    return [s * f for f in factors]
