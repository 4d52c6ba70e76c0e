"""What every estimator reports at its estimates: residual and individual tables, shrinkage, −2LL constants."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..data.dataset import Dataset
from ..diagnostics.residuals import epsilon_shrinkage, eta_shrinkage, nlme_residuals
from ..models.parameter_set import PopulationValues
from .objective import log_two_pi_count

__all__ = ["PosthocTables", "posthoc_tables", "generic_tables", "observation_table", "individual_table",
           "minus2ll_offset", "standard_errors", "draw_summaries", "estimate_messages", "common_result_fields",
           "network_summary", "tables_for"]

_LOG2PI = math.log(2 * math.pi)


class PosthocTables:
    """Per-observation table, per-subject table and shrinkage at given η."""

    def __init__(self, observations: pd.DataFrame, individual: pd.DataFrame, shrinkage: dict):
        self.observations, self.individual, self.shrinkage = observations, individual, shrinkage


def observation_table(data: Dataset, residuals: dict) -> pd.DataFrame:
    """ID TIME DV CMT BLQ, the residuals and ROW, one row per observation in file order."""
    obs = data.batch.obs
    mask = obs.mask.cpu().numpy()
    ids = np.asarray(data.ids, dtype=object)
    subject = np.nonzero(mask)[0]
    table = {"ID": ids[subject].tolist(),
             "TIME": obs.time.cpu().numpy()[mask],
             "DV": obs.dv.cpu().numpy()[mask],
             "CMT": obs.cmt.cpu().numpy()[mask],
             "BLQ": obs.blq.cpu().numpy()[mask].astype(int)}
    for key in ("PRED", "IPRED", "RES", "WRES", "IWRES", "CWRES"):
        table[key] = residuals[key].detach().cpu().numpy()[mask]
    table["ROW"] = obs.row.cpu().numpy()[mask]
    frame = pd.DataFrame(table)
    return frame.sort_values("ROW", kind="stable").reset_index(drop=True)


def individual_table(model, values: PopulationValues, batch, eta_hat: torch.Tensor, ids, eta_names,
                     extra: dict | None = None) -> pd.DataFrame:
    """ID, ``ETA(name)`` columns, the individual parameters, then any ``extra`` columns."""
    params = {}
    if callable(getattr(model, "individual_parameters", None)):     # the individual_parameters tier
        with torch.no_grad():
            params = model.individual_parameters(eta_hat, values, batch)
    table = {"ID": list(ids)}
    for j, name in enumerate(eta_names):
        table[f"ETA({name})"] = eta_hat[:, j].detach().cpu().numpy()
    for name, v in params.items():
        table[name] = v.detach().cpu().numpy()
    table.update(extra or {})
    return pd.DataFrame(table)


def posthoc_tables(model, data: Dataset, values: PopulationValues, eta_hat: torch.Tensor,
                   extra_individual: dict | None = None, variance_at: torch.Tensor | None = None) -> PosthocTables:
    """Residuals (PRED … CWRES), individual table and SD-based η/ε shrinkage at ``eta_hat`` (η-shrinkage
    only with more than one subject).

    ``variance_at``: predictions at η = 0 for a fit without interaction (FOCE), whose CWRES take
    the residual variance there (see :func:`~pmxgen.diagnostics.residuals.nlme_residuals`).
    """
    batch = data.batch
    residuals = nlme_residuals(model, values, batch, eta_hat, variance_at=variance_at)
    table = observation_table(data, residuals)
    eta_names = model.eta_names(batch)
    eta_np = eta_hat.detach().cpu().numpy()
    omega_diag = torch.diagonal(model.omega_matrix(values, batch)).detach().cpu().numpy()
    # η-shrinkage is an SD over subjects: not defined for one subject (left out, not NaN).
    shrink = dict(zip(eta_names, eta_shrinkage(eta_np, omega_diag).tolist())) if eta_np.shape[0] > 1 else {}
    shrink["EPS"] = epsilon_shrinkage(table["IWRES"].to_numpy())
    individual = individual_table(model, values, batch, eta_hat, data.ids, eta_names, extra_individual)
    return PosthocTables(table, individual, shrink)


def minus2ll_offset(model, batch) -> tuple[float, int]:
    """(−2LL − OFV, number of density observations): ``n·log 2π`` plus ``2 Σ log DV`` on a log scale."""
    data_obs = model.observed(batch)
    n_density = int(log_two_pi_count(data_obs).sum())
    offset = n_density * _LOG2PI
    if model.log_scale_observations:
        offset += float(2.0 * data_obs.y[data_obs.normal].sum())
    return offset, n_density


def standard_errors(ps, cov_result) -> tuple[dict, np.ndarray | None]:
    """SE by parameter name (NaN where there is none) and the covariance matrix, from a covariance-step result."""
    se = {name: float("nan") for name in ps.all_names}
    if cov_result is None or cov_result.matrix is None:
        return se, None
    for name, v in zip(ps.names, np.sqrt(np.diag(cov_result.matrix))):
        se[name] = float(v)
    return se, cov_result.matrix


def draw_summaries(draws: torch.Tensor, eta_names) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Conditional mean ``[N, K]``, covariance ``[N, K, K]`` and the ``MEAN(η)``/``SD(η)`` table columns
    from posterior draws ``[S, N, K]``."""
    mean = draws.mean(0)
    centred = draws - mean
    cov = torch.einsum("snk,snl->nkl", centred, centred) / (draws.shape[0] - 1)
    sd = torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1)).cpu().numpy()
    mean_np = mean.cpu().numpy()
    columns = {f"MEAN({name})": mean_np[:, j] for j, name in enumerate(eta_names)}
    columns.update({f"SD({name})": sd[:, j] for j, name in enumerate(eta_names)})
    return mean, cov, columns


