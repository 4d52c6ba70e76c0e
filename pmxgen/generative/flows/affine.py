"""Affine flows y = loc + L x with L lower-triangular (or diagonal) and a positive diagonal.

On a standard-normal base an affine flow is the Gaussian N(loc, L Lᵀ); it is the identity at
initialisation and can be set from a mean and a Cholesky factor with :meth:`AffineFlow.set_`.

Examples
--------
>>> import torch
>>> from pmxgen.generative.flows import AffineFlow
>>> flow = AffineFlow(2)
>>> flow.set_(torch.tensor([1.0, -1.0], dtype=torch.float64),
...           torch.tensor([[2.0, 0.0], [0.5, 1.0]], dtype=torch.float64))
>>> y, log_det = flow(torch.tensor([1.0, 1.0], dtype=torch.float64))
>>> y.tolist(), round(log_det.item(), 6)  # log|det L| = log 2
([3.0, 0.5], 0.693147)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import ModelError
from .base import Flow

__all__ = ["AffineFlow"]

_KINDS = ("lower", "diagonal")


class AffineFlow(Flow):
    """y = loc + L x, L lower-triangular (``kind="lower"``) or diagonal, with ``diag(L) = exp(log_diag)``.

    Parameters (each with leading shape ``batch_shape``): ``shift`` ``[dim]`` (= loc), ``log_diag``
    ``[dim]`` and, for ``kind="lower"``, ``offdiag`` ``[dim*(dim-1)/2]`` (the strictly lower
    entries, row by row as :func:`torch.tril_indices`). All are zero at initialisation, so the
    flow starts as the identity.

    Parameters
    ----------
    dim : int
    batch_shape : tuple of int, default ()
    kind : {"lower", "diagonal"}, default "lower"
    dtype : torch.dtype, default torch.float64
    device : torch.device or str, optional
    seed : int, torch.Generator or None, default 0
        Accepted for a constructor signature shared by all flows; the initialisation is the
        identity and uses no random numbers.

    Examples
    --------
    >>> import torch
    >>> flow = AffineFlow(3, batch_shape=(2,), kind="diagonal")
    >>> tuple(flow.scale_tril.shape), flow.num_parameters
    ((2, 3, 3), 6)
    >>> x = torch.randn(4, 2, 3, dtype=torch.float64)
    >>> bool(torch.equal(flow(x)[0], x))
    True
    """

    def __init__(self, dim: int, batch_shape: Sequence[int] = (), *, kind: str = "lower",
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                 seed: int | torch.Generator | None = 0) -> None:
        super().__init__(dim, batch_shape, dtype=dtype, device=device)
        if kind not in _KINDS:
            raise ModelError(f"AffineFlow: kind must be one of {_KINDS}; found {kind!r}")
        self.kind = kind
        b, d = self.batch_shape, self.dim
        self.shift = self._new_parameter(torch.zeros(*b, d))
        self.log_diag = self._new_parameter(torch.zeros(*b, d))
        if kind == "lower":
            rows, cols = torch.tril_indices(d, d, offset=-1)
            self.register_buffer("_rows", rows.to(self._init_device), persistent=False)
            self.register_buffer("_cols", cols.to(self._init_device), persistent=False)
            self.offdiag = self._new_parameter(torch.zeros(*b, d * (d - 1) // 2))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind!r}"

    @property
    def loc(self) -> torch.Tensor:
        """The shift ``[*batch_shape, dim]`` (the mean on a symmetric base)."""
        return self.shift

    @property
    def scale_tril(self) -> torch.Tensor:
        """L ``[*batch_shape, dim, dim]`` (Cholesky factor of the covariance on a N(0, I) base)."""
        scale = torch.diag_embed(torch.exp(self.log_diag))
        if self.kind == "lower" and self.dim > 1:
            low = self.offdiag.new_zeros(self.batch_shape + (self.dim, self.dim))
            low[..., self._rows, self._cols] = self.offdiag
            scale = scale + low
        return scale

    @torch.no_grad()
    def set_(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> None:
        """Set the parameters in place so that ``y = loc + scale_tril @ x``.

        Parameters
        ----------
        loc : torch.Tensor
            ``[dim]`` or ``[*batch_shape, dim]`` (broadcast over the batch), e.g. EBEs ``[N, K]``.
        scale_tril : torch.Tensor
            Lower-triangular with a positive diagonal, ``[dim, dim]`` or ``[*batch_shape, dim, dim]``,
            e.g. ``torch.linalg.cholesky(ebe_covariance)``. For ``kind="diagonal"`` it must be
            diagonal; a vector of scales ``[..., dim]`` is also accepted.

        Raises
        ------
        ModelError
            On wrong shapes, non-finite values, a non-positive diagonal, non-zero entries above the
            diagonal, or off-diagonal entries for a diagonal flow.
        """
        b, d = self.batch_shape, self.dim
        loc = torch.as_tensor(loc).to(dtype=self.dtype, device=self.device)
        scale = torch.as_tensor(scale_tril).to(dtype=self.dtype, device=self.device)
        if self.kind == "diagonal" and scale.dim() >= 1 and (scale.dim() == 1 or scale.shape[-2:] != (d, d)):
            scale = torch.diag_embed(scale)
        try:
            loc = torch.broadcast_to(loc, b + (d,))
        except RuntimeError:
            raise ModelError(f"AffineFlow.set_: loc has shape {tuple(loc.shape)}; expected [{d}] or "
                             f"{list(b + (d,))}") from None
        try:
            scale = torch.broadcast_to(scale, b + (d, d))
        except RuntimeError:
            raise ModelError(f"AffineFlow.set_: scale_tril has shape {tuple(scale.shape)}; expected "
                             f"[{d}, {d}] or {list(b + (d, d))}") from None
        if not bool(torch.isfinite(loc).all()) or not bool(torch.isfinite(scale).all()):
            raise ModelError("AffineFlow.set_: loc and scale_tril must be finite; found NaN or infinite values")
        diag = torch.diagonal(scale, dim1=-2, dim2=-1)
        if not bool((diag > 0).all()):
            raise ModelError(f"AffineFlow.set_: the diagonal of scale_tril must be positive; found minimum "
                             f"{diag.min().item():.6g}. Pass a Cholesky factor (torch.linalg.cholesky(cov))")
        if bool((torch.triu(scale, diagonal=1) != 0).any()):
            raise ModelError("AffineFlow.set_: scale_tril has non-zero entries above the diagonal; pass a "
                             "lower-triangular Cholesky factor (torch.linalg.cholesky(cov))")
        low = scale[..., self._rows, self._cols] if self.kind == "lower" else None
        if self.kind == "diagonal" and bool((torch.tril(scale, diagonal=-1) != 0).any()):
            raise ModelError("AffineFlow.set_: this flow has kind='diagonal' but scale_tril has non-zero "
                             "entries below the diagonal; pass a diagonal matrix or use kind='lower'")
        self.shift.copy_(loc)
        self.log_diag.copy_(torch.log(diag))
        if low is not None:
            self.offdiag.copy_(low)

    def _matmul(self, v: torch.Tensor, solve: bool) -> torch.Tensor:
        """L v (or L⁻¹ v by triangular solve) for v ``[*sample, *batch, dim]``.

        The sample dimensions are moved behind ``dim`` so that each batch element's L multiplies
        (or solves for) all its samples at once: ``[*batch, dim, n_samples]``.
        """
        n_batch = len(self.batch_shape)
        batch = v.shape[v.dim() - 1 - n_batch:-1]
        scale = self.scale_tril.expand(*batch, self.dim, self.dim)
        columns = v.reshape(-1, *batch, self.dim).movedim(0, -1)
        if solve:
            out = torch.linalg.solve_triangular(scale, columns, upper=False)
        else:
            out = scale @ columns
        return out.movedim(-1, 0).reshape(v.shape)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "diagonal":
            y = self.shift + torch.exp(self.log_diag) * x
        else:
            y = self.shift + self._matmul(x, solve=False)
        return y, self.log_diag.sum(-1)

    def _inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centred = y - self.shift
        if self.kind == "diagonal":
            x = centred * torch.exp(-self.log_diag)
        else:
            x = self._matmul(centred, solve=True)
        return x, -self.log_diag.sum(-1)
