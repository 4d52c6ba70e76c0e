"""Normalizing flows for tabular data: affine coupling (RealNVP) and rational-quadratic spline flows.

Both families wrap the flows of `zuko <https://github.com/probabilists/zuko>`_ (version ≥ 1.6):
a small, well-kept library whose flows are ``torch.nn.Module`` objects with exact
``log_prob``, exact inverses, conditioning on a context vector and plain state dicts (so they
save to safetensors like every other generator). Writing coupling layers and spline
transforms again here would only add code to test; zuko's are tested upstream, and the tests of
this module check the identities that matter for a generator (inverse of forward, densities
integrating to one, held-out likelihood on toy densities).

- :class:`RealNVPGenerator` (``"realnvp"``): affine coupling layers with alternating (or random)
  masks (Dinh et al. 2017), ``zuko.flows.RealNVP``.
- :class:`SplineFlowGenerator` (``"spline_flow"``): monotonic rational-quadratic spline
  transforms (Durkan et al. 2019), ``zuko.flows.NSF``, fully autoregressive by default or
  coupling with ``passes=2``. Splines act on [−``bound``, ``bound``] and are the identity
  outside; the generator's standardised encoding puts the data there.

The flow maps a data row ``x`` (standardised encoding) to ``z = f(x | c)`` with a standard
normal base, so ``log p(x | c) = log N(f(x | c); 0, I) + log |det ∂f/∂x|``; sampling draws ``z``
with the seeded generator and inverts ``f``. Conditions ``c`` enter every hyper-network as extra
inputs. Training maximises the likelihood of minibatches (default trainer, early stopping).

Examples
--------
>>> import torch
>>> from pmxgen.generative.zuko_flows import RealNVPGenerator
>>> from pmxgen.generative.toy import sample_toy
>>> x = sample_toy("8gaussians", 500, seed=0)
>>> gen = RealNVPGenerator(transforms=4, hidden_features=[32, 32], max_epochs=2, seed=0).fit(x)
>>> gen.sample(5, seed=1).shape
torch.Size([5, 2])
>>> bool(torch.isfinite(gen.log_prob(x[:10])).all())
True
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ModelError
from .generator import Generator, register_generator

__all__ = ["RealNVPGenerator", "SplineFlowGenerator", "ACTIVATIONS"]

#: Activation names accepted by the hyper-networks.
ACTIVATIONS = {"relu": torch.nn.ReLU, "elu": torch.nn.ELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh,
               "gelu": torch.nn.GELU}


class _ZukoFlowGenerator(Generator):
    """Shared code of the zuko-backed flows: likelihood loss, seeded sampling by inversion."""

    tractable_log_prob = True

    def __init__(self, *, transforms: int = 5, hidden_features: Sequence[int] = (64, 64),
                 activation: str = "relu", **common) -> None:
        super().__init__(**common)
        self.transforms = transforms
        self.hidden_features = list(hidden_features)
        self.activation = activation

    def _validate(self) -> None:
        super()._validate()
        if not (isinstance(self.transforms, int) and self.transforms >= 1):
            raise ModelError(f"{type(self).__name__}: transforms must be an integer >= 1 (found {self.transforms!r})")
        if not self.hidden_features or any(int(h) < 1 for h in self.hidden_features):
            raise ModelError(f"{type(self).__name__}: hidden_features must be a non-empty list of sizes >= 1 "
                             f"(found {self.hidden_features!r})")
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"{type(self).__name__}: unknown activation {self.activation!r}; "
                             f"choose one of {sorted(ACTIVATIONS)}")

    def _hyper(self) -> dict:
        return {"hidden_features": [int(h) for h in self.hidden_features],
                "activation": ACTIVATIONS[self.activation]}

    def _log_prob(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.network(c).log_prob(x)

    def _loss(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return -self._log_prob(x, c).mean()

    def _sample(self, n: int, c: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        dist = self.network(c)
        z = torch.randn(n, self.transform_.dim, generator=generator, dtype=torch.float64,
                        device=generator.device)
        return dist.transform.inv(z)

    def forward_transform(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``z = f(x | c)`` on the standardised encoding (data → base)."""
        return self.network(c).transform(x)

    def inverse_transform(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``x = f⁻¹(z | c)`` on the standardised encoding (base → data)."""
        return self.network(c).transform.inv(z)


@register_generator
class RealNVPGenerator(_ZukoFlowGenerator):
    """Affine coupling flow (RealNVP) on the encoded columns, via ``zuko.flows.RealNVP``.

    Parameters
    ----------
    transforms : int
        Number of coupling layers (masks alternate; ``random_mask=True`` draws them, seeded).
    hidden_features : list of int
        Hidden layer sizes of each layer's hyper-network (shift and log-scale).
    activation : str
        Hyper-network activation: one of :data:`ACTIVATIONS`.
    random_mask : bool
        Random instead of alternating coupling masks (useful beyond two columns).
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator`.

    Examples
    --------
    >>> import torch
    >>> gen = RealNVPGenerator(transforms=2, hidden_features=[8], max_epochs=2)
    >>> x = torch.randn(100, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> z = gen.fit(x).forward_transform(x[:4])
    >>> bool(torch.allclose(gen.inverse_transform(z), x[:4], atol=1e-10))
    True
    """

    name = "realnvp"

    def __init__(self, *, transforms: int = 6, hidden_features: Sequence[int] = (64, 64),
                 activation: str = "relu", random_mask: bool = False, **common) -> None:
        super().__init__(transforms=transforms, hidden_features=hidden_features, activation=activation, **common)
        self.random_mask = random_mask

    def _build(self, dim: int, cond_dim: int) -> torch.nn.Module:
        import zuko
        return zuko.flows.RealNVP(dim, cond_dim, transforms=self.transforms, randmask=bool(self.random_mask),
                                  **self._hyper())


@register_generator
class SplineFlowGenerator(_ZukoFlowGenerator):
    """Rational-quadratic neural spline flow on the encoded columns, via ``zuko.flows.NSF``.

    Parameters
    ----------
    transforms : int
        Number of spline layers (feature order reversed between layers).
    hidden_features : list of int
        Hidden layer sizes of each layer's masked hyper-network.
    activation : str
        Hyper-network activation: one of :data:`ACTIVATIONS`.
    bins : int
        Number of spline bins K.
    passes : int, optional
        Sequential passes of the inverse: ``None`` is fully autoregressive (MAF-style), ``2`` is a
        coupling flow (faster sampling in high dimension; the same in two dimensions).
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator`.

    Examples
    --------
    >>> import torch
    >>> gen = SplineFlowGenerator(transforms=2, hidden_features=[8], bins=4, max_epochs=2)
    >>> x = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> gen.fit(x).log_prob(x[:3]).shape
    torch.Size([3])
    """

    name = "spline_flow"

    def __init__(self, *, transforms: int = 5, hidden_features: Sequence[int] = (64, 64),
                 activation: str = "relu", bins: int = 8, passes: int | None = None, **common) -> None:
        super().__init__(transforms=transforms, hidden_features=hidden_features, activation=activation, **common)
        self.bins, self.passes = bins, passes

    def _validate(self) -> None:
        super()._validate()
        if not (isinstance(self.bins, int) and self.bins >= 2):
            raise ModelError(f"SplineFlowGenerator: bins must be an integer >= 2 (found {self.bins!r})")
        if self.passes is not None and not (isinstance(self.passes, int) and self.passes >= 1):
            raise ModelError(f"SplineFlowGenerator: passes must be None or an integer >= 1 (found {self.passes!r})")

    def _build(self, dim: int, cond_dim: int) -> torch.nn.Module:
        import zuko
        return zuko.flows.NSF(dim, cond_dim, bins=self.bins, transforms=self.transforms, passes=self.passes,
                              **self._hyper())
