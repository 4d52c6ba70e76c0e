"""Shared helpers of the flow tests: flows of every type with randomised (non-identity) parameters."""
import pytest
import torch

from pmxgen.generative.flows import build_flow


def spec_of(kind: str, dim: int) -> str:
    """build_flow specification of a flow type: a single layer, or ``"composed"`` = all types chained."""
    if kind == "composed":
        return "affine+diagonal+planar*2+radial*2" + ("+coupling*2" if dim >= 2 else "")
    return kind


def randomise(flow: torch.nn.Module, seed: int, scale: float = 1.0) -> torch.nn.Module:
    """Add seeded N(0, scale²) noise to every parameter (in place) and return the flow."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(flow.named_parameters()):
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return flow


@pytest.fixture
def make_flow():
    """make_flow(kind, dim, batch_shape=(), seed=0, scale=1.0, **build_kwargs) → randomised ComposedFlow."""
    def factory(kind, dim, batch_shape=(), seed=0, scale=1.0, **kwargs):
        flow = build_flow(spec_of(kind, dim), dim, batch_shape, seed=seed, hidden=8, **kwargs)
        return randomise(flow, seed + 1000, scale)
    return factory
