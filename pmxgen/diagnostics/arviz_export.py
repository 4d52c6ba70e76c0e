"""Export a fitted run to ArviZ (``InferenceData``; netCDF via h5netcdf, or an xarray DataTree with
``idata.to_datatree()``).

Groups written:

``posterior``
    ``eta`` (chain, draw, subject, eta) and every individual parameter (chain, draw, subject).
    The draws are, by ``draws=``: ``"posterior"``, the estimator's own draws of each subject's η
    (``FitResult.posterior_draws``, MCMC/variational estimators; one chain); ``"laplace"``, draws
    from the Laplace approximation of each subject's conditional distribution
    ``N(η̂_i, ebe_covariance_i)`` (``n_chains`` chains of independent draws); ``"ebe"``, the EBEs
    as a single draw. ``"auto"`` (default) takes ``"posterior"`` when the fit has draws, else
    ``"laplace"``.
``posterior_predictive``
    ``DV`` (chain, draw, obs): observations simulated with residual error given each drawn η.
``log_likelihood``
    ``DV`` (chain, draw, obs): log-density of each observation given each drawn η (M3 probability
    for BLQ observations), for models that give per-observation likelihoods.
``observed_data``
    ``DV`` (obs) with coordinates ``ID`` and ``TIME``.
``constant_data``
    ``TIME``, ``PRED``, ``IPRED`` (obs) and the population ``estimate`` (parameter).

Observations are in data-row order (as ``FitResult.observations``); subjects as ``FitResult.ids``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import ModelError
from .simulate import MAX_ELEMENTS, generator_for, observation_index

if TYPE_CHECKING:  # the return annotation only; arviz is imported where it is used
    import arviz

__all__ = ["to_inference_data", "write_inference_data", "eta_draws"]


def _as_run(source):
    from ..estimation.results import FitResult
    from ..runs import Run, load_run
    if isinstance(source, Run):
        return source
    if hasattr(source, "run") and isinstance(source.run, Run):
        return source.run
    if isinstance(source, (FitResult, str, Path)):
        return load_run(source)
    raise TypeError(f"expected a Run, a FitResult, a results folder or Diagnostics; found {type(source).__name__}")


def eta_draws(fit, draws: str = "auto", *, n_draws: int = 1000, n_chains: int = 4,
              seed: int | torch.Generator | None = 0) -> tuple[np.ndarray, str]:
    """η draws ``[chains, draws, N, K]`` of a FitResult and the kind used (see the module docstring).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> fit = SimpleNamespace(posterior_draws=None, ebe=np.zeros((3, 2)), ebe_covariance=np.tile(np.eye(2), (3, 1, 1)))
    >>> d, kind = eta_draws(fit, n_draws=400, n_chains=4, seed=1)
    >>> d.shape, kind, bool(abs(d.std() - 1) < 0.05)
    ((4, 100, 3, 2), 'laplace', True)
    """
    ebe = np.asarray(fit.ebe, dtype=float)
    if draws == "auto":
        draws = "posterior" if fit.posterior_draws is not None else "laplace"
    if draws == "ebe":
        return ebe[None, None], "ebe"
    if draws == "posterior":
        if fit.posterior_draws is None:
            raise ModelError("this fit has no posterior draws (FitResult.posterior_draws is None; only MCMC or "
                             "variational estimators make them); use draws='laplace' or 'ebe'")
        d = np.asarray(fit.posterior_draws, dtype=float)
        return d[None], "posterior"
    if draws != "laplace":
        raise ModelError(f"draws must be 'auto', 'posterior', 'laplace' or 'ebe' (found {draws!r})")
    if n_chains < 1 or n_draws < n_chains:
        raise ModelError(f"need n_draws >= n_chains >= 1 (found n_draws={n_draws}, n_chains={n_chains})")
    per_chain = n_draws // n_chains
    cov = torch.as_tensor(np.asarray(fit.ebe_covariance, dtype=float))
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        i = int(torch.nonzero(info != 0).flatten()[0])
        raise ModelError(f"the conditional covariance of subject position {i} is not positive definite; "
                         f"use draws='ebe'")
    gen = generator_for(seed, cov.device)
    z = torch.randn(n_chains, per_chain, *ebe.shape, generator=gen, dtype=cov.dtype)
    d = torch.as_tensor(ebe) + torch.einsum("nij,cdnj->cdni", chol, z)
    return d.numpy(), "laplace"


def _per_draw(run, eta: np.ndarray, fn, max_elements: int = MAX_ELEMENTS) -> list:
    """``fn(eta_chunk [D*N, K], batch repeated D times, D)`` over chunks of the flattened draws."""
    batch = run.data.batch
    n, j = batch.obs.time.shape
    flat = torch.as_tensor(eta.reshape(-1, n, eta.shape[-1]), dtype=batch.dtype, device=batch.device)
    per_chunk = max(1, int(max_elements) // max(1, n * j))
    out = []
    with torch.no_grad():
        for start in range(0, flat.shape[0], per_chunk):
            part = flat[start:start + per_chunk]
            d = part.shape[0]
            out.append(fn(part.reshape(d * n, -1), batch.repeat(d), d))
    return out


def to_inference_data(source, *, draws: str = "auto", n_draws: int = 1000, n_chains: int = 4,
                      seed: int | None = 0, posterior_predictive: bool = True,
                      log_likelihood: bool = True) -> "arviz.InferenceData":
    """An :class:`arviz.InferenceData` of a run (see the module docstring for its groups).

    Parameters
    ----------
    source : Run, FitResult, results folder or Diagnostics
    draws : {"auto", "posterior", "laplace", "ebe"}
    n_draws, n_chains : int
        Size of the Laplace draws (``n_draws`` in all, split into ``n_chains`` chains).
    seed : int
        Seeds the Laplace draws and the posterior predictive simulations.
    posterior_predictive, log_likelihood : bool
        Whether to add these groups.

    Examples
    --------
    >>> import pmxgen, arviz
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = pmxgen.fit(model, data, method="foce", covariance=None)
    >>> idata = to_inference_data(fit, n_draws=200, seed=1)
    >>> sorted(idata.groups())
    ['constant_data', 'log_likelihood', 'observed_data', 'posterior', 'posterior_predictive']
    >>> arviz.summary(idata, var_names=["CL"]).shape
    (12, 9)
    """
    import arviz as az

    import pmxgen
    run = _as_run(source)
    fit, model, batch = run.fit, run.model, run.data.batch
    eta, kind = eta_draws(fit, draws, n_draws=n_draws, n_chains=n_chains, seed=seed)
    chains, n_d = eta.shape[:2]
    subject, sample, _ = observation_index(batch)
    n = batch.n_subjects
    ids = [str(i) for i in fit.ids]

    def individual(e, rep, d):
        params = model.individual_parameters(e, run.values, rep)
        return {k: v.reshape(d, n).cpu().numpy() for k, v in params.items()}

    parts = _per_draw(run, eta, individual)
    posterior = {"eta": eta}
    for name in parts[0]:
        posterior[name] = np.concatenate([p[name] for p in parts]).reshape(chains, n_d, n)
    dims = {"eta": ["subject", "eta"], "DV": ["obs"]}
    dims.update({name: ["subject"] for name in posterior if name != "eta"})
    groups = {"posterior": posterior}
    gen = generator_for(seed, batch.device)

    def flat_obs(values, d):
        return values.reshape(d, n, -1)[:, subject, sample].cpu().numpy()

    if posterior_predictive:
        sims = _per_draw(run, eta, lambda e, rep, d: flat_obs(model.sample_y(e, run.values, rep, generator=gen), d))
        groups["posterior_predictive"] = {"DV": np.concatenate(sims).reshape(chains, n_d, -1)}
    if log_likelihood and all(hasattr(model, a) for a in ("moments", "observation_neg2ll", "observed")):
        def loglik(e, rep, d):
            mean, var = model.moments(e, run.values, rep)
            return flat_obs(-0.5 * model.observation_neg2ll(mean, var, model.observed(rep)), d)
        groups["log_likelihood"] = {"DV": np.concatenate(_per_draw(run, eta, loglik)).reshape(chains, n_d, -1)}
    obs = batch.obs
    observed = {"DV": obs.dv[subject, sample].cpu().numpy()}
    table = fit.observations.set_index("ROW")
    rows = obs.row.cpu().numpy()[subject, sample]
    constant = {"TIME": obs.time[subject, sample].cpu().numpy(),
                "PRED": table.loc[rows, "PRED"].to_numpy(dtype=float),
                "IPRED": table.loc[rows, "IPRED"].to_numpy(dtype=float),
                "estimate": np.array([fit.estimates[p] for p in fit.parameter_names], dtype=float)}
    dims.update({"TIME": ["obs"], "PRED": ["obs"], "IPRED": ["obs"], "estimate": ["parameter"]})
    coords = {"subject": ids, "eta": list(fit.eta_names), "obs": np.arange(len(subject)),
              "parameter": list(fit.parameter_names)}
    idata = az.from_dict(**groups, observed_data=observed, constant_data=constant, dims=dims, coords=coords)
    attrs = {"pmxgen_version": pmxgen.__version__, "method": fit.method, "model": fit.model_name,
             "data": str(fit.data_source), "draws": kind}
    for group in idata.groups():
        getattr(idata, group).attrs.update(attrs)
    idata.observed_data = idata.observed_data.assign_coords(
        ID=("obs", np.asarray(ids, dtype=str)[subject]), TIME=("obs", constant["TIME"]))
    return idata


def write_inference_data(source, path: str | Path, **options) -> Path:
    """Write :func:`to_inference_data` of ``source`` to a netCDF file (h5netcdf); returns the path.

    ``arviz.from_netcdf(path)`` reads it back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_inference_data(source, **options).to_netcdf(str(path))
    return path
