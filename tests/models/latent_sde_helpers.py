"""Exact references for the latent-SDE tests: Kalman filters of Ornstein–Uhlenbeck models, the exact
smoothing drift and q(z0) of an OU posterior, and small data builders."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

import pmxgen


def frame(subjects: dict) -> pd.DataFrame:
    """``{id: (times, dvs)}`` → an observation-only NONMEM frame."""
    rows = [{"ID": i, "TIME": float(t), "DV": float(y), "AMT": 0.0, "EVID": 0, "MDV": 0}
            for i, (ts, ys) in subjects.items() for t, y in zip(ts, ys)]
    return pd.DataFrame(rows)


def dataset(subjects: dict):
    return pmxgen.read_nonmem(frame(subjects), require_doses=False)


def ou_kalman(times, ys, a: float, s: float, r: float, p0: float | None = None, discrete: bool = False):
    """Per-observation ``log p(y_j | y_<j)`` of ``dz = −a z dt + s dW``, ``z(0) ~ N(0, p0)``, ``y = z + N(0, r)``.

    ``discrete=True``: the Euler chain ``z' = (1 − aΔ) z + s √Δ ε`` between consecutive times (the DLGM).
    """
    p0 = s * s / (2 * a) if p0 is None else p0
    m, p, t_prev, out = 0.0, p0, 0.0, []
    for t, y in zip(times, ys):
        dt = t - t_prev
        if discrete:
            f, q = 1 - a * dt, s * s * dt
        else:
            f, q = math.exp(-a * dt), s * s / (2 * a) * (1 - math.exp(-2 * a * dt))
        m, p = f * m, f * f * p + q
        v = p + r
        out.append(-0.5 * (math.log(2 * math.pi * v) + (y - m) ** 2 / v))
        k = p / v
        m, p = m + k * (y - m), (1 - k) * p
        t_prev = t
    return np.array(out)


class ExactOUPosterior:
    """The exact posterior of one subject under an OU prior with Gaussian observations.

    ``correction(t, z)`` is ``s² ∂_z log p(y_{>t} | z(t) = z)`` (Doob's h-transform: the posterior
    drift is the prior drift plus it), ``q0`` the exact ``p(z(0) | y)``. Obs times must be > 0.
    """

    def __init__(self, times, ys, a, s, r):
        self.a, self.s = a, s
        self.times = np.asarray(times, dtype=float)
        mu, v = [0.0] * len(times), [0.0] * len(times)
        mu[-1], v[-1] = ys[-1], r
        for j in range(len(times) - 2, -1, -1):           # backward messages N(z_tj; mu_j, v_j) including y_j
            e, q = self._eq(self.times[j + 1] - self.times[j])
            m_later, v_later = mu[j + 1] / e, (v[j + 1] + q) / e ** 2
            prec = 1 / r + 1 / v_later
            mu[j], v[j] = (ys[j] / r + m_later / v_later) / prec, 1 / prec
        self.mu, self.v = np.array(mu), np.array(v)
        p0 = s * s / (2 * a)
        e, q = self._eq(self.times[0])
        prec = 1 / p0 + e * e / (v[0] + q)
        self.q0_mean, self.q0_sd = (e * mu[0] / (v[0] + q)) / prec, math.sqrt(1 / prec)

    def _eq(self, dt):
        return math.exp(-self.a * dt), self.s ** 2 / (2 * self.a) * (1 - math.exp(-2 * self.a * dt))

    def correction(self, t: float, z: torch.Tensor) -> torch.Tensor:
        later = np.flatnonzero(self.times > t + 1e-12)
        if len(later) == 0:
            return torch.zeros_like(z)
        j = later[0]
        e, q = self._eq(self.times[j] - t)
        return self.s ** 2 * e * (self.mu[j] - e * z) / (self.v[j] + q)


class ExactDrift(torch.nn.Module):
    """A posterior-drift module (signature of PosteriorDrift) returning the exact correction."""

    def __init__(self, exact: ExactOUPosterior):
        super().__init__()
        self.exact = exact

    def forward(self, t, z, context):
        return self.exact.correction(float(t), z)


class ExactEncoder(torch.nn.Module):
    """An encoder module returning the exact q(z0) (as offsets in prior units) and an empty context."""

    def __init__(self, exact: ExactOUPosterior, prior_sd: float):
        super().__init__()
        self.exact, self.prior_sd = exact, prior_sd
        self.register_buffer("covariate_shift", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("covariate_scale", torch.ones(0, dtype=torch.float64))

    def fit_scaling(self, batch):
        pass

    def forward(self, batch):
        n = batch.n_subjects
        mean = torch.full((n, 1), self.exact.q0_mean / self.prior_sd, dtype=torch.float64)
        log_sd = torch.full((n, 1), math.log(self.exact.q0_sd / self.prior_sd), dtype=torch.float64)
        return mean, log_sd, torch.zeros(n, 0, dtype=torch.float64)


class ConstantDrift(torch.nn.Module):
    """Posterior correction = a constant vector c."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.float64))

    def forward(self, t, z, context):
        return self.c.expand_as(z)
