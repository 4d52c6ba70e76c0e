"""Residual error models: the observation given the individual prediction f.

Each model says on which scale the likelihood is Gaussian (the observation itself, or its
logarithm for log-transform-both-sides), the mean on that scale and the residual variance,
in terms of σ² values (NONMEM's $SIGMA, variance scale):

=====================  ==================================  =======================
name                   observation                         variance on that scale
=====================  ==================================  =======================
``additive``           y = f + ε                           σ²_ADD
``proportional``       y = f (1 + ε)                       σ²_PROP f²
``combined``           y = f + f ε₁ + ε₂ (variance sum)    σ²_ADD + σ²_PROP f²
``combined_sd``        sd = σ_ADD + σ_PROP |f| (SD sum)    (σ_ADD + σ_PROP |f|)²
``exponential``        log y = log f + ε (LTBS)            σ²_EXP
=====================  ==================================  =======================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import ModelError
from .parameter_set import Sigma

__all__ = ["ResidualError", "ERROR_MODELS", "residual_error"]

#: Smallest variance used where a prediction makes it 0 (e.g. proportional error at f = 0).
VARIANCE_FLOOR = 1e-12


@dataclass(frozen=True)
class ResidualError:
    """A residual error model (see the module docstring for the formulas).

    Parameters
    ----------
    kind : str
        One of :data:`ERROR_MODELS`.
    init : dict, optional
        Initial σ² by name (``ADD``, ``PROP``, ``EXP``); defaults are sensible for
        concentrations (additive variance 1, proportional CV 20 %).
    fixed : tuple of str
        σ names to keep fixed.

    Examples
    --------
    >>> err = ResidualError("combined", {"ADD": 0.01, "PROP": 0.04})
    >>> [s.name for s in err.sigmas()]
    ['ADD', 'PROP']
    >>> v = err.variance(torch.tensor([0.0, 10.0]), {"ADD": torch.tensor(0.01), "PROP": torch.tensor(0.04)})
    >>> [round(float(x), 6) for x in v]
    [0.01, 4.01]
    """

    kind: str
    init: Mapping[str, float] | None = None
    fixed: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ERROR_MODELS:
            raise ModelError(f"unknown residual error model {self.kind!r}; choose one of {', '.join(ERROR_MODELS)}")
        init = dict(_DEFAULT_INIT[self.kind])
        for k, v in dict(self.init or {}).items():
            if k.upper() not in init:
                raise ModelError(f"error model {self.kind} has σ {', '.join(init)}; found {k!r}")
            init[k.upper()] = v
        object.__setattr__(self, "init", init)
        bad = [f for f in self.fixed if f.upper() not in init]
        if bad:
            raise ModelError(f"error model {self.kind} has σ {', '.join(init)}; cannot fix {bad}")
        object.__setattr__(self, "fixed", tuple(f.upper() for f in self.fixed))

    @property
    def log_scale(self) -> bool:
        """True when the likelihood is Gaussian in log y (log-transform-both-sides)."""
        return self.kind == "exponential"

    def sigmas(self) -> list[Sigma]:
        return [Sigma(k, v, fixed=k in self.fixed) for k, v in self.init.items()]

    def transform(self, value: torch.Tensor) -> torch.Tensor:
        """An observation or prediction on the likelihood scale."""
        if self.log_scale:
            return torch.log(value.clamp_min(1e-300))
        return value

    def variance(self, f: torch.Tensor, sigma: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Residual variance on the likelihood scale for predictions ``f [N, J]`` (original scale).

        σ values may be 0-d or ``[N]`` (one per subject). The variance is floored at
        ``VARIANCE_FLOOR`` so that the likelihood stays finite (e.g. proportional error at f = 0).
        """
        return self._variance(f, sigma).clamp_min(VARIANCE_FLOOR)

    @staticmethod
    def _sigma(sigma: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        """σ² ``name``, shaped to broadcast against ``[N, J]`` predictions."""
        v = sigma[name]
        return v[..., None] if v.dim() == 1 else v

    def _variance(self, f: torch.Tensor, sigma: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The residual variance without the floor (exactly 0 where the model says 0)."""
        def s(name):
            return self._sigma(sigma, name)

        if self.kind == "additive":
            return s("ADD") * torch.ones_like(f)
        if self.kind == "proportional":
            return s("PROP") * f * f
        if self.kind == "combined":
            return s("ADD") + s("PROP") * f * f
        if self.kind == "combined_sd":
            return (torch.sqrt(s("ADD")) + torch.sqrt(s("PROP")) * torch.abs(f)) ** 2
        return s("EXP") * torch.ones_like(f)

    def sample(self, f: torch.Tensor, sigma: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Observations drawn around predictions ``f`` (original scale), the distribution of :meth:`variance`.

        One standard normal array ε ``f.shape`` is drawn from ``generator``, scaled by the residual
        SD on the likelihood scale (without the floor: a zero variance gives ``f`` itself). The
        ``combined`` model draws two, as NONMEM's ``Y = F + F·EPS(1) + EPS(2)``: first the
        proportional ε₁, then the additive ε₂, so ``y = f + f·σ_PROP·ε₁ + σ_ADD·ε₂`` (variance
        ``σ²_ADD + σ²_PROP f²``).

        Examples
        --------
        >>> err = ResidualError("proportional")
        >>> f = torch.tensor([[0.0, 10.0]], dtype=torch.float64)
        >>> y = err.sample(f, {"PROP": torch.tensor(0.04, dtype=torch.float64)}, torch.Generator().manual_seed(0))
        >>> float(y[0, 0])                    # no variance at f = 0: exactly f
        0.0
        """
        if self.kind == "combined":
            z_prop = torch.randn(f.shape, generator=generator, dtype=f.dtype, device=f.device)
            z_add = torch.randn(f.shape, generator=generator, dtype=f.dtype, device=f.device)
            sd_prop, sd_add = torch.sqrt(self._sigma(sigma, "PROP")), torch.sqrt(self._sigma(sigma, "ADD"))
            return f + f * (sd_prop * z_prop) + sd_add * z_add
        z = torch.randn(f.shape, generator=generator, dtype=f.dtype, device=f.device)
        sd = torch.sqrt(self._variance(f, sigma).clamp_min(0.0))
        if self.log_scale:
            return torch.exp(self.transform(f) + sd * z)
        return f + sd * z


_DEFAULT_INIT = {
    "additive": {"ADD": 1.0},
    "proportional": {"PROP": 0.04},
    "combined": {"ADD": 0.01, "PROP": 0.04},
    "combined_sd": {"ADD": 0.01, "PROP": 0.04},
    "exponential": {"EXP": 0.04},
}

#: Names of the residual error models.
ERROR_MODELS = tuple(_DEFAULT_INIT)


def residual_error(spec) -> ResidualError:
    """A :class:`ResidualError` from itself, a name, or a dict ``{"kind": ..., "init": {...}}``."""
    if isinstance(spec, ResidualError):
        return spec
    if isinstance(spec, str):
        return ResidualError(spec)
    if isinstance(spec, Mapping):
        return ResidualError(**spec)
    raise ModelError(f"error must be a ResidualError, a name ({', '.join(ERROR_MODELS)}) or a dict; "
                     f"found {type(spec).__name__}")


def normal_neg2ll(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """−2 log N(y; mean, var) elementwise, with the log 2π constant."""
    return math.log(2 * math.pi) + torch.log(var) + (y - mean) ** 2 / var


def censored_neg2ll(lloq: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """−2 log Φ((LLOQ − mean)/sd) elementwise (Beal's M3 for observations below LLOQ)."""
    z = (lloq - mean) / torch.sqrt(var)
    return -2.0 * torch.special.log_ndtr(z)
