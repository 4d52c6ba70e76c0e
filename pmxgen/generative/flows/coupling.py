"""Affine coupling flows (RealNVP, Dinh et al. 2017) with one conditioner network per batch element.

The coordinates are split by a mask into A (kept) and B (transformed):
y_A = x_A, y_B = x_B · exp(s(x_A)) + t(x_A), with s = scale_bound · tanh(ŝ / scale_bound) bounded.
(ŝ, t) come from an MLP whose weights carry the leading ``batch_shape`` (``[*batch_shape, out, in]``,
applied by batched matrix products), so N subjects have N independent conditioners evaluated in
one call. The last layer is zero-initialised: the flow starts as the identity.

Examples
--------
>>> import torch
>>> from pmxgen.generative.flows import AffineCouplingFlow
>>> flow = AffineCouplingFlow(3, batch_shape=(2,), hidden=8, seed=0)
>>> flow.mask.tolist()
[True, False, True]
>>> x = torch.randn(4, 2, 3, dtype=torch.float64)
>>> bool(torch.equal(flow(x)[0], x))
True
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...errors import ModelError
from .base import Flow, make_generator

__all__ = ["AffineCouplingFlow"]


def _batched_linear(weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``weight [*B, out, in] @ h [..., *B, in] + bias [*B, out]``."""
    return (weight @ h.unsqueeze(-1)).squeeze(-1) + bias


