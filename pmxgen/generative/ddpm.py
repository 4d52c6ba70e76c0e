r"""Denoising diffusion probabilistic model (DDPM; Ho, Jain & Abbeel 2020) for tabular rows.

The forward chain adds Gaussian noise in K steps, ``q(x_k | x_{k−1}) = N(√(1 − β_k) x_{k−1}, β_k I)``,
so that ``q(x_k | x_0) = N(√ᾱ_k x_0, (1 − ᾱ_k) I)`` with ``ᾱ_k = Π_{j≤k}(1 − β_j)``
(:func:`q_sample`). A network ε_θ(x_k, k/K, c) predicts the noise; the loss is Ho et al.'s
simple objective ``‖ε − ε_θ(√ᾱ_k x_0 + √(1 − ᾱ_k) ε, k)‖²`` with k uniform. Sampling runs the
learnt reverse chain (:func:`ddpm_sample`, ancestral):

    x_{k−1} = (x_k − β_k/√(1 − ᾱ_k) ε_θ(x_k, k)) / √(1 − β_k) + σ_k z,

with σ_k² = β_k ("beta") or the posterior variance β̃_k = β_k(1 − ᾱ_{k−1})/(1 − ᾱ_k) ("posterior"),
and no noise at the last step.

Schedules (:func:`ddpm_betas`): "linear" from β_1 = 10⁻⁴·1000/K to β_K = 0.02·1000/K (Ho et al.'s
1000-step schedule rescaled to K steps, as in Nichol & Dhariwal 2021, so ᾱ_K is near 0 for any
K), or "cosine" (Nichol & Dhariwal 2021, ᾱ(s) = cos²((s + 0.008)/1.008 · π/2), β clipped at 0.999).

Examples
--------
For N(0, I) data every q(x_k) is N(0, I) and the exact noise predictor is ε*(x, k) = √(1 − ᾱ_k) x;
the reverse chain with it returns N(0, I):

>>> import torch
>>> betas = ddpm_betas(200, "linear")
>>> abar = torch.cumprod(1 - betas, 0)
>>> eps = lambda x, k: torch.sqrt(1 - abar[k])[:, None] * x
>>> x = ddpm_sample(eps, betas, 20000, 1, generator=torch.Generator().manual_seed(0))
>>> round(float(x.mean()), 1), round(float(x.std()), 1)
(0.0, 1.0)
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..errors import ModelError
from ._timenet import TimeMLP, loss_generator
from .generator import Generator, register_generator

__all__ = ["ddpm_betas", "q_sample", "ddpm_sample", "DDPMGenerator", "SCHEDULES"]

SCHEDULES = ("linear", "cosine")


def ddpm_betas(n_timesteps: int, schedule: str = "linear", *, device=None) -> torch.Tensor:
    """β_1…β_K (float64 ``[K]``) of the "linear" or "cosine" schedule (see the module docstring).

    Examples
    --------
    >>> import torch
    >>> b = ddpm_betas(1000)
    >>> round(float(b[0]), 6), round(float(b[-1]), 4)
    (0.0001, 0.02)
    >>> float(torch.prod(1 - ddpm_betas(50, "cosine"))) < 1e-4
    True
    """
    if not (isinstance(n_timesteps, int) and n_timesteps >= 2):
        raise ModelError(f"n_timesteps must be an int >= 2 (found {n_timesteps!r})")
    if schedule == "linear":
        scale = 1000.0 / n_timesteps
        return torch.linspace(1e-4 * scale, 0.02 * scale, n_timesteps, dtype=torch.float64, device=device).clamp(
            max=0.999)
    if schedule == "cosine":
        s = torch.linspace(0, 1, n_timesteps + 1, dtype=torch.float64, device=device)
        abar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ModelError(f"schedule must be one of {SCHEDULES} (found {schedule!r})")


def q_sample(x0: torch.Tensor, k: torch.Tensor, betas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Draw of ``q(x_k | x_0) = N(√ᾱ_k x_0, (1 − ᾱ_k) I)`` for steps ``k`` ``[n]`` (0-based: k = 0 is one step)."""
    abar = torch.cumprod(1 - betas, 0)[k][:, None]
    return torch.sqrt(abar) * x0 + torch.sqrt(1 - abar) * noise


