"""Individual counterfactuals: each observed subject under other regimens with its own parameters.

A subject's random effects are its EBE (``draws=0``), or draws from its individual
posterior: the estimator's MCMC/variational draws (``fit.posterior_draws``, ``[S, N, K]``)
when it made them, otherwise the Laplace approximation ``N(EBE, ebe_covariance)``. Each draw
is a replicate; the same draws serve every regimen (common random numbers), so differences
between regimens carry no Monte Carlo noise from η. The arm ``observed`` gives each subject
its own recorded doses, and :attr:`SimulationResult.at_observations` its predictions at its own
observation records (the fit's IPRED for the EBE). With inter-occasion variability the
counterfactual regimens use each subject's first-occasion IOV effect; the observed arm uses
every occasion's, as the fit did.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ModelError
from .engine import BLOCK, block_seed, simulate_arms
from .population import _to, arms_and_options, as_run
from .regimen import Regimen, RegimenError, as_regimens
from .result import SimulationResult
from .schedule import observed_arm

__all__ = ["simulate_individuals", "individual_draws"]


def individual_draws(run, draws: int = 0, *, posterior: str = "auto", seed: int = 0) -> tuple[torch.Tensor, str]:
    """η of every observed subject: ``[S, N, K]`` (S = 1 for the EBE) and the source used.

    ``posterior``: ``"auto"`` (EBE for ``draws=0``; else the estimator's posterior draws when
    present, otherwise Laplace), ``"ebe"``, ``"laplace"`` or ``"posterior"``.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> run = pmxgen.load_run(pmxgen.fit(model, data, method="foce", covariance=None, cpu_threads=1))
    >>> eta, how = individual_draws(run, 50, seed=3)
    >>> tuple(eta.shape), how
    ((50, 12, 2), 'laplace')
    """
    fit = run.fit
    dtype, device = run.data.dtype, run.data.device
    ebe = torch.as_tensor(np.asarray(fit.ebe, dtype=np.float64), dtype=dtype, device=device)
    if posterior not in ("auto", "ebe", "laplace", "posterior"):
        raise RegimenError(f"posterior must be 'auto', 'ebe', 'laplace' or 'posterior' (found {posterior!r})")
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 0:
        raise RegimenError(f"draws must be a whole number >= 0 (found {draws!r})")
    how = posterior
    if how == "auto":
        how = "ebe" if draws == 0 else ("posterior" if fit.posterior_draws is not None else "laplace")
    if how == "ebe":
        return ebe.unsqueeze(0), "ebe"
    if how == "posterior":
        if fit.posterior_draws is None:
            raise ModelError(f"the {fit.method} fit made no posterior draws of η; use posterior='laplace'")
        post = torch.as_tensor(np.asarray(fit.posterior_draws, dtype=np.float64), dtype=dtype, device=device)
        if post.dim() != 3 or post.shape[1:] != ebe.shape:
            raise ModelError(f"fit.posterior_draws has shape {tuple(post.shape)}; expected [S, {ebe.shape[0]}, "
                             f"{ebe.shape[1]}]")
        s = post.shape[0] if draws == 0 else draws
        if s > post.shape[0]:
            raise RegimenError(f"{s} draws asked for, but the fit has {post.shape[0]} posterior draws")
        return post[:s], "posterior"
    if fit.ebe_covariance is None:
        raise ModelError("the fit has no conditional covariance of the EBEs (ebe_covariance) for Laplace draws")
    cov = torch.as_tensor(np.asarray(fit.ebe_covariance, dtype=np.float64), dtype=dtype, device=device)
    chol, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.transpose(-1, -2)))
    if bool((info != 0).any()):
        bad = [fit.ids[i] for i in torch.nonzero(info).flatten().tolist()]
        raise ModelError(f"the EBE covariance is not positive definite for subjects {bad[:10]}; Laplace draws "
                         f"are impossible for them")
    gen = torch.Generator(device=device)
    gen.manual_seed(block_seed(seed, 0xC0F))
    s = max(int(draws), 1)
    z = torch.randn(s, ebe.shape[0], ebe.shape[1], generator=gen, dtype=dtype, device=device)
    return ebe.unsqueeze(0) + (chol.unsqueeze(0) @ z.unsqueeze(-1))[..., 0], "laplace"


class _IndividualSource:
    def __init__(self, run, eta, seed, dtype, device):
        self.model = run.model
        self._batch = run.data.batch.to(device=device, dtype=dtype)
        self.eta_names = tuple(run.model.eta_names(run.data.batch))
        self.covariate_names = tuple(self._batch.covariate_names)
        self._eta = eta.to(dtype=dtype, device=device)
        self.replicates, self.n_subjects = int(eta.shape[0]), int(eta.shape[1])
        self._ids = np.asarray(run.data.ids)
        self._values = _to(run.values, dtype, device)
        self._seed = int(seed)

    def values(self, r):
        return self._values

    def block(self, r, a, b):
        index = torch.arange(a, b, device=self._batch.device)
        rows = self._batch.select(index)
        return (self._ids[a:b], rows.baseline, self._eta[r, a:b], block_seed(self._seed, r, a // BLOCK, 1), rows)


def simulate_individuals(run, regimens: Sequence[Regimen | str] | Regimen | str = (), *, draws: int = 0,
                         posterior: str = "auto", include_observed: bool = True, seed: int = 0,
                         residual_error: bool = False, windows=None, horizon: float | None = None,
                         threshold: float | None = None, targets=(), keep_profiles: bool | int = 1000,
                         keep_exposures: bool | int = 100_000, chunk_size: int = 8192, points_per_interval: int = 24,
                         refine: bool = True, device=None, dtype: torch.dtype = torch.float64) -> SimulationResult:
    """Each observed subject under ``regimens`` (and its own, arm ``observed``) with its own parameters.

    Parameters
    ----------
    run : Run, FitResult or path
    regimens : Regimen, text or list
        Counterfactual regimens (may be empty: the observed arm only).
    draws : int
        0: the EBE only (replicate 0). S > 0: S draws from each subject's posterior (see
        :func:`individual_draws`), one replicate each, the same in every arm.
    posterior : {"auto", "ebe", "laplace", "posterior"}
    include_observed : bool
        Add the arm ``observed`` (each subject's recorded doses; window ``total`` up to its
        last record or ``horizon``) and fill ``at_observations``.
    Other parameters
        As :func:`~pmxgen.simulation.simulate_population`.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = pmxgen.fit(model, data, method="foce", covariance=None, cpu_threads=1)
    >>> res = simulate_individuals(fit, ["320 mg q12h x4"], seed=0)
    >>> import numpy as np
    >>> bool(np.allclose(res.at_observations["value"], fit.observations["IPRED"], rtol=1e-10, atol=1e-12))
    True
    """
    run = as_run(run, device=device)
    device = torch.device(device) if device is not None else run.data.device
    regs = as_regimens(regimens) if (isinstance(regimens, (str, Regimen)) or len(regimens)) else []
    if not regs and not include_observed:
        raise RegimenError("give at least one regimen, or include_observed=True")
    eta, how = individual_draws(run, draws, posterior=posterior, seed=seed)
    arms, options = arms_and_options(run, regs, horizon=horizon, windows=windows,
                                     points_per_interval=points_per_interval, residual_error=residual_error,
                                     keep_profiles=keep_profiles, keep_exposures=keep_exposures, threshold=threshold,
                                     targets=targets, chunk_size=chunk_size, refine=refine)
    if include_observed:
        if "observed" in [a.label for a in arms]:
            raise RegimenError("the label 'observed' is reserved for the subjects' own regimen")
        arms.insert(0, observed_arm(run.data.batch, horizon=horizon,
                                    windows=None if windows is None or not isinstance(windows, dict) else windows,
                                    points=points_per_interval * 8))
    source = _IndividualSource(run, eta, seed, dtype, device)
    meta = {"mode": "individual", "seed": int(seed), "eta_source": how, "draws": int(eta.shape[0]),
            "device": str(device), "model": run.fit.model_name}
    result = simulate_arms(run.model, arms, source, options, meta)
    if include_observed:
        result = replace(result, at_observations=_at_observations(run, eta, source))
    return result


def _at_observations(run, eta: torch.Tensor, source: _IndividualSource) -> pd.DataFrame:
    batch = source._batch
    mask = batch.obs.mask
    frames = []
    ids = np.asarray(run.data.ids)
    subj = np.repeat(np.arange(batch.n_subjects)[:, None], mask.shape[1], axis=1)[mask.cpu().numpy()]
    with torch.no_grad():
        for r in range(eta.shape[0]):
            f = run.model.predict(eta[r].to(batch.dtype), source.values(r), batch)
            frames.append(pd.DataFrame({"subject": ids[subj], "replicate": r,
                                        "time": batch.obs.time[mask].cpu().numpy(),
                                        "value": f[mask].cpu().numpy(), "ROW": batch.obs.row[mask].cpu().numpy()}))
    return pd.concat(frames, ignore_index=True)
