"""Normalizing flows for batched per-subject distributions (e.g. variational posteriors of η).

One module per flow family: :mod:`.affine`, :mod:`.planar`, :mod:`.radial`, :mod:`.coupling`;
:mod:`.compose` chains them (:func:`build_flow` from a spec such as ``"affine+planar*4"``) and
:mod:`.distribution` turns a flow into a distribution on a normal or Student-t base. Every flow
has a ``batch_shape``: N subjects get N independent flows evaluated in one call.

Examples
--------
>>> import torch
>>> from pmxgen.generative.flows import FlowDistribution, build_flow
>>> q = FlowDistribution(build_flow("affine+radial*2", dim=2, batch_shape=(5,), seed=0))
>>> x, log_q = q.rsample(100, seed=1)
>>> tuple(x.shape), tuple(log_q.shape)
((100, 5, 2), (100, 5))
"""
from .affine import AffineFlow
from .base import Flow
from .compose import FLOW_TYPES, ComposedFlow, build_flow
from .coupling import AffineCouplingFlow
from .distribution import FlowDistribution
from .planar import PlanarFlow
from .radial import RadialFlow

__all__ = ["Flow", "AffineFlow", "PlanarFlow", "RadialFlow", "AffineCouplingFlow", "ComposedFlow", "build_flow",
           "FLOW_TYPES", "FlowDistribution"]
