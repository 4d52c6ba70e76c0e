"""Amortized inference: a network from a subject's whole record to a Gaussian posterior of its η.

:class:`SubjectEncoder` reads, for every subject of a :class:`~pmxgen.data.SubjectBatch`, its
observation records (time, DV, BLQ flag, compartment, and the dosing history up to that time:
time since the last dose, its amount, the cumulative amount and the number of doses) and its
baseline covariates. A per-record network embeds each observation, a masked mean and a
masked max pool them (so any number of records, padded or not, gives a fixed-size summary),
and a second network maps the summary and the covariates to the mean and the Cholesky factor
of ``q(η_i | y_i)``. Inputs are standardised with statistics taken from the training data
(:meth:`SubjectEncoder.fit_scaling`), so new subjects get their posterior from one forward pass.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..data.batching import SubjectBatch
from ..errors import EstimationError

__all__ = ["SubjectEncoder", "record_features"]

#: Columns of :func:`record_features`.
RECORD_FEATURES = ("TIME", "DV", "BLQ", "CMT", "TSLD", "LAST_AMT", "CUM_AMT", "N_DOSES")


def record_features(batch: SubjectBatch) -> torch.Tensor:
    """Raw per-observation features ``[N, J, 8]`` (see ``RECORD_FEATURES``), 0 on padding.

    The dosing history counts the doses of the same subject given at or before each
    observation time (a subject without an earlier dose gets time since last dose = TIME and
    amounts 0).

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> f = record_features(data.batch)
    >>> tuple(f.shape[::2]), float(f[0, 1, 5]) == float(data.batch.doses.amt[0, 0])
    ((12, 8), True)
    """
    obs, doses = batch.obs, batch.doses
    t = obs.time
    dose_t = doses.time[:, None, :]
    given = doses.mask[:, None, :] & (dose_t <= t[:, :, None])                  # [N, J, D]
    amt = torch.where(given, doses.amt[:, None, :], torch.zeros((), dtype=t.dtype, device=t.device))
    last_time = torch.where(given, dose_t.expand_as(given), torch.full((), -math.inf, dtype=t.dtype, device=t.device))
    last_time, last_idx = last_time.max(-1)
    has_dose = given.any(-1)
    tsld = torch.where(has_dose, t - last_time, t)
    last_amt = torch.where(has_dose, torch.gather(doses.amt[:, None, :].expand_as(given), -1, last_idx[..., None])[..., 0],
                           torch.zeros_like(t))
    features = torch.stack([t, obs.dv, obs.blq.to(t.dtype), obs.cmt.to(t.dtype), tsld, last_amt, amt.sum(-1),
                            given.sum(-1).to(t.dtype)], dim=-1)
    return torch.where(obs.mask[..., None], features, torch.zeros_like(features))


def _mlp(sizes: list[int], dtype, device) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, dtype=dtype, device=device))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class SubjectEncoder(nn.Module):
    """Subject record → mean ``[N, K]`` and Cholesky factor ``[N, K, K]`` of a Gaussian q(η).

    Parameters
    ----------
    n_eta : int
        Dimension K of η.
    n_covariates : int
        Baseline covariates per subject (``batch.baseline.shape[1]``).
    hidden : int
        Width of both networks.
    n_layers : int
        Hidden layers of each network.
    seed : int
        Initial weights (same seed, same network).
    dtype, device
        Of the weights (float64 by default, like the data).

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> enc = SubjectEncoder(2, data.batch.baseline.shape[1], hidden=8, seed=0)
    >>> enc.fit_scaling(data.batch)
    >>> loc, scale_tril = enc(data.batch)
    >>> tuple(loc.shape), tuple(scale_tril.shape)
    ((12, 2), (12, 2, 2))
    """

    def __init__(self, n_eta: int, n_covariates: int, *, hidden: int = 64, n_layers: int = 2, seed: int = 0,
                 dtype: torch.dtype = torch.float64, device=None):
        super().__init__()
        if n_eta < 1:
            raise EstimationError(f"the encoder needs at least one random effect (found n_eta={n_eta})")
        for name, v, low in (("hidden", hidden, 1), ("n_layers", n_layers, 1), ("n_covariates", n_covariates, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise EstimationError(f"SubjectEncoder: {name} must be an integer >= {low} (found {v!r})")
        self.n_eta, self.n_covariates = n_eta, n_covariates
        n_feat = len(RECORD_FEATURES)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
        try:
            self.record_net = _mlp([n_feat] + [hidden] * n_layers, dtype, device)
            n_out = n_eta + n_eta * (n_eta + 1) // 2
            self.head = _mlp([2 * hidden + n_covariates + 1] + [hidden] * n_layers + [n_out], dtype, device)
        finally:
            torch.random.set_rng_state(gen_state)
        with torch.no_grad():
            self.head[-1].weight.mul_(0.1)
            self.head[-1].bias.zero_()
        self.register_buffer("feature_shift", torch.zeros(n_feat, dtype=dtype, device=device))
        self.register_buffer("feature_scale", torch.ones(n_feat, dtype=dtype, device=device))
        self.register_buffer("covariate_shift", torch.zeros(n_covariates, dtype=dtype, device=device))
        self.register_buffer("covariate_scale", torch.ones(n_covariates, dtype=dtype, device=device))
        self.register_buffer("eta_scale", torch.ones(n_eta, dtype=dtype, device=device))
        self.rows, self.cols = torch.tril_indices(n_eta, n_eta)

    @torch.no_grad()
    def fit_scaling(self, batch: SubjectBatch, eta_scale: torch.Tensor | None = None) -> None:
        """Standardise inputs with this (training) batch's means and SDs; ``eta_scale`` [K] sets the output scale."""
        self._check(batch)
        feats = record_features(batch)[batch.obs.mask]
        if feats.shape[0] == 0:
            raise EstimationError("the encoder needs observations to set its input scaling (the batch has none)")
        self.feature_shift.copy_(feats.mean(0))
        self.feature_scale.copy_(torch.clamp(feats.std(0, unbiased=False), min=1e-6))
        if self.n_covariates:
            cov = batch.baseline
            self.covariate_shift.copy_(cov.mean(0))
            self.covariate_scale.copy_(torch.clamp(cov.std(0, unbiased=False), min=1e-6))
        if eta_scale is not None:
            self.eta_scale.copy_(eta_scale.detach().to(self.eta_scale))

    def _check(self, batch: SubjectBatch) -> None:
        c = batch.baseline.shape[1]
        if c != self.n_covariates:
            raise EstimationError(f"the encoder was built for {self.n_covariates} baseline covariate(s); this batch "
                                  f"has {c} ({', '.join(batch.covariate_names) or 'none'}); encode data with the "
                                  f"same covariate columns as the training data")

    def forward(self, batch: SubjectBatch) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(batch)
        mask = batch.obs.mask
        x = (record_features(batch) - self.feature_shift) / self.feature_scale
        h = self.record_net(x)                                                       # [N, J, H]
        m = mask[..., None].to(h.dtype)
        count = m.sum(1)
        mean_pool = (h * m).sum(1) / torch.clamp(count, min=1.0)
        max_pool = torch.where(mask[..., None], h, torch.full_like(h, -1e4)).max(1).values
        max_pool = torch.where(count > 0, max_pool, torch.zeros_like(max_pool))
        cov = (batch.baseline - self.covariate_shift) / self.covariate_scale
        summary = torch.cat([mean_pool, max_pool, cov, torch.log1p(count)], dim=-1)
        out = self.head(summary)
        k = self.n_eta
        loc = out[:, :k] * self.eta_scale
        raw = out[:, k:]
        n = out.shape[0]
        tril = out.new_zeros(n, k, k)
        tril = tril.index_put((torch.arange(n, device=out.device)[:, None], self.rows.to(out.device)[None, :],
                               self.cols.to(out.device)[None, :]), raw)
        diag = torch.nn.functional.softplus(torch.diagonal(tril, dim1=-2, dim2=-1) - 1.0) + 1e-6
        scale_tril = torch.tril(tril, -1) + torch.diag_embed(diag)
        # the factor is expressed in units of the prior SDs
        scale_tril = self.eta_scale[:, None] * scale_tril
        return loc, scale_tril
