"""Deep generative components of pmxgen.

:mod:`pmxgen.generative.flows`: normalizing flows with a batch of independent flows (one per
subject), used as flexible per-subject distributions such as variational posteriors of η.

Examples
--------
>>> import torch
>>> from pmxgen.generative import build_flow
>>> flow = build_flow("affine+planar*2", dim=3, batch_shape=(4,))
>>> flow.dim, flow.batch_shape
(3, (4,))
"""
from .flows import (
    FLOW_TYPES,
    AffineCouplingFlow,
    AffineFlow,
    ComposedFlow,
    Flow,
    FlowDistribution,
    PlanarFlow,
    RadialFlow,
    build_flow,
)

__all__ = ["Flow", "AffineFlow", "PlanarFlow", "RadialFlow", "AffineCouplingFlow", "ComposedFlow", "build_flow",
           "FLOW_TYPES", "FlowDistribution"]
