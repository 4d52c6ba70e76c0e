"""The M-step shared by SAEM and MCEM, and the population parameters it updates.

The latent variables are ``z_i = η_i + m`` where ``m_k = μ_j`` for a mu-referenced pair
(θ_j, η_k) (see :mod:`.mu_reference`) and 0 otherwise. Given the sufficient statistics
``S1 = E[mean_i z_i]`` and ``S2 = E[mean_i z_i z_iᵀ]``:

* μ (mu-referenced θ) = the corresponding entries of S1 — closed form;
* Ω = ``S2 − S1 mᵀ − m S1ᵀ + m mᵀ``, restricted to the model's blocks (diagonal blocks keep
  their diagonal; fixed blocks stay fixed) — closed form;
* every other estimated θ and the residual-error parameters σ maximise the complete-data
  log-likelihood ``Σ log p(y_i | η_i, θ, σ)`` over the current draws (a few Newton steps in
  the unconstrained parameters, exact gradient and Hessian by autograd) — numerical.
"""
from __future__ import annotations

import math

import torch

from ..data.batching import SubjectBatch
from ..errors import EstimationError, IntegrationError, ModelError
from ..models.parameter_set import ParameterSet, PopulationValues
from .mu_reference import MuReference, find_mu_references

__all__ = ["EMParameters", "sufficient_statistics"]

#: Smallest variance an EM update may give an Ω diagonal element.
VARIANCE_FLOOR = 1e-8


