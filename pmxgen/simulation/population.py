"""Virtual populations under alternative regimens: η from Ω, covariates resampled or supplied.

:func:`simulate_population` draws ``n`` virtual subjects per replicate: random effects
``η = L z`` (``L`` the Cholesky factor of Ω, ``z`` standard normal), covariate vectors
resampled whole (with replacement) from the fitted data's subjects or taken from a table,
optionally population parameters drawn from the estimates' covariance matrix (parameter
uncertainty; one draw per replicate) and residual error from the model's own error model.
Every regimen sees the same virtual subjects (common random numbers).

Models with inter-occasion variability: a virtual subject's concentrations use its IIV and
its first-occasion IOV effect (one occasion per regimen).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ModelError
from ..models.parameter_set import PopulationValues
from .engine import BLOCK, Options, block_seed, simulate_arms
from .exposure import parse_target
from .regimen import Regimen, RegimenError, as_regimens
from .result import SimulationResult
from .schedule import regimen_arm

__all__ = ["simulate_population", "parameter_draws", "as_run"]


def as_run(run, device=None):
    """A :class:`pmxgen.runs.Run` from a Run, a FitResult or a results folder."""
    from ..runs import Run, load_run
    if isinstance(run, Run):
        return run
    return load_run(run, device=device)


def follow_up(run) -> float:
    """Default follow-up after a single dose: the data's span from first dose to last observation (24 if none)."""
    b = run.data.batch
    if not bool(b.obs.mask.any()) or not bool(b.doses.mask.any()):
        return 24.0
    span = float(b.obs.time[b.obs.mask].max()) - float(b.doses.time[b.doses.mask].min())
    return span if span > 0 else 24.0


def arms_and_options(run, regimens, *, horizon, windows, points_per_interval, residual_error, keep_profiles,
                     keep_exposures, threshold, targets, chunk_size, refine) -> tuple[list, Options]:
    """The regimen arms (grids, windows) and engine options shared by population and individual simulations."""
    arms = [regimen_arm(r, horizon=horizon, windows=windows, points_per_interval=points_per_interval,
                        within_windows=not keep_profiles, follow_up=follow_up(run)) for r in regimens]
    options = Options(residual_error=residual_error, keep_profiles=keep_profiles, keep_exposures=keep_exposures,
                      threshold=threshold, targets=tuple(parse_target(t) for t in targets), chunk_size=chunk_size,
                      refine=refine)
    return arms, options


def _to(values: PopulationValues, dtype, device) -> PopulationValues:
    return PopulationValues(theta={k: v.to(dtype=dtype, device=device) for k, v in values.theta.items()},
                            omega=values.omega.to(dtype=dtype, device=device),
                            sigma={k: v.to(dtype=dtype, device=device) for k, v in values.sigma.items()})


def parameter_draws(run, n: int, *, seed: int = 0, max_tries: int = 100) -> tuple[list[PopulationValues], int]:
    """``n`` population-parameter draws from N(estimates, fit.covariance), and how many were rejected.

    A draw is rejected when Ω is not positive definite, a σ² is ≤ 0, or a θ lies outside its
    bounds (e.g. a negative clearance).

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = pmxgen.fit(model, data, method="foce", covariance="sandwich", cpu_threads=1)
    >>> draws, rejected = parameter_draws(pmxgen.load_run(fit), 5, seed=1)
    >>> len(draws), draws[0].omega.shape
    (5, torch.Size([2, 2]))
    """
    fit, model = run.fit, run.model
    if fit.covariance is None:
        raise ModelError("the fit has no covariance matrix of the estimates, so parameter uncertainty cannot be "
                         "simulated; refit with covariance='sandwich' (or 'R'/'S')")
    names = list(model.parameter_set.names)
    if sorted(names) != sorted(fit.estimated_names):
        raise ModelError(f"the model's estimated parameters {names} differ from the fit's {list(fit.estimated_names)}")
    pos = [list(fit.estimated_names).index(k) for k in names]
    cov = np.asarray(fit.covariance, dtype=np.float64)[np.ix_(pos, pos)]
    mean = np.array([fit.estimates[k] for k in names], dtype=np.float64)
    try:
        chol = np.linalg.cholesky(0.5 * (cov + cov.T))
    except np.linalg.LinAlgError:
        raise ModelError("the covariance matrix of the estimates is not positive definite; parameter uncertainty "
                         "cannot be drawn from it (see fit.covariance_status)") from None
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    bounds = {t.name: (t.lower, t.upper) for t in model.parameter_set.theta}
    accepted, rejected = [], 0
    while len(accepted) < n:
        if rejected > max_tries * n:
            raise ModelError(f"{rejected} of {rejected + len(accepted)} parameter draws were rejected (non-PD Ω, "
                             f"σ² <= 0 or θ outside bounds); the uncertainty is too large to simulate from")
        phi = mean + chol @ rng.standard_normal(len(mean))
        values = model.parameter_set.unpack(torch.as_tensor(phi, dtype=run.data.dtype, device=run.data.device))
        ok = all(bounds[k][0] < float(v) < bounds[k][1] for k, v in values.theta.items() if k in bounds)
        ok = ok and all(float(v) > 0 for v in values.sigma.values())
        if ok and values.omega.shape[-1]:
            ok = int(torch.linalg.cholesky_ex(values.omega)[1]) == 0
        if ok:
            accepted.append(values)
        else:
            rejected += 1
    return accepted, rejected