def estimate_messages(ps, phi_hat: torch.Tensor, importance: dict | None = None) -> tuple[list[str], list[str]]:
    """(names of estimates near a bound, messages about them and about a small importance-sampling ESS)."""
    near = ps.near_bounds(phi_hat)
    messages = []
    if near:
        messages.append(f"estimates at or near a bound: {', '.join(near)} (an Ω variance near 0 means that "
                        f"random effect is not supported by the data; consider removing it)")
    if importance is not None and importance["min_ess"] < 50:
        messages.append(f"importance sampling: smallest effective sample size {importance['min_ess']:.0f}; the "
                        f"-2LL may be imprecise (raise importance_samples)")
    return near, messages


def common_result_fields(model, data: Dataset, phi_hat: torch.Tensor, cov_result, covariance_method) -> dict:
    """The FitResult fields every estimator fills the same way: names, estimates, SEs, the
    covariance step's outcome, sizes, IDs and the recipes that rebuild the run."""
    ps = model.parameter_set
    se, cov_matrix = standard_errors(ps, cov_result)
    return dict(
        model_name=getattr(model, "name", type(model).__name__), data_source=str(data.source),
        parameter_names=ps.all_names, estimated_names=ps.names, estimates=ps.full_natural(phi_hat), se=se,
        fixed={name: name not in ps.names for name in ps.all_names},
        covariance=cov_matrix, covariance_method=covariance_method,
        covariance_status="not requested" if covariance_method is None else (
            "not run" if cov_result is None else cov_result.status),
        covariance_message="" if cov_result is None else cov_result.message,
        condition_number=float("nan") if cov_result is None else cov_result.condition_number,
        n_observations=int(data.n_observations), n_subjects=data.n_subjects, ids=tuple(data.ids),
        model_recipe=getattr(model, "recipe", None), data_recipe=data.recipe)


def network_summary(model) -> dict:
    """The FitResult field ``network_weights``: the model's current weights by name (None without networks)."""
    from ..models.weights import weights_state
    state = weights_state(model)
    return {"network_weights": state or None}


def generic_tables(model, data: Dataset, values: PopulationValues, eta_hat: torch.Tensor, extra: dict | None = None
                   ) -> PosthocTables:
    """Tables for any population model: PRED (η = 0), IPRED (at ``eta_hat``), RES = DV − IPRED per
    observation, the η (and individual parameters where the model offers them) per subject, and η-shrinkage.

    Models with Gaussian residuals get the full NONMEM tables from :func:`posthoc_tables` instead.
    """
    batch = data.batch
    with torch.no_grad():
        pred = model.predict(torch.zeros_like(eta_hat), values, batch)
        ipred = model.predict(eta_hat, values, batch)
    nan = torch.full_like(pred, float("nan"))
    mask = batch.obs.mask
    residuals = {"PRED": pred, "IPRED": ipred, "RES": torch.where(mask, batch.obs.dv - ipred, nan),
                 "WRES": nan, "IWRES": nan, "CWRES": nan}
    table = observation_table(data, residuals).drop(columns=["WRES", "IWRES", "CWRES"])
    eta_names = model.eta_names(batch)
    individual = individual_table(model, values, batch, eta_hat, data.ids, eta_names, extra)
    omega_diag = torch.diagonal(model.omega_matrix(values, batch)).detach().cpu().numpy()
    shrink = dict(zip(eta_names, eta_shrinkage(eta_hat.detach().cpu().numpy(), omega_diag).tolist()))
    return PosthocTables(table, individual, shrink)


def tables_for(model, data: Dataset, values: PopulationValues, eta_hat: torch.Tensor, extra: dict | None = None
               ) -> PosthocTables:
    """:func:`posthoc_tables` for models with the ``gaussian_residual`` tier, :func:`generic_tables` otherwise."""
    from ..models.base import capabilities
    if "gaussian_residual" in capabilities(model):
        return posthoc_tables(model, data, values, eta_hat, extra_individual=extra)
    return generic_tables(model, data, values, eta_hat, extra)
