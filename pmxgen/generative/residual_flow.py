"""Residual flows: invertible ResNets with spectral normalisation (Behrmann et al. 2019; Chen et al. 2019).

Each block maps ``x ↦ x + g(x | c)`` where ``g`` is a small network whose Lipschitz constant in
``x`` is below one: every linear layer's weight (its ``x`` part) is divided by
``max(1, σ_max(W)/coeff)`` with the exact largest singular value (``torch.linalg.matrix_norm``,
so the bound holds exactly, not only after power iterations), and the activation is LipSwish
(``x·sigmoid(βx)/1.1``, Lipschitz ≤ 1). Then ``Lip(g) ≤ coeff^L < 1``, so the block is invertible
(Banach fixed point ``x ← y − g(x)``) and

``log det(I + J_g) = Σ_{k≥1} (−1)^{k+1} tr(J_g^k) / k``

converges. Training estimates the series truncated at ``n_series_terms`` with Hutchinson's
trace estimator ``tr(A) = E[vᵀAv]`` (Rademacher ``v``; ``vᵀJ^k`` by ``k`` vector–Jacobian products)
— the i-ResNet estimator (biased by the truncation only: the ``k``-th term is at most
``d·Lip(g)^k/k``) — or the exact log-determinant of the Jacobian (``train_logdet="exact"``:
``d`` vector–Jacobian products, affordable for tabular widths). Densities reported by
``log_prob`` always use the exact log-determinant, so held-out likelihoods are exact.
Element-wise affine layers between the blocks (exact log-determinant) set scales cheaply.

Examples
--------
>>> import torch
>>> from pmxgen.generative.residual_flow import ResidualBlock, exact_logdet, power_series_logdet
>>> block = ResidualBlock(2, hidden=16, coeff=0.9)
>>> x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> y = block(x)
>>> bool(torch.allclose(block.inverse(y), x, atol=1e-10))
True
>>> exact = exact_logdet(block.residual, x)
>>> series = power_series_logdet(block.residual, x, n_terms=40, n_probes=None)
>>> bool(torch.allclose(series, exact, atol=1e-8))
True
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError
from .generator import Generator, register_generator

__all__ = ["ResidualFlowGenerator", "ResidualBlock", "LipSwish", "SpectralLinear", "exact_logdet",
           "power_series_logdet", "jacobian"]


class LipSwish(nn.Module):
    """``x·sigmoid(βx)/1.1`` with learnt ``β = softplus(ρ) > 0``: Lipschitz constant ≤ 1 for every β."""

    def __init__(self) -> None:
        super().__init__()
        self.rho = nn.Parameter(torch.tensor(0.5413248546129181, dtype=torch.float64))  # softplus⁻¹(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = nn.functional.softplus(self.rho)
        return x * torch.sigmoid(beta * x) / 1.1


class SpectralLinear(nn.Module):
    """Linear layer ``W_x x + W_c c + b`` whose ``x`` part has spectral norm ≤ ``coeff`` (exactly).

    ``W_x`` is rescaled by ``1/max(1, σ_max(W_x)/coeff)`` on every call; ``W_c`` (conditions) is free,
    since invertibility is needed in ``x`` only.
    """

    def __init__(self, in_features: int, out_features: int, cond_features: int = 0, coeff: float = 0.97) -> None:
        super().__init__()
        self.coeff = coeff
        layer = nn.Linear(in_features + cond_features, out_features, dtype=torch.float64)
        self.weight = nn.Parameter(layer.weight.detach()[:, :in_features].clone())
        self.cond_weight = nn.Parameter(layer.weight.detach()[:, in_features:].clone()) if cond_features else None
        self.bias = nn.Parameter(layer.bias.detach().clone())

    def normalised_weight(self) -> torch.Tensor:
        sigma = torch.linalg.matrix_norm(self.weight, ord=2)
        return self.weight / torch.clamp(sigma / self.coeff, min=1.0)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        out = x @ self.normalised_weight().T + self.bias
        if self.cond_weight is not None:
            out = out + c @ self.cond_weight.T
        return out


class _Residual(nn.Module):
    """The contractive map ``g(x | c)``: SpectralLinear → LipSwish → … → SpectralLinear."""

    def __init__(self, dim: int, cond_dim: int, hidden: int, n_hidden: int, coeff: float) -> None:
        super().__init__()
        sizes = [dim] + [hidden] * n_hidden + [dim]
        self.layers = nn.ModuleList(SpectralLinear(a, b, cond_dim if i == 0 else 0, coeff)
                                    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))
        self.activations = nn.ModuleList(LipSwish() for _ in range(n_hidden))
        self.cond_dim = cond_dim

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim and c is None:
            raise ModelError("this residual flow is conditional: give the conditions c")
        h = self.layers[0](x, c if self.cond_dim else None)
        for act, layer in zip(self.activations, self.layers[1:]):
            h = layer(act(h))
        return h

    def lipschitz_bound(self) -> float:
        """Upper bound of Lip(g) in ``x``: the product of the normalised spectral norms."""
        with torch.no_grad():
            return math.prod(float(torch.linalg.matrix_norm(l.normalised_weight(), ord=2)) for l in self.layers)


class ResidualBlock(nn.Module):
    """Invertible residual block ``y = x + g(x | c)`` with ``Lip(g) < 1``.

    Parameters
    ----------
    dim, cond_dim : int
        Data and condition widths.
    hidden, n_hidden : int
        Width and number of hidden layers of ``g``.
    coeff : float
        Spectral-norm bound of each linear layer (``Lip(g) ≤ coeff^(n_hidden+1)``).
    """

    def __init__(self, dim: int, cond_dim: int = 0, *, hidden: int = 64, n_hidden: int = 2,
                 coeff: float = 0.97) -> None:
        super().__init__()
        self.residual = _Residual(dim, cond_dim, hidden, n_hidden, coeff)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.residual(x, c)

    def inverse(self, y: torch.Tensor, c: torch.Tensor | None = None, *, tol: float = 1e-12,
                max_iter: int = 1000) -> torch.Tensor:
        """Solve ``x + g(x | c) = y`` by the fixed-point iteration ``x ← y − g(x | c)`` (a contraction)."""
        return self._inverse(y, c, tol, max_iter)

    @torch.no_grad()
    def _inverse(self, y, c, tol, max_iter):
        x = y
        for _ in range(max_iter):
            new = y - self.residual(x, c)
            step = float((new - x).abs().max()) if new.numel() else 0.0
            x = new
            if step <= tol * (1.0 + float(y.abs().max())):
                return x
        raise ModelError(f"residual block inverse did not converge in {max_iter} fixed-point iterations "
                         f"(last step {step:.3g}); Lip(g) ≤ {self.residual.lipschitz_bound():.4f}")


def _jacobian_of(out: torch.Tensor, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    rows = []
    for i in range(out.shape[1]):
        (grad,) = torch.autograd.grad(out[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        rows.append(grad)
    return torch.stack(rows, 1)


def _series_of(out: torch.Tensor, x: torch.Tensor, n_terms: int, probes: torch.Tensor,
               create_graph: bool, exact_traces: bool = False) -> torch.Tensor:
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for v in probes:
        w = v
        for k in range(1, n_terms + 1):
            (w,) = torch.autograd.grad(out, x, w, create_graph=create_graph, retain_graph=True)
            total = total + (-1) ** (k + 1) / k * (w * v).sum(1)
    # basis probes sum to the trace; random probes average to it
    return total if exact_traces else total / probes.shape[0]


def _rademacher(n_probes: int | None, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n, d = x.shape
    if n_probes is None:
        return torch.eye(d, dtype=x.dtype, device=x.device).unsqueeze(1).expand(d, n, d)
    gen = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
    return torch.randint(0, 2, (n_probes, n, d), generator=gen, device=gen.device).to(x.device, x.dtype) * 2 - 1


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x if x.requires_grad else x.detach().requires_grad_(True)


def jacobian(g: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
             create_graph: bool = False) -> torch.Tensor:
    """Per-row Jacobians ``[n, d, d]`` of a row-wise map ``g`` (``d`` vector–Jacobian products)."""
    with torch.enable_grad():
        x = _leaf(x)
        return _jacobian_of(g(x), x, create_graph)


def exact_logdet(g: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                 create_graph: bool = False) -> torch.Tensor:
    """``log |det(I + ∂g/∂x)|`` per row ``[n]`` from the full Jacobian."""
    jac = jacobian(g, x, create_graph=create_graph)
    eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
    return torch.linalg.slogdet(eye + jac).logabsdet


def power_series_logdet(g: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, n_terms: int = 8,
                        n_probes: int | None = 1, generator: torch.Generator | None = None,
                        create_graph: bool = False) -> torch.Tensor:
    """``Σ_{k=1}^{n_terms} (−1)^{k+1} tr(J^k)/k`` per row ``[n]``, ``J = ∂g/∂x``.

    ``n_probes`` Rademacher vectors per row estimate each trace by Hutchinson's ``vᵀJ^k v``
    (``vᵀJ^k`` by repeated vector–Jacobian products; the same ``v`` for every ``k``, as in
    i-ResNet). ``n_probes=None`` uses the basis vectors instead, which gives the traces exactly
    (``d`` probes): the truncated series itself, for checks.
    """
    with torch.enable_grad():
        xg = _leaf(x)
        return _series_of(g(xg), xg, n_terms, _rademacher(n_probes, x, generator), create_graph,
                          exact_traces=n_probes is None)


class _ElementwiseAffine(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.log_scale = nn.Parameter(torch.zeros(dim, dtype=torch.float64))


class _ResidualFlow(nn.Module):
    def __init__(self, dim: int, cond_dim: int, n_blocks: int, hidden: int, n_hidden: int, coeff: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(dim, cond_dim, hidden=hidden, n_hidden=n_hidden, coeff=coeff)
                                    for _ in range(n_blocks))
        self.affines = nn.ModuleList(_ElementwiseAffine(dim) for _ in range(n_blocks + 1))


@register_generator
class ResidualFlowGenerator(Generator):
    """Residual flow (invertible ResNet) on the encoded columns; see the module docstring.

    The flow maps data to the standard normal base:
    ``z = A_K ∘ F_K ∘ … ∘ A_1 ∘ F_1 ∘ A_0 (x)`` with residual blocks ``F`` and element-wise affine ``A``.

    Parameters
    ----------
    n_blocks : int
        Number of residual blocks.
    hidden, n_hidden : int
        Width and number of hidden layers of each block's network.
    coeff : float
        Spectral-norm bound of each linear layer, in (0, 1).
    train_logdet : {"series", "exact"}
        Log-determinant used by the training loss: Hutchinson estimate of the truncated power
        series, or exact from the Jacobian.
    n_series_terms : int
        Terms of the power series ("series" only).
    n_probes : int or None
        Hutchinson probes per row ("series" only); ``None`` takes the ``d`` basis vectors, which
        gives the traces exactly (the truncated series without Monte Carlo error).
    inverse_tol, inverse_max_iter : float, int
        Fixed-point tolerance (relative to the size of the values) and iteration limit of the inverse.
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator`.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> gen = ResidualFlowGenerator(n_blocks=2, hidden=16, max_epochs=2).fit(x)
    >>> z = gen.forward_transform(x[:3])
    >>> bool(torch.allclose(gen.inverse_transform(z), x[:3], atol=1e-9))
    True
    """

    name = "residual_flow"
    tractable_log_prob = True

    def __init__(self, *, n_blocks: int = 6, hidden: int = 64, n_hidden: int = 2, coeff: float = 0.97,
                 train_logdet: str = "series", n_series_terms: int = 8, n_probes: int | None = 1,
                 inverse_tol: float = 1e-12, inverse_max_iter: int = 2000, **common) -> None:
        super().__init__(**common)
        self.n_blocks, self.hidden, self.n_hidden, self.coeff = n_blocks, hidden, n_hidden, coeff
        self.train_logdet, self.n_series_terms, self.n_probes = train_logdet, n_series_terms, n_probes
        self.inverse_tol, self.inverse_max_iter = inverse_tol, inverse_max_iter

    def _validate(self) -> None:
        super()._validate()
        checks = [("n_blocks", isinstance(self.n_blocks, int) and self.n_blocks >= 1),
                  ("hidden", isinstance(self.hidden, int) and self.hidden >= 1),
                  ("n_hidden", isinstance(self.n_hidden, int) and self.n_hidden >= 0),
                  ("coeff", 0 < self.coeff < 1),
                  ("train_logdet", self.train_logdet in ("series", "exact")),
                  ("n_series_terms", isinstance(self.n_series_terms, int) and self.n_series_terms >= 1),
                  ("n_probes", self.n_probes is None or (isinstance(self.n_probes, int) and self.n_probes >= 1)),
                  ("inverse_tol", self.inverse_tol > 0),
                  ("inverse_max_iter", isinstance(self.inverse_max_iter, int) and self.inverse_max_iter >= 1)]
        for name, ok in checks:
            if not ok:
                raise ModelError(f"ResidualFlowGenerator: invalid {name}={getattr(self, name)!r} "
                                 f"(coeff in (0, 1); train_logdet 'series' or 'exact'; counts >= 1)")

    def _build(self, dim: int, cond_dim: int) -> nn.Module:
        return _ResidualFlow(dim, cond_dim, self.n_blocks, self.hidden, self.n_hidden, self.coeff)

    def _flow(self, x: torch.Tensor, c: torch.Tensor | None, logdet: str | None,
              create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Data → base, with the summed log-determinant (``logdet``: "exact", "series" or None)."""
        net = self.network
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

        def affine(layer, h):
            return h * layer.log_scale.exp() + layer.shift, layer.log_scale.sum()

        h, ld = affine(net.affines[0], x)
        total = total + ld
        for block, layer in zip(net.blocks, net.affines[1:]):
            if logdet is None:
                h = block(h, c)
            else:
                with torch.enable_grad():
                    h = _leaf(h)
                    out = block.residual(h, c)
                    if logdet == "exact":
                        jac = _jacobian_of(out, h, create_graph)
                        eye = torch.eye(h.shape[1], dtype=h.dtype, device=h.device)
                        ld = torch.linalg.slogdet(eye + jac).logabsdet
                    else:
                        probes = _rademacher(self.n_probes, h, self._noise_generator())
                        ld = _series_of(out, h, self.n_series_terms, probes, create_graph,
                                        exact_traces=self.n_probes is None)
                    total = total + ld
                    h = h + out
                if not create_graph:
                    h, total = h.detach(), total.detach()
            h, ld = affine(layer, h)
            total = total + ld
        return h, total

    def _noise_generator(self) -> torch.Generator:
        gen = getattr(self, "_generator", None)
        if gen is None:
            gen = self._generator = torch.Generator(device=self.torch_device).manual_seed(self.seed)
        return gen

    @staticmethod
    def _base_log_prob(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z ** 2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)

    def _loss(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if not torch.is_grad_enabled():
            # the held-out loss: the exact density (the Jacobian needs gradients, which are not kept)
            z, logdet = self._flow(x, c, "exact")
            return -(self._base_log_prob(z) + logdet).mean()
        z, logdet = self._flow(x, c, self.train_logdet, create_graph=True)
        return -(self._base_log_prob(z) + logdet).mean()

    def _log_prob(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        z, logdet = self._flow(x, c, "exact")
        return (self._base_log_prob(z) + logdet).detach()

    def forward_transform(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``z = f(x | c)`` on the standardised encoding (data → base)."""
        with torch.no_grad():
            return self._flow(x, c, None)[0]

    def inverse_transform(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``x = f⁻¹(z | c)`` (base → data): inverse affines and fixed-point inverses of the blocks."""
        net = self.network
        with torch.no_grad():
            h = z
            for block, layer in zip(reversed(net.blocks), reversed(net.affines[1:])):
                h = (h - layer.shift) * torch.exp(-layer.log_scale)
                h = block.inverse(h, c, tol=self.inverse_tol, max_iter=self.inverse_max_iter)
            first = net.affines[0]
            return (h - first.shift) * torch.exp(-first.log_scale)

    def _sample(self, n: int, c: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.transform_.dim, generator=generator, dtype=torch.float64, device=generator.device)
        return self.inverse_transform(z.to(self.torch_device), c)
