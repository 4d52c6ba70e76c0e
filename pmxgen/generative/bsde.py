"""BSDE generator: a backward SDE whose terminal condition is the data, trained by a multiscale MMD.

Formulation (on the standardised encoding of :mod:`.tabular`, dimension ``d``; ``c`` the encoded
conditions). A backward stochastic differential equation on ``[0, T]``

    ``Y_t = ξ + ∫_t^T f(s, Y_s, Z_s, c) ds − ∫_t^T Z_s dW_s``,  i.e.  ``dY_t = −f(t, Y_t, Z_t, c) dt + Z_t dW_t``,

with ``W`` an ``m``-dimensional Brownian motion (``m = noise_dim``, default ``d``), ``Z_t = z_θ(t, Y_t, c)``
a ``d × m`` matrix given by a network and the driver ``f = f_θ(t, Y_t, Z_t, c)`` a second network
(``driver="network"``) or ``0`` (``driver="none"``: then ``Y`` is a local martingale). The
terminal condition asks ``ξ = Y_T`` to have the data's law. As in the deep BSDE method (E, Han &
Jentzen 2017, Commun. Math. Stat. 5:349, "Deep learning-based numerical methods for
high-dimensional parabolic PDEs and BSDEs") the equation is simulated *forward* from ``Y_0``
by Euler–Maruyama on ``n_steps`` equal steps ``Δ = T / n_steps``:

    ``Y_{k+1} = Y_k − f(t_k, Y_k, Z_k, c) Δ + Z_k ΔW_k``,  ``ΔW_k ~ N(0, Δ I_m)``,  ``Z_k = z_θ(t_k, Y_k, c)``,

and the terminal condition is imposed through the loss. Where E–Han–Jentzen match a known
terminal function pathwise (squared error), a generative model only knows the terminal *law*,
so — as in BSDE-Gen (X. Xu 2023, "Deep generative modeling with backward stochastic
differential equations", arXiv:2304.04049) — the loss is the squared maximum mean discrepancy
between simulated ``Y_T`` and data minibatches, here with the multiscale Gaussian kernel of
:func:`pmxgen.generative.kernels.mmd2` (bandwidths: the median distance of the training rows times
``bandwidth_factors``). With conditions the MMD compares ``(Y_T, c)`` with ``(x, c)`` jointly.
The initial law is the simple ``Y_0 ~ N(0, init_scale² I_d)`` (our choice; the encoding is
standardised, so it has the data's scale). The time input of both networks is ``t / T``.

Two exact properties (tested): with ``Z ≡ 0`` and ``f ≡ 0`` the terminal law is the initial law
(``Y_T = Y_0`` draw by draw), and with a constant ``Z`` and ``f ≡ 0``,
``Y_T = Y_0 + Z W_T ~ N(0, init_scale² I + T Z Zᵀ)`` (Euler–Maruyama is exact for constant
coefficients).

Training uses the default minibatch trainer (Adam, early stopping on the held-out MMD, best
state kept); the held-out MMD is evaluated with the same simulated paths at every epoch
(common random numbers), so that epochs are compared without simulation noise. There is no
tractable density: compare by sample-based metrics.

Examples
--------
>>> import torch
>>> from pmxgen.generative.bsde import BSDEGenerator
>>> x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 + 1
>>> gen = BSDEGenerator(hidden=16, n_steps=4, max_epochs=2, batch_size=100, eval_samples=100).fit(x)
>>> gen.status_, gen.sample(5, seed=1).shape
('max_iterations', torch.Size([5, 2]))
>>> gen.simulate(4, generator=torch.Generator().manual_seed(0), return_path=True).shape
torch.Size([5, 4, 2])
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ModelError
from .generator import Generator, register_generator, train_minibatches
from ._mlp import mlp
from .kernels import mmd2, multiscale_bandwidths

__all__ = ["BSDEGenerator"]


def _join(*parts: torch.Tensor | None) -> torch.Tensor:
    return torch.cat([p for p in parts if p is not None], 1)


class _BSDENetwork(nn.Module):
    """``z`` network: (t, y, c) → d·m entries of Z; ``driver`` network: (t, y, vec Z, c) → d (optional)."""

    def __init__(self, dim: int, cond_dim: int, noise_dim: int, hidden: int, layers: int, driver: bool) -> None:
        super().__init__()
        self.z = mlp(1 + dim + cond_dim, hidden, layers, dim * noise_dim)
        self.driver = mlp(1 + dim + dim * noise_dim + cond_dim, hidden, layers, dim) if driver else None


@register_generator
class BSDEGenerator(Generator):
    """Generator whose samples are the terminal values ``Y_T`` of a neural BSDE (see the module docstring).

    Parameters
    ----------
    n_steps : int
        Euler–Maruyama steps on ``[0, T]``.
    horizon : float
        ``T``.
    noise_dim : int, optional
        Dimension ``m`` of the Brownian motion (default: the encoded dimension ``d``).
    init_scale : float
        Standard deviation of the initial law ``N(0, init_scale² I)``.
    driver : {"network", "none"}
        The driver ``f``: a network of ``(t, Y, Z, c)``, or zero.
    hidden, layers : int
        Width and number of hidden layers of the ``Z`` and driver networks.
    bandwidth_factors : list of float
        Multiples of the median distance used as the kernel bandwidths of the MMD loss.
    eval_samples : int
        Simulated paths for the held-out MMD.
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator`.
    """

    name = "bsde"

    def __init__(self, *, n_steps: int = 10, horizon: float = 1.0, noise_dim: int | None = None,
                 init_scale: float = 1.0, driver: str = "network", hidden: int = 64, layers: int = 2,
                 bandwidth_factors: tuple | list = (0.125, 0.25, 0.5, 1.0, 2.0), eval_samples: int = 1000,
                 **common) -> None:
        super().__init__(**common)
        self.n_steps, self.horizon, self.noise_dim, self.init_scale = n_steps, horizon, noise_dim, init_scale
        self.driver, self.hidden, self.layers = driver, hidden, layers
        self.bandwidth_factors, self.eval_samples = [float(f) for f in bandwidth_factors], eval_samples

    def _validate(self) -> None:
        super()._validate()
        checks = [("n_steps", self.n_steps >= 1), ("horizon", self.horizon > 0),
                  ("noise_dim", self.noise_dim is None or self.noise_dim >= 1), ("init_scale", self.init_scale >= 0),
                  ("driver", self.driver in ("network", "none")), ("hidden", self.hidden >= 1),
                  ("layers", self.layers >= 0), ("eval_samples", self.eval_samples >= 2),
                  ("bandwidth_factors", len(self.bandwidth_factors) >= 1 and min(self.bandwidth_factors) > 0)]
        for name, ok in checks:
            if not ok:
                raise ModelError(f"{type(self).__name__}: invalid {name}={getattr(self, name)!r}"
                                 + (" (choose 'network' or 'none')" if name == "driver" else ""))

    def _build(self, dim: int, cond_dim: int) -> nn.Module:
        return _BSDENetwork(dim, cond_dim, self.noise_dim or dim, self.hidden, self.layers, self.driver == "network")

    # -- the forward Euler–Maruyama simulation --------------------------------------------------
    def simulate(self, n: int, c: torch.Tensor | None = None, *, generator: torch.Generator,
                 return_path: bool = False) -> torch.Tensor:
        """Simulate ``n`` paths on the encoded scale: ``Y_T`` ``[n, d]``, or the path ``[n_steps + 1, n, d]``.

        The draws are taken from ``generator`` in a fixed order: ``Y_0`` (``[n, d]`` standard normals times
        ``init_scale``), then ``ΔW_k`` (``[n, m]``) for k = 0, …, n_steps − 1. Differentiable in the weights.
        """
        if self.network is None or self.transform_ is None:
            raise ModelError("BSDEGenerator is not fitted; call fit(data) first")
        d = self.transform_.dim
        m = self.noise_dim or d
        device = self.torch_device
        dt = self.horizon / self.n_steps

        def normal(*shape):
            return torch.randn(*shape, generator=generator, dtype=torch.float64, device=generator.device).to(device)

        y = self.init_scale * normal(n, d)
        path = [y]
        for k in range(self.n_steps):
            t = torch.full((n, 1), k / self.n_steps, dtype=torch.float64, device=device)
            z = self.network.z(_join(t, y, c)).reshape(n, d, m)
            dw = math.sqrt(dt) * normal(n, m)
            step = (z @ dw[:, :, None])[:, :, 0]
            if self.network.driver is not None:
                step = step - dt * self.network.driver(_join(t, y, z.reshape(n, d * m), c))
            y = y + step
            path.append(y)
        return torch.stack(path) if return_path else y

    def _sample(self, n, c, generator):
        return self.simulate(n, c, generator=generator)

    # -- the MMD loss -----------------------------------------------------------------------------
    def _mmd(self, x, c, generator, n_sim: int | None = None) -> torch.Tensor:
        reps = 1 if n_sim is None else max(1, math.ceil(n_sim / x.shape[0]))
        if c is None:
            y = self.simulate(x.shape[0] * reps, None, generator=generator)
            return mmd2(y, x, self._bandwidths)
        c_rep = c.repeat(reps, 1)
        y = self.simulate(c_rep.shape[0], c_rep, generator=generator)
        return mmd2(_join(y, c_rep), _join(x, c), self._bandwidths)

    def _loss(self, x, c):
        return self._mmd(x, c, self._generator)

    def _train(self, x, c, x_val, c_val):
        pooled = x if c is None else _join(x, c)
        self._bandwidths = multiscale_bandwidths(pooled, factors=self.bandwidth_factors)

        def loss(xb, cb):
            if xb is x_val:   # held-out criterion: the same simulated paths at every epoch
                fixed = torch.Generator(device=self._generator.device).manual_seed(self.seed + 7919)
                return self._mmd(xb, cb, fixed, n_sim=self.eval_samples)
            return self._mmd(xb, cb, self._generator)

        status, message, history = train_minibatches(self, self.network.parameters(), loss, x, c, x_val, c_val)
        return status, message.replace("held-out loss", "held-out MMD²"), history
