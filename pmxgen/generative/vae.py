"""Tabular variational autoencoder (Kingma & Welling 2014) on the standardised encoding.

Model (``x`` the encoded row of dimension ``d``, ``c`` the encoded conditions):
``z ~ N(0, I_k)`` (``k = latent_dim``), ``x | z ~ N(μ_θ(z, c), diag σ²)`` with the decoder mean
``μ_θ`` a network (``linear_decoder=True``: an affine map, which makes the model a factor
analyser / probabilistic PCA whose marginal is exactly ``N(b, W Wᵀ + diag σ²)``) and the output
variances ``σ²`` either one learnt value per column (``decoder_variance="learned"``) or a
network output (``"network"``). Encoder ``q_φ(z | x, c) = N(m_φ(x, c), diag s_φ²(x, c))``.

Training maximises the evidence lower bound
``ELBO(x) = E_q[log p(x | z)] − KL(q(z | x) ‖ N(0, I)) ≤ log p(x)`` (reparameterised, one draw per
row, KL in closed form) with the default minibatch trainer; the held-out criterion is the
negative ELBO with the same reparameterisation draws at every epoch (common random numbers).

The marginal density ``p(x) = ∫ p(x | z) p(z) dz`` is not tractable, so ``log_prob`` raises;
:meth:`TabularVAEGenerator.elbo` and the importance-sampled :meth:`TabularVAEGenerator.log_prob_estimate`
(``log (1/K) Σ_k p(x, z_k) / q(z_k | x)``, ``z_k ~ q``: the IWAE bound of Burda et al. 2016,
a *stochastic lower bound* that increases to ``log p(x)`` as ``K`` grows) give it in the data's
units, labelled as a bound / an estimate. Sampling draws ``z`` from the prior and ``x`` from the
decoder Gaussian (``sample_noise=False`` returns the decoder means instead).

Examples
--------
>>> import torch
>>> from pmxgen.generative.vae import TabularVAEGenerator
>>> x = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 + 1
>>> gen = TabularVAEGenerator(hidden=16, latent_dim=2, max_epochs=3, batch_size=100).fit(x)
>>> gen.status_, gen.sample(5, seed=1).shape
('max_iterations', torch.Size([5, 2]))
>>> bool((gen.elbo(x[:10]) <= gen.log_prob_estimate(x[:10], n_importance=2000) + 0.05).all())
True
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ModelError
from .generator import Generator, register_generator, train_minibatches
from ._mlp import mlp

__all__ = ["TabularVAEGenerator"]

_LOG_2PI = math.log(2 * math.pi)


def _join(x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    return x if c is None else torch.cat([x, c], -1)


class _VAENetwork(nn.Module):
    def __init__(self, dim: int, cond_dim: int, latent_dim: int, hidden: int, layers: int, linear_decoder: bool,
                 variance_network: bool, init_log_var: float) -> None:
        super().__init__()
        self.encoder = mlp(dim + cond_dim, hidden, layers, 2 * latent_dim)
        out = dim * (2 if variance_network else 1)
        self.decoder = mlp(latent_dim + cond_dim, hidden, 0 if linear_decoder else layers, out)
        self.log_var = None if variance_network else nn.Parameter(torch.full((dim,), init_log_var,
                                                                              dtype=torch.float64))
        if variance_network:
            with torch.no_grad():
                self.decoder[-1].bias[dim:] = init_log_var


def _gauss_logpdf(x, mean, log_var):
    return -0.5 * (((x - mean) ** 2) * torch.exp(-log_var) + log_var + _LOG_2PI).sum(-1)


@register_generator
class TabularVAEGenerator(Generator):
    """Variational autoencoder of the encoded rows (see the module docstring).

    Parameters
    ----------
    latent_dim : int
        Dimension ``k`` of ``z``.
    hidden, layers : int
        Width and number of hidden layers of the encoder and decoder.
    linear_decoder : bool
        An affine decoder mean (factor analysis / probabilistic PCA with an amortised posterior).
    decoder_variance : {"learned", "network"}
        One learnt output variance per encoded column, or variances given by the decoder network.
    init_log_var : float
        Initial log variance of the decoder (on the standardised scale; a small value makes the reconstruction
        matter from the start, which avoids the collapse of ``q`` onto the prior).
    min_log_var : float
        Lower bound of the decoder's log variances (keeps the likelihood bounded).
    sample_noise : bool
        Draw ``x`` from the decoder Gaussian (``True``) or return its mean.
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator`.
    """

    name = "vae"

    def __init__(self, *, latent_dim: int = 4, hidden: int = 64, layers: int = 2, linear_decoder: bool = False,
                 decoder_variance: str = "learned", init_log_var: float = -2.0, min_log_var: float = -9.0,
                 sample_noise: bool = True, **common) -> None:
        super().__init__(**common)
        self.latent_dim, self.hidden, self.layers = latent_dim, hidden, layers
        self.linear_decoder, self.decoder_variance = linear_decoder, decoder_variance
        self.init_log_var, self.min_log_var, self.sample_noise = init_log_var, min_log_var, sample_noise

    def _validate(self) -> None:
        super()._validate()
        checks = [("latent_dim", self.latent_dim >= 1), ("hidden", self.hidden >= 1), ("layers", self.layers >= 0),
                  ("decoder_variance", self.decoder_variance in ("learned", "network"))]
        for name, ok in checks:
            if not ok:
                raise ModelError(f"{type(self).__name__}: invalid {name}={getattr(self, name)!r}"
                                 + (" (choose 'learned' or 'network')" if name == "decoder_variance" else ""))

    def _build(self, dim: int, cond_dim: int) -> nn.Module:
        return _VAENetwork(dim, cond_dim, self.latent_dim, self.hidden, self.layers, self.linear_decoder,
                           self.decoder_variance == "network", self.init_log_var)

    # -- the two conditional Gaussians ----------------------------------------------------------
    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance ``[n, k]`` of ``q(z | x, c)`` for encoded rows ``x``."""
        out = self.network.encoder(_join(x, c))
        return out[:, :self.latent_dim], out[:, self.latent_dim:].clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance ``[..., d]`` of ``p(x | z, c)``."""
        d = self.transform_.dim
        out = self.network.decoder(_join(z, c))
        mean = out[..., :d]
        if self.network.log_var is None:
            log_var = out[..., d:]
        else:
            log_var = self.network.log_var.expand_as(mean)
        return mean, self.min_log_var + nn.functional.softplus(log_var - self.min_log_var)

    def _elbo(self, x, c, generator, n_samples: int = 1) -> torch.Tensor:
        m, log_s2 = self.encode(x, c)
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(n_samples):
            eps = torch.randn(m.shape, generator=generator, dtype=m.dtype, device=generator.device).to(m.device)
            z = m + torch.exp(0.5 * log_s2) * eps
            mean, log_var = self.decode(z, c)
            total = total + _gauss_logpdf(x, mean, log_var)
        kl = 0.5 * (m ** 2 + log_s2.exp() - 1 - log_s2).sum(1)
        return total / n_samples - kl

    def _loss(self, x, c):
        return -self._elbo(x, c, self._generator).mean()

    def _train(self, x, c, x_val, c_val):
        def loss(xb, cb):
            if xb is x_val:   # held-out criterion: the same reparameterisation draws at every epoch
                fixed = torch.Generator(device=self._generator.device).manual_seed(self.seed + 7919)
                return -self._elbo(xb, cb, fixed).mean()
            return -self._elbo(xb, cb, self._generator).mean()

        status, message, history = train_minibatches(self, self.network.parameters(), loss, x, c, x_val, c_val)
        return status, message.replace("held-out loss", "held-out negative ELBO"), history

    def _sample(self, n, c, generator):
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64,
                        device=generator.device).to(self.torch_device)
        mean, log_var = self.decode(z, c)
        if not self.sample_noise:
            return mean
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=generator.device)
        return mean + torch.exp(0.5 * log_var) * eps.to(mean.device)

    # -- density bounds in data units -----------------------------------------------------------
    def _encoded(self, data, conditions):
        self._check_fitted()
        return self._encode_rows(data, conditions)

    def elbo(self, data, conditions=None, *, n_samples: int = 100, seed: int = 0) -> torch.Tensor:
        """Evidence lower bound ``[n]`` of each row in the data's units (a lower bound of ``log p``).

        Monte Carlo over ``n_samples`` reparameterised draws per row (KL in closed form); seeded.
        Needs every modelled column continuous, like :meth:`log_prob`.
        """
        x, c, logdet = self._encoded(data, conditions)
        gen = torch.Generator(device=self.torch_device).manual_seed(seed)
        with torch.no_grad():
            return self._elbo(x, c, gen, n_samples) + logdet

    def log_prob_estimate(self, data, conditions=None, *, n_importance: int = 1000, seed: int = 0,
                          chunk: int = 256) -> torch.Tensor:
        """Importance-sampled estimate of ``log p(x)`` ``[n]`` in the data's units (IWAE bound; see the module).

        ``log (1/K) Σ_k p(x | z_k) p(z_k) / q(z_k | x)`` with ``K = n_importance`` draws ``z_k ~ q(z | x)``:
        a stochastic lower bound of ``log p(x)`` whose expectation increases to it as ``K`` grows.
        """
        if n_importance < 1:
            raise ModelError(f"n_importance must be >= 1 (found {n_importance})")
        x, c, logdet = self._encoded(data, conditions)
        gen = torch.Generator(device=self.torch_device).manual_seed(seed)
        k = self.latent_dim
        out = []
        with torch.no_grad():
            m, log_s2 = self.encode(x, c)
            for start in range(0, n_importance, chunk):
                size = min(chunk, n_importance - start)
                eps = torch.randn(size, *m.shape, generator=gen, dtype=m.dtype, device=gen.device).to(m.device)
                z = m + torch.exp(0.5 * log_s2) * eps
                c_rep = None if c is None else c.expand(size, *c.shape)
                mean, log_var = self.decode(z, c_rep)
                log_w = (_gauss_logpdf(x, mean, log_var) - 0.5 * (z ** 2).sum(-1) - 0.5 * k * _LOG_2PI
                         + 0.5 * (eps ** 2 + log_s2 + _LOG_2PI).sum(-1))
                out.append(log_w)
            log_w = torch.cat(out)
            return torch.logsumexp(log_w, 0) - math.log(n_importance) + logdet
