"""Probabilistic PCA: input checks, the exact marginal log-likelihood and the posterior of z.

Probabilistic PCA (Tipping & Bishop 1999) says that each row of a data matrix is

    x_i = μ + W z_i + ε_i,    z_i ~ N(0, I_k),    ε_i ~ N(0, σ² I_d),

so that x_i ~ N(μ, C) with C = W Wᵀ + σ² I_d. A row with missing values (NaN) contributes the
density of its observed coordinates O_i, N(μ_O, W_O W_Oᵀ + σ² I), which is the model's exact
marginal likelihood with the missing coordinates integrated out.

Every row is handled at once, without a loop over rows, by the Woodbury identity on masked
loadings (W_O = diag(m_i) W with m_i the 0/1 mask of observed coordinates): with
``M_i = σ² I_k + W_Oᵀ W_O`` and residuals r_i (0 where missing),

    log|C_O| = (d_i − k) log σ² + log|M_i|,
    r_iᵀ C_O⁻¹ r_i = (r_iᵀ r_i − r_iᵀ W_O M_i⁻¹ W_Oᵀ r_i) / σ²,

and the posterior of z_i given the observed coordinates is N(M_i⁻¹ W_Oᵀ r_i, σ² M_i⁻¹).
The same kernel serves :func:`ppca_log_likelihood`, the EM for missing data and
:class:`~pmxgen.models.ppca_model.PPCAModel` (whose observations are padded per subject).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..errors import DatasetError, ModelError

__all__ = ["ppca_log_likelihood", "ppca_posterior", "as_data_matrix", "as_parameters"]

_LOG2PI = math.log(2.0 * math.pi)


# ------------------------------------------------------------------------------------------- input checks
def as_data_matrix(X, *, device=None, name: str = "X") -> torch.Tensor:
    """``X`` as a float64 ``[n, d]`` tensor, NaN marking missing values; infinite values are refused.

    Accepts a numpy array, a pandas DataFrame (numeric columns), a torch tensor (kept on its device
    unless ``device`` is given) or nested lists. Raises :class:`~pmxgen.errors.DatasetError` naming
    the row and column (counted from 0; DataFrame index labels and column names for a DataFrame).

    Examples
    --------
    >>> as_data_matrix([[1.0, float("nan")], [2.0, 3.0]]).shape
    torch.Size([2, 2])
    """
    row_labels = col_labels = None
    if isinstance(X, pd.DataFrame):
        for c in X.columns:
            if not (pd.api.types.is_numeric_dtype(X[c]) and not pd.api.types.is_bool_dtype(X[c])):
                raise DatasetError(f"{name} must hold numbers; this column has dtype {X[c].dtype}", source=name,
                                   column=str(c), fix="convert the column to numbers (NaN for missing values)")
        row_labels, col_labels = list(X.index), [str(c) for c in X.columns]
        X = X.to_numpy(dtype=np.float64, na_value=np.nan)
    if isinstance(X, torch.Tensor):
        if X.is_complex() or X.dtype == torch.bool:
            raise DatasetError(f"{name} must be a real numeric tensor (found dtype {X.dtype})", source=name,
                               fix="pass a float64 tensor")
        t = X.detach().to(dtype=torch.float64, device=device if device is not None else X.device)
    else:
        arr = np.asarray(X)
        if arr.dtype == object:
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError):
                raise DatasetError(f"{name} must hold numbers only (found non-numeric entries)", source=name,
                                   fix="convert the data to a numeric array, NaN for missing values") from None
        if arr.dtype.kind not in "iuf":
            raise DatasetError(f"{name} must be a numeric array (found dtype {arr.dtype})", source=name,
                               fix="convert the data to a float array, NaN for missing values")
        t = torch.as_tensor(np.array(arr, dtype=np.float64), dtype=torch.float64, device=device)
    if t.dim() != 2:
        raise DatasetError(f"{name} must be 2-D, one row per subject and one column per feature "
                           f"(found shape {tuple(t.shape)})", source=name,
                           fix="reshape it to [n_rows, n_features], e.g. X.reshape(-1, 1) for one feature")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise DatasetError(f"{name} is empty (shape {tuple(t.shape)})", source=name, fix="give at least one row "
                           "and one column")
    bad = torch.isinf(t)
    if bool(bad.any()):
        i, j = (int(v) for v in torch.nonzero(bad)[0])
        raise DatasetError("an infinite value", source=name, row=row_labels[i] if row_labels else i,
                           column=col_labels[j] if col_labels else str(j), value=float(t[i, j]),
                           fix="replace it by a finite value, or by NaN if it is missing (rows and columns of "
                               "an array are counted from 0)")
    return t


def as_parameters(mean, components, noise_variance, n_features: int | None = None, *, device=None,
                  dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(μ [d], W [d, k], σ² 0-d)`` as tensors, checked for shapes and values (:class:`ModelError`).

    Tensors keep their autograd history (so that the log-likelihood can be differentiated).
    """
    def tensor(v, what):
        if isinstance(v, torch.Tensor):
            return v.to(dtype=dtype, device=device if device is not None else v.device)
        try:
            return torch.as_tensor(np.array(v, dtype=np.float64), dtype=dtype, device=device)
        except (TypeError, ValueError):
            raise ModelError(f"{what} must be numeric (found {type(v).__name__})") from None

    mu, w, s2 = tensor(mean, "mean"), tensor(components, "components"), tensor(noise_variance, "noise_variance")
    if mu.dim() != 1:
        raise ModelError(f"mean must be a vector [d] (found shape {tuple(mu.shape)})")
    d = mu.shape[0] if n_features is None else n_features
    if mu.shape != (d,):
        raise ModelError(f"mean has {mu.shape[0]} entries but the data have {d} features (columns)")
    if w.dim() == 1:
        w = w[:, None]
    if w.dim() != 2 or w.shape[0] != d or w.shape[1] < 1:
        raise ModelError(f"components (W) must be [d, k] = [{d}, k] with k >= 1 (found shape {tuple(w.shape)}); "
                         f"scikit-learn's components_ is [k, d]: convert with W = components_.T * "
                         f"sqrt(explained_variance_ - noise_variance_)")
    if s2.numel() != 1:
        raise ModelError(f"noise_variance must be one number σ² (found shape {tuple(s2.shape)})")
    s2 = s2.reshape(())
    with torch.no_grad():
        if not bool(torch.isfinite(mu).all() & torch.isfinite(w).all()):
            raise ModelError("mean and components must be finite")
        if not bool(torch.isfinite(s2)) or not float(s2) > 0:
            raise ModelError(f"noise_variance σ² must be a finite number > 0 (found {float(s2)!r})")
    return mu, w.to(mu.device), s2.to(mu.device)


