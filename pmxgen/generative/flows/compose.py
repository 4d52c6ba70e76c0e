"""Composition of flows and construction from a short specification string.

Examples
--------
>>> import torch
>>> from pmxgen.generative.flows import build_flow
>>> flow = build_flow("affine+planar*2+coupling", dim=2, batch_shape=(3,), seed=0)
>>> [type(f).__name__ for f in flow]
['AffineFlow', 'PlanarFlow', 'PlanarFlow', 'AffineCouplingFlow']
>>> y, log_det = flow(torch.randn(5, 3, 2, dtype=torch.float64))
>>> tuple(log_det.shape)
(5, 3)
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import torch

from ...errors import ModelError
from .affine import AffineFlow
from .base import Flow, check_batch_shape, check_dim, make_generator
from .coupling import AffineCouplingFlow
from .planar import PlanarFlow
from .radial import RadialFlow

__all__ = ["ComposedFlow", "build_flow", "FLOW_TYPES"]

#: Names usable in :func:`build_flow` specifications → flow classes.
FLOW_TYPES: dict[str, type[Flow]] = {
    "affine": AffineFlow,
    "diagonal": AffineFlow,
    "planar": PlanarFlow,
    "radial": RadialFlow,
    "coupling": AffineCouplingFlow,
}

#: Extra constructor options per name.
_OPTIONS: dict[str, dict] = {"affine": {"kind": "lower"}, "diagonal": {"kind": "diagonal"}}


class ComposedFlow(Flow):
    """Apply flows in order: y = T_K(…T_1(x)); the log-determinants add, the inverse runs backwards.

    Parameters
    ----------
    flows : sequence of Flow
        At least one; all with the same ``dim``, ``batch_shape``, dtype and device.

    Raises
    ------
    ModelError
        If ``flows`` is empty, contains something that is not a Flow, or its members disagree.

    Examples
    --------
    >>> import torch
    >>> from pmxgen.generative.flows import AffineFlow, RadialFlow
    >>> flow = ComposedFlow([AffineFlow(2), RadialFlow(2, seed=1)])
    >>> len(flow), flow.num_parameters
    (2, 9)
    >>> x = torch.zeros(2, dtype=torch.float64)
    >>> bool(torch.equal(flow.inverse(flow(x)[0])[0], x))
    True
    """

    def __init__(self, flows: Sequence[Flow]) -> None:
        flows = list(flows) if not isinstance(flows, Flow) else [flows]
        if not flows:
            raise ModelError("ComposedFlow: needs at least one flow; found an empty sequence")
        for k, f in enumerate(flows):
            if not isinstance(f, Flow):
                raise ModelError(f"ComposedFlow: member {k} is a {type(f).__name__}, not a pmxgen Flow")
        first = flows[0]
        for k, f in enumerate(flows[1:], start=1):
            for what, a, b in (("dim", first.dim, f.dim), ("batch_shape", first.batch_shape, f.batch_shape),
                               ("dtype", first.dtype, f.dtype), ("device", first.device, f.device)):
                if a != b:
                    raise ModelError(f"ComposedFlow: member {k} ({type(f).__name__}) has {what}={b} but member 0 "
                                     f"({type(first).__name__}) has {what}={a}; all members must agree")
        super().__init__(first.dim, first.batch_shape, dtype=first.dtype, device=first.device)
        self.flows = torch.nn.ModuleList(flows)

    def __len__(self) -> int:
        return len(self.flows)

    def __getitem__(self, index: int) -> Flow:
        return self.flows[index]

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = None
        for f in self.flows:
            x, log_det = f._forward(x)
            total = log_det if total is None else total + log_det
        return x, total

    def _inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = None
        for f in reversed(self.flows):
            y, log_det = f._inverse(y)
            total = log_det if total is None else total + log_det
        return y, total


def _parse(spec: str) -> list[str]:
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"build_flow: spec must be a non-empty string such as 'affine+planar*4'; found {spec!r}")
    names = []
    for token in spec.lower().replace(" ", "").split("+"):
        match = re.fullmatch(r"([a-z_]+)(?:\*(\d+))?", token)
        if match is None:
            raise ModelError(f"build_flow: cannot read {token!r} in spec {spec!r}; write NAME or NAME*COUNT joined "
                             f"by '+', e.g. 'affine+planar*4' (names: {', '.join(FLOW_TYPES)})")
        name, count = match.group(1), int(match.group(2) or 1)
        if name not in FLOW_TYPES:
            raise ModelError(f"build_flow: unknown flow type {name!r} in spec {spec!r}; valid names are "
                             f"{', '.join(FLOW_TYPES)}")
        if count < 1:
            raise ModelError(f"build_flow: the count of {name!r} in spec {spec!r} must be at least 1; found {count}")
        names += [name] * count
    return names


def build_flow(spec: str, dim: int, batch_shape: Sequence[int] = (), *, seed: int | torch.Generator | None = 0,
               dtype: torch.dtype = torch.float64, device: torch.device | str | None = None, hidden: int = 16,
               n_hidden_layers: int = 1) -> ComposedFlow:
    """Build a :class:`ComposedFlow` from a specification such as ``"affine+radial*2+coupling*2"``.

    Layers are applied in the order written (the first one acts on the base draws). Names are the
    keys of :data:`FLOW_TYPES` (``affine`` = lower-triangular AffineFlow, ``diagonal`` = diagonal
    AffineFlow, ``planar``, ``radial``, ``coupling``); ``NAME*K`` repeats a layer K times.
    Successive coupling layers alternate their masks ("even", "odd", "even", …). Every layer is the
    identity at initialisation, so the whole flow is too.

    Parameters
    ----------
    spec : str
    dim : int
    batch_shape : tuple of int, default ()
    seed : int, torch.Generator or None, default 0
        Seeds the random initialisation of all layers (same seed → same parameters).
    dtype : torch.dtype, default torch.float64
    device : torch.device or str, optional
    hidden, n_hidden_layers : int
        Conditioner size of the coupling layers.

    Returns
    -------
    ComposedFlow
        Index it to reach a layer, e.g. ``flow[0].set_(mean, cholesky)`` when the spec starts with
        ``affine``.

    Raises
    ------
    ModelError
        On an unreadable spec, an unknown name (the message lists the valid ones), or a coupling
        layer with ``dim < 2``.

    Examples
    --------
    >>> import torch
    >>> flow = build_flow("affine+radial*2", dim=1, batch_shape=(4,), seed=3)
    >>> len(flow), flow.num_parameters
    (3, 8)
    >>> build_flow("affine+spline", dim=2)
    Traceback (most recent call last):
    ...
    pmxgen.errors.ModelError: build_flow: unknown flow type 'spline' in spec ...; valid names are affine, diagonal, ...
    """
    names = _parse(spec)
    dim = check_dim(dim, "build_flow")
    batch_shape = check_batch_shape(batch_shape, "build_flow")
    gen = make_generator(seed)
    layers: list[Flow] = []
    n_coupling = 0
    for name in names:
        layer_seed = int(torch.randint(0, 2**62, (), generator=gen).item())
        options = dict(_OPTIONS.get(name, {}))
        if name == "coupling":
            options.update(hidden=hidden, n_hidden_layers=n_hidden_layers,
                           mask="even" if n_coupling % 2 == 0 else "odd")
            n_coupling += 1
        layers.append(FLOW_TYPES[name](dim, batch_shape, dtype=dtype, device=device, seed=layer_seed, **options))
    return ComposedFlow(layers)
