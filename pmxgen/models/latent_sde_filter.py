"""Bootstrap particle filter of a latent SDE model: one-step-ahead predictive log-likelihoods.

For every subject, ``n_particles`` paths start from the prior of ``z(t0)`` and move by the prior
SDE (all subjects' particles in one batched solve, subject-major rows, seeded Brownian paths).
At each observation record (in time and record order, several at one time one after the other)
the filter reports

    log p(y_ij | y_i,<j) ≈ log( (1/P) Σ_p p(y_ij | z_p(t_ij)) )

and resamples that subject's particles by systematic resampling with weights ``p(y_ij | z_p)``.
The product of these estimates over a subject's observations is an unbiased estimate of
``p(y_i)`` (Del Moral 2004), so their sum is the filter's estimate of ``log p(y_i)``.
Observations at a bolus time are processed before or after its jump by record order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import EstimationError
from .latent_sde_solve import build_schedule, design_from_batch

__all__ = ["FilterResult", "particle_filter", "systematic_resample"]


@dataclass(frozen=True)
class FilterResult:
    """``log_predictive`` ``[N, J]`` (NaN without an observation) and its per-subject sum ``[N]``."""

    log_predictive: torch.Tensor
    log_likelihood: torch.Tensor


def systematic_resample(log_w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices ``[N, P]`` drawn by systematic resampling from log weights ``[N, P]`` (one uniform per row).

    Examples
    --------
    >>> w = torch.log(torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64))
    >>> systematic_resample(w, torch.Generator().manual_seed(0)).tolist()[0]
    [1, 1, 1]
    """
    n, p = log_w.shape
    w = torch.softmax(log_w, dim=1)
    cdf = torch.cumsum(w, dim=1)
    cdf = cdf / cdf[:, -1:]
    u = (torch.rand(n, 1, generator=generator, dtype=log_w.dtype, device=log_w.device)
         + torch.arange(p, dtype=log_w.dtype, device=log_w.device)) / p
    return torch.searchsorted(cdf, u.contiguous()).clamp(max=p - 1)


def _groups(schedule, mask: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
    """Observation groups ``(knot, phase, j [N] or -1)`` in processing order (phase 0: before the jump)."""
    knot = schedule.obs_knot.cpu().numpy()
    phase = schedule.obs_after_jump.cpu().numpy().astype(np.int64)
    m = mask.cpu().numpy()
    n, j = m.shape
    subj, col = np.nonzero(m)
    key_k, key_p = knot[subj, col], phase[subj, col]
    order = np.lexsort((col, key_p, key_k, subj))
    subj, col, key_k, key_p = subj[order], col[order], key_k[order], key_p[order]
    # rank of each observation among its subject's observations with the same (knot, phase)
    new = np.r_[True, (subj[1:] != subj[:-1]) | (key_k[1:] != key_k[:-1]) | (key_p[1:] != key_p[:-1])]
    starts = np.flatnonzero(new)
    rank = np.arange(len(subj)) - np.repeat(starts, np.diff(np.r_[starts, len(subj)]))
    keys = np.stack([key_k, key_p, rank], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)          # sorted by (knot, phase, rank)
    table = np.full((len(uniq), n), -1, dtype=np.int64)
    table[inverse.reshape(-1), subj] = col
    rows = torch.as_tensor(table, device=mask.device)
    return [(int(k), int(p), rows[g]) for g, (k, p, _) in enumerate(uniq)]

@torch.no_grad()
def particle_filter(model, data, *, n_particles: int = 1000, seed: int = 0) -> FilterResult:
    """Run the bootstrap particle filter of ``model`` (at its current parameters) on ``data``.

    Examples
    --------
    >>> import pandas as pd, pmxgen
    >>> from pmxgen.models.latent_sde import LatentSDEModel
    >>> frame = pd.DataFrame({"ID": [1, 1], "TIME": [0.5, 1.0], "DV": [0.2, -0.1], "AMT": 0, "EVID": 0, "MDV": 0})
    >>> model = LatentSDEModel(1, mechanism="ou", network=False, context_dim=1, hidden=4, dt=0.05)
    >>> res = particle_filter(model, pmxgen.read_nonmem(frame, require_doses=False), n_particles=200)
    >>> tuple(res.log_predictive.shape), bool(torch.isfinite(res.log_likelihood).all())
    ((1, 2), True)
    """
    batch = getattr(data, "batch", data)
    ids = tuple(getattr(data, "ids", [f"#{i + 1}" for i in range(batch.n_subjects)]))
    if isinstance(n_particles, bool) or not isinstance(n_particles, int) or n_particles < 1:
        raise EstimationError(f"n_particles must be an integer >= 1 (found {n_particles!r})")
    p, n, d = n_particles, batch.n_subjects, model.latent_dim
    values = model.values()
    design = design_from_batch(batch, ids)
    schedule = build_schedule(design, t0=model.t0, break_at_observations=True)
    obs = batch.obs
    out = torch.full(obs.dv.shape, math.nan, dtype=obs.dv.dtype, device=obs.dv.device)
    by_knot: dict[tuple[int, int], list[torch.Tensor]] = {}
    for k, phase, j in _groups(schedule, obs.mask):
        by_knot.setdefault((k, phase), []).append(j)
    gen = torch.Generator(device=obs.dv.device).manual_seed(int(seed) + 7919)
    rows = torch.arange(n, device=obs.dv.device)

    def update(k: int, phase: int, y: torch.Tensor) -> torch.Tensor:
        for j in by_knot.get((k, phase), []):
            has = j >= 0
            jj = j.clamp(min=0)
            z = y[:, :d].reshape(n, p, d)
            f = model.observe_prediction(z, values)                                      # [N, P]
            pick = (lambda v: v[rows, jj][:, None].expand(n, p))
            ll = model.observation_log_density(f, pick(obs.dv), pick(obs.blq), pick(obs.lloq), values)
            pred = torch.logsumexp(ll, dim=1) - math.log(p)
            out[rows[has], j[has]] = pred[has]
            ok = has & torch.isfinite(pred)
            idx = systematic_resample(torch.where(ok[:, None], ll, torch.zeros_like(ll)), gen)
            idx = torch.where(ok[:, None], idx, torch.arange(p, device=idx.device).expand(n, p))
            y = y.reshape(n, p, -1).gather(1, idx[..., None].expand(n, p, y.shape[-1])).reshape(n * p, -1)
        return y

    m0, s0 = model.z0_prior(values)
    z0 = m0 + s0 * torch.randn(n * p, d, generator=gen, dtype=m0.dtype, device=m0.device)
    y0 = torch.cat([z0, torch.zeros_like(z0[:, :1])], dim=-1)
    model._solve(design, schedule, y0, p, None, values, seed=seed, ids=ids,
                 before_jump=lambda k, y: update(k, 0, y), on_break=lambda k, y: update(k, 1, y))
    total = torch.where(obs.mask, out, torch.zeros_like(out)).sum(1)
    return FilterResult(log_predictive=out, log_likelihood=total)
