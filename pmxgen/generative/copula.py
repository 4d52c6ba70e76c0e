"""Baseline generator: the Gaussian copula with empirical marginals.

Each modelled (and conditioning) column gets a latent normal score:

- a continuous column (on the encoded scale of :mod:`.tabular`; ranks do not depend on it): the
  van der Waerden score ``z = Φ⁻¹(r / (n + 1))`` of its rank ``r`` (ties get their average rank);
- a binary or categorical column with level shares ``p_k`` and cumulative shares ``F_k``: the
  distributional transform ``z = Φ⁻¹(F_{k-1} + V·p_k)``, ``V ~ U(0, 1)`` (seeded), so that ``Φ(z)``
  is exactly uniform (levels are ordered as in the schema: for a nominal column with more than two
  levels that order is arbitrary, a known limit of Gaussian copulas).

The scores' correlation matrix ``R`` (Pearson, over every row of the data) is the copula, except
for pairs with a discrete column: the sampler turns a score into a level by thresholds
(``level = #{k : Φ(z) > F_k}``), so the right parameter there is the correlation of the latent
Gaussian behind the thresholds, not the (attenuated) correlation of randomised scores. It is
estimated by the two-step polyserial estimator ``ρ = r(s, y)·sd(y) / Σ_k φ(τ_k)`` (Olsson,
Drasgow and Dorans 1982) with a continuous column's scores ``s`` and level index ``y``,
``τ_k = Φ⁻¹(F_k)``, and by moment matching ``E[y_i y_j] = Σ_{k,l} Φ₂(−τ_k, −τ_l; ρ)`` (the
polychoric correlation; exact in ρ for two binary columns) between discrete columns; the
matrix is then made positive definite by clipping eigenvalues (``discrete_correlation="scores"``
keeps the plain score correlations). To
sample, ``z ~ N(0, R)``, ``u = Φ(z)``, and each column is mapped back by its empirical quantile
function: a continuous column by linear interpolation between its order statistics placed at
``k/(n + 1)`` (clamped to the observed minimum and maximum below ``1/(n+1)`` and above ``n/(n+1)``,
so generated values never leave the observed range, hence respect every bound), a discrete column
by ``level = #{k : F_k < u}`` (exact level shares). The interpolation is on the encoded scale
(logarithmic for positive columns). Decoding a training row's own scores returns the row exactly.

Conditional generation conditions the Gaussian of the scores: a continuous condition value is
mapped to its score through the interpolated empirical CDF; a discrete condition level fixes its
score to the interval ``[Φ⁻¹(F_{k-1}), Φ⁻¹(F_k)]``, sampled from the truncated conditional normal
(exact for one discrete condition; several are sampled jointly by ``gibbs_sweeps`` Gibbs sweeps);
then ``z_x | z_c ~ N(R_xc R_cc⁻¹ z_c, R_xx − R_xc R_cc⁻¹ R_cx)``.

The fitted state keeps the sorted values of each continuous column (the empirical marginals):
a saved copula therefore holds the data's marginal values (not its rows).

Examples
--------
>>> import numpy as np, pandas as pd
>>> from pmxgen.generative import make_generator
>>> rng = np.random.default_rng(0)
>>> wt = np.exp(np.log(70) + 0.2 * rng.standard_normal(300))
>>> frame = pd.DataFrame({"WT": wt, "HT": 100 + 1.0 * wt + 5 * rng.standard_normal(300),
...                       "SEX": rng.integers(1, 3, 300)})
>>> gen = make_generator("gaussian_copula").fit(frame)
>>> draws = gen.sample(5000, seed=1)
>>> bool(draws["WT"].between(wt.min(), wt.max()).all()), sorted(draws["SEX"].unique().tolist())
(True, [1, 2])
>>> round(float(np.corrcoef(draws["WT"], draws["HT"])[0, 1]), 1)
0.9
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import ModelError
from .generator import Generator, register_generator

__all__ = ["GaussianCopulaGenerator"]


@dataclass(frozen=True)
class _Latent:
    """One column's latent score: where its coordinates are (x or c), its kind, its slot in the state."""

    name: str
    kind: str            # continuous, binary, categorical
    conditioning: bool
    start: int           # first encoded coordinate in x (modelled) or c (conditioning)
    width: int
    mean: tuple
    sd: tuple
    slot: int            # column of sorted_values (continuous) or row of cum_shares (discrete)
    levels: int = 0


