r"""Energy-based models over tabular data: p(x) = exp(−E(x)) / Z, score s(x) = −∇ₓE(x).

* :class:`GaussianEnergy` — E(x) = ½(x − μ)ᵀP(x − μ) with learnable mean μ and precision
  P = LLᵀ (L lower-triangular with a positive diagonal, stored as log-diagonal and off-diagonal
  entries). Its normaliser is known, so it serves as a check: on this family explicit, sliced
  and denoising score matching have the maximum-likelihood estimate as optimum (μ = x̄,
  P⁻¹ = the biased sample covariance; for denoising at level σ, P⁻¹ = S + σ²I).
* :class:`EnergyNetwork` — E(x) = MLP(x) (+ ½α‖x‖², an optional confinement that keeps the
  density normalisable), smooth activations so that the score −∇ₓE and its Jacobian exist; with
  ``noise_conditional=True`` the energy of the σ-smoothed density, E(x, σ) = MLP(x, log σ)/σ,
  whose gradient field is a conservative noise-conditional score for the ladder of
  :func:`~pmxgen.generative.score.losses.noise_conditional_score_matching`.
* :class:`NoiseConditionalScoreNetwork` — the score itself, s(x, σ) = MLP(x, log σ)/σ, as in NCSN
  (Song & Ermon 2019; the 1/σ output scaling of Song & Ermon 2020): no energy, but no second
  derivative when training.

Every model is a ``torch.nn.Module`` with ``dim``, float64 by default, works on batches
``[B, D]`` on the device of its parameters, and is initialised from a seed.

Examples
--------
>>> import torch
>>> from pmxgen.generative.score import EnergyNetwork
>>> net = EnergyNetwork(2, hidden=(16, 16), seed=0)
>>> x = torch.zeros(5, 2, dtype=torch.float64)
>>> tuple(net.energy(x).shape), tuple(net.score(x).shape)
((5,), (5, 2))
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...errors import ModelError
from ..flows.base import check_dim, check_dtype
from ._common import check_batch, make_generator

__all__ = ["GaussianEnergy", "EnergyNetwork", "NoiseConditionalScoreNetwork", "ACTIVATIONS"]

#: Smooth activations of the networks (twice differentiable, as score matching needs).
ACTIVATIONS = {"softplus": torch.nn.functional.softplus, "tanh": torch.tanh, "silu": torch.nn.functional.silu,
               "gelu": torch.nn.functional.gelu}


class GaussianEnergy(torch.nn.Module):
    """Gaussian energy E(x) = ½(x − μ)ᵀLLᵀ(x − μ) with learnable μ and precision Cholesky factor L.

    Parameters
    ----------
    dim : int
    mean : torch.Tensor, optional
        Initial μ ``[dim]`` (default 0).
    covariance : torch.Tensor, optional
        Initial covariance ``[dim, dim]`` (symmetric positive definite; default I); P = covariance⁻¹.
    dtype : torch.dtype, default torch.float64
    device : torch.device or str, optional

    Attributes
    ----------
    loc : torch.nn.Parameter
        μ ``[dim]``.
    log_diag, offdiag : torch.nn.Parameter
        log of L's diagonal ``[dim]`` and its strictly lower entries ``[dim(dim−1)/2]``.

    Examples
    --------
    >>> import torch
    >>> cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> model = GaussianEnergy(2, mean=torch.tensor([1.0, -1.0]), covariance=cov)
    >>> bool(torch.allclose(model.covariance, cov))
    True
    >>> x = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    >>> mvn = torch.distributions.MultivariateNormal(model.mean, cov)
    >>> bool(torch.allclose(model.log_prob(x), mvn.log_prob(x)))
    True
    """

    def __init__(self, dim: int, *, mean: torch.Tensor | None = None, covariance: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.dim = check_dim(dim, "GaussianEnergy")
        dtype = check_dtype(dtype, "GaussianEnergy")
        d = self.dim
        self.loc = torch.nn.Parameter(torch.zeros(d, dtype=dtype, device=device))
        self.log_diag = torch.nn.Parameter(torch.zeros(d, dtype=dtype, device=device))
        self.offdiag = torch.nn.Parameter(torch.zeros(d * (d - 1) // 2, dtype=dtype, device=device))
        rows, cols = torch.tril_indices(d, d, offset=-1)
        self.register_buffer("_rows", rows.to(device), persistent=False)
        self.register_buffer("_cols", cols.to(device), persistent=False)
        if mean is not None or covariance is not None:
            self.set_(mean=mean, covariance=covariance)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    @torch.no_grad()
    def set_(self, *, mean: torch.Tensor | None = None, covariance: torch.Tensor | None = None) -> None:
        """Set μ and/or the covariance P⁻¹ in place.

        Raises
        ------
        ModelError
            On a wrong shape, non-finite values or a covariance that is not symmetric positive definite.
        """
        d = self.dim
        if mean is not None:
            m = torch.as_tensor(mean).to(self.loc)
            if m.shape != (d,) or not bool(torch.isfinite(m).all()):
                raise ModelError(f"GaussianEnergy: mean must be a finite vector [{d}]; found shape {tuple(m.shape)}")
            self.loc.copy_(m)
        if covariance is not None:
            c = torch.as_tensor(covariance).to(self.loc)
            if c.shape != (d, d) or not bool(torch.isfinite(c).all()) or not torch.allclose(c, c.mT):
                raise ModelError(f"GaussianEnergy: covariance must be a finite symmetric [{d}, {d}] matrix; "
                                 f"found shape {tuple(c.shape)}")
            prec, info = torch.linalg.cholesky_ex(torch.linalg.inv(c))
            if int(info) != 0:
                raise ModelError("GaussianEnergy: covariance must be positive definite")
            self.log_diag.copy_(torch.log(torch.diagonal(prec)))
            self.offdiag.copy_(prec[self._rows, self._cols])

    @property
    def mean(self) -> torch.Tensor:
        """μ ``[dim]``."""
        return self.loc

    @property
    def precision_tril(self) -> torch.Tensor:
        """L ``[dim, dim]`` with P = LLᵀ."""
        low = torch.diag_embed(torch.exp(self.log_diag))
        if self.dim > 1:
            low = low.index_put((self._rows, self._cols), self.offdiag)
        return low

    @property
    def precision(self) -> torch.Tensor:
        """P = LLᵀ ``[dim, dim]``."""
        low = self.precision_tril
        return low @ low.mT

    @property
    def covariance(self) -> torch.Tensor:
        """P⁻¹ ``[dim, dim]``."""
        return torch.cholesky_inverse(self.precision_tril)

    def _whitened(self, x: torch.Tensor) -> torch.Tensor:
        return (check_batch(x, "GaussianEnergy", self.dim, finite=False) - self.loc) @ self.precision_tril

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) = ½‖Lᵀ(x − μ)‖² ``[B]`` for x ``[B, dim]``."""
        return 0.5 * self._whitened(x).pow(2).sum(-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """s(x) = −P(x − μ) ``[B, dim]``."""
        return -self._whitened(x) @ self.precision_tril.mT

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-density −E(x) − log Z ``[B]``."""
        return -self.energy(x) - self.log_normalizer

    @property
    def log_normalizer(self) -> torch.Tensor:
        """log Z = (D/2) log 2π − Σ log diag L."""
        return 0.5 * self.dim * math.log(2 * math.pi) - self.log_diag.sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)


def _sigma_column(sigma: object, x: torch.Tensor, who: str) -> torch.Tensor:
    """σ as a positive column ``[B, 1]`` (from a number, a 0-d or a [B] tensor)."""
    if sigma is None:
        raise ModelError(f"{who}: this network is noise-conditional; pass sigma (a number or a tensor [batch])")
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    if s.shape != x.shape[:1]:
        raise ModelError(f"{who}: sigma must be a number or a tensor [batch] = [{x.shape[0]}]; found shape "
                         f"{tuple(s.shape)}")
    return s[:, None]


class _MLP(torch.nn.Module):
    """Seeded MLP R^n_in → R^n_out with a smooth activation (default-torch uniform ±1/√fan_in init)."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str, seed: int | torch.Generator | None,
                 dtype: torch.dtype, device: torch.device | str | None, who: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ModelError(f"{who}: activation must be one of {sorted(ACTIVATIONS)}; found {activation!r}")
        hidden = tuple(hidden)
        if not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
            raise ModelError(f"{who}: hidden must be a non-empty sequence of positive ints, e.g. (64, 64); "
                             f"found {hidden!r}")
        self.activation = activation
        gen = make_generator(seed)
        sizes = (n_in, *hidden, n_out)
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layer = torch.nn.Linear(fan_in, fan_out, dtype=dtype, device=device)
            bound = 1.0 / math.sqrt(fan_in)
            with torch.no_grad():
                layer.weight.copy_((2 * torch.rand(fan_out, fan_in, generator=gen, dtype=torch.float64) - 1) * bound)
                layer.bias.copy_((2 * torch.rand(fan_out, generator=gen, dtype=torch.float64) - 1) * bound)
            layers.append(layer)
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            h = act(layer(h))
        return self.layers[-1](h)


class EnergyNetwork(torch.nn.Module):
    """Neural energy E(x) = MLP(x) + ½α‖x‖² (``noise_conditional=True``: E(x, σ) = MLP(x, log σ)/σ + ½α‖x‖²).

    Parameters
    ----------
    dim : int
        Data dimension D.
    hidden : sequence of int, default (64, 64)
        Hidden layer widths.
    activation : {"softplus", "tanh", "silu", "gelu"}, default "silu"
        Smooth activation (score matching differentiates the energy twice).
    noise_conditional : bool, default False
        Take the noise level σ as a second input (for noise-conditional score matching and
        annealed Langevin).
    quadratic : float, default 0.0
        α ≥ 0 of the confinement term (α > 0 makes exp(−E) integrable whatever the MLP does).
    seed : int, torch.Generator or None, default 0
        Initialisation (same seed → same weights).
    dtype : torch.dtype, default torch.float64
    device : torch.device or str, optional

    Examples
    --------
    >>> import torch
    >>> net = EnergyNetwork(2, hidden=(8,), noise_conditional=True, seed=1)
    >>> x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> s = net.score(x, sigma=0.5)
    >>> e = lambda z: net.energy(z, sigma=0.5).sum()
    >>> bool(torch.allclose(s, -torch.func.grad(e)(x)))
    True
    >>> bool(torch.equal(EnergyNetwork(2, seed=3).energy(x), EnergyNetwork(2, seed=3).energy(x)))
    True
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), *, activation: str = "silu",
                 noise_conditional: bool = False, quadratic: float = 0.0, seed: int | torch.Generator | None = 0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.dim = check_dim(dim, "EnergyNetwork")
        dtype = check_dtype(dtype, "EnergyNetwork")
        if isinstance(quadratic, bool) or not isinstance(quadratic, (int, float)) or not (
                math.isfinite(quadratic) and quadratic >= 0):
            raise ModelError(f"EnergyNetwork: quadratic must be a finite number >= 0; found {quadratic!r}")
        self.noise_conditional = bool(noise_conditional)
        self.quadratic = float(quadratic)
        self.net = _MLP(self.dim + int(self.noise_conditional), hidden, 1, activation, seed, dtype, device,
                        "EnergyNetwork")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, noise_conditional={self.noise_conditional}, quadratic={self.quadratic}"

    def energy(self, x: torch.Tensor, sigma: object = None) -> torch.Tensor:
        """E(x) (or E(x, σ)) ``[B]`` for x ``[B, dim]``; sigma a number or ``[B]``."""
        x = check_batch(x, "EnergyNetwork", self.dim, finite=False)
        if self.noise_conditional:
            sig = _sigma_column(sigma, x, "EnergyNetwork")
            out = self.net(torch.cat([x, torch.log(sig)], dim=-1)).squeeze(-1) / sig.squeeze(-1)
        else:
            if sigma is not None:
                raise ModelError("EnergyNetwork: sigma given but the network is not noise-conditional; build it "
                                 "with noise_conditional=True")
            out = self.net(x).squeeze(-1)
        if self.quadratic:
            out = out + 0.5 * self.quadratic * x.pow(2).sum(-1)
        return out

    def score(self, x: torch.Tensor, sigma: object = None) -> torch.Tensor:
        """s(x) = −∇ₓE(x) ``[B, dim]`` by autograd (graph kept while gradients are enabled)."""
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(xg, sigma).sum(), xg, create_graph=create)
        return -grad

    def forward(self, x: torch.Tensor, sigma: object = None) -> torch.Tensor:
        return self.energy(x, sigma)


class NoiseConditionalScoreNetwork(torch.nn.Module):
    """NCSN score s(x, σ) = MLP(x, log σ)/σ (direct score output, not the gradient of an energy).

    Parameters
    ----------
    dim : int
    hidden : sequence of int, default (64, 64)
    activation : {"softplus", "tanh", "silu", "gelu"}, default "silu"
    seed : int, torch.Generator or None, default 0
    dtype : torch.dtype, default torch.float64
    device : torch.device or str, optional

    Examples
    --------
    >>> import torch
    >>> net = NoiseConditionalScoreNetwork(3, hidden=(16,))
    >>> x = torch.zeros(6, 3, dtype=torch.float64)
    >>> tuple(net.score(x, torch.full((6,), 0.1, dtype=torch.float64)).shape)
    (6, 3)
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), *, activation: str = "silu",
                 seed: int | torch.Generator | None = 0, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.dim = check_dim(dim, "NoiseConditionalScoreNetwork")
        dtype = check_dtype(dtype, "NoiseConditionalScoreNetwork")
        self.net = _MLP(self.dim + 1, hidden, self.dim, activation, seed, dtype, device, "NoiseConditionalScoreNetwork")

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def score(self, x: torch.Tensor, sigma: object) -> torch.Tensor:
        """s(x, σ) ``[B, dim]``; sigma a number or ``[B]``."""
        x = check_batch(x, "NoiseConditionalScoreNetwork", self.dim, finite=False)
        sig = _sigma_column(sigma, x, "NoiseConditionalScoreNetwork")
        return self.net(torch.cat([x, torch.log(sig)], dim=-1)) / sig

    def forward(self, x: torch.Tensor, sigma: object) -> torch.Tensor:
        return self.score(x, sigma)