def ddpm_sample(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], betas: torch.Tensor, n: int, dim: int, *,
                variance: str = "beta", generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Ancestral sampling of the reverse chain from x_K ~ N(0, I); ``eps_fn(x [n, d], k [n]) → [n, d]``
    takes 0-based steps k (K − 1 … 0). ``variance``: "beta" (σ_k² = β_k) or "posterior" (β̃_k)."""
    if variance not in ("beta", "posterior"):
        raise ModelError(f"variance must be 'beta' or 'posterior' (found {variance!r})")
    gen = generator or torch.Generator(device=device or "cpu").manual_seed(0)
    betas = betas.to(device=device)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype, device=abar.device), abar[:-1]])
    sigma2 = betas if variance == "beta" else betas * (1 - abar_prev) / (1 - abar)

    def draw():
        return torch.randn(n, dim, generator=gen, dtype=torch.float64, device=gen.device).to(betas.device)

    x = draw()
    with torch.no_grad():
        for k in range(betas.shape[0] - 1, -1, -1):
            kk = torch.full((n,), k, dtype=torch.long, device=x.device)
            x = (x - betas[k] / torch.sqrt(1 - abar[k]) * eps_fn(x, kk)) / torch.sqrt(alphas[k])
            if k > 0:
                x = x + torch.sqrt(sigma2[k]) * draw()
    return x


@register_generator
class DDPMGenerator(Generator):
    """DDPM on the encoded columns (see the module docstring).

    Parameters
    ----------
    n_timesteps : int
        K, the number of diffusion steps.
    schedule : {"linear", "cosine"}
        β schedule.
    variance : {"beta", "posterior"}
        Reverse-step variance σ_k².
    hidden : list of int
        Hidden widths of the noise-prediction network (input: x, k/K and its sinusoid features, conditions).
    activation : str
        "silu", "tanh", "softplus" or "gelu".
    time_features : int
        Sinusoid frequencies of the step input.
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator`.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3 + 1
    >>> gen = DDPMGenerator(n_timesteps=50, hidden=[32, 32], max_epochs=200, batch_size=100, learning_rate=3e-3,
    ...                     validation_fraction=0).fit(x)
    >>> draws = gen.sample(2000, seed=1)
    >>> bool((draws.mean(0) - x.mean(0)).abs().max() < 0.5), bool((draws.std(0) / x.std(0) - 1).abs().max() < 0.2)
    (True, True)
    """

    name = "ddpm"

    def __init__(self, *, n_timesteps: int = 100, schedule: str = "linear", variance: str = "beta",
                 hidden: Sequence[int] = (128, 128, 128), activation: str = "silu", time_features: int = 4,
                 **common) -> None:
        super().__init__(**common)
        self.n_timesteps, self.schedule, self.variance = n_timesteps, schedule, variance
        self.hidden, self.activation, self.time_features = list(hidden), activation, time_features

    def _validate(self) -> None:
        super()._validate()
        ddpm_betas(self.n_timesteps, self.schedule)
        if self.variance not in ("beta", "posterior"):
            raise ModelError(f"variance must be 'beta' or 'posterior' (found {self.variance!r})")

    def _build(self, dim: int, cond_dim: int) -> torch.nn.Module:
        return TimeMLP(dim, cond_dim, self.hidden, activation=self.activation, time_features=self.time_features)

    def _betas(self) -> torch.Tensor:
        return ddpm_betas(self.n_timesteps, self.schedule, device=self.torch_device)

    def predict_noise(self, x: torch.Tensor, k: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """ε_θ(x_k, k, c) on the encoded scale, for 0-based steps ``k`` ``[n]``."""
        return self.network(x, (k.to(x.dtype) + 1) / self.n_timesteps, c)

    def _loss(self, x, c):
        gen = loss_generator(self)
        n = x.shape[0]
        k = torch.randint(0, self.n_timesteps, (n,), generator=gen, device=gen.device).to(x.device)
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=gen.device).to(x.device)
        xk = q_sample(x, k, self._betas(), noise)
        return ((self.predict_noise(xk, k, c) - noise) ** 2).sum(1).mean()

    def _sample(self, n, c, generator):
        return ddpm_sample(lambda x, k: self.predict_noise(x, k, c), self._betas(), n, self.transform_.dim,
                           variance=self.variance, generator=generator, device=self.torch_device)