class _CopulaState(torch.nn.Module):
    """Sorted continuous latents ``[n, n_cont]`` (encoded scale, and ``data_values`` in data units),
    cumulative level shares ``[n_disc, max_levels]``, ``R``.

    The number of rows ``n`` is known only after fitting: loading a state resizes the buffers.
    """

    def __init__(self, n_cont: int, n_disc: int, max_levels: int, p: int) -> None:
        super().__init__()
        self.register_buffer("sorted_values", torch.zeros(0, n_cont, dtype=torch.float64))
        self.register_buffer("data_values", torch.zeros(0, n_cont, dtype=torch.float64))
        self.register_buffer("cum_shares", torch.ones(n_disc, max_levels, dtype=torch.float64))
        self.register_buffer("correlation", torch.eye(p, dtype=torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("sorted_values", "data_values"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.sorted_values.device,
                                                     dtype=self.sorted_values.dtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _ecdf(values: torch.Tensor, sorted_values: torch.Tensor) -> torch.Tensor:
    """Interpolated empirical CDF ``rank / (n + 1)`` of ``values [m]`` (average rank on ties; clamped to the range)."""
    n = sorted_values.shape[0]
    sorted_values = sorted_values.contiguous()
    v = values.clamp(sorted_values[0], sorted_values[-1]).contiguous()
    lo = torch.searchsorted(sorted_values, v, right=False)
    hi = torch.searchsorted(sorted_values, v, right=True)
    tied = hi > lo
    left = sorted_values[(lo - 1).clamp(min=0, max=n - 1)]
    right = sorted_values[lo.clamp(max=n - 1)]
    gap = right - left
    frac = torch.where(gap > 0, (v - left) / torch.where(gap > 0, gap, torch.ones_like(gap)), torch.zeros_like(v))
    rank = torch.where(tied, (lo + 1 + hi).to(v.dtype) / 2, lo.to(v.dtype) + frac)
    return rank / (n + 1)


def _quantile(u: torch.Tensor, sorted_values: torch.Tensor) -> torch.Tensor:
    """Empirical quantile function: order statistic ``k`` at ``k/(n+1)``, linear between, clamped outside."""
    n = sorted_values.shape[0]
    pos = (u * (n + 1)).clamp(1.0, float(n)) - 1.0         # 0-based fractional index
    i = pos.floor().long().clamp(max=n - 1)
    j = (i + 1).clamp(max=n - 1)
    frac = pos - i.to(pos.dtype)
    return sorted_values[i] + frac * (sorted_values[j] - sorted_values[i])


def _ndtri(u: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(u.dtype).eps
    return torch.special.ndtri(u.clamp(eps, 1 - eps))


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)


def _bvn_upper(a: np.ndarray, b: np.ndarray, rho: float) -> np.ndarray:
    """``P(z1 > a, z2 > b)`` of a standard bivariate normal with correlation ``rho``.

    Plackett's identity ``∂Φ₂/∂ρ = φ₂``: ``Φ₂(h, k; ρ) = Φ(h)Φ(k) + ∫₀^ρ φ₂(h, k; r) dr``
    (64-point Gauss-Legendre), with ``h = −a``, ``k = −b``.
    """
    from scipy.special import ndtr
    h, k = -np.asarray(a, dtype=float), -np.asarray(b, dtype=float)
    r = 0.5 * rho * (_GL_NODES + 1.0)                      # nodes on [0, rho]
    h, k = h[..., None], k[..., None]
    q = 1.0 - r * r
    dens = np.exp(-(h * h - 2 * r * h * k + k * k) / (2 * q)) / (2 * np.pi * np.sqrt(q))
    return ndtr(h[..., 0]) * ndtr(k[..., 0]) + 0.5 * rho * (dens * _GL_WEIGHTS).sum(-1)


def _latent_correlation(score_corr: np.ndarray, scores: np.ndarray, levels: list, cums: list,
                        limit: float = 0.995) -> np.ndarray:
    """The score correlation with pairs involving discrete columns replaced by latent (polyserial /
    polychoric) correlations, then made positive definite (see the module docstring)."""
    from scipy.optimize import brentq
    from scipy.stats import norm
    p = score_corr.shape[0]
    out = score_corr.copy()
    tau = [None if c is None else norm.ppf(np.clip(c[:-1], 1e-15, 1 - 1e-15)) for c in cums]
    for i in range(p):
        for j in range(i + 1, p):
            if levels[i] is None and levels[j] is None:
                continue
            if levels[i] is None or levels[j] is None:
                s, d = (i, j) if levels[i] is None else (j, i)
                y = levels[d].astype(float)
                if y.std() == 0:
                    continue
                r = np.corrcoef(scores[:, s], y)[0, 1]
                rho = r * y.std() / norm.pdf(tau[d]).sum()
            else:
                yi, yj = levels[i].astype(float), levels[j].astype(float)
                target = float(np.mean(yi * yj))
                a, b = np.meshgrid(tau[i], tau[j], indexing="ij")

                def moment(rho, a=a, b=b):
                    return float(_bvn_upper(a.ravel(), b.ravel(), rho).sum())
                lo, hi = moment(-limit), moment(limit)
                rho = -limit if target <= lo else limit if target >= hi else brentq(
                    lambda v: moment(v) - target, -limit, limit, xtol=1e-10)
            out[i, j] = out[j, i] = float(np.clip(rho, -limit, limit))
    vals, vecs = np.linalg.eigh(out)
    if vals.min() < 1e-6:
        out = (vecs * np.maximum(vals, 1e-6)) @ vecs.T
        d = np.sqrt(np.diag(out))
        out = out / d[:, None] / d[None, :]
    return out


@register_generator
class GaussianCopulaGenerator(Generator):
    """Gaussian copula with empirical marginals (closed-form fit; see the module docstring).

    Parameters
    ----------
    jitter : float
        Added to the diagonal of the score correlation before renormalising it to a unit
        diagonal, so that ``R`` stays positive definite (e.g. with more columns than rows).
    gibbs_sweeps : int
        Gibbs sweeps over the scores of several discrete condition columns (one discrete
        condition is sampled exactly).
    discrete_correlation : {"latent", "scores"}
        How pairs with a discrete column enter ``R``: ``"latent"`` (default) estimates the
        correlation of the latent Gaussian scores that the sampler thresholds (polyserial with a
        continuous column, polychoric between discrete ones); ``"scores"`` takes the Pearson
        correlation of the distributional-transform scores, which is attenuated.
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator`
        (``max_epochs``, ``learning_rate`` ... are not used: the fit is closed-form; all rows,
        the held-out split included, are used).
    """

    name = "gaussian_copula"
    tractable_log_prob = False

    def __init__(self, *, jitter: float = 1e-9, gibbs_sweeps: int = 50, discrete_correlation: str = "latent",
                 **common) -> None:
        super().__init__(**common)
        self.jitter = jitter
        self.gibbs_sweeps = gibbs_sweeps
        self.discrete_correlation = discrete_correlation

    def _validate(self) -> None:
        super()._validate()
        if not self.jitter >= 0:
            raise ModelError(f"jitter must be >= 0 (found {self.jitter})")
        if int(self.gibbs_sweeps) < 1:
            raise ModelError(f"gibbs_sweeps must be >= 1 (found {self.gibbs_sweeps})")
        if self.discrete_correlation not in ("latent", "scores"):
            raise ModelError(f"discrete_correlation must be 'latent' or 'scores' (found {self.discrete_correlation!r})")

    # -- layout ---------------------------------------------------------------------------------
    def _layout(self) -> list[_Latent]:
        t = self.transform_
        latents, n_cont, n_disc = [], 0, 0
        for conditioning, names, mean, sd in ((False, t.modelled, t.mean, t.sd),
                                              (True, t.conditions, t.cond_mean, t.cond_sd)):
            start = 0
            for name in names:
                spec = t.schema[name]
                w = spec.width
                if spec.kind == "continuous":
                    slot, n_cont = n_cont, n_cont + 1
                else:
                    slot, n_disc = n_disc, n_disc + 1
                latents.append(_Latent(name, spec.kind, conditioning, start, w, tuple(mean[start:start + w]),
                                       tuple(sd[start:start + w]), slot,
                                       len(spec.levels) if spec.kind != "continuous" else 0))
                start += w
        return latents

    def _build(self, dim: int, cond_dim: int) -> torch.nn.Module:
        self._latents = self._layout()
        n_cont = sum(1 for v in self._latents if v.kind == "continuous")
        disc = [v.levels for v in self._latents if v.kind != "continuous"]
        return _CopulaState(n_cont, len(disc), max(disc, default=1), len(self._latents))

    # -- discrete columns -------------------------------------------------------------------------
    @staticmethod
    def _levels_of(block: torch.Tensor, lat: _Latent) -> torch.Tensor:
        mean = torch.as_tensor(lat.mean, dtype=block.dtype, device=block.device)
        sd = torch.as_tensor(lat.sd, dtype=block.dtype, device=block.device)
        raw = block * sd + mean
        if lat.kind == "binary":
            return torch.floor(raw[:, 0]).clamp(0, 1).long()
        return raw.argmax(dim=1)

    @staticmethod
    def _encode_levels(k: torch.Tensor, lat: _Latent, dtype) -> torch.Tensor:
        mean = torch.as_tensor(lat.mean, dtype=dtype, device=k.device)
        sd = torch.as_tensor(lat.sd, dtype=dtype, device=k.device)
        if lat.kind == "binary":
            raw = (k.to(dtype) + 0.5)[:, None]
        else:
            raw = torch.nn.functional.one_hot(k, lat.levels).to(dtype) + 0.25
        return (raw - mean) / sd

    def _cum(self, lat: _Latent) -> torch.Tensor:
        return self.network.cum_shares[lat.slot, :lat.levels]

    # -- fit ------------------------------------------------------------------------------------
    def _train(self, x, c, x_val, c_val):
        xs = x if x_val is None else torch.cat([x, x_val])
        cs = None if c is None else (c if c_val is None else torch.cat([c, c_val]))
        n = xs.shape[0]
        state = self.network
        sorted_cols, scores, levels = [], [], []
        for lat in self._latents:
            block = (cs if lat.conditioning else xs)[:, lat.start:lat.start + lat.width]
            if lat.kind == "continuous":
                s = torch.sort(block[:, 0]).values
                sorted_cols.append(s)
                scores.append(_ndtri(_ecdf(block[:, 0], s)))
                levels.append(None)
                continue
            k = self._levels_of(block, lat)
            levels.append(k.cpu().numpy())
            shares = torch.bincount(k, minlength=lat.levels).to(xs.dtype) / n
            cum = torch.cumsum(shares, 0)
            cum[-1] = 1.0
            state.cum_shares[lat.slot, :lat.levels] = cum
            lower = torch.cat([torch.zeros(1, dtype=xs.dtype, device=xs.device), cum[:-1]])
            v = torch.rand(n, generator=self._generator, dtype=xs.dtype, device=xs.device)
            scores.append(_ndtri(lower[k] + v * shares[k]))
        state.sorted_values = (torch.stack(sorted_cols, 1) if sorted_cols
                               else torch.zeros(n, 0, dtype=xs.dtype, device=xs.device))
        frame = getattr(self, "_fit_frame", None)
        names = [lat.name for lat in self._latents if lat.kind == "continuous"]
        if frame is not None and len(frame) == n and all(c in frame.columns for c in names):
            data = np.sort(np.column_stack([frame[c].to_numpy(dtype=np.float64) for c in names]), axis=0) \
                if names else np.zeros((n, 0))
            state.data_values = torch.as_tensor(data, dtype=xs.dtype, device=xs.device)
        self._fit_frame = None
        z = torch.stack(scores, 1)
        if z.shape[1] == 1:
            corr = torch.ones(1, 1, dtype=z.dtype, device=z.device)
        else:
            corr = torch.corrcoef(z.T)
        if not bool(torch.isfinite(corr).all()):
            return "failed", "the normal scores have a constant column; drop constant columns", []
        if self.discrete_correlation == "latent" and any(lat.kind != "continuous" for lat in self._latents):
            corr = torch.as_tensor(_latent_correlation(corr.cpu().numpy(), z.cpu().numpy(), levels,
                                                       [self._cum(lat).cpu().numpy() if lat.kind != "continuous"
                                                        else None for lat in self._latents]),
                                   dtype=z.dtype, device=z.device)
        corr = corr + self.jitter * torch.eye(corr.shape[0], dtype=corr.dtype, device=corr.device)
        d = torch.sqrt(torch.diagonal(corr))
        corr = corr / d[:, None] / d[None, :]
        if torch.linalg.cholesky_ex(corr).info != 0:
            return ("failed", "the correlation of the normal scores is singular (a column duplicates another?); "
                              "drop the duplicate or raise jitter", [])
        state.correlation.copy_(corr)
        return "converged", f"closed form from {n} rows ({z.shape[1]} normal-score columns)", []

    def fit(self, data, conditions=None, *, source: str = "<data>") -> "GaussianCopulaGenerator":
        """As :meth:`Generator.fit`; the copula also keeps each continuous column's sorted values in data
        units, so that generated values that fall on an order statistic are that data value exactly
        (not its image through the encoding and back, which differs in the last bits)."""
        from .tabular import as_frame
        self._fit_frame = as_frame(data)[0]
        try:
            return super().fit(data, conditions, source=source)
        finally:
            self._fit_frame = None

    def _snap(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Replace values within 1e-10 (relative) of a data value by that value (undoes encoding roundoff)."""
        values = self.network.data_values
        if values.shape[0] == 0:
            return frame
        for lat in self._latents:
            if lat.kind != "continuous" or lat.conditioning or lat.name not in frame.columns:
                continue
            s = values[:, lat.slot].cpu().numpy()
            v = frame[lat.name].to_numpy(dtype=np.float64)
            i = np.clip(np.searchsorted(s, v), 1, len(s) - 1)
            near = np.where(np.abs(v - s[i - 1]) <= np.abs(s[i] - v), s[i - 1], s[i])
            close = np.abs(v - near) <= 1e-10 * np.maximum(np.abs(near), 1e-300)
            if close.any():
                frame[lat.name] = np.where(close, near, v).astype(frame[lat.name].dtype, copy=False)
        return frame

    def _output(self, z: torch.Tensor, conditions):
        out = super()._output(z, conditions)
        if isinstance(out, pd.DataFrame):
            return self._snap(out)
        names = list(self.transform_.modelled)
        snapped = self._snap(pd.DataFrame(out.numpy(), columns=names))
        return torch.tensor(snapped.to_numpy(dtype=np.float64))

    # -- sample ---------------------------------------------------------------------------------
    def _condition_scores(self, c: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        lats = [v for v in self._latents if v.conditioning]
        offset = sum(1 for v in self._latents if not v.conditioning)
        R = self.network.correlation[offset:, offset:]
        n, dtype = c.shape[0], c.dtype
        z = torch.zeros(n, len(lats), dtype=dtype, device=c.device)
        lo = torch.full_like(z, -torch.inf)
        hi = torch.full_like(z, torch.inf)
        discrete = []
        for j, lat in enumerate(lats):
            block = c[:, lat.start:lat.start + lat.width]
            if lat.kind == "continuous":
                z[:, j] = _ndtri(_ecdf(block[:, 0], self.network.sorted_values[:, lat.slot]))
                continue
            k = self._levels_of(block, lat)
            cum = self._cum(lat)
            lower = torch.cat([torch.zeros(1, dtype=dtype, device=c.device), cum[:-1]])
            lo[:, j] = torch.special.ndtri(lower[k])
            hi[:, j] = torch.special.ndtri(cum[k])
            discrete.append(j)
        sweeps = 1 if len(discrete) <= 1 else int(self.gibbs_sweeps)
        for j in discrete:   # start inside the intervals
            z[:, j] = self._truncated(torch.zeros(n, dtype=dtype, device=c.device), 1.0, lo[:, j], hi[:, j], generator)
        for _ in range(sweeps):
            for j in discrete:
                rest = [i for i in range(len(lats)) if i != j]
                if rest:
                    w = torch.linalg.solve(R[rest][:, rest], R[rest, j])
                    m = z[:, rest] @ w
                    s = float(torch.sqrt((1 - R[j, rest] @ w).clamp(min=1e-12)))
                else:
                    m, s = torch.zeros(n, dtype=dtype, device=c.device), 1.0
                z[:, j] = self._truncated(m, s, lo[:, j], hi[:, j], generator)
        return z

    @staticmethod
    def _truncated(m, s, a, b, generator):
        """Draws of N(m, s²) truncated to [a, b] by the inverse CDF (clamped into [a, b])."""
        pa = torch.special.ndtr((a - m) / s)
        pb = torch.special.ndtr((b - m) / s)
        v = torch.rand(m.shape, generator=generator, dtype=m.dtype, device=m.device)
        z = m + s * _ndtri(pa + v * (pb - pa))
        return torch.minimum(torch.maximum(z, a), b)

    def _sample(self, n, c, generator):
        offset = sum(1 for v in self._latents if not v.conditioning)
        R = self.network.correlation
        dtype, device = R.dtype, R.device
        eps = torch.randn(n, offset, generator=generator, dtype=dtype, device=device)
        if c is None:
            z = eps @ torch.linalg.cholesky(R).T
        else:
            zc = self._condition_scores(c.to(dtype=dtype, device=device), generator)
            r_xx, r_xc, r_cc = R[:offset, :offset], R[:offset, offset:], R[offset:, offset:]
            gain = torch.linalg.solve(r_cc, r_xc.T).T
            cov = r_xx - gain @ r_xc.T
            cov = 0.5 * (cov + cov.T) + 1e-12 * torch.eye(offset, dtype=dtype, device=device)
            z = zc @ gain.T + eps @ torch.linalg.cholesky(cov).T
        u = torch.special.ndtr(z)
        blocks = []
        for j, lat in enumerate(v for v in self._latents if not v.conditioning):
            if lat.kind == "continuous":
                blocks.append(_quantile(u[:, j], self.network.sorted_values[:, lat.slot])[:, None])
            else:
                cum = self._cum(lat)
                k = (u[:, j:j + 1] > cum[None, :-1]).sum(1).clamp(max=lat.levels - 1)
                blocks.append(self._encode_levels(k, lat, dtype))
        return torch.cat(blocks, 1)

    # -- inspection -----------------------------------------------------------------------------
    @property
    def correlation_(self) -> pd.DataFrame:
        """The normal-score correlation ``R`` by column (modelled columns, then conditions)."""
        self._check_fitted()
        names = [v.name for v in self._latents]
        return pd.DataFrame(self.network.correlation.cpu().numpy(), index=names, columns=names)

    def marginal_quantiles(self, probabilities) -> pd.DataFrame:
        """The empirical quantile functions of the continuous modelled columns, in data units.

        At ``k/(n+1)`` they return the ``k``-th order statistic of the data (exactly; integer
        columns rounded), linear interpolation on the encoded scale in between.

        Examples
        --------
        >>> import numpy as np
        >>> from pmxgen.generative import make_generator
        >>> x = np.random.default_rng(1).gamma(2.0, size=(9, 1)) + 1
        >>> gen = make_generator("gaussian_copula").fit(x)
        >>> q = gen.marginal_quantiles([k / 10 for k in range(1, 10)])["x0"].to_numpy()
        >>> bool(np.allclose(q, np.sort(x[:, 0])))
        True
        """
        self._check_fitted()
        p = torch.as_tensor(np.asarray(probabilities, dtype=np.float64), device=self.network.correlation.device)
        if p.ndim != 1 or not bool(((p > 0) & (p < 1)).all()):
            raise ModelError("probabilities must be a 1-D list of values strictly between 0 and 1")
        blocks = []
        for lat in (v for v in self._latents if not v.conditioning):
            if lat.kind == "continuous":
                blocks.append(_quantile(p, self.network.sorted_values[:, lat.slot])[:, None])
            else:
                blocks.append(self._encode_levels(torch.zeros(len(p), dtype=torch.long, device=p.device), lat,
                                                  p.dtype))
        frame = self._snap(self.transform_.decode(torch.cat(blocks, 1)))
        return frame[[v.name for v in self._latents if not v.conditioning and v.kind == "continuous"]]
