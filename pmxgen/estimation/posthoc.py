"""What every estimator reports at its estimates: residual and individual tables, shrinkage, −2LL constants."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..data.dataset import Dataset
from ..diagnostics.residuals import epsilon_shrinkage, eta_shrinkage, nlme_residuals
from ..models.parameters import PopulationValues
from .objective import log_two_pi_count

__all__ = ["PosthocTables", "posthoc_tables", "observation_table", "individual_table", "minus2ll_offset"]

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
                   extra_individual: dict | None = None) -> PosthocTables:
    """Residuals (PRED … CWRES), individual table and SD-based η/ε shrinkage at ``eta_hat``."""
    batch = data.batch
    residuals = nlme_residuals(model, values, batch, eta_hat)
    table = observation_table(data, residuals)
    eta_names = model.eta_names(batch)
    eta_np = eta_hat.detach().cpu().numpy()
    omega_diag = torch.diagonal(model.omega_matrix(values, batch)).detach().cpu().numpy()
    shrink = dict(zip(eta_names, eta_shrinkage(eta_np, omega_diag).tolist()))
    shrink["EPS"] = epsilon_shrinkage(table["IWRES"].to_numpy())
    individual = individual_table(model, values, batch, eta_hat, data.ids, eta_names, extra_individual)
    return PosthocTables(table, individual, shrink)


def minus2ll_offset(model, batch) -> tuple[float, int]:
    """(−2LL − OFV, number of density observations): ``n·log 2π`` plus ``2 Σ log DV`` on a log scale."""
    data_obs = model.observed(batch)
    n_density = int(log_two_pi_count(data_obs).sum())
    offset = n_density * _LOG2PI
    if model.error.log_scale:
        offset += float(2.0 * data_obs.y[data_obs.normal].sum())
    return offset, n_density
