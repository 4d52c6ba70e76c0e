"""Probabilistic PCA as a population model: one subject per row, one observation per feature.

:func:`ppca_dataset` turns a data matrix into a pmxgen :class:`~pmxgen.data.Dataset` (TIME =
feature number 1..d, DV = value, CMT = 1; NaN entries become MDV=1 records, kept but not
observed), and :class:`PPCAModel` states PPCA in the :class:`~pmxgen.models.PopulationModel`
contract, with the latent scores z as the random effects η:

    y_ij = μ_f(j) + w_f(j)ᵀ z_i + ε_ij,   z_i ~ N(0, I_k) (Ω fixed to I),   ε_ij ~ N(0, σ²),

where f(j) is the feature (TIME) of observation j. θ holds ``MU1..MUd`` and ``W(j,l)``
(feature j, component l), σ² is ``SIGMA(NOISE)``. Because everything is Gaussian and linear,
the model also gives the exact marginal likelihood (:meth:`PPCAModel.log_marginal`) and the
exact posterior of z (:meth:`PPCAModel.posterior`), for checking approximate estimators.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from ..data.batching import SubjectBatch
from ..errors import DatasetError, ModelError
from .base import PopulationModel
from .nlme import ObservedData
from .parameter_set import OmegaBlock, ParameterSet, PopulationValues, Sigma, Theta
from .ppca_core import as_data_matrix, as_parameters, masked_marginal
from .ppca_fit import _closed_form
from .residual_error import normal_neg2ll

__all__ = ["PPCAModel", "PPCANoise", "ppca_dataset", "ppca_matrix"]

_NOISE = "NOISE"


def _w_name(j: int, l: int) -> str:
    """θ name of the loading of feature ``j`` on component ``l`` (both 1-based)."""
    return f"W({j},{l})"


# ---------------------------------------------------------------------------------------------------- data
def ppca_dataset(X, ids=None, *, dtype: torch.dtype = torch.float64, device=None):
    """A data matrix as a pmxgen dataset: one subject per row, one record per feature.

    Each row i becomes subject ``ids[i]`` with d records: TIME = feature number (1..d), DV = the
    value, CMT = 1. A NaN becomes a record with MDV = 1 (kept in the data, not an observation).

    Parameters
    ----------
    X : array-like ``[n, d]``
        numpy array, pandas DataFrame or torch tensor; NaN marks missing values.
    ids : sequence, optional
        Subject IDs (distinct, one per row); default 1..n.
    dtype, device
        Floating dtype and device of the dataset's tensors.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        ``X`` not 2-D numeric, infinite values, a row without any observed value, bad ``ids``.

    Examples
    --------
    >>> import numpy as np
    >>> data = ppca_dataset(np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 6.0]]))
    >>> data.n_subjects, data.n_observations, data.n_records
    (2, 5, 6)
    >>> ppca_matrix(data).tolist()
    [[1.0, 2.0, 3.0], [4.0, nan, 6.0]]
    """
    from ..data.reader import read_nonmem

    x = as_data_matrix(X).cpu().numpy()
    n, d = x.shape
    empty = np.flatnonzero(np.isnan(x).all(1))
    if len(empty):
        raise DatasetError(f"all values of the row are missing (NaN); {len(empty)} such row(s): the subject would "
                           f"have no observation", source="X", row=int(empty[0]),
                           fix="remove rows without any observed value (rows are counted from 0)")
    if ids is None:
        ids = np.arange(1, n + 1)
    ids = list(ids.tolist() if isinstance(ids, (np.ndarray, torch.Tensor, pd.Index)) else ids)
    if len(ids) != n:
        raise DatasetError(f"ids has {len(ids)} entries but X has {n} rows", source="ids",
                           fix="give one ID per row of X")
    if len({str(v) for v in ids}) != n:
        seen, dup = set(), None
        for v in ids:
            if str(v) in seen:
                dup = v
                break
            seen.add(str(v))
        raise DatasetError("the subject IDs are not distinct", source="ids", value=dup, fix="give each row its own ID")
    frame = pd.DataFrame({"ID": np.repeat(np.asarray(ids, dtype=object), d),
                          "TIME": np.tile(np.arange(1, d + 1, dtype=np.float64), n),
                          "DV": x.reshape(-1),
                          "CMT": np.ones(n * d, dtype=np.int64),
                          "MDV": np.isnan(x).reshape(-1).astype(np.int64)})
    return read_nonmem(frame, covariates=[], dtype=dtype, device=device)


def _feature_index(batch: SubjectBatch, n_features: int) -> torch.Tensor:
    """Feature (0-based) of each observation slot ``[N, J]`` (0 on padding)."""
    idx = torch.round(batch.obs.time).to(torch.long) - 1
    return torch.where(batch.obs.mask, idx, torch.zeros_like(idx)).clamp(0, n_features - 1)


def ppca_matrix(dataset, n_features: int | None = None) -> np.ndarray:
    """The ``[n, d]`` data matrix of a dataset made by :func:`ppca_dataset` (NaN where not observed).

    ``n_features`` defaults to the largest TIME of any record (MDV=1 records included, so that a
    feature missing in every row still gets its column). Raises :class:`DatasetError` when TIME
    is not a feature number 1..d or a subject has two observations of one feature.
    """
    if n_features is None:
        times = dataset.to_frame()[dataset.columns.get("TIME", "TIME")].to_numpy(dtype=np.float64)
        n_features = max(int(np.nanmax(np.floor(times))), 1)
    _check_layout(dataset, n_features)
    batch = dataset.batch
    obs = batch.obs
    d = n_features
    idx = _feature_index(batch, d)
    out = torch.full((batch.n_subjects, d), math.nan, dtype=torch.float64, device=batch.device)
    rows = torch.arange(batch.n_subjects, device=batch.device)[:, None].expand_as(idx)
    out[rows[obs.mask], idx[obs.mask]] = obs.dv[obs.mask].to(torch.float64)
    return out.cpu().numpy()


def _check_layout(dataset, n_features: int | None, allow_repeats: bool = False) -> None:
    """TIME must be a feature number 1..d, no doses, no BLQ flags; repeats of a feature only if allowed."""
    batch = dataset.batch
    obs = batch.obs
    mask = obs.mask
    col_t = dataset.columns.get("TIME", "TIME")
    t = obs.time
    upper = n_features if n_features is not None else math.inf
    bad = mask & ((t != torch.round(t)) | (t < 1) | (t > upper))
    if bool(bad.any()):
        pos = int(obs.row[bad][0])
        rng = f"1..{n_features}" if n_features is not None else "1, 2, ..."
        raise DatasetError(f"PPCA data use TIME as the feature number ({rng})", source=dataset.source,
                           row=dataset.row_of(pos), column=col_t, value=float(t[bad][0]),
                           fix="build the data with pmxgen.models.ppca_dataset(X)")
    if bool(batch.doses.mask.any()):
        pos = int(batch.doses.row[batch.doses.mask][0])
        raise DatasetError("PPCA data have no doses", source=dataset.source, row=dataset.row_of(pos),
                           column=dataset.columns.get("AMT", "AMT"), fix="remove dose records (AMT > 0)")
    blq = mask & obs.blq
    if bool(blq.any()):
        pos = int(obs.row[blq][0])
        raise DatasetError("PPCA does not model censored (BLQ) observations", source=dataset.source,
                           row=dataset.row_of(pos), column=dataset.columns.get("BLQ", "BLQ"),
                           fix="set BLQ to 0, or make the value missing (MDV=1)")
    cmt = obs.cmt
    bad_cmt = mask & (cmt > 1)
    if bool(bad_cmt.any()):
        pos = int(obs.row[bad_cmt][0])
        raise DatasetError("PPCA data have one compartment (CMT 1)", source=dataset.source, row=dataset.row_of(pos),
                           column=dataset.columns.get("CMT", "CMT"), value=int(cmt[bad_cmt][0]),
                           fix="use TIME for the feature number and CMT = 1")
    if not allow_repeats and bool(mask.any()):
        d = int(t[mask].max())
        subject = torch.arange(batch.n_subjects, device=t.device)[:, None].expand_as(t)
        key = (subject * (d + 1) + torch.round(t).to(torch.long)).masked_fill(~mask, -1).flatten()
        counts = torch.bincount(key[key >= 0])
        if bool((counts > 1).any()):
            dup = int(torch.nonzero(counts > 1)[0])
            second = int(torch.nonzero(key == dup)[1])
            pos = int(obs.row.flatten()[second])
            raise DatasetError("a subject has two observations of the same feature (TIME); a data matrix holds one",
                               source=dataset.source, row=dataset.row_of(pos), column=col_t,
                               value=float(t.flatten()[second]), fix="keep one value per subject and feature")


# ------------------------------------------------------------------------------------------ residual error
@dataclass(frozen=True)
class PPCANoise:
    """The PPCA residual error: additive, one variance ``σ² = SIGMA(NOISE)``.

    Duck-types the parts of :class:`~pmxgen.models.ResidualError` that estimators use
    (``kind``, ``log_scale``, ``transform``, ``variance``, ``sample``, ``sigmas``), with the σ
    named ``NOISE``.

    Examples
    --------
    >>> PPCANoise(0.5).variance(torch.zeros(2, 3), {"NOISE": torch.tensor(0.5)}).shape
    torch.Size([2, 3])
    """

    init: float = 1.0
    kind: str = "additive"
    fixed: tuple[str, ...] = ()

    @property
    def log_scale(self) -> bool:
        return False

    def sigmas(self) -> list[Sigma]:
        return [Sigma(_NOISE, self.init)]

    def transform(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def variance(self, f: torch.Tensor, sigma: Mapping[str, torch.Tensor]) -> torch.Tensor:
        v = sigma[_NOISE]
        v = v[..., None] if v.dim() == 1 else v
        return v * torch.ones_like(f)

    def sample(self, f: torch.Tensor, sigma: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
               ) -> torch.Tensor:
        z = torch.randn(f.shape, generator=generator, dtype=f.dtype, device=f.device)
        return f + torch.sqrt(self.variance(f, sigma)) * z


# ------------------------------------------------------------------------------------------------- model
class PPCAModel(PopulationModel):
    """Probabilistic PCA in the population-model contract (η = latent scores z, Ω = I fixed).

    Parameters
    ----------
    mean : array-like ``[d]``
        Initial μ (θ ``MU1..MUd``).
    components : array-like ``[d, k]``
        Initial loadings W (θ ``W(j,l)``, feature j, component l, 1-based).
    noise_variance : float
        Initial σ² (``SIGMA(NOISE)``).
    identify : bool
        Fix ``W(j,l) = 0`` for l > j (a lower-triangular W), which removes the rotational
        invariance of W (up to the signs of its columns) so that standard errors exist; the
        initial loadings are rotated into that form (same W Wᵀ). Default False (all of W free).
    name : str, optional

    Notes
    -----
    Beyond the base contract the model offers the ``gaussian_residual`` tier (``observed``,
    ``moments``, ``observation_neg2ll``, ``log_scale_observations``) and the
    ``individual_parameters`` tier (the scores), and ``check`` — plus the exact :meth:`log_marginal` and
    :meth:`posterior`. θ, Ω and σ may carry one leading subject dimension ``[N]`` (per-subject
    values, as the estimators use for per-subject gradients) or none.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(20, 2)) @ rng.normal(size=(2, 4)) + 0.3 * rng.normal(size=(20, 4))
    >>> data = ppca_dataset(X)
    >>> model = PPCAModel.from_data(data, 2)
    >>> model.parameter_set.names[:3], model.eta_names(data.batch)
    (('MU1', 'MU2', 'MU3'), ('Z1', 'Z2'))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> z = torch.zeros(20, 2, dtype=torch.float64)
    >>> model.log_likelihood(z, values, data.batch).shape, model.log_marginal(values, data.batch).shape
    (torch.Size([20]), torch.Size([20]))
    """

    iov_names: tuple[str, ...] = ()
    #: PPCA's likelihood is on the scale of the data (the ``gaussian_residual`` tier).
    log_scale_observations = False

    def __init__(self, mean, components, noise_variance: float = 1.0, *, identify: bool = False,
                 name: str | None = None):
        mu, w, s2 = as_parameters(mean, components, noise_variance, device="cpu")
        d, k = w.shape
        if d < 2 or not 1 <= k <= d - 1:
            raise ModelError(f"PPCA needs d >= 2 features and 1 <= k <= d - 1 components (found d = {d}, k = {k})")
        if identify:
            w = _lower_triangular(w)
        self.n_features, self.n_components, self.identify = int(d), int(k), bool(identify)
        self.iiv_names = tuple(f"Z{l + 1}" for l in range(k))
        thetas = [Theta(f"MU{j + 1}", float(mu[j])) for j in range(d)]
        thetas += [Theta(_w_name(j + 1, l + 1), float(w[j, l]), fixed=identify and l > j)
                   for j in range(d) for l in range(k)]
        self.error = PPCANoise(float(s2))
        self.parameter_set = ParameterSet(thetas, [OmegaBlock(self.iiv_names, np.ones(k), fixed=True)],
                                       self.error.sigmas())
        self.name = name or f"probabilistic PCA (d = {d}, k = {k})"

    @classmethod
    def from_data(cls, data, n_components: int, *, perturb: float = 0.0, seed: int = 0, identify: bool = False,
                  name: str | None = None) -> "PPCAModel":
        """A model with initial values from the data: the closed-form PPCA fit (ML, ddof=0).

        With missing values the closed form is applied to the data with each missing value
        replaced by its column mean (a start, not the maximum-likelihood estimate).

        Parameters
        ----------
        data : Dataset or array-like ``[n, d]``
            A dataset from :func:`ppca_dataset`, or the data matrix (NaN = missing).
        n_components : int
        perturb : float
            Move the start away from the estimate (for testing estimators): μ_j += perturb·sd_j·g,
            W += perturb·sd·G, σ² *= exp(perturb·g) with standard normal g, G drawn with ``seed``
            (sd_j: column SDs, sd: their root mean square).
        seed : int
        identify, name
            As in :class:`PPCAModel`.
        """
        from .ppca_fit import _check_data

        x = as_data_matrix(ppca_matrix(data) if hasattr(data, "batch") else data, device="cpu")
        mask = _check_data(x, n_components)
        k = int(n_components)
        centre = torch.nanmean(x, 0)
        filled = torch.where(mask, x, centre.expand_as(x))
        mu, w, s2 = _closed_form(filled, k, 0)
        if perturb:
            if not (isinstance(perturb, (int, float)) and math.isfinite(perturb) and perturb > 0):
                raise ModelError(f"perturb must be a finite number >= 0 (found {perturb!r})")
            gen = torch.Generator().manual_seed(int(seed))
            sd = torch.sqrt(((filled - centre) ** 2).mean(0))
            g = torch.randn(x.shape[1] * (k + 1) + 1, generator=gen, dtype=torch.float64)
            mu = mu + perturb * sd * g[:x.shape[1]]
            w = w + perturb * torch.sqrt((sd ** 2).mean()) * g[x.shape[1]:-1].reshape(w.shape)
            s2 = s2 * torch.exp(perturb * g[-1])
        return cls(mu, w, float(s2), identify=identify, name=name)

    # ------------------------------------------------------------------------------------------ values
    def population_values(self, mean, components, noise_variance, *, dtype=torch.float64, device=None
                          ) -> PopulationValues:
        """:class:`PopulationValues` for given μ ``[d]``, W ``[d, k]`` and σ² (e.g. a :func:`fit_ppca` result)."""
        mu, w, s2 = as_parameters(mean, components, noise_variance, self.n_features, device=device, dtype=dtype)
        if w.shape[1] != self.n_components:
            raise ModelError(f"components have {w.shape[1]} columns; the model has {self.n_components} components")
        theta = {f"MU{j + 1}": mu[j] for j in range(self.n_features)}
        theta.update({_w_name(j + 1, l + 1): w[j, l] for j in range(self.n_features) for l in range(self.n_components)})
        return PopulationValues(theta=theta, omega=torch.eye(self.n_components, dtype=dtype, device=mu.device),
                                sigma={_NOISE: s2})

    def split_values(self, values: PopulationValues) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(μ [..., d], W [..., d, k], σ² [...])`` from ``values`` (differentiable)."""
        d, k = self.n_features, self.n_components
        try:
            mu = torch.stack([values.theta[f"MU{j + 1}"] for j in range(d)], -1)
            w = torch.stack([values.theta[_w_name(j + 1, l + 1)] for j in range(d) for l in range(k)], -1)
            s2 = values.sigma[_NOISE]
        except KeyError as exc:
            raise ModelError(f"values lack {exc.args[0]}; build them with model.parameter_set.unpack(phi) or "
                             f"model.population_values(mean, components, noise_variance)") from None
        return mu, w.reshape(w.shape[:-1] + (d, k)), s2

    def _gathered(self, values: PopulationValues, batch: SubjectBatch):
        """μ ``[N, J]``, W ``[N, J, k]`` at each observation's feature, and σ² (0-d or ``[N]``)."""
        mu, w, s2 = self.split_values(values)
        n = batch.n_subjects
        if mu.dim() > 2 or (mu.dim() == 2 and mu.shape[0] != n):
            raise ModelError(f"θ values have leading shape {tuple(mu.shape[:-1])}; PPCAModel takes none or one "
                             f"per subject ({n})")
        idx = _feature_index(batch, self.n_features)
        if mu.dim() == 1:
            return mu[idx], w[idx], s2
        k = self.n_components
        mu_g = torch.gather(mu, 1, idx)
        w_g = torch.gather(w, 1, idx[..., None].expand(idx.shape + (k,)))
        return mu_g, w_g, s2

    # ----------------------------------------------------------------------------------------- contract
    def eta_names(self, batch: SubjectBatch) -> tuple[str, ...]:
        return self.iiv_names

    def individual_parameters(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch
                              ) -> dict[str, torch.Tensor]:
        """The latent scores ``{"Z1": [N], ...}`` (PPCA has no other individual parameters)."""
        return {name: eta[:, l] for l, name in enumerate(self.iiv_names)}

    def predict(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        """``μ_f + w_fᵀ z_i`` at each observation ``[N, J]`` (0 on padding)."""
        mu_g, w_g, _ = self._gathered(values, batch)
        f = mu_g + (w_g * eta[:, None, :]).sum(-1)
        return torch.where(batch.obs.mask, f, torch.zeros_like(f))

    def observed(self, batch: SubjectBatch) -> ObservedData:
        """The observations ``y`` (0 on padding) with their mask; PPCA has no BLQ data."""
        obs = batch.obs
        return ObservedData(y=torch.where(obs.mask, obs.dv, torch.zeros_like(obs.dv)), mask=obs.mask,
                            blq=torch.zeros_like(obs.mask), lloq=torch.ones_like(obs.dv))

    def moments(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch, *,
                variance_at: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance (σ², 1 on padding) of each observation given η, ``[N, J]`` each."""
        f = self.predict(eta, values, batch)
        var = self.error.variance(f, values.sigma)
        return f, torch.where(batch.obs.mask, var, torch.ones_like(var))

    def observation_neg2ll(self, mean: torch.Tensor, var: torch.Tensor, data: ObservedData) -> torch.Tensor:
        """−2 log N(y; mean, var) per observation ``[N, J]`` (0 on padding)."""
        dens = normal_neg2ll(data.y, mean, var)
        return torch.where(data.mask, dens, torch.zeros_like(dens))

    def log_likelihood(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        """``log p(y_i | z_i, μ, W, σ²)`` per subject ``[N]``, with all constants."""
        mean, var = self.moments(eta, values, batch)
        return -0.5 * self.observation_neg2ll(mean, var, self.observed(batch)).sum(-1)

    def sample_y(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Observations ``μ_f + w_fᵀ z_i + ε`` ``[N, J]`` (0 on padding)."""
        f = self.predict(eta, values, batch)
        y = self.error.sample(f, values.sigma, generator)
        return torch.where(batch.obs.mask, y, torch.zeros_like(y))

    # -------------------------------------------------------------------------------------- exact parts
    def log_marginal(self, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        """Exact ``log p(y_i | μ, W, σ²) = log ∫ p(y_i | z) p(z) dz`` per subject ``[N]``; differentiable."""
        mu_g, w_g, s2 = self._gathered(values, batch)
        obs = batch.obs
        ll, _, _ = masked_marginal(obs.dv - mu_g, w_g, obs.mask, s2)
        return ll

    def posterior(self, values: PopulationValues, batch: SubjectBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact posterior of z: mean ``[N, k]`` and covariance ``[N, k, k]``."""
        mu_g, w_g, s2 = self._gathered(values, batch)
        obs = batch.obs
        _, chol, b = masked_marginal(obs.dv - mu_g, w_g, obs.mask, s2)
        s2b = s2[..., None, None] if s2.dim() == 1 else s2
        return torch.cholesky_solve(b[..., None], chol)[..., 0], s2b * torch.cholesky_inverse(chol)

    # ------------------------------------------------------------------------------------------ checks
    def check(self, dataset) -> None:
        """Raise a clear error where ``dataset`` is not PPCA data for this model (see :func:`ppca_dataset`).

        TIME must be a feature number 1..d; no doses, no BLQ flags, CMT 1 (or 0). A subject may
        have a feature observed twice (two independent noisy measurements of the same
        ``μ + W z``); the data-matrix helpers refuse that.
        """
        _check_layout(dataset, self.n_features, allow_repeats=True)
        batch = dataset.batch
        values = self.parameter_set.unpack(self.parameter_set.initial_natural(dtype=batch.dtype, device=batch.device))
        with torch.no_grad():
            ll = self.log_marginal(values, batch)
        if not bool(torch.isfinite(ll).all()):
            i = int(torch.nonzero(~torch.isfinite(ll))[0])
            raise ModelError(f"the log-likelihood of subject {dataset.ids[i]} is not finite at the initial values; "
                             f"check the initial values and the data")


def _lower_triangular(w: torch.Tensor) -> torch.Tensor:
    """W R with R orthogonal such that the result is lower triangular with a non-negative diagonal."""
    k = w.shape[1]
    q, r = torch.linalg.qr(w[:k].T)          # W[:k]ᵀ = Q R  →  W[:k] Q = Rᵀ (lower triangular)
    sign = torch.sign(torch.diagonal(r))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    out = w @ (q * sign)
    out[:k] = torch.tril(out[:k])            # exact zeros above the diagonal
    return out
