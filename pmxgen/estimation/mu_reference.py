"""Which fixed effects are "mu-referenced": an individual parameter = transform(θ + η).

EM algorithms update such a θ in closed form: with ``ψ_i = μ + η_i`` (``μ = log θ`` for
``θ·exp(η)``, ``μ = θ`` for ``θ + η``) the complete-data likelihood of (μ, Ω) is Gaussian in ψ.
The pairs are found numerically, for any individual-parameter function: θ_j and η_k are
paired when moving ``μ_j`` by δ and ``η_k`` by −δ leaves every individual parameter of every
subject unchanged (at random η, for two values of δ), and no other η compensates θ_j.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batching import SubjectBatch
from ..models.parameter_set import PopulationValues

__all__ = ["MuReference", "find_mu_references"]

_TOLERANCE = 1e-9


@dataclass(frozen=True)
class MuReference:
    """θ ``theta`` with η number ``eta_index`` on the ``log`` or ``identity`` scale."""

    theta: str
    eta_index: int
    scale: str

    def mu(self, value: torch.Tensor) -> torch.Tensor:
        return torch.log(value) if self.scale == "log" else value

    def theta_of(self, mu: torch.Tensor) -> torch.Tensor:
        return torch.exp(mu) if self.scale == "log" else mu


def _shifted(values: PopulationValues, name: str, scale: str, delta: float) -> PopulationValues:
    theta = dict(values.theta)
    theta[name] = theta[name] * torch.exp(torch.as_tensor(delta, dtype=theta[name].dtype)) if scale == "log" \
        else theta[name] + delta
    return PopulationValues(theta=theta, omega=values.omega, sigma=values.sigma)


def _same(a: dict, b: dict) -> bool:
    for key in a:
        x, y = a[key], b[key]
        if not bool(torch.all(torch.isfinite(x))) or not torch.allclose(x, y, rtol=_TOLERANCE, atol=_TOLERANCE):
            return False
    return True


def find_mu_references(model, values: PopulationValues, batch: SubjectBatch, estimated: set[str],
                       n_iiv: int, seed: int = 0) -> list[MuReference]:
    """The mu-referenced (θ, η) pairs among the estimated θ ``estimated`` and the first ``n_iiv`` η.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> [(m.theta, m.eta_index, m.scale) for m in find_mu_references(model, values, data.batch, {"KA", "CL", "V"}, 2)]
    [('KA', 0, 'log'), ('CL', 1, 'log')]
    """
    k = len(model.eta_names(batch))
    if k == 0:
        return []
    gen = torch.Generator(device=batch.device).manual_seed(seed)
    eta = 0.3 * torch.randn(batch.n_subjects, k, generator=gen, dtype=batch.dtype, device=batch.device)
    with torch.no_grad():
        base = model.individual_parameters(eta, values, batch)
        found: list[MuReference] = []
        used: set[int] = set()
        for name in values.theta:
            if name not in estimated:
                continue
            for scale in ("log", "identity"):
                if scale == "log" and not bool(values.theta[name] > 0):
                    continue
                matches = []
                for j in range(n_iiv):
                    ok = True
                    for delta in (0.37, -0.21):
                        moved = eta.clone()
                        moved[:, j] -= delta
                        if not _same(base, model.individual_parameters(moved, _shifted(values, name, scale, delta),
                                                                       batch)):
                            ok = False
                            break
                    if ok:
                        matches.append(j)
                if len(matches) == 1 and matches[0] not in used:
                    found.append(MuReference(name, matches[0], scale))
                    used.add(matches[0])
                    break
    return found
