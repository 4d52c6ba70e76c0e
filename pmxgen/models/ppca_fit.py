"""Maximum-likelihood probabilistic PCA: closed form, EM and gradient (L-BFGS) estimators.

``fit_ppca(X, k, method=...)`` returns a :class:`PPCAResult`.

``closed_form``
    Tipping & Bishop (1999): μ = the column means, σ² = the mean of the d − k smallest
    eigenvalues of the sample covariance S, W = U_k (Λ_k − σ² I)^½ (top k eigenvectors and
    eigenvalues). With ``ddof=0`` this is the maximum-likelihood estimate; with ``ddof=1``
    S uses n − 1 and the parameters are those of ``sklearn.decomposition.PCA`` (for n > d).
    Complete data only.
``em``
    Complete data: Tipping & Bishop's EM on S. With missing values: the exact EM for PPCA with
    missing data (Ilin & Raiko 2010), the unobserved coordinates integrated out; μ and W are
    updated jointly (one regression of each feature on [E z, 1]). Both run in parameter-expanded
    form (PX-EM, Liu, Rubin & Wu 1998): the M-step also fits the mean and covariance of z and
    maps them back into μ and W. Every iteration is still an EM iteration (the exact likelihood
    never decreases; :attr:`PPCAResult.history`), but tens of iterations replace the hundreds
    to thousands of plain EM.
``gradient``
    L-BFGS (strong Wolfe line search) on the exact marginal log-likelihood, gradients by
    torch autograd, σ² on the log scale.

The iterative methods start from random loadings (``seed``) and work on data centred by the
column means and divided by one overall scale (the root mean column variance), so that the
tolerances are relative to the spread of the data; results are mapped back.

W is identified only up to rotation (W R with R orthogonal gives the same model): compare fits
by ``W Wᵀ`` (or :meth:`PPCAResult.covariance`), σ², μ and the log-likelihood.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DatasetError, EstimationError, ModelError
from .ppca_core import as_data_matrix, masked_marginal, ppca_log_likelihood, ppca_posterior

__all__ = ["PPCAResult", "fit_ppca", "PPCA_METHODS"]

#: The estimators of :func:`fit_ppca`.
PPCA_METHODS = ("closed_form", "em", "gradient")
_DEFAULT_TOL = {"em": 1e-10, "gradient": 1e-6}
_DEFAULT_MAX_ITER = {"em": 20000, "gradient": 5000}
_LOG2PI = math.log(2.0 * math.pi)
#: σ² below this fraction of the mean data variance means the likelihood is running off to +∞.
_S2_FLOOR = 1e-12


def _degenerate(it: int, k: int) -> str:
    return (f"stopped at iteration {it}: σ² fell below {_S2_FLOOR:g} of the data variance; the data lie (nearly) "
            f"in a {k}-dimensional subspace, where the PPCA likelihood is unbounded. Use fewer components")


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class PPCAResult:
    """A probabilistic-PCA fit.

    Attributes
    ----------
    method : str
        ``closed_form``, ``em`` or ``gradient``.
    mean : numpy ``[d]``
        μ.
    components : numpy ``[d, k]``
        Loadings W (identified up to rotation; compare ``W Wᵀ``).
    noise_variance : float
        σ².
    log_likelihood : float
        Exact log-likelihood of the data at these parameters (missing values integrated out).
    n_iter : int
        Iterations (0 for the closed form).
    converged : bool
        Whether the convergence criterion was met (always True for the closed form).
    messages : tuple of str
        What happened (convergence, warnings).
    n_samples, n_observed : int
        Rows and observed (non-NaN) values of the data.
    ddof : int
        Degrees of freedom removed from the covariance (closed form); 0 means maximum likelihood.
    history : tuple of float
        Log-likelihood at the start of each EM iteration (EM only; empty otherwise).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 1)) @ np.array([[2.0, 1.0, 0.0]]) + 0.5 * rng.normal(size=(200, 3))
    >>> fit = fit_ppca(X, 1)
    >>> fit.components.shape, fit.converged
    ((3, 1), True)
    >>> bool(np.isclose(fit.score(X), fit.log_likelihood))
    True
    """

    method: str
    mean: np.ndarray
    components: np.ndarray
    noise_variance: float
    log_likelihood: float
    n_iter: int
    converged: bool
    messages: tuple[str, ...] = ()
    n_samples: int = 0
    n_observed: int = 0
    ddof: int = 0
    history: tuple[float, ...] = field(default=(), repr=False)

    @property
    def n_features(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[1])

    @property
    def status(self) -> str:
        """``'converged'`` or ``'not converged'``."""
        return "converged" if self.converged else "not converged"

    def covariance(self) -> np.ndarray:
        """The model covariance ``C = W Wᵀ + σ² I`` ``[d, d]``."""
        w = self.components
        return w @ w.T + self.noise_variance * np.eye(self.n_features)

    def loading_covariance(self) -> np.ndarray:
        """``W Wᵀ`` (rotation invariant)."""
        return self.components @ self.components.T

    def score(self, X) -> float:
        """Exact log-likelihood of ``X`` (NaN = missing) under this fit."""
        return ppca_log_likelihood(X, self.mean, self.components, self.noise_variance)

    def transform(self, X) -> np.ndarray:
        """Posterior means ``E[z | x]`` ``[n, k]`` of the rows of ``X`` (NaN coordinates are ignored)."""
        return ppca_posterior(X, self.mean, self.components, self.noise_variance)[0]

    def summary(self) -> str:
        """A text table: fit facts, σ², and μ and W by feature."""
        d, k = self.n_features, self.n_components
        wwt = np.diag(self.loading_covariance())
        lines = [f"Probabilistic PCA by {self.method} ({self.status}, {self.n_iter} iterations)",
                 f"  rows {self.n_samples}, features {d}, components {k}, observed values {self.n_observed}",
                 f"  log-likelihood {self.log_likelihood:.6f}",
                 f"  noise variance {self.noise_variance:.6g}",
                 f"  variance explained by the components {wwt.sum() / (wwt.sum() + d * self.noise_variance):.1%}",
                 "  feature  " + "  ".join([f"{'mean':>11}"] + [f"{f'W[:,{l + 1}]':>11}" for l in range(k)])]
        for j in range(d):
            lines.append(f"  {j + 1:>7}  " + "  ".join(f"{v:>11.5g}" for v in (self.mean[j], *self.components[j])))
        lines += [f"  note: {m}" for m in self.messages]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"PPCAResult(method={self.method!r}, n_features={self.n_features}, "
                f"n_components={self.n_components}, noise_variance={self.noise_variance:.6g}, "
                f"log_likelihood={self.log_likelihood:.6f}, status={self.status!r}, n_iter={self.n_iter})")


# ------------------------------------------------------------------------------------------------ checks
def _check_data(x: torch.Tensor, n_components) -> torch.Tensor:
    n, d = x.shape
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
        raise ModelError(f"n_components must be an integer (found {n_components!r})")
    k = int(n_components)
    if d < 2:
        raise ModelError(f"probabilistic PCA needs at least 2 features (columns); X has {d}")
    if not 1 <= k <= d - 1:
        raise ModelError(f"n_components must be between 1 and d - 1 = {d - 1} (found {k}); with k = d the noise "
                         f"variance is not identifiable")
    mask = ~torch.isnan(x)
    empty_rows = torch.nonzero(~mask.any(1)).flatten()
    if len(empty_rows):
        i = int(empty_rows[0])
        raise DatasetError(f"all values of the row are missing (NaN); {len(empty_rows)} such row(s)", source="X",
                           row=i, fix="remove rows without any observed value (rows are counted from 0)")
    empty_cols = torch.nonzero(~mask.any(0)).flatten()
    if len(empty_cols):
        j = int(empty_cols[0])
        raise DatasetError("all values of the column are missing (NaN): its mean cannot be estimated", source="X",
                           column=str(j), fix="remove the column (columns are counted from 0)")
    if n < 2:
        raise DatasetError(f"X has {n} row; probabilistic PCA needs at least 2", source="X",
                           fix="give more rows")
    return mask


def _check_options(method, ddof, max_iter, tol):
    if method not in PPCA_METHODS:
        raise ModelError(f"unknown method {method!r}; choose one of {', '.join(PPCA_METHODS)}")
    if ddof not in (0, 1) or isinstance(ddof, bool):
        raise ModelError(f"ddof must be 0 (maximum likelihood) or 1 (scikit-learn's PCA); found {ddof!r}")
    if ddof != 0 and method != "closed_form":
        raise ModelError(f"ddof={ddof} applies to method='closed_form' only; {method} maximises the likelihood "
                         f"(ddof=0)")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer))
                                 or max_iter < 1):
        raise ModelError(f"max_iter must be an integer >= 1 (found {max_iter!r})")
    if tol is not None and not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0):
        raise ModelError(f"tol must be a number > 0 (found {tol!r})")


# -------------------------------------------------------------------------------------------- estimators
def _closed_form(x: torch.Tensor, k: int, ddof: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, d = x.shape
    if n - ddof < 1:
        raise DatasetError(f"X has {n} rows; the covariance with ddof={ddof} needs at least {ddof + 1}", source="X",
                           fix="give more rows")
    mu = x.mean(0)
    xc = x - mu
    s = xc.T @ xc / (n - ddof)
    evals, evecs = torch.linalg.eigh(s)
    evals, evecs = evals.flip(0), evecs.flip(1)
    s2 = evals[k:].mean()
    if not float(s2) > 1e-12 * max(float(evals[0]), 1e-300):
        raise EstimationError(f"the centred data span at most {k} dimensions (the {d - k} smallest eigenvalues of the "
                              f"covariance are ~0), so the PPCA likelihood is unbounded (σ² → 0); use fewer "
                              f"components or more rows (n = {n}, d = {d})")
    w = evecs[:, :k] * torch.sqrt((evals[:k] - s2).clamp_min(0.0))
    return mu, _sign_convention(w), s2


def _sign_convention(w: torch.Tensor) -> torch.Tensor:
    """Each column with its largest-magnitude entry positive (a deterministic sign for the output)."""
    idx = w.abs().argmax(0)
    sign = torch.sign(w.gather(0, idx[None])[0])
    return w * torch.where(sign == 0, torch.ones_like(sign), sign)


def _random_start(d: int, k: int, seed: int, dtype, device) -> torch.Tensor:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return (0.5 * torch.randn(d, k, generator=gen, dtype=dtype)).to(device)


def _em_complete(s: torch.Tensor, n: int, k: int, w: torch.Tensor, s2: torch.Tensor, max_iter: int, tol: float,
                 expand: bool = True):
    """Tipping & Bishop's EM on the (ddof=0) covariance S of centred data; μ is the column mean.

    ``expand``: parameter-expanded (PX-EM) step as in :func:`_em_missing`; with μ at the column
    mean the mean of z stays 0 and the expansion rescales W by chol(mean E[z zᵀ]).
    """
    d = s.shape[0]
    eye = torch.eye(k, dtype=s.dtype, device=s.device)
    tr_s = torch.trace(s)
    history, converged, it, failure = [], False, 0, None
    for it in range(1, max_iter + 1):
        sw = s @ w
        m = w.T @ w + s2 * eye
        chol, info = torch.linalg.cholesky_ex(m)
        if int(info) != 0 or not bool(torch.isfinite(chol).all()):
            failure = f"EM stopped at iteration {it}: σ² I + WᵀW is not positive definite (σ² = {float(s2):.3g})"
            break
        minv_wt_sw = torch.cholesky_solve(w.T @ sw, chol)
        # log-likelihood at the current (W, σ²): log|C| and tr(C⁻¹ S) by Woodbury
        logdet = (d - k) * torch.log(s2) + 2.0 * torch.log(torch.diagonal(chol)).sum()
        history.append(float(-0.5 * n * (d * _LOG2PI + logdet + (tr_s - torch.trace(minv_wt_sw)) / s2)))
        try:
            w_new = torch.linalg.solve(s2 * eye + minv_wt_sw, sw, left=False)   # S W (σ² I + M⁻¹ Wᵀ S W)⁻¹
            s2_new = (tr_s - torch.trace(sw @ torch.cholesky_solve(w_new.T, chol))) / d
            if expand:   # mean E[z zᵀ] = σ² M⁻¹ + M⁻¹ Wᵀ S W M⁻¹
                b_cov = s2 * torch.cholesky_inverse(chol) + torch.cholesky_solve(minv_wt_sw.T, chol)
                w_new = w_new @ torch.linalg.cholesky(0.5 * (b_cov + b_cov.T))
        except (RuntimeError, torch.linalg.LinAlgError) as exc:
            failure = f"EM stopped at iteration {it}: {exc}"
            break
        if not (bool(torch.isfinite(w_new).all()) and bool(torch.isfinite(s2_new)) and float(s2_new) > 0):
            failure = (f"EM stopped at iteration {it}: the update gave σ² = {float(s2_new):.3g} or a non-finite W "
                       f"(the data may lie in a {k}-dimensional subspace, where the likelihood is unbounded)")
            break
        change = max(float((w_new @ w_new.T - w @ w.T).abs().max()), float((s2_new - s2).abs() / s2_new))
        w, s2 = w_new, s2_new
        if float(s2) < _S2_FLOOR:
            failure = _degenerate(it, k)
            break
        if change < tol:
            converged = True
            break
    return torch.zeros(d, dtype=s.dtype, device=s.device), w, s2, it, converged, history, failure


def _em_missing(x: torch.Tensor, mask: torch.Tensor, k: int, mu: torch.Tensor, w: torch.Tensor, s2: torch.Tensor,
                max_iter: int, tol: float, expand: bool = True):
    """Exact EM for PPCA with missing values (Ilin & Raiko 2010), all rows at once.

    ``expand``: parameter-expanded EM (PX-EM, Liu, Rubin & Wu 1998). The M-step also fits a mean
    a and covariance B of z (z ~ N(a, B) in the expanded model) and maps back to the original
    model (μ ← μ + W a, W ← W chol(B)); an EM iteration of the expanded model, so the exact
    likelihood still never decreases, without plain EM's slow drift along the direction in
    which μ and the mean of z trade off (thousands of iterations when z is well determined).
    """
    n, d = x.shape
    m = mask.to(x.dtype)
    x0 = torch.where(mask, x, torch.zeros_like(x))
    n_obs = m.sum()
    sum_x2 = (m * x0 * x0).sum()
    ones = torch.ones(n, 1, dtype=x.dtype, device=x.device)
    history, converged, it, failure = [], False, 0, None
    for it in range(1, max_iter + 1):
        try:
            mu_new, w_new, s2_new, ll = _em_missing_step(x0, m, mask, k, mu, w, s2, n, d, n_obs, sum_x2, ones, expand)
        except (RuntimeError, torch.linalg.LinAlgError) as exc:
            failure = f"EM stopped at iteration {it}: {exc}"
            break
        history.append(ll)
        if not (bool(torch.isfinite(w_new).all()) and bool(torch.isfinite(mu_new).all())
                and bool(torch.isfinite(s2_new)) and float(s2_new) > 0):
            failure = (f"EM stopped at iteration {it}: the update gave σ² = {float(s2_new):.3g} or non-finite "
                       f"values (the data may lie in a {k}-dimensional subspace, where the likelihood is unbounded)")
            break
        change = max(float((w_new @ w_new.T - w @ w.T).abs().max()), float((s2_new - s2).abs() / s2_new),
                     float((mu_new - mu).abs().max()))
        mu, w, s2 = mu_new, w_new, s2_new
        if float(s2) < _S2_FLOOR:
            failure = _degenerate(it, k)
            break
        if change < tol:
            converged = True
            break
    return mu, w, s2, it, converged, history, failure


def _em_missing_step(x0, m, mask, k, mu, w, s2, n, d, n_obs, sum_x2, ones, expand):
    """One (PX-)EM iteration for missing data; also returns the log-likelihood at the current values."""
    ll, chol, b = masked_marginal(x0 - mu, w, mask, s2)
    zbar = torch.cholesky_solve(b[..., None], chol)[..., 0]                  # E z_i       [n, k]
    ezz = s2 * torch.cholesky_inverse(chol) + zbar[:, :, None] * zbar[:, None, :]   # E z zᵀ  [n, k, k]
    zt = torch.cat([zbar, ones], 1)                                          # E [z; 1]    [n, k+1]
    ezt = torch.cat([torch.cat([ezz, zbar[:, :, None]], 2), torch.cat([zbar[:, None, :], ones[:, :, None]], 2)], 1)
    # per feature j: Σ_{i observes j} E[z̃ z̃ᵀ] and Σ_{i observes j} x_ij E z̃
    a = (m.T @ ezt.reshape(n, -1)).reshape(d, k + 1, k + 1)
    rhs = (m * x0).T @ zt                                                    # [d, k+1]
    wt = torch.linalg.solve(a, rhs[..., None])[..., 0]                       # [W | μ]  [d, k+1]
    quad = (wt[:, None, :] @ a @ wt[:, :, None]).sum()
    s2_new = (sum_x2 - 2.0 * (wt * rhs).sum() + quad) / n_obs
    w_new, mu_new = wt[:, :k], wt[:, k]
    if expand:
        a_z = zbar.mean(0)
        b_cov = ezz.mean(0) - a_z[:, None] * a_z[None, :]
        mu_new = mu_new + w_new @ a_z
        w_new = w_new @ torch.linalg.cholesky(b_cov)
    return mu_new, w_new, s2_new, float(ll.sum())


def _gradient(x: torch.Tensor, mask: torch.Tensor, k: int, mu: torch.Tensor, w: torch.Tensor, s2: torch.Tensor,
              max_iter: int, tol: float):
    """L-BFGS on the exact marginal log-likelihood per observed value; returns the final max |gradient|.

    L-BFGS aims at ``tol / 100`` and runs until its line search cannot improve the objective any
    more (about 1e-8 in float64); converged means a final max |gradient| <= ``tol``.
    """
    n, d = x.shape
    complete = bool(mask.all())
    x0 = torch.where(mask, x, torch.zeros_like(x))
    n_obs = float(mask.sum())
    if complete:
        s = x0.T @ x0 / n          # data are centred by their column means: the MLE of μ is 0 here
        xbar = x0.mean(0)
    params = torch.cat([mu, w.reshape(-1), torch.log(s2).reshape(1)]).detach().clone().requires_grad_(True)
    eye = torch.eye(k, dtype=x.dtype, device=x.device)

    def objective():
        mu_, w_, log_s2 = params[:d], params[d:d + d * k].reshape(d, k), params[-1]
        s2_ = torch.exp(log_s2)
        if complete:
            # −log L / (n d) from S and the mean: tr(C⁻¹ [S + (x̄ − μ)(x̄ − μ)ᵀ]) by Woodbury
            dev = xbar - mu_
            chol = torch.linalg.cholesky(w_.T @ w_ + s2_ * eye)
            logdet = (d - k) * log_s2 + 2.0 * torch.log(torch.diagonal(chol)).sum()
            sw = s @ w_
            tr = (torch.trace(s) - torch.trace(torch.cholesky_solve(w_.T @ sw, chol))) / s2_
            wd = w_.T @ dev
            tr = tr + (dev @ dev - (wd * torch.cholesky_solve(wd[:, None], chol)[:, 0]).sum()) / s2_
            return 0.5 * (d * _LOG2PI + logdet + tr) / d
        ll, _, _ = masked_marginal(x0 - mu_, w_, mask, s2_)
        return -ll.sum() / n_obs

    chunk = min(max_iter, 50)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=chunk, max_eval=int(chunk * 1.5) + 20,
                            tolerance_grad=tol / 100.0, tolerance_change=0.0, history_size=50,
                            line_search_fn="strong_wolfe")

    best = {"loss": math.inf, "params": params.detach().clone()}

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        value = float(loss.detach())
        if math.isfinite(value) and value < best["loss"]:
            best["loss"], best["params"] = value, params.detach().clone()
        return loss

    failure, stalled = None, False
    state = opt.state[opt._params[0]]
    # L-BFGS in chunks of iterations (its state carries over), checking σ² of the accepted point in between
    while int(state.get("n_iter", 0)) < max_iter:
        before = int(state.get("n_iter", 0))
        opt.param_groups[0]["max_iter"] = min(chunk, max_iter - before)
        try:
            opt.step(closure)
        except (RuntimeError, torch.linalg.LinAlgError) as exc:   # e.g. a Cholesky failure when σ² underflows
            failure = f"L-BFGS stopped: {exc}"
            break
        if float(params[-1].detach()) < math.log(_S2_FLOOR):
            failure = _degenerate(int(state.get("n_iter", 0)), k)
            break
        if int(state.get("n_iter", 0)) - before < opt.param_groups[0]["max_iter"]:
            stalled = True   # L-BFGS stopped by itself: gradient tolerance or no more progress
            break
    n_iter = int(state.get("n_iter", 0))
    grad_max = math.nan
    with torch.no_grad():
        params.copy_(best["params"])      # the best point seen (a failed line-search trial is not kept)
    if failure is None:
        opt.zero_grad()
        try:
            loss = objective()
            loss.backward()
            grad_max = float(params.grad.abs().max())
        except (RuntimeError, torch.linalg.LinAlgError) as exc:
            failure = f"L-BFGS stopped: {exc}"
    p = params.detach()
    mu, w, s2 = p[:d], p[d:d + d * k].reshape(d, k), torch.exp(p[-1])
    converged = failure is None and math.isfinite(grad_max) and grad_max <= tol
    if failure is None and not converged and stalled:
        failure = (f"L-BFGS could not improve the likelihood further after {n_iter} iterations (max |gradient| "
                   f"{grad_max:.3g} > tolerance {tol:g})")
    return mu, w, s2, n_iter, converged, grad_max, failure


def fit_ppca(X, n_components: int, *, method: str = "closed_form", ddof: int = 0, max_iter: int | None = None,
             tol: float | None = None, seed: int = 0, device=None) -> PPCAResult:
    """Fit probabilistic PCA by maximum likelihood.

    Parameters
    ----------
    X : array-like ``[n, d]``
        Data (numpy, pandas DataFrame or torch tensor); NaN marks a missing value (``em`` and
        ``gradient`` only). Rows and columns without any observed value are refused.
    n_components : int
        k, between 1 and d − 1.
    method : {"closed_form", "em", "gradient"}
        See the module docstring.
    ddof : {0, 1}
        Closed form only: 0 gives the maximum-likelihood estimate, 1 the parameters of
        ``sklearn.decomposition.PCA`` (covariance with n − 1).
    max_iter : int, optional
        Iterations of EM (default 20000) or of L-BFGS (default 5000).
    tol : float, optional
        EM: stop when no entry of W Wᵀ or μ changes by more than ``tol`` (in units of the data
        variance), nor σ² by more than ``tol`` relative, in an iteration (default 1e-10).
        Gradient: converged when the largest gradient of the mean log-likelihood per observed
        value (in those units) is at most ``tol`` (default 1e-6; L-BFGS keeps going to
        ``tol / 100`` or until its line search makes no progress, the float64 limit).
        Both stop, not converged, when σ² falls below 1e-12 of the data variance (data in a
        k-dimensional subspace: unbounded likelihood).
    seed : int
        Seed of the random starting loadings of ``em`` and ``gradient`` (same seed → same result).
    device : torch device, optional
        Where to compute (default: that of ``X`` when it is a tensor, else the CPU).

    Returns
    -------
    PPCAResult
        Not converging is reported (``converged=False``, ``messages``), not raised.

    Raises
    ------
    DatasetError
        ``X`` not 2-D numeric, infinite values, a row or column without observed values.
    ModelError
        Bad ``n_components``, ``method``, ``ddof``, ``max_iter`` or ``tol``; missing values
        with the closed form.
    EstimationError
        The closed form finds data spanning at most k dimensions (σ² = 0, unbounded likelihood).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> X = rng.normal(size=(100, 2)) @ rng.normal(size=(2, 4)) + 0.3 * rng.normal(size=(100, 4))
    >>> a, b = fit_ppca(X, 2), fit_ppca(X, 2, method="em")
    >>> bool(np.allclose(a.loading_covariance(), b.loading_covariance(), atol=1e-7))
    True
    >>> X[0, 1] = np.nan
    >>> fit_ppca(X, 2, method="gradient").status
    'converged'
    """
    _check_options(method, ddof, max_iter, tol)
    x = as_data_matrix(X, device=device)
    mask = _check_data(x, n_components)
    k = int(n_components)
    n, d = x.shape
    complete = bool(mask.all())
    messages: list[str] = []
    history: list[float] = []
    if method == "closed_form":
        if not complete:
            i, j = (int(v) for v in torch.nonzero(~mask)[0])
            raise ModelError(f"the closed form needs complete data; X has {int((~mask).sum())} missing values (the "
                             f"first at row {i}, column {j}, counted from 0). Use method='em' (or 'gradient'), which "
                             f"integrate the missing values out")
        mu, w, s2 = _closed_form(x, k, ddof)
        n_iter, converged = 0, True
    else:
        max_iter = _DEFAULT_MAX_ITER[method] if max_iter is None else int(max_iter)
        tol = _DEFAULT_TOL[method] if tol is None else float(tol)
        # centre by the column means and scale by the root mean column variance
        mask_f = mask.to(x.dtype)
        x0 = torch.where(mask, x, torch.zeros_like(x))
        centre = x0.sum(0) / mask_f.sum(0)
        dev = torch.where(mask, x - centre, torch.zeros_like(x))
        var = (dev * dev).sum(0) / mask_f.sum(0)
        scale = torch.sqrt(var.mean())
        if not float(scale) > 0:
            raise EstimationError("every column of X is constant; probabilistic PCA has nothing to fit")
        xs = torch.where(mask, dev / scale, torch.full_like(x, math.nan))
        w0 = _random_start(d, k, seed, x.dtype, x.device)
        s20 = torch.tensor(1.0, dtype=x.dtype, device=x.device)
        mu0 = torch.zeros(d, dtype=x.dtype, device=x.device)
        if method == "em":
            if complete:
                xc = torch.where(mask, xs, torch.zeros_like(xs))
                mu, w, s2, n_iter, converged, history, failure = _em_complete(xc.T @ xc / n, n, k, w0, s20,
                                                                              max_iter, tol)
            else:
                mu, w, s2, n_iter, converged, history, failure = _em_missing(xs, mask, k, mu0, w0, s20, max_iter, tol)
            if failure:
                messages.append(failure)
            if len(history) > 1:
                drops = np.diff(history)
                worst = float(drops.min())
                if worst < -1e-8 * max(1.0, abs(history[-1])):
                    messages.append(f"the log-likelihood decreased by {-worst:.3g} in an EM iteration (round-off "
                                    f"or a numerical problem)")
            criterion = f"parameter change < {tol:g}"
        else:
            mu, w, s2, n_iter, converged, grad_max, failure = _gradient(xs, mask, k, mu0, w0, s20, max_iter, tol)
            if failure is None and float(s2) < _S2_FLOOR:
                converged, failure = False, _degenerate(n_iter, k)
            if failure:
                messages.append(failure)
            criterion = f"max |gradient| {grad_max:.3g} (tolerance {tol:g})"
        finite = bool(torch.isfinite(mu).all() & torch.isfinite(w).all() & torch.isfinite(s2)) and float(s2) > 0
        if not finite:
            converged = False
            messages.append("the iterations produced a non-finite value or σ² <= 0 (the data may lie in a "
                            f"{k}-dimensional subspace, which makes the likelihood unbounded); try fewer components")
            return PPCAResult(method, _readonly(np.full(d, np.nan)), _readonly(np.full((d, k), np.nan)), math.nan,
                              math.nan, n_iter, False, tuple(messages), n, int(mask.sum()), ddof, tuple(history))
        mu, w, s2 = centre + scale * mu, _sign_convention(scale * w), scale * scale * s2
        history = [h - float(mask.sum()) * math.log(float(scale)) for h in history]   # back to the data's units
        if converged:
            messages.append(f"converged after {n_iter} iterations ({criterion})")
        elif failure:
            messages.append(f"did not converge: stopped after {n_iter} iterations; the estimates are those of the "
                            f"last (best) iterate")
        else:
            messages.append(f"did not converge after {n_iter} iterations = max_iter ({criterion})")
    ll = ppca_log_likelihood(x, mu, w, s2)
    return PPCAResult(method=method, mean=_readonly(mu.detach().cpu().numpy()),
                      components=_readonly(w.detach().cpu().numpy()), noise_variance=float(s2),
                      log_likelihood=float(ll), n_iter=int(n_iter), converged=bool(converged),
                      messages=tuple(messages), n_samples=int(n), n_observed=int(mask.sum()), ddof=int(ddof),
                      history=tuple(history))