def _covariate_table(covariates, names: tuple, n: int, dtype, device) -> torch.Tensor | None:
    if covariates is None:
        return None
    frame = pd.DataFrame(covariates if not isinstance(covariates, Mapping) or
                         any(np.ndim(v) for v in covariates.values()) else {k: [v] for k, v in covariates.items()})
    upper = {c.upper(): c for c in frame.columns}
    missing = [c for c in names if c.upper() not in upper]
    if missing:
        raise RegimenError(f"the covariate table lacks {missing}; the model's data have covariates {list(names)}")
    if len(frame) not in (1, n):
        raise RegimenError(f"the covariate table has {len(frame)} rows; give 1 (everyone) or n = {n}")
    values = np.stack([frame[upper[c.upper()]].to_numpy(dtype=np.float64) for c in names], axis=1) if names \
        else np.zeros((len(frame), 0))
    if not np.isfinite(values).all():
        raise RegimenError("the covariate table has missing or non-finite values")
    t = torch.as_tensor(values, dtype=dtype, device=device)
    return t.expand(n, -1) if len(frame) == 1 else t


class _PopulationSource:
    def __init__(self, run, values_list, n, covariates, seed, dtype, device):
        self.model = run.model
        self.n_subjects = int(n)
        self.replicates = len(values_list)
        self._values = [_to(v, dtype, device) for v in values_list]
        batch = run.data.batch.to(device=device, dtype=dtype)
        self.eta_names = tuple(run.model.eta_names(run.data.batch))
        self.covariate_names = tuple(batch.covariate_names)
        self._data_baseline = batch.baseline
        self._batch = batch
        self._table = _covariate_table(covariates, self.covariate_names, n, dtype, device)
        self._seed, self._dtype, self._device = int(seed), dtype, device
        self._chol = []
        for v in self._values:
            om = self.model.omega_matrix(v, batch)
            if om.shape[-1]:
                lower, info = torch.linalg.cholesky_ex(om)
                if int(info):
                    raise ModelError("Ω is not positive definite; η cannot be drawn")
                self._chol.append(lower)
            else:
                self._chol.append(om)

    def values(self, r):
        return self._values[r]

    def block(self, r, a, b):
        gen = torch.Generator(device=self._device)
        gen.manual_seed(block_seed(self._seed, r, a // BLOCK))
        k = self._chol[r].shape[-1]
        z = torch.randn(b - a, k, generator=gen, dtype=self._dtype, device=self._device)
        eta = z @ self._chol[r].T if k else z
        if self._table is not None:
            baseline = self._table[a:b]
        else:
            idx = torch.randint(self._data_baseline.shape[0], (b - a,), generator=gen, device=self._device)
            baseline = self._data_baseline[idx]
        return np.arange(a, b) + 1, baseline, eta, block_seed(self._seed, r, a // BLOCK, 1), None


def simulate_population(run, regimens: Sequence[Regimen | str] | Regimen | str, n: int = 1000, *, seed: int = 0,
                        covariates=None, uncertainty: bool = False, replicates: int = 1,
                        residual_error: bool = False, windows=None, horizon: float | None = None,
                        threshold: float | None = None, targets=(), keep_profiles: bool | int = 1000,
                        keep_exposures: bool | int = 100_000, chunk_size: int = 8192, points_per_interval: int = 24,
                        refine: bool = True, device=None, dtype: torch.dtype = torch.float64) -> SimulationResult:
    """Simulate ``n`` virtual subjects under each regimen (the same subjects in every regimen).

    Parameters
    ----------
    run : Run, FitResult or path
        A fitted run (:func:`pmxgen.load_run`).
    regimens : Regimen, text, or a list of them
        The arms (see :func:`~pmxgen.simulation.parse_regimen`).
    n : int
        Virtual subjects per replicate.
    seed : int
        The same seed (and settings) gives identical results, whatever ``chunk_size``.
    covariates : DataFrame or dict, optional
        Covariates of the virtual subjects (one row for everyone, or ``n`` rows), with every
        covariate column of the fitted data. Default: whole covariate vectors resampled with
        replacement from the fitted subjects.
    uncertainty : bool
        Draw the population parameters of each replicate from N(estimates, fit.covariance)
        (draws with non-PD Ω, σ² ≤ 0 or θ outside bounds are rejected; the count is in
        ``meta['rejected_parameter_draws']``). Otherwise every replicate uses the estimates.
    replicates : int
        Independent populations of ``n`` subjects (PTA intervals across replicates).
    residual_error : bool
        Add the model's residual error to the profiles (column ``dv``); exposures are error-free.
    windows : list or dict, optional
        Exposure windows: names among ``first``, ``last``, ``total``, or name → (start, end).
        Default: first and last dosing interval (``total`` for a single dose).
    horizon : float, optional
        End of the simulated time; default: last dose + τ.
    threshold : float, optional
        Concentration for ``t_above``/``ft_above`` (e.g. an MIC).
    targets : sequence of str or Target
        Targets for the probability of target attainment, e.g. ``"auc[last]>=400"``; counted over
        all subjects even when their rows are not kept.
    keep_profiles, keep_exposures : bool or int
        Keep the tidy profile / exposure rows of all subjects (True), none (False) or of the first
        that many subjects of each replicate (default 1000 and 100 000; virtual subjects are iid,
        so they are a random sample). Means, SDs and PTA always cover every subject.
    chunk_size : int
        Subjects per batched evaluation (rounded up to whole blocks of 256; capped so that a
        chunk's concentration tensor stays below 4·10^6 values): memory is bounded whatever ``n``.
    points_per_interval : int
        Grid points per dosing interval (Cmax/Cmin brackets, time above threshold, non-closed-form AUC).
    refine : bool
        Refine Cmax and Cmin by golden-section search on the exact closed-form model.
    device, dtype
        Torch device (CPU or GPU) and floating dtype.

    Returns
    -------
    SimulationResult

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = pmxgen.fit(model, data, method="foce", covariance=None, cpu_threads=1)
    >>> res = simulate_population(fit, ["320 mg q12h x6", "640 mg q24h x3"], n=200, seed=1,
    ...                           targets=["cmin[last]>=3"])
    >>> sorted(res.exposures["regimen"].unique())
    ['320 mg q12h x6', '640 mg q24h x3']
    >>> pta = res.pta().set_index("regimen")["pta"]
    >>> bool(pta["320 mg q12h x6"] > pta["640 mg q24h x3"])
    True
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise RegimenError(f"n must be a whole number >= 1 (found {n!r})")
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 1:
        raise RegimenError(f"replicates must be a whole number >= 1 (found {replicates!r})")
    run = as_run(run, device=device)
    device = torch.device(device) if device is not None else run.data.device
    regs = as_regimens(regimens)
    rejected = 0
    if uncertainty:
        values_list, rejected = parameter_draws(run, int(replicates), seed=seed)
    else:
        values_list = [run.values] * int(replicates)
    arms, options = arms_and_options(run, regs, horizon=horizon, windows=windows,
                                     points_per_interval=points_per_interval, residual_error=residual_error,
                                     keep_profiles=keep_profiles, keep_exposures=keep_exposures, threshold=threshold,
                                     targets=targets, chunk_size=chunk_size, refine=refine)
    source = _PopulationSource(run, values_list, int(n), covariates, seed, dtype, device)
    meta = {"mode": "population", "seed": int(seed), "uncertainty": bool(uncertainty),
            "rejected_parameter_draws": int(rejected), "device": str(device), "model": run.fit.model_name,
            "covariates": "supplied" if covariates is not None else "resampled from the data"}
    return simulate_arms(run.model, arms, source, options, meta)
