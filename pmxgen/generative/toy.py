"""Two-dimensional toy densities of the FFJORD paper (Grathwohl et al. 2019, ``lib/toy_data.py``).

``sample_toy(name, n, seed=...)`` draws from "8gaussians", "checkerboard", "2spirals" or "moons"
with the same constructions and scales as FFJORD's generators (moons: scikit-learn's two moons
with noise 0.1, scaled by 2 and shifted by (−1, −0.2), with uniformly random angles instead of an
even grid). ``toy_log_prob`` gives the exact density where it has a closed form
("8gaussians", "checkerboard"), and ``toy_entropy`` its entropy (checkerboard: uniform on 8
squares of side 2, so exactly ln 32 = 3.4657 nats).

Examples
--------
>>> x = sample_toy("checkerboard", 1000, seed=0)
>>> x.shape, bool((x.abs() <= 4).all())
(torch.Size([1000, 2]), True)
>>> round(toy_entropy("checkerboard"), 4)
3.4657
>>> float(toy_log_prob("checkerboard", x).exp().unique()[0]) == 1 / 32
True
"""
from __future__ import annotations

import math

import torch

from ..errors import ModelError

__all__ = ["TOY_DENSITIES", "sample_toy", "toy_log_prob", "toy_entropy"]

TOY_DENSITIES = ("8gaussians", "checkerboard", "2spirals", "moons")

_SCALE_8G, _SD_8G = 4.0, 0.5


def _centres_8g(dtype, device) -> torch.Tensor:
    r = 1.0 / math.sqrt(2.0)
    c = torch.tensor([(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r), (-r, -r)], dtype=dtype,
                     device=device)
    return c * _SCALE_8G


def sample_toy(name: str, n: int, *, seed: int | None = None, generator: torch.Generator | None = None,
               device=None, dtype=torch.float64) -> torch.Tensor:
    """``n`` draws ``[n, 2]`` from the toy density ``name`` (see the module docstring)."""
    if name not in TOY_DENSITIES:
        raise ModelError(f"unknown toy density {name!r}; choose one of {TOY_DENSITIES}")
    gen = generator or torch.Generator(device=device or "cpu").manual_seed(0 if seed is None else seed)
    kw = {"generator": gen, "dtype": dtype, "device": device}
    if name == "8gaussians":
        idx = torch.randint(0, 8, (n,), generator=gen, device=device)
        x = torch.randn(n, 2, **kw) * _SD_8G + _centres_8g(dtype, device)[idx]
        return x / 1.414
    if name == "checkerboard":
        x1 = torch.rand(n, **kw) * 4 - 2
        x2_ = torch.rand(n, **kw) - torch.randint(0, 2, (n,), generator=gen, device=device).to(dtype) * 2
        x2 = x2_ + torch.floor(x1) % 2
        return torch.stack([x1, x2], 1) * 2
    if name == "2spirals":
        m = (n + 1) // 2
        t = torch.sqrt(torch.rand(m, **kw)) * 540 * (2 * math.pi) / 360
        d1x = -torch.cos(t) * t + torch.rand(m, **kw) * 0.5
        d1y = torch.sin(t) * t + torch.rand(m, **kw) * 0.5
        x = torch.cat([torch.stack([d1x, d1y], 1), torch.stack([-d1x, -d1y], 1)])[:n] / 3
        return x + torch.randn(n, 2, **kw) * 0.1
    # moons
    t = torch.rand(n, **kw) * math.pi
    upper = torch.rand(n, **kw) < 0.5
    outer = torch.stack([torch.cos(t), torch.sin(t)], 1)
    inner = torch.stack([1 - torch.cos(t), 1 - torch.sin(t) - 0.5], 1)
    x = torch.where(upper[:, None], outer, inner) + torch.randn(n, 2, **kw) * 0.1
    return x * 2 + torch.tensor([-1.0, -0.2], dtype=dtype, device=device)


def toy_log_prob(name: str, x: torch.Tensor) -> torch.Tensor:
    """Exact log density ``[n]`` of "8gaussians" or "checkerboard" at ``x`` ``[n, 2]``."""
    if name == "8gaussians":
        sd = _SD_8G / 1.414
        centres = _centres_8g(x.dtype, x.device) / 1.414
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        return torch.logsumexp(-0.5 * d2 / sd ** 2, 1) - math.log(8) - math.log(2 * math.pi * sd ** 2)
    if name == "checkerboard":
        x1, x2 = x[:, 0] / 2, x[:, 1] / 2
        inside = (x1 >= -2) & (x1 <= 2) & (x2 >= -2) & (x2 <= 2)
        on = (torch.floor(x1) + torch.floor(x2)) % 2 == 0
        return torch.where(inside & on, torch.full_like(x1, -math.log(32.0)), torch.full_like(x1, -math.inf))
    raise ModelError(f"no closed-form density for {name!r}; only '8gaussians' and 'checkerboard'")


def toy_entropy(name: str, *, n: int = 200_000, seed: int = 0) -> float:
    """Entropy in nats: exact for "checkerboard" (ln 32); Monte Carlo (``n`` draws) for "8gaussians"."""
    if name == "checkerboard":
        return math.log(32.0)
    x = sample_toy(name, n, seed=seed)
    return float(-toy_log_prob(name, x).mean())
