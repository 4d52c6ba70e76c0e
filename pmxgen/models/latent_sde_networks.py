"""Networks of the latent neural-SDE population model: prior drift term, posterior drift, encoder.

Three small ``torch.nn.Module`` s with fixed call signatures, so that any of them can be replaced
by a user module with the same signature (the tests replace the posterior drift by the exact
smoothing drift of an Ornstein–Uhlenbeck model):

* :class:`DriftNetwork` — the network term of the prior drift, ``forward(z, x) -> [B, d]`` from the
  latent state ``z [B, d]`` and the standardised baseline covariates ``x [B, C]`` (time-homogeneous).
* :class:`PosteriorDrift` — the posterior's *correction* to the prior drift,
  ``forward(t, z, context) -> [B, d]`` (posterior drift = prior drift + correction), from time features
  ``sin(t/τ), cos(t/τ)`` (the positional encoding of torchsde's latent-SDE example), the state and the
  subject's context.
* :class:`PathEncoder` — a subject's record → ``(mean [N, d], log_sd [N, d], context [N, c])`` of
  ``q(z(t0))`` and the context, reusing :func:`pmxgen.estimation.encoder.record_features` (time, DV,
  BLQ, CMT, time since last dose, last and cumulative amount, number of doses) with masked mean and
  max pooling, so any number of (padded) records gives one summary.

The last layer of every network starts at zero: the prior starts at its mechanistic part, the
posterior at the prior (Girsanov KL 0) and ``q(z(t0))`` at the prior of ``z(t0)``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import EstimationError

__all__ = ["DriftNetwork", "PosteriorDrift", "PathEncoder", "mlp"]

_ACTIVATIONS = {"tanh": nn.Tanh, "silu": nn.SiLU, "softplus": nn.Softplus}


def mlp(sizes: list[int], activation: str = "tanh", *, zero_last: bool = True, dtype=torch.float64,
        device=None) -> nn.Sequential:
    """A multilayer perceptron; with ``zero_last`` its output starts at exactly 0.

    Examples
    --------
    >>> net = mlp([3, 8, 2])
    >>> net(torch.ones(4, 3, dtype=torch.float64)).abs().max().item()
    0.0
    """
    if activation not in _ACTIVATIONS:
        raise EstimationError(f"unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, dtype=dtype, device=device))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    if zero_last:
        with torch.no_grad():
            layers[-1].weight.zero_()
            layers[-1].bias.zero_()
    return nn.Sequential(*layers)


class DriftNetwork(nn.Module):
    """Network term of the prior drift: ``NN([z, x]) -> [B, d]`` (starts at 0).

    Examples
    --------
    >>> net = DriftNetwork(2, 1, hidden=8)
    >>> tuple(net(torch.zeros(5, 2, dtype=torch.float64), torch.zeros(5, 1, dtype=torch.float64)).shape)
    (5, 2)
    """

    def __init__(self, latent_dim: int, n_covariates: int, *, hidden: int = 32, n_layers: int = 2,
                 activation: str = "tanh", dtype=torch.float64, device=None):
        super().__init__()
        self.net = mlp([latent_dim + n_covariates] + [hidden] * n_layers + [latent_dim], activation, dtype=dtype,
                       device=device)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, x], dim=-1) if x.shape[-1] else z)


class PosteriorDrift(nn.Module):
    """Posterior correction ``NN([sin(t/τ), cos(t/τ), z, context]) -> [B, d]`` (starts at 0).

    Examples
    --------
    >>> net = PosteriorDrift(1, 4, hidden=8)
    >>> z, c = torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)
    >>> tuple(net(torch.tensor(0.5, dtype=torch.float64), z, c).shape)
    (3, 1)
    """

    def __init__(self, latent_dim: int, context_dim: int, *, hidden: int = 64, n_layers: int = 2,
                 activation: str = "tanh", time_scale: float = 1.0, dtype=torch.float64, device=None):
        super().__init__()
        if not time_scale > 0:
            raise EstimationError(f"PosteriorDrift: time_scale must be > 0 (found {time_scale!r})")
        self.net = mlp([2 + latent_dim + context_dim] + [hidden] * n_layers + [latent_dim], activation, dtype=dtype,
                       device=device)
        # shape [1], not 0-d: a 0-d tensor comes back from the fit's safetensors file as shape [1]
        self.register_buffer("time_scale", torch.tensor([float(time_scale)], dtype=dtype, device=device))

    def forward(self, t: torch.Tensor, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        s = (t / self.time_scale[0]).to(z.dtype)
        tt = torch.stack([torch.sin(s), torch.cos(s)]).expand(z.shape[0], 2)
        return self.net(torch.cat([tt, z, context], dim=-1))


class PathEncoder(nn.Module):
    """A subject's record → mean and log-SD offsets of ``q(z(t0))`` and a context vector.

    The offsets are in units of the prior of ``z(t0)`` (the model adds them), so the encoder's
    zero-initialised output gives ``q(z(t0)) = p(z(t0))``.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> enc = PathEncoder(2, 4, data.batch.baseline.shape[1], hidden=8)
    >>> enc.fit_scaling(data.batch)
    >>> [tuple(x.shape) for x in enc(data.batch)]
    [(12, 2), (12, 2), (12, 4)]
    """

    def __init__(self, latent_dim: int, context_dim: int, n_covariates: int, *, hidden: int = 32, n_layers: int = 2,
                 activation: str = "tanh", seed: int = 0, dtype=torch.float64, device=None):
        super().__init__()
        from ..estimation.encoder import RECORD_FEATURES
        n_feat = len(RECORD_FEATURES)
        self.latent_dim, self.context_dim, self.n_covariates = latent_dim, context_dim, n_covariates
        state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
        try:
            self.record_net = mlp([n_feat] + [hidden] * n_layers, activation, zero_last=False, dtype=dtype,
                                  device=device)
            self.head = mlp([2 * hidden + n_covariates + 1] + [hidden] + [2 * latent_dim + context_dim], activation,
                            dtype=dtype, device=device)
        finally:
            torch.random.set_rng_state(state)
        with torch.no_grad():        # the context starts as a random projection of the summary, not 0
            w = self.head[-1].weight
            w[2 * latent_dim:].normal_(0.0, 0.1, generator=torch.Generator(device=w.device).manual_seed(seed))
        self.register_buffer("feature_shift", torch.zeros(n_feat, dtype=dtype, device=device))
        self.register_buffer("feature_scale", torch.ones(n_feat, dtype=dtype, device=device))
        self.register_buffer("covariate_shift", torch.zeros(n_covariates, dtype=dtype, device=device))
        self.register_buffer("covariate_scale", torch.ones(n_covariates, dtype=dtype, device=device))

    @torch.no_grad()
    def fit_scaling(self, batch) -> None:
        """Standardise the inputs with this (training) batch's means and SDs."""
        from ..estimation.encoder import record_features
        feats = record_features(batch)[batch.obs.mask]
        if feats.shape[0] == 0:
            raise EstimationError("the latent-SDE encoder needs observations to set its input scaling (the batch "
                                  "has none)")
        self.feature_shift.copy_(feats.mean(0))
        self.feature_scale.copy_(torch.clamp(feats.std(0, unbiased=False), min=1e-6))
        if self.n_covariates:
            self.covariate_shift.copy_(batch.baseline.mean(0))
            self.covariate_scale.copy_(torch.clamp(batch.baseline.std(0, unbiased=False), min=1e-6))

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..estimation.encoder import record_features
        if batch.baseline.shape[1] != self.n_covariates:
            raise EstimationError(f"the latent-SDE encoder was built for {self.n_covariates} covariate(s); this "
                                  f"batch has {batch.baseline.shape[1]}; encode data with the training columns")
        mask = batch.obs.mask
        h = self.record_net((record_features(batch) - self.feature_shift) / self.feature_scale)
        m = mask[..., None].to(h.dtype)
        count = m.sum(1)
        mean_pool = (h * m).sum(1) / torch.clamp(count, min=1.0)
        max_pool = torch.where(mask[..., None], h, torch.full_like(h, -1e4)).max(1).values
        max_pool = torch.where(count > 0, max_pool, torch.zeros_like(max_pool))
        cov = (batch.baseline - self.covariate_shift) / self.covariate_scale
        out = self.head(torch.cat([mean_pool, max_pool, cov, torch.log1p(count)], dim=-1))
        d = self.latent_dim
        return out[:, :d], out[:, d:2 * d], out[:, 2 * d:]