class AffineCouplingFlow(Flow):
    """RealNVP affine coupling layer with per-batch-element conditioner MLPs.

    Parameters
    ----------
    dim : int
        Must be at least 2 (use :class:`~pmxgen.generative.flows.PlanarFlow` or
        :class:`~pmxgen.generative.flows.RadialFlow` in one dimension).
    batch_shape : tuple of int, default ()
    hidden : int, default 16
        Width of the hidden layers.
    n_hidden_layers : int, default 1
        Number of hidden layers (0: the conditioner is affine in x_A).
    mask : None, "even", "odd" or bool tensor [dim], default None
        Coordinates kept (A). ``"even"`` (the default) keeps 0, 2, 4, …; ``"odd"`` keeps 1, 3, ….
        A tensor must have at least one True and one False.
    scale_bound : float, default 3.0
        Bound of |s| (the log-scale of each transformed coordinate).
    dtype : torch.dtype, default torch.float64
    device : torch.device or str, optional
    seed : int, torch.Generator or None, default 0
        Seed of the random initialisation of the hidden layers (uniform ±1/sqrt(fan_in), as
        torch.nn.Linear); same seed → same parameters.

    Attributes
    ----------
    weights, biases : torch.nn.ParameterList
        Layer ``k`` has weight ``[*batch_shape, out_k, in_k]`` and bias ``[*batch_shape, out_k]``;
        the last layer outputs (ŝ, t), each of size ``dim - |A|``.

    Examples
    --------
    >>> import torch
    >>> flow = AffineCouplingFlow(2, mask="odd", hidden=4, seed=0)
    >>> with torch.no_grad():
    ...     _ = flow.weights[-1].normal_(generator=torch.Generator().manual_seed(1))
    >>> x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    >>> y, log_det = flow(x)
    >>> bool(torch.equal(y[:, 1], x[:, 1]))  # the kept coordinate
    True
    >>> (flow.inverse(y)[0] - x).abs().max().item() < 1e-12
    True
    """

    def __init__(self, dim: int, batch_shape: Sequence[int] = (), *, hidden: int = 16, n_hidden_layers: int = 1,
                 mask: None | str | torch.Tensor = None, scale_bound: float = 3.0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                 seed: int | torch.Generator | None = 0) -> None:
        if isinstance(dim, int) and not isinstance(dim, bool) and dim == 1:
            raise ModelError("AffineCouplingFlow: dim must be at least 2 (a coupling layer splits the "
                             "coordinates in two); found dim=1. Use PlanarFlow or RadialFlow in one dimension")
        super().__init__(dim, batch_shape, dtype=dtype, device=device)
        d, b = self.dim, self.batch_shape
        keep = self._make_mask(mask, d)
        for name, value in (("hidden", hidden), ("n_hidden_layers", n_hidden_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "hidden" else 0):
                raise ModelError(f"AffineCouplingFlow: {name} must be an int >= {1 if name == 'hidden' else 0}; "
                                 f"found {value!r}")
        if not (isinstance(scale_bound, (int, float)) and math.isfinite(scale_bound) and scale_bound > 0):
            raise ModelError(f"AffineCouplingFlow: scale_bound must be a positive finite number; found {scale_bound!r}")
        self.scale_bound = float(scale_bound)
        idx_a = torch.nonzero(keep).flatten()
        idx_b = torch.nonzero(~keep).flatten()
        dev = self._init_device
        self.register_buffer("mask", keep.to(dev), persistent=False)
        self.register_buffer("_idx_a", idx_a.to(dev), persistent=False)
        self.register_buffer("_idx_b", idx_b.to(dev), persistent=False)
        self.register_buffer("_unperm", torch.argsort(torch.cat([idx_a, idx_b])).to(dev), persistent=False)
        gen = make_generator(seed)
        sizes = [idx_a.numel()] + [hidden] * n_hidden_layers + [2 * idx_b.numel()]
        weights, biases = [], []
        for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if k == len(sizes) - 2:
                w, bias = torch.zeros(*b, fan_out, fan_in), torch.zeros(*b, fan_out)
            else:
                bound = 1.0 / math.sqrt(fan_in)
                w = (2 * torch.rand(*b, fan_out, fan_in, generator=gen, dtype=torch.float64) - 1) * bound
                bias = (2 * torch.rand(*b, fan_out, generator=gen, dtype=torch.float64) - 1) * bound
            weights.append(self._new_parameter(w))
            biases.append(self._new_parameter(bias))
        self.weights = torch.nn.ParameterList(weights)
        self.biases = torch.nn.ParameterList(biases)

    @staticmethod
    def _make_mask(mask: None | str | torch.Tensor, dim: int) -> torch.Tensor:
        if mask is None or (isinstance(mask, str) and mask in ("even", "odd")):
            start = 1 if mask == "odd" else 0
            keep = torch.zeros(dim, dtype=torch.bool)
            keep[start::2] = True
            return keep
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == (dim,):
            if bool(mask.all()) or not bool(mask.any()):
                raise ModelError(f"AffineCouplingFlow: the mask must keep some coordinates (True) and transform "
                                 f"others (False); found {mask.tolist()}")
            return mask.detach().cpu().clone()
        found = f"tensor of dtype {mask.dtype} and shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) \
            else repr(mask)
        raise ModelError(f"AffineCouplingFlow: mask must be None, 'even', 'odd' or a bool tensor of shape "
                         f"[{dim}]; found {found}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask={self.mask.int().tolist()}, scale_bound={self.scale_bound}"

    def _conditioner(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x_a
        last = len(self.weights) - 1
        for k, (w, bias) in enumerate(zip(self.weights, self.biases)):
            h = _batched_linear(w, bias, h)
            if k < last:
                h = F.silu(h)
        n_b = self._idx_b.numel()
        s = self.scale_bound * torch.tanh(h[..., :n_b] / self.scale_bound)
        return s, h[..., n_b:]

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a = x.index_select(-1, self._idx_a)
        s, t = self._conditioner(x_a)
        y_b = x.index_select(-1, self._idx_b) * torch.exp(s) + t
        return torch.cat([x_a, y_b], dim=-1).index_select(-1, self._unperm), s.sum(-1)

    def _inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_a = y.index_select(-1, self._idx_a)
        s, t = self._conditioner(y_a)
        x_b = (y.index_select(-1, self._idx_b) - t) * torch.exp(-s)
        return torch.cat([y_a, x_b], dim=-1).index_select(-1, self._unperm), -s.sum(-1)