# ---------------------------------------------------------------------------------------------- the kernel
def masked_marginal(resid: torch.Tensor, loadings: torch.Tensor, mask: torch.Tensor, noise_variance: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact log N(r_O; 0, W_O W_Oᵀ + σ² I) per row, by Woodbury; differentiable.

    Parameters
    ----------
    resid : Tensor ``[N, J]``
        Observation minus mean; any finite value where ``mask`` is False (it is ignored).
    loadings : Tensor ``[N, J, k]`` or ``[J, k]``
        The rows of W that go with each observation.
    mask : bool Tensor ``[N, J]``
        Observed entries.
    noise_variance : Tensor, 0-d or ``[N]``

    Returns
    -------
    log_density ``[N]``, Cholesky factor of ``M = σ² I + W_Oᵀ W_O`` ``[N, k, k]`` and ``b = W_Oᵀ r`` ``[N, k]``.
    """
    m = mask.to(resid.dtype)
    r = torch.where(mask, resid, torch.zeros_like(resid))
    k = loadings.shape[-1]
    if loadings.dim() == 2:
        # M_i = σ² I + Σ_j m_ij w_j w_jᵀ as one matrix product over the features.
        outer = (loadings[:, :, None] * loadings[:, None, :]).reshape(loadings.shape[0], k * k)
        gram = (m @ outer).reshape(-1, k, k)
        b = r @ loadings
    else:
        wm = loadings * m[..., None]
        gram = wm.transpose(-1, -2) @ wm
        b = (wm * r[..., None]).sum(-2)
    s2 = noise_variance
    s2b = s2[..., None, None] if s2.dim() == 1 else s2
    eye = torch.eye(k, dtype=resid.dtype, device=resid.device)
    chol = torch.linalg.cholesky(gram + s2b * eye)
    c = torch.linalg.solve_triangular(chol, b[..., None], upper=False)[..., 0]
    n_obs = m.sum(-1)
    log_s2 = torch.log(s2)
    logdet = (n_obs - k) * log_s2 + 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    quad = ((r * r).sum(-1) - (c * c).sum(-1)) / s2
    return -0.5 * (n_obs * _LOG2PI + logdet + quad), chol, b


def _is_torch(*values) -> bool:
    return any(isinstance(v, torch.Tensor) for v in values)


def ppca_log_likelihood(X, mean, components, noise_variance, *, per_row: bool = False, device=None):
    """Exact log-likelihood of probabilistic PCA, missing values (NaN) integrated out.

    Parameters
    ----------
    X : array-like ``[n, d]``
        Data, one row per subject; NaN marks a missing value (the row then contributes the
        density of its observed coordinates). A row with no observed value contributes 0.
    mean : array-like ``[d]``
        μ.
    components : array-like ``[d, k]``
        Loadings W (columns are the directions). scikit-learn's ``PCA`` corresponds to
        ``W = components_.T * sqrt(explained_variance_ - noise_variance_)``.
    noise_variance : float
        σ² > 0.
    per_row : bool
        Return each row's log-likelihood ``[n]`` instead of the total.
    device : torch device, optional
        Where to compute (default: the device of ``X`` when it is a tensor, else the CPU).

    Returns
    -------
    float (or numpy ``[n]``) when no argument is a torch tensor; otherwise a tensor (0-d or ``[n]``)
    that carries gradients with respect to tensor parameters.

    Raises
    ------
    DatasetError
        ``X`` is not a 2-D numeric array or holds infinite values.
    ModelError
        Parameters with wrong shapes or σ² <= 0.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import multivariate_normal
    >>> X = np.array([[1.0, 2.0, 0.5], [0.3, np.nan, -1.0]])
    >>> mu, W, s2 = np.zeros(3), np.array([[1.0], [0.5], [-0.2]]), 0.3
    >>> C = W @ W.T + s2 * np.eye(3)
    >>> o = [0, 2]                                    # the observed coordinates of row 1
    >>> ref = multivariate_normal(mu, C).logpdf(X[0]) + multivariate_normal(mu[o], C[np.ix_(o, o)]).logpdf(X[1, o])
    >>> bool(np.isclose(ppca_log_likelihood(X, mu, W, s2), ref, rtol=1e-12))
    True
    """
    return_tensor = _is_torch(X, mean, components, noise_variance)
    x = as_data_matrix(X, device=device)
    mu, w, s2 = as_parameters(mean, components, noise_variance, x.shape[1], device=x.device)
    mask = ~torch.isnan(x)
    ll, _, _ = masked_marginal(x - mu, w, mask, s2)
    out = ll if per_row else ll.sum()
    if return_tensor:
        return out
    return out.detach().cpu().numpy() if per_row else float(out)


def ppca_posterior(X, mean, components, noise_variance, *, device=None):
    """Posterior mean ``[n, k]`` and covariance ``[n, k, k]`` of z given each row's observed values.

    ``z_i | x_i ~ N(M_i⁻¹ W_Oᵀ (x_O − μ_O), σ² M_i⁻¹)`` with ``M_i = σ² I + W_Oᵀ W_O`` (O: the
    observed coordinates of row i). Returns numpy arrays unless an argument is a torch tensor.

    Examples
    --------
    >>> import numpy as np
    >>> mean, cov = ppca_posterior(np.array([[2.0, 1.0]]), np.zeros(2), np.array([[1.0], [1.0]]), 1.0)
    >>> mean.round(6).tolist(), cov.round(6).tolist()
    ([[1.0]], [[[0.333333]]])
    """
    return_tensor = _is_torch(X, mean, components, noise_variance)
    x = as_data_matrix(X, device=device)
    mu, w, s2 = as_parameters(mean, components, noise_variance, x.shape[1], device=x.device)
    mask = ~torch.isnan(x)
    _, chol, b = masked_marginal(x - mu, w, mask, s2)
    post_mean = torch.cholesky_solve(b[..., None], chol)[..., 0]
    post_cov = s2 * torch.cholesky_inverse(chol)
    if return_tensor:
        return post_mean, post_cov
    return post_mean.detach().cpu().numpy(), post_cov.detach().cpu().numpy()
