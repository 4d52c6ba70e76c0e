"""Planar flows (Rezende & Mohamed 2015): y = x + û tanh(wᵀx + b).

The map is invertible when wᵀû ≥ −1. The free parameter ``u`` is mapped to û = u + (m(wᵀu) − wᵀu)
w / |w|², where m(a) = softplus(a + c) − softplus(c) with c = log(e − 1) (so softplus(c) = 1),
clamped at −1. Then wᵀû = m(wᵀu) ≥ −1 for every value of the free parameters, and u = 0 gives
û = 0 (the identity). Compared with the original m(a) = −1 + softplus(a) this only shifts the
argument, so that the identity is reachable exactly.

The inverse solves, along w, the scalar equation α + (wᵀû) tanh(α + b) = wᵀy for α = wᵀx (a
strictly increasing function of α whose root lies in [wᵀy − |wᵀû|, wᵀy + |wᵀû|]) by Newton steps
safeguarded by bisection, batched over all inputs; then x = y − û tanh(α + b).

Examples
--------
>>> import torch
>>> from pmxgen.generative.flows import PlanarFlow
>>> flow = PlanarFlow(2, seed=0)
>>> x = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
>>> bool(torch.equal(flow(x)[0], x))  # identity at initialisation (u = 0)
True
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...errors import ConvergenceWarning
from .base import Flow, make_generator

__all__ = ["PlanarFlow"]

#: softplus(_SHIFT) == 1, so that m(0) = 0.
_SHIFT = math.log(math.expm1(1.0))


class PlanarFlow(Flow):
    """y = x + û h(wᵀx + b), h = tanh, with û reparametrised so that wᵀû ≥ −1 (invertible).

    Parameters (each with leading shape ``batch_shape``): ``u`` ``[dim]`` (zero at init), ``w``
    ``[dim]`` (seeded normal draws with standard deviation ``init_scale``) and ``b`` ``[]`` (zero).

    Parameters
    ----------
    dim : int
    batch_shape : tuple of int, default ()
    dtype : torch.dtype, default torch.float64
    device : torch.device or str, optional
    seed : int, torch.Generator or None, default 0
        Seed of the random initialisation of ``w`` (same seed → same parameters).
    init_scale : float, default 0.1
        Standard deviation of the initial ``w``.
    max_iter : int, default 100
        Maximum number of safeguarded Newton iterations of the inverse.

    Examples
    --------
    >>> import torch
    >>> flow = PlanarFlow(3, batch_shape=(2,), seed=1)
    >>> with torch.no_grad():
    ...     _ = flow.u.normal_(generator=torch.Generator().manual_seed(2))
    >>> x = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    >>> y, log_det = flow(x)
    >>> x_back, _ = flow.inverse(y)
    >>> (x_back - x).abs().max().item() < 1e-12
    True
    >>> bool(((flow.w * flow.u_hat).sum(-1) >= -1).all())
    True
    """

    def __init__(self, dim: int, batch_shape: Sequence[int] = (), *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None, seed: int | torch.Generator | None = 0,
                 init_scale: float = 0.1, max_iter: int = 100) -> None:
        super().__init__(dim, batch_shape, dtype=dtype, device=device)
        gen = make_generator(seed)
        b, d = self.batch_shape, self.dim
        self.u = self._new_parameter(torch.zeros(*b, d))
        self.w = self._new_parameter(init_scale * torch.randn(*b, d, generator=gen, dtype=torch.float64))
        self.b = self._new_parameter(torch.zeros(b))
        self.max_iter = int(max_iter)

    @property
    def u_hat(self) -> torch.Tensor:
        """û ``[*batch_shape, dim]`` with wᵀû = m(wᵀu) ≥ −1."""
        w, u = self.w, self.u
        wu = (w * u).sum(-1)
        shift = torch.tensor(_SHIFT, dtype=wu.dtype, device=wu.device)
        m = (F.softplus(wu + shift) - F.softplus(shift)).clamp_min(-1.0)
        w_norm2 = (w * w).sum(-1).clamp_min(torch.finfo(w.dtype).tiny)
        return u + ((m - wu) / w_norm2).unsqueeze(-1) * w

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat = self.u_hat
        t = torch.tanh((x * self.w).sum(-1) + self.b)
        y = x + u_hat * t.unsqueeze(-1)
        c = (self.w * u_hat).sum(-1)
        return y, torch.log(torch.abs(1.0 + (1.0 - t * t) * c))

    def _solve_alpha(self, target: torch.Tensor, c: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Root of f(α) = α + c tanh(α + b) − target (c ≥ −1), batched, without autograd."""
        eps = torch.finfo(target.dtype).eps
        lo = target - c.abs()
        hi = target + c.abs()
        alpha = (target - c * torch.tanh(target + b)).clamp(lo, hi)
        converged = False
        for _ in range(self.max_iter):
            t = torch.tanh(alpha + b)
            f = alpha + c * t - target
            lo = torch.where(f < 0, alpha, lo)
            hi = torch.where(f > 0, alpha, hi)
            step = f / (1.0 + c * (1.0 - t * t))          # f' = 1 + c h' ≥ 0; a zero slope gives ±inf → bisection
            newton = alpha - step
            tol = 4 * eps * (1.0 + alpha.abs())
            small = step.abs() <= tol                      # converged: accept even if round-off leaves the bracket
            inside = (newton > lo) & (newton < hi)
            new = torch.where(small | inside, newton, 0.5 * (lo + hi))
            done = small | ((hi - lo) <= tol) | ~torch.isfinite(target)      # NaN/inf inputs stay NaN/inf
            alpha = torch.where(f == 0, alpha, new)
            if bool(done.all()):
                converged = True
                break
        if not converged:
            warnings.warn(f"PlanarFlow.inverse: the scalar equation along w did not converge in {self.max_iter} "
                          f"iterations; the inverse may be inaccurate. Increase max_iter.", ConvergenceWarning,
                          stacklevel=4)
        return alpha

    def _inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat = self.u_hat
        c = (self.w * u_hat).sum(-1)
        target = (y * self.w).sum(-1)
        b = self.b
        with torch.no_grad():
            alpha = self._solve_alpha(target.detach(), c.detach().expand_as(target), b.detach().expand_as(target))
        # one Newton step with autograd: exact value at the root and implicit-function-theorem gradients
        t = torch.tanh(alpha + b)
        slope = 1.0 + c * (1.0 - t * t)
        f = alpha + c * t - target
        alpha = alpha - torch.where(slope > 0, f / torch.where(slope > 0, slope, torch.ones_like(slope)),
                                    torch.zeros_like(f))
        t = torch.tanh(alpha + b)
        x = y - u_hat * t.unsqueeze(-1)
        return x, -torch.log(torch.abs(1.0 + (1.0 - t * t) * c))
