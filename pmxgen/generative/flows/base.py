"""The :class:`Flow` contract: batched invertible maps with log-determinants.

A flow of dimension ``dim`` with ``batch_shape`` holds ``prod(batch_shape)`` independent
bijections of R^dim (e.g. one per subject); every parameter carries the leading shape
``batch_shape``. Inputs are ``[..., *batch_shape, dim]``: leading sample dimensions are allowed and
the trailing batch dimensions must broadcast with ``batch_shape``.

Examples
--------
>>> import torch
>>> from pmxgen.generative.flows import AffineFlow
>>> flow = AffineFlow(2, batch_shape=(3,))
>>> y, log_det = flow(torch.zeros(5, 3, 2, dtype=torch.float64))
>>> tuple(y.shape), tuple(log_det.shape)
((5, 3, 2), (5, 3))
>>> flow.num_parameters  # free scalars of one of the 3 flows: loc (2) + log-diagonal (2) + off-diagonal (1)
5
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from ...errors import ModelError

__all__ = ["Flow", "make_generator"]

Shape = tuple[int, ...]


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU ``torch.Generator`` for a seed (an existing generator is returned unchanged).

    ``None`` draws a fresh seed from torch's global generator (not reproducible).

    Examples
    --------
    >>> from pmxgen.generative.flows.base import make_generator
    >>> bool(torch.equal(torch.randn(3, generator=make_generator(1)), torch.randn(3, generator=make_generator(1))))
    True
    """
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ModelError(f"seed must be an int, a torch.Generator or None; found {seed!r} "
                         f"(type {type(seed).__name__})")
    return torch.Generator(device="cpu").manual_seed(seed)


def check_dim(dim: object, who: str, minimum: int = 1) -> int:
    """Validate a dimension argument."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < minimum:
        raise ModelError(f"{who}: dim must be an int >= {minimum}; found {dim!r}")
    return dim


def check_batch_shape(batch_shape: object, who: str) -> Shape:
    """Validate a batch shape (an int is read as a 1-D shape)."""
    if isinstance(batch_shape, int) and not isinstance(batch_shape, bool):
        batch_shape = (batch_shape,)
    if not isinstance(batch_shape, (tuple, list, torch.Size)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in batch_shape):
        raise ModelError(f"{who}: batch_shape must be a tuple of non-negative ints, e.g. () or (N,); "
                         f"found {batch_shape!r}")
    return tuple(int(s) for s in batch_shape)


def check_dtype(dtype: object, who: str) -> torch.dtype:
    """Validate a floating dtype."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelError(f"{who}: dtype must be a floating torch dtype such as torch.float64; found {dtype!r}")
    return dtype


