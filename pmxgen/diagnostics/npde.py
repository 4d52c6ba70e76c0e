"""Normalised prediction distribution errors (NPDE) and discrepancies (NPD).

Brendel et al. (2006) and Comets et al. (2008, the R package ``npde``). For each subject, the
observed vector ``y`` and the ``K`` simulated vectors ``y_k`` (replicates of the subject's design
under the model, see :func:`~pmxgen.diagnostics.simulate.simulate_replicates`) are

1. centred on the mean of the simulations ``m`` and decorrelated with the Cholesky factor of
   their empirical covariance ``V = L Lᵀ``: ``y* = L⁻¹(y − m)``, ``y*_k = L⁻¹(y_k − m)``;
2. ``pde_j = #{k : y*_kj < y*_j} / K`` (0 replaced by ``1/(2K)`` and 1 by ``1 − 1/(2K)``, as in
   the npde package);
3. ``npde_j = Φ⁻¹(pde_j)``.

The Cholesky factor is the npde method's (Brendel 2006; the npde package's default
``decorr.method = "cholesky"``) and is kept here on purpose, although WRES and CWRES
(:mod:`.residuals`) are whitened with the symmetric inverse square root as NONMEM does: NPDE
are compared with the npde package, WRES/CWRES with NONMEM.

NPD use the same steps without decorrelation (``pd``, then ``npd = Φ⁻¹(pd)``). Under the model,
NPDE are independent N(0, 1); NPD are N(0, 1) marginally but correlated within a subject.

Computations run on the likelihood scale of the model (the logarithm for exponential
log-transform-both-sides error, the observation itself otherwise). Observations below the LLOQ
(BLQ) are left out of the decorrelation and get NaN NPDE/NPD; their number is reported
(``NPDEResult.n_blq``). Subjects whose simulated covariance cannot be factorised get NaN and
are listed in ``NPDEResult.failed``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from ..errors import ModelError
from ..models.base import PopulationModel
from ..models.parameter_set import PopulationValues
from .simulate import observation_batch, simulate_replicates

__all__ = ["NPDEResult", "npde_from_simulations", "compute_npde", "likelihood_scale", "normality_tests"]


@dataclass(frozen=True)
class NPDEResult:
    """NPDE, NPD and their uniform versions per observation, ``[N, J]`` (NaN where not computed).

    Attributes
    ----------
    npde, npd, pde, pd : numpy.ndarray
    use : numpy.ndarray
        Observations that entered the computation (observed, not BLQ).
    n_simulations : int
    n_blq : int
        Observations left out because they are below the LLOQ.
    failed : tuple of int
        Positions of subjects whose decorrelation failed (singular simulated covariance).
    """

    npde: np.ndarray
    npd: np.ndarray
    pde: np.ndarray
    pd: np.ndarray
    use: np.ndarray
    n_simulations: int
    n_blq: int = 0
    failed: tuple = ()

    def values(self, kind: str = "npde") -> np.ndarray:
        """The finite values of ``kind`` (``npde``, ``npd``, ``pde`` or ``pd``) as a flat array."""
        if kind not in ("npde", "npd", "pde", "pd"):
            raise ValueError(f"kind must be npde, npd, pde or pd (found {kind!r})")
        v = np.asarray(getattr(self, kind), dtype=float)
        return v[np.isfinite(v)]

    def tests(self, kind: str = "npde") -> dict:
        """Tests of N(0, 1) for the NPDE (or NPD): see :func:`normality_tests`."""
        return normality_tests(self.values(kind))


def normality_tests(values: np.ndarray) -> dict:
    """The npde package's tests that ``values`` are N(0, 1), plus Kolmogorov–Smirnov.

    ``mean`` with a t-test of mean 0, ``variance`` with Fisher's test of variance 1,
    Shapiro–Wilk normality (on the first 5000 values), KS against N(0, 1), and the global
    test (Bonferroni: 3 × the smallest of the first three p-values, capped at 1).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = normality_tests(rng.standard_normal(2000))
    >>> sorted(t)
    ['global_p', 'ks_p', 'mean', 'mean_p', 'n', 'shapiro_p', 'variance', 'variance_p']
    >>> t["global_p"] > 0.05, normality_tests(1.5 * rng.standard_normal(2000))["variance_p"] < 1e-6
    (True, True)
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = v.size
    if n < 3:
        nan = float("nan")
        return {"n": n, "mean": nan, "variance": nan, "mean_p": nan, "variance_p": nan, "shapiro_p": nan,
                "ks_p": nan, "global_p": nan}
    var = float(v.var(ddof=1))
    chi2 = (n - 1) * var
    variance_p = float(min(1.0, 2 * min(stats.chi2.cdf(chi2, n - 1), stats.chi2.sf(chi2, n - 1))))
    mean_p = float(stats.ttest_1samp(v, 0.0).pvalue)
    shapiro_p = float(stats.shapiro(v[:5000]).pvalue)
    ks_p = float(stats.kstest(v, "norm").pvalue)
    return {"n": n, "mean": float(v.mean()), "variance": var, "mean_p": mean_p, "variance_p": variance_p,
            "shapiro_p": shapiro_p, "ks_p": ks_p, "global_p": float(min(1.0, 3 * min(mean_p, variance_p, shapiro_p)))}


def _to_uniform(below: torch.Tensor, k: int) -> torch.Tensor:
    p = below.to(torch.float64).mean(0)
    return p.clamp(1.0 / (2 * k), 1.0 - 1.0 / (2 * k))


