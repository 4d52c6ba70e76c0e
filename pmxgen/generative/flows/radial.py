"""Radial flows (Rezende & Mohamed 2015): y = x + β (x − x0) / (α + r), r = |x − x0|.

With α = softplus(a) > 0 and β = −α + softplus(b') ≥ −α the map is invertible. It moves points
along rays from x0, so |y − x0| = r_y = r (α + β + r) / (α + r); for a given r_y this is the quadratic
r² + (α + β − r_y) r − α r_y = 0, which has exactly one non-negative root (the product of its roots
is −α r_y ≤ 0):

    r = (−B + sqrt(B² + 4 α r_y)) / 2 = 2 α r_y / (B + sqrt(B² + 4 α r_y)),   B = α + β − r_y,

(the second form is used when B > 0 to avoid cancellation). Then x − x0 = (y − x0) / (1 + β/(α + r)),
computed as x = y − β (y − x0) / (α + β + r).
The log-determinant is (dim − 1) log(1 + β/(α + r)) + log(1 + α β / (α + r)²).

Examples
--------
>>> import torch
>>> from pmxgen.generative.flows import RadialFlow
>>> flow = RadialFlow(2, seed=0)
>>> x = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
>>> bool(torch.equal(flow(x)[0], x))  # identity at initialisation (β = 0)
True
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Flow, make_generator

__all__ = ["RadialFlow"]


class RadialFlow(Flow):
    """y = x + β h(α, r)(x − x0), h = 1/(α + r), α = softplus(alpha_raw), β = −α + softplus(beta_raw).

    Parameters (each with leading shape ``batch_shape``): ``x0`` ``[dim]`` (seeded normal draws
    with standard deviation ``init_scale``), ``alpha_raw`` ``[]`` and ``beta_raw`` ``[]`` (both
    zero at initialisation, so that β = 0 and the flow is the identity).

    Parameters
    ----------
    dim : int
    batch_shape : tuple of int, default ()
    dtype : torch.dtype, default torch.float64
    device : torch.device or str, optional
    seed : int, torch.Generator or None, default 0
        Seed of the random initialisation of ``x0`` (same seed → same parameters).
    init_scale : float, default 0.1
        Standard deviation of the initial centre ``x0``.

    Examples
    --------
    >>> import torch
    >>> flow = RadialFlow(3, batch_shape=(2,), seed=1)
    >>> with torch.no_grad():
    ...     _ = flow.beta_raw.fill_(2.0)
    >>> x = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    >>> y, log_det = flow(x)
    >>> x_back, log_det_inv = flow.inverse(y)
    >>> (x_back - x).abs().max().item() < 1e-12, bool(torch.allclose(log_det_inv, -log_det))
    (True, True)
    """

    def __init__(self, dim: int, batch_shape: Sequence[int] = (), *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None, seed: int | torch.Generator | None = 0,
                 init_scale: float = 0.1) -> None:
        super().__init__(dim, batch_shape, dtype=dtype, device=device)
        gen = make_generator(seed)
        b, d = self.batch_shape, self.dim
        self.x0 = self._new_parameter(init_scale * torch.randn(*b, d, generator=gen, dtype=torch.float64))
        self.alpha_raw = self._new_parameter(torch.zeros(b))
        self.beta_raw = self._new_parameter(torch.zeros(b))

    @property
    def alpha(self) -> torch.Tensor:
        """α ``[*batch_shape]`` (> 0 up to underflow)."""
        return F.softplus(self.alpha_raw)

    @property
    def beta(self) -> torch.Tensor:
        """β ``[*batch_shape]`` (≥ −α)."""
        return -self.alpha + F.softplus(self.beta_raw)

    def _log_det(self, r: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        denom = alpha + r
        return (self.dim - 1) * torch.log1p(beta / denom) + torch.log1p(alpha * beta / (denom * denom))

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, beta = self.alpha, self.beta
        z = x - self.x0
        r = torch.linalg.vector_norm(z, dim=-1)
        y = x + (beta / (alpha + r)).unsqueeze(-1) * z
        return y, self._log_det(r, alpha, beta)

    def _inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, beta = self.alpha, self.beta
        zy = y - self.x0
        ry = torch.linalg.vector_norm(zy, dim=-1)
        big_b = alpha + beta - ry
        root = torch.sqrt(big_b * big_b + 4.0 * alpha * ry)
        positive = big_b > 0
        safe = torch.where(positive, big_b + root, torch.ones_like(root))
        r = torch.where(positive, 2.0 * alpha * ry / safe, 0.5 * (root - big_b))
        # x − x0 = (y − x0)/(1 + β/(α + r)), i.e. x = y − β (y − x0)/(α + β + r) (exactly x = y at β = 0)
        x = y - (beta / (alpha + beta + r)).unsqueeze(-1) * zy
        return x, -self._log_det(r, alpha, beta)