class Flow(torch.nn.Module, ABC):
    """A batch of invertible maps y = T(x) of R^dim with tractable log|det ∂y/∂x|.

    Subclasses implement :meth:`_forward` and :meth:`_inverse` on inputs already checked and
    broadcast to ``[..., *batch_shape, dim]``; :meth:`forward` and :meth:`inverse` check the input
    first and raise :class:`~pmxgen.errors.ModelError` when it does not fit.

    Parameters
    ----------
    dim : int
        Dimension of the space the flow acts on.
    batch_shape : tuple of int, default ()
        Shape of the batch of independent flows; every parameter has this leading shape.
    dtype : torch.dtype, default torch.float64
    device : torch.device or str, optional

    Attributes
    ----------
    dim : int
    batch_shape : tuple of int

    Examples
    --------
    >>> import torch
    >>> from pmxgen.generative.flows import PlanarFlow
    >>> flow = PlanarFlow(3, batch_shape=(4,), seed=0)
    >>> x = torch.randn(10, 4, 3, dtype=torch.float64)
    >>> y, log_det = flow(x)
    >>> x_back, log_det_inv = flow.inverse(y)
    >>> bool(torch.allclose(x_back, x)), bool(torch.allclose(log_det_inv, -log_det))
    (True, True)
    """

    dim: int
    batch_shape: Shape

    def __init__(self, dim: int, batch_shape: Sequence[int] = (), *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        who = type(self).__name__
        self.dim = check_dim(dim, who)
        self.batch_shape = check_batch_shape(batch_shape, who)
        self._init_dtype = check_dtype(dtype, who)
        self._init_device = torch.device(device) if device is not None else torch.device("cpu")

    # ------------------------------------------------------------------ helpers for subclasses
    def _new_parameter(self, value: torch.Tensor) -> torch.nn.Parameter:
        """A parameter from a (CPU) tensor, moved to the flow's dtype and device."""
        return torch.nn.Parameter(value.to(dtype=self._init_dtype, device=self._init_device))

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        """dtype of the parameters (inputs must have it)."""
        for p in self.parameters():
            return p.dtype
        return self._init_dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters (inputs must live there)."""
        for p in self.parameters():
            return p.device
        return self._init_device

    @property
    def num_parameters(self) -> int:
        """Number of free scalars of ONE flow of the batch (all flows of the batch have as many).

        The total number of scalars is ``num_parameters * prod(batch_shape)``.
        """
        size = math.prod(self.batch_shape)
        total = sum(p.numel() for p in self.parameters())
        if size == 0:
            return sum(math.prod(p.shape[len(self.batch_shape):]) for p in self.parameters())
        return total // size

    def extra_repr(self) -> str:
        return f"dim={self.dim}, batch_shape={self.batch_shape}"

    # ------------------------------------------------------------------ contract
    def _check_input(self, x: object, method: str, name: str) -> torch.Tensor:
        """Check an input tensor against the flow and broadcast it to ``[..., *batch_shape, dim]``."""
        who = f"{type(self).__name__}.{method}"
        if not isinstance(x, torch.Tensor):
            raise ModelError(f"{who}: {name} must be a torch.Tensor of shape [..., *batch_shape, dim]; "
                             f"found {type(x).__name__}. Convert it with torch.as_tensor(..., dtype={self.dtype})")
        if not x.is_floating_point():
            raise ModelError(f"{who}: {name} has dtype {x.dtype}; expected a floating tensor of dtype "
                             f"{self.dtype} (the flow's parameters). Convert it with {name}.to({self.dtype})")
        if x.dtype != self.dtype:
            raise ModelError(f"{who}: {name} has dtype {x.dtype} but the flow's parameters are {self.dtype}. "
                             f"Convert it with {name}.to({self.dtype}) or the flow with flow.to({x.dtype})")
        if x.device != self.device:
            raise ModelError(f"{who}: {name} is on device {x.device} but the flow's parameters are on "
                             f"{self.device}. Move one of them with .to(device)")
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ModelError(f"{who}: {name} has shape {tuple(x.shape)}; its last dimension must be the flow's "
                             f"dim = {self.dim} (expected shape [..., *batch_shape, dim] = "
                             f"[..., {', '.join(map(str, self.batch_shape + (self.dim,)))}])")
        try:
            batch = torch.broadcast_shapes(tuple(x.shape[:-1]), self.batch_shape)
        except RuntimeError:
            batch = None
        if batch is None:
            raise ModelError(f"{who}: {name} has shape {tuple(x.shape)}, whose batch dimensions "
                             f"{tuple(x.shape[:-1])} do not broadcast with the flow's batch_shape "
                             f"{self.batch_shape}; expected shape [..., *batch_shape, dim] = "
                             f"[..., {', '.join(map(str, self.batch_shape + (self.dim,)))}]")
        if tuple(batch) != tuple(x.shape[:-1]):
            x = x.expand(*batch, self.dim)
        return x

    @staticmethod
    def _finish(y: torch.Tensor, log_det: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Give the log-determinant the batch shape of ``y`` (materialised, not a stride-0 view)."""
        shape = y.shape[:-1]
        if log_det.shape != shape:
            log_det = log_det.expand(shape).contiguous()
        return y, log_det

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the flow: ``(y, log|det ∂y/∂x|)``, shapes ``[..., *batch_shape, dim]`` and ``[..., *batch_shape]``.

        Raises
        ------
        ModelError
            If ``x`` is not a floating tensor with the flow's dtype and device, whose last dimension
            is ``dim`` and whose trailing batch dimensions broadcast with ``batch_shape``.
        """
        x = self._check_input(x, "forward", "x")
        return self._finish(*self._forward(x))

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Invert the flow: ``(x, log|det ∂x/∂y|)``; the log-determinant is minus the forward one at x.

        Raises
        ------
        ModelError
            Under the same conditions as :meth:`forward`.
        """
        y = self._check_input(y, "inverse", "y")
        return self._finish(*self._inverse(y))

    @abstractmethod
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward map on a checked input ``[..., *batch_shape, dim]``."""

    @abstractmethod
    def _inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse map on a checked input ``[..., *batch_shape, dim]``."""