def _value_gradient_hessian(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fn(x)``, its gradient and Hessian from one forward pass (x small)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = fn(x)
        (g,) = torch.autograd.grad(f, x, create_graph=True)
        rows = [torch.autograd.grad(g[j], x, retain_graph=j < x.numel() - 1)[0] for j in range(x.numel())]
    return f.detach(), g.detach(), torch.stack(rows).detach()


def sufficient_statistics(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean z, mean z zᵀ)`` over all draws and subjects of ``z`` ``[D, N, K]``."""
    flat = z.reshape(-1, z.shape[-1])
    return flat.mean(0), flat.T @ flat / flat.shape[0]


class EMParameters:
    """The estimated parameters φ of a model during EM, with the closed-form and numerical updates.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> em = EMParameters(model, data.batch)
    >>> [m.theta for m in em.mu_refs], em.numeric_names
    (['KA', 'CL'], ['V', 'SIGMA(ADD)'])
    """

    def __init__(self, model, batch: SubjectBatch):
        self.model = model
        self.ps: ParameterSet = model.parameter_set
        ps = self.ps
        self.phi = ps.initial_natural(dtype=batch.dtype, device=batch.device)
        self.k = len(model.eta_names(batch))
        estimated_theta = {t.name for t in ps.theta if not t.fixed}
        # Mu-referencing needs the individual parameters; without them every θ is updated numerically.
        self.mu_refs: list[MuReference] = (
            find_mu_references(model, self.values(), batch, estimated_theta, n_iiv=self.k)
            if callable(getattr(model, "individual_parameters", None)) else [])
        mu_names = {m.theta for m in self.mu_refs}
        self.numeric_names = [n for n in ps.names if ps.kind_of(n) == "sigma"
                              or (ps.kind_of(n) == "theta" and n not in mu_names)]
        self.numeric_index = torch.tensor([ps.names.index(n) for n in self.numeric_names], dtype=torch.long)
        self._bounds = {t.name: (t.lower, t.upper) for t in ps.theta}
        self.messages: list[str] = []

    # -------------------------------------------------------------- values
    def values(self, phi: torch.Tensor | None = None) -> PopulationValues:
        return self.ps.unpack(self.phi if phi is None else phi)

    def mean_vector(self, phi: torch.Tensor | None = None) -> torch.Tensor:
        """``m`` ``[K]``: μ at the mu-referenced η, 0 elsewhere."""
        values = self.values(phi)
        m = torch.zeros(self.k, dtype=self.phi.dtype, device=self.phi.device)
        for ref in self.mu_refs:
            m[ref.eta_index] = ref.mu(values.theta[ref.theta])
        return m

    # ------------------------------------------------------- closed form
    def closed_form_update(self, s1: torch.Tensor, s2: torch.Tensor, anneal: float | None = None) -> torch.Tensor:
        """Set μ and Ω from the statistics; returns the shift ``m_new − m_old`` to apply to the chains' η
        (so that z stays where it is). ``anneal`` τ keeps each Ω variance ≥ τ × its previous value."""
        ps = self.ps
        m_old = self.mean_vector()
        phi = self.phi.clone()
        for ref in self.mu_refs:
            theta = ref.theta_of(s1[ref.eta_index])
            lower, upper = self._bounds[ref.theta]
            clamped = theta
            if lower is not None and lower > -math.inf:
                clamped = torch.clamp(clamped, min=lower + 1e-12 * max(1.0, abs(lower)))
            if upper is not None and upper < math.inf:
                clamped = torch.clamp(clamped, max=upper - 1e-12 * max(1.0, abs(upper)))
            phi[ps.names.index(ref.theta)] = clamped
        m_new = self.mean_vector(phi)
        cov = s2 - torch.outer(s1, m_new) - torch.outer(m_new, s1) + torch.outer(m_new, m_new)
        cov = 0.5 * (cov + cov.T)
        old = self.values().omega
        offset = 0
        for block in ps.omega:
            idx = slice(offset, offset + block.size)
            offset += block.size
            if block.fixed:
                continue
            sub = cov[idx, idx].clone()
            if block.diagonal:
                sub = torch.diag(torch.diagonal(sub))
            var = torch.clamp(torch.diagonal(sub), min=VARIANCE_FLOOR)
            if anneal is not None:
                var = torch.maximum(var, anneal * torch.diagonal(old[idx, idx]))
            scale = torch.sqrt(var / torch.clamp(torch.diagonal(sub), min=VARIANCE_FLOOR))
            sub = sub * scale[:, None] * scale[None, :]
            sub = self._positive_definite(sub)
            for r, c in block.element_index():
                label = (f"OMEGA({block.names[r]})" if r == c
                         else f"OMEGA({block.names[r]},{block.names[c]})")
                phi[ps.names.index(label)] = sub[r, c]
        self.phi = phi
        return m_new - m_old

    @staticmethod
    def _positive_definite(matrix: torch.Tensor) -> torch.Tensor:
        """``matrix`` with its eigenvalues raised to ≥ 1e-6 × the largest (only if needed)."""
        w, v = torch.linalg.eigh(matrix)
        floor = 1e-6 * float(w.max().clamp(min=VARIANCE_FLOOR))
        if float(w.min()) >= floor:
            return matrix
        return (v * w.clamp(min=floor)) @ v.T

    # ---------------------------------------------------------- numerical
    def numeric_optimum(self, eta: torch.Tensor, batch: SubjectBatch, weights: float = 1.0,
                        max_iter: int = 4) -> torch.Tensor | None:
        """Unconstrained values of the numeric parameters maximising ``Σ log p(y|η, ·)`` over the
        rows of ``eta``/``batch`` (Newton from the current values); None if nothing to update."""
        if not self.numeric_names:
            return None
        ps, idx = self.ps, self.numeric_index
        x_full = ps.to_unconstrained(self.phi).detach()
        eta = eta.detach()

        def objective(xb: torch.Tensor) -> torch.Tensor:
            x = x_full.clone()
            x[idx] = xb
            values = ps.unpack(ps.from_unconstrained(x))
            return -weights * self.model.log_likelihood(eta, values, batch).sum()

        xb = x_full[idx].clone()
        try:
            f = objective(xb)
            if not bool(torch.isfinite(f)):
                return None
            for _ in range(max_iter):
                f, g, h = _value_gradient_hessian(objective, xb)
                w, v = torch.linalg.eigh(0.5 * (h + h.T))
                w = w.abs().clamp(min=1e-8 * float(w.abs().max().clamp(min=1e-12)))
                step = -(v @ ((v.T @ g) / w))
                step = step * torch.clamp(3.0 / step.abs().max().clamp(min=1e-300), max=1.0)
                decrement = float(-(g @ step))
                if decrement < 1e-10 * (1.0 + abs(float(f))):
                    break
                t = 1.0
                with torch.no_grad():
                    while t > 1e-6:
                        trial = xb + t * step
                        f_trial = objective(trial)
                        if bool(torch.isfinite(f_trial)) and float(f_trial) <= float(f) - 1e-4 * t * decrement:
                            break
                        t *= 0.5
                if t <= 1e-6:
                    break
                xb = trial.detach()
        except (ModelError, IntegrationError, torch.linalg.LinAlgError) as exc:
            self.messages.append(f"numerical M-step skipped once: {exc}")
            return None
        return xb.detach()

    def move_numeric(self, target: torch.Tensor | None, gamma: float) -> None:
        """Move the numeric parameters a fraction ``gamma`` of the way to ``target`` (unconstrained)."""
        if target is None:
            return
        x = self.ps.to_unconstrained(self.phi).detach()
        x[self.numeric_index] = x[self.numeric_index] + gamma * (target - x[self.numeric_index])
        phi = self.ps.from_unconstrained(x).detach()
        if not bool(torch.all(torch.isfinite(phi))):
            raise EstimationError("the numerical M-step gave non-finite parameters")
        self.phi = phi