def npde_from_simulations(observed, simulated, use, *, n_blq: int = 0) -> NPDEResult:
    """NPDE and NPD of ``observed [N, J]`` given ``simulated [K, N, J]`` (see the module docstring).

    Parameters
    ----------
    observed : array or tensor ``[N, J]``
    simulated : array or tensor ``[K, N, J]``
        Replicates of the design, on the same scale as ``observed``.
    use : bool array or tensor ``[N, J]``
        Observations to use (False on padding and for BLQ observations).
    n_blq : int
        Number of BLQ observations that ``use`` excludes (reported only).

    Examples
    --------
    Independent normal observations: NPDE are the observations standardised by the simulations.

    >>> rng = np.random.default_rng(1)
    >>> sims = rng.standard_normal((2000, 50, 3))
    >>> obs = rng.standard_normal((50, 3))
    >>> r = npde_from_simulations(obs, sims, np.ones((50, 3), bool))
    >>> r.npde.shape, bool(np.corrcoef(r.npde.ravel(), obs.ravel())[0, 1] > 0.99)
    ((50, 3), True)
    """
    y = torch.as_tensor(observed, dtype=torch.float64)
    ys = torch.as_tensor(simulated, dtype=torch.float64, device=y.device)
    u = torch.as_tensor(use, dtype=torch.bool, device=y.device)
    if ys.dim() != 3 or ys.shape[1:] != y.shape or u.shape != y.shape:
        raise ModelError(f"npde needs observed [N, J], simulated [K, N, J] and use [N, J]; found "
                         f"{tuple(y.shape)}, {tuple(ys.shape)}, {tuple(u.shape)}")
    k = int(ys.shape[0])
    per_subject = u.sum(-1)
    most = int(per_subject.max()) if per_subject.numel() else 0
    if k <= most:
        raise ModelError(f"{k} simulations cannot decorrelate a subject with {most} observations: the simulated "
                         f"covariance is singular; use at least {max(10 * most, 100)} simulations")
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    nan = torch.full_like(y, float("nan"))
    # NPD: marginal comparison
    pd = _to_uniform(ys < y, k)
    # NPDE: decorrelate with the Cholesky factor of the simulated covariance
    mean = ys.mean(0)
    centred = torch.where(u, ys - mean, zero)
    cov = torch.einsum("kni,knj->nij", centred, centred) / (k - 1)
    cov = cov + torch.diag_embed((~u).to(cov.dtype))
    chol, info = torch.linalg.cholesky_ex(cov)
    failed = info != 0
    eye = torch.eye(y.shape[-1], dtype=y.dtype, device=y.device)
    chol = torch.where(failed[:, None, None], eye, chol)
    inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
    z_obs = torch.einsum("nij,nj->ni", inv, torch.where(u, y - mean, zero))
    z_sim = torch.einsum("nij,knj->kni", inv, centred)
    pde = _to_uniform(z_sim < z_obs, k)
    ok = u & ~failed[:, None]
    normal = torch.distributions.Normal(zero, torch.ones((), dtype=y.dtype, device=y.device))
    out = {name: torch.where(mask, value, nan).cpu().numpy()
           for name, value, mask in (("pde", pde, ok), ("pd", pd, u), ("npde", normal.icdf(pde), ok),
                                     ("npd", normal.icdf(pd), u))}
    return NPDEResult(use=u.cpu().numpy(), n_simulations=k, n_blq=int(n_blq),
                      failed=tuple(int(i) for i in torch.nonzero(failed & u.any(-1)).flatten()), **out)


def likelihood_scale(model: PopulationModel, values: torch.Tensor) -> torch.Tensor:
    """Observations on the model's likelihood scale (log for log-transform-both-sides error)."""
    error = getattr(model, "error", None)
    return error.transform(values) if error is not None and hasattr(error, "transform") else values


def compute_npde(model: PopulationModel, values: PopulationValues, data, *, n_simulations: int = 1000,
                 seed: int | torch.Generator | None = 0, simulated: torch.Tensor | None = None) -> NPDEResult:
    """NPDE and NPD of the observations of ``data`` under ``model`` at ``values``.

    Parameters
    ----------
    model, values, data
        The model, θ/Ω/σ to simulate at, and the dataset whose DVs are assessed.
    n_simulations : int
        Replicates of the design (the npde package recommends at least 1000).
    seed : int or torch.Generator
    simulated : torch.Tensor, optional
        Replicates ``[K, N, J]`` already simulated (on the observation scale); then
        ``n_simulations`` and ``seed`` are not used.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> r = compute_npde(model, values, data, n_simulations=200, seed=3)
    >>> r.npde.shape, r.n_blq, int(np.isfinite(r.npde).sum())
    ((12, 11), 0, 132)
    """
    batch = observation_batch(data)
    if simulated is None:
        simulated = simulate_replicates(model, values, batch, n_simulations, seed=seed)
    obs = batch.obs
    mask = obs.mask & ~obs.blq
    y = likelihood_scale(model, torch.where(mask, obs.dv, torch.ones_like(obs.dv)))
    sims = torch.as_tensor(simulated, dtype=obs.dv.dtype, device=obs.dv.device)
    sims = likelihood_scale(model, torch.where(mask, sims, torch.ones_like(sims)))
    return npde_from_simulations(y, sims, mask, n_blq=int((obs.blq & obs.mask).sum()))
