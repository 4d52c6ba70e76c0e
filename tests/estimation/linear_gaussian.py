"""A structural model that makes an NLME model linear-Gaussian, and its exact likelihood and MLE.

The model: f = TA + η_A + (TB + η_B)·t, full 2×2 Ω, additive error. The exact marginal −2LL is
multivariate normal; its MLE (scipy BFGS) and observed information (central differences) are
computed here with numpy, independently of pmxgen.
"""
import math

import numpy as np
import pandas as pd
import torch
from scipy import optimize

import pmxgen
from pmxgen.models import NLMEModel, OmegaBlock

from pmxgen.structural.base import StructuralModel


class LinearInTime(StructuralModel):
    """f = A + B·t (ignores doses): with additive η on A and B the model is linear-Gaussian."""

    compartments = ("central",)
    parameter_names = ("A", "B")
    name = "linear_in_time"

    def predict(self, params, batch):
        p = self.check_parameters(params, batch)
        f = p["A"][:, None] + p["B"][:, None] * batch.obs.time
        return torch.where(batch.obs.mask, f, torch.zeros_like(f))


LOG2PI = math.log(2 * math.pi)


def linear_data(n_subjects=30, seed=4):
    rng = np.random.default_rng(seed)
    omega = np.array([[1.5, 0.2], [0.2, 0.08]])
    rows, subjects = [], []
    for i in range(n_subjects):
        t = np.sort(rng.uniform(0, 10, 3 + i % 3))
        eta = rng.multivariate_normal(np.zeros(2), omega)
        y = 10 + eta[0] + (-0.6 + eta[1]) * t + rng.normal(0, math.sqrt(0.4), t.size)
        subjects.append((t, y))
        rows += [{"ID": i + 1, "TIME": a, "DV": b} for a, b in zip(t, y)]
    return pmxgen.read_nonmem(pd.DataFrame(rows)), subjects


def exact_minus2ll(p, subjects):
    """p = (TA, TB, Ω11, Ω21, Ω22, σ²) on the natural scale."""
    ta, tb, o11, o21, o22, s2 = p
    om = np.array([[o11, o21], [o21, o22]])
    total = 0.0
    for t, y in subjects:
        z = np.column_stack([np.ones_like(t), t])
        cov = z @ om @ z.T + s2 * np.eye(t.size)
        sign, logdet = np.linalg.slogdet(cov)
        if sign <= 0:
            return np.inf
        r = y - (ta + tb * t)
        total += t.size * LOG2PI + logdet + r @ np.linalg.solve(cov, r)
    return total


def exact_mle(subjects):
    def f(x):  # x: TA, TB, log-Cholesky of Ω (3), log σ²
        l11, l21, l22 = math.exp(x[2]), x[3], math.exp(x[4])
        return exact_minus2ll([x[0], x[1], l11 ** 2, l11 * l21, l21 ** 2 + l22 ** 2, math.exp(x[5])], subjects)

    res = optimize.minimize(f, np.array([9.0, -0.5, 0.0, 0.0, -1.0, -1.0]), method="BFGS", options={"gtol": 1e-8})
    x = res.x
    l11, l21, l22 = math.exp(x[2]), x[3], math.exp(x[4])
    p = np.array([x[0], x[1], l11 ** 2, l11 * l21, l21 ** 2 + l22 ** 2, math.exp(x[5])])
    hess = np.empty((6, 6))
    steps = 1e-4 * np.maximum(np.abs(p), 1e-2)
    for i in range(6):
        for j in range(6):
            ei, ej = np.eye(6)[i] * steps[i], np.eye(6)[j] * steps[j]
            hess[i, j] = (exact_minus2ll(p + ei + ej, subjects) - exact_minus2ll(p + ei - ej, subjects)
                          - exact_minus2ll(p - ei + ej, subjects) + exact_minus2ll(p - ei - ej, subjects)) \
                / (4 * steps[i] * steps[j])
    info = hess / 2
    return p, info, float(res.fun)


def linear_model():
    return NLMEModel(LinearInTime(), theta={"TA": 9.0, "TB": -0.5},
                     omega=OmegaBlock(["A", "B"], [[1.0, 0.0], [0.0, 0.1]]),
                     error={"kind": "additive", "init": {"ADD": 1.0}},
                     individual=lambda th, eta, cov: {"A": th["TA"] + eta["A"], "B": th["TB"] + eta["B"]})


LINEAR_NAMES = ("TA", "TB", "OMEGA(A)", "OMEGA(B,A)", "OMEGA(B)", "SIGMA(ADD)")
