"""Sample-based evaluation of generated tables against real ones, and :func:`evaluate` computing them all.

Mixed tables are compared on one common numeric encoding (:class:`TableEncoding`, fitted on the
real rows): a continuous column is standardised by the real data's mean and SD; a discrete
column (non-numeric, boolean, named ``categorical``, or numeric with at most two distinct real
values) becomes 0/1 indicators — one column for two levels, one per level otherwise, the levels
being those of both tables so that an unseen generated level is visible. Tensors and arrays are
taken as they are (already numeric, on the caller's scale).

Distances (``x`` real ``[n, d]``, ``y`` generated ``[m, d]``, any device):

- :func:`energy_distance`: 2E|X − Y| − E|X − X'| − E|Y − Y'| (the squared energy distance of
  Székely & Rizzo; unbiased by default, so 0 in expectation for equal distributions);
- :func:`sliced_wasserstein`: ``(E_θ W_p^p(θ·X, θ·Y))^{1/p}`` over random unit directions θ, each
  1-D distance exact (quantile functions of the two empirical distributions, unequal sizes
  allowed);
- :func:`wasserstein2`: the exact 2-Wasserstein distance of the two empirical distributions by
  optimal transport (POT ``ot.emd2``, float64), for samples of a few thousand rows;
- :func:`correlation_error`: ‖corr(X) − corr(Y)‖_F on the encoding (Pearson correlations of
  standardised continuous columns and 0/1 indicators; a constant column has correlation 0);
- :func:`precision_recall`: k-NN manifold precision and recall (Kynkäänniemi et al. 2019) and
  density and coverage (Naeem et al. 2020) — the measures of mode dropping;
- :func:`heldout_nll`: −mean log p(real rows) of a generator with a tractable density.

The two-sample tests (MMD permutation test, classifier test, marginal KS) are in
:mod:`pmxgen.generative.two_sample`.

Examples
--------
>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> real = pd.DataFrame({"WT": rng.lognormal(4.2, 0.2, 300), "SEX": rng.integers(1, 3, 300)})
>>> fake = pd.DataFrame({"WT": rng.lognormal(4.2, 0.2, 300), "SEX": rng.integers(1, 3, 300)})
>>> row = evaluate(real, fake, seed=0, n_permutations=100)
>>> row["mmd_p_value"] > 0.05, abs(row["c2st_accuracy"] - 0.5) < 0.1, row["correlation_error"] < 0.2
(True, True, True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import DatasetError, ModelError
from .two_sample import _generator, _pair, classifier_two_sample_test, marginal_tests, mmd_test

__all__ = ["TableEncoding", "encode_tables", "energy_distance", "sliced_wasserstein", "wasserstein2",
           "correlation_error", "precision_recall", "heldout_nll", "evaluate", "METRIC_DESCRIPTIONS"]

#: Pairwise distances without the matrix-product shortcut (exact zeros on the diagonal).
_EXACT = "donot_use_mm_for_euclid_dist"


#: What each column of :func:`evaluate` means (used by the comparison report).
METRIC_DESCRIPTIONS = {
    "mmd2": "unbiased squared MMD, Gaussian kernels at 0.5, 1, 2 × the median distance (0 when equal)",
    "mmd_p_value": "permutation p-value of the MMD test (small: the generator is told apart)",
    "energy_distance": "squared energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'| (unbiased; 0 when equal)",
    "sliced_w2": "sliced 2-Wasserstein distance over random directions (encoded scale)",
    "w2": "exact 2-Wasserstein distance of the empirical distributions (POT; subsample of at most max_points)",
    "c2st_accuracy": "classifier two-sample test: cross-fitted accuracy (0.5 = indistinguishable, 1 = separable)",
    "c2st_auc": "AUC of the same classifier's out-of-fold scores",
    "c2st_p_value": "binomial p-value of the classifier accuracy under chance",
    "ks_max": "largest Kolmogorov–Smirnov statistic over continuous columns",
    "ks_rejected": "continuous columns whose KS test rejects at 5 %",
    "tv_max": "largest total-variation distance of the level shares over discrete columns",
    "correlation_error": "Frobenius norm of the difference of correlation matrices (encoded scale)",
    "precision": "k-NN precision: share of generated rows inside the real manifold (Kynkäänniemi 2019)",
    "recall": "k-NN recall: share of real rows inside the generated manifold (low: dropped modes)",
    "density": "k-NN density (Naeem 2020): about 1 when generated rows are spread like real ones",
    "coverage": "k-NN coverage (Naeem 2020): share of real rows with a generated row in their k-NN ball",
    "nll": "held-out negative log-likelihood per row in data units (nats), tractable generators only",
}


@dataclass
class TableEncoding:
    """Common numeric encoding of two tables with the same columns (see the module docstring).

    Build it with :meth:`fit`; :meth:`encode` maps a table to a float64 tensor ``[n, width]``
    whose columns are :attr:`features`.
    """

    columns: list
    continuous: list
    discrete: dict                 # column -> levels (two levels: one indicator of the second)
    mean: dict = field(default_factory=dict)
    sd: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, real: pd.DataFrame, generated: pd.DataFrame | None = None, *,
            categorical: Sequence[str] | None = None) -> "TableEncoding":
        """Column kinds from ``real``; levels from both tables; scales from ``real``."""
        columns = list(real.columns)
        if generated is not None:
            missing = [c for c in columns if c not in generated.columns]
            extra = [c for c in generated.columns if c not in columns]
            if missing or extra:
                raise DatasetError(f"the generated table has other columns than the real one (missing {missing}, "
                                   f"extra {extra})", fix="compare tables with the same columns")
        for name in categorical or ():
            if name not in columns:
                raise DatasetError(f"categorical column {name!r} is not in the data", fix=f"use one of {columns}")
        frames = [real] if generated is None else [real, generated]
        for frame in frames:
            if frame.isna().to_numpy().any():
                column = next(c for c in frame.columns if frame[c].isna().any())
                raise DatasetError("missing value; metrics need complete rows", column=str(column),
                                   row=int(np.flatnonzero(frame[column].isna().to_numpy())[0]),
                                   fix="drop or impute incomplete rows first")
        continuous, discrete, mean, sd = [], {}, {}, {}
        for name in columns:
            values = real[name]
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            if name in (categorical or ()) or not numeric or values.nunique() <= 2:
                pooled = pd.concat([f[name] for f in frames], ignore_index=True)
                discrete[name] = sorted(pooled.unique().tolist(), key=lambda v: (str(type(v)), v))
            else:
                array = values.to_numpy(np.float64)
                continuous.append(name)
                mean[name], sd[name] = float(array.mean()), float(array.std()) or 1.0
        return cls(columns, continuous, discrete, mean, sd)

    @property
    def features(self) -> list[str]:
        """Names of the encoded columns (``COL`` or ``COL=level``)."""
        out = []
        for name in self.columns:
            if name in self.discrete:
                levels = self.discrete[name]
                out += [f"{name}={levels[-1]}"] if len(levels) <= 2 else [f"{name}={v}" for v in levels]
            else:
                out.append(name)
        return out

    def encode(self, frame: pd.DataFrame, *, device=None) -> torch.Tensor:
        """The table as a float64 tensor ``[n, len(features)]``."""
        blocks = []
        for name in self.columns:
            if name not in frame.columns:
                raise DatasetError(f"column {name!r} is missing from the table", fix=f"give the columns {self.columns}")
            if name in self.discrete:
                levels = self.discrete[name]
                codes = pd.Categorical(frame[name].tolist(), categories=levels).codes
                if (codes < 0).any():
                    row = int(np.flatnonzero(codes < 0)[0])
                    raise DatasetError("level not seen when the encoding was fitted", row=row, column=str(name),
                                       value=frame[name].iloc[row], fix=f"use one of {levels}")
                if len(levels) <= 2:
                    blocks.append((codes == len(levels) - 1).astype(np.float64)[:, None])
                else:
                    blocks.append((codes[:, None] == np.arange(len(levels))[None, :]).astype(np.float64))
            else:
                blocks.append(((frame[name].to_numpy(np.float64) - self.mean[name]) / self.sd[name])[:, None])
        return torch.as_tensor(np.concatenate(blocks, axis=1), dtype=torch.float64, device=device)


def encode_tables(real, generated, *, categorical: Sequence[str] | None = None,
                  device=None) -> tuple[torch.Tensor, torch.Tensor, TableEncoding | None]:
    """``(x_real, x_generated, encoding)``: DataFrames encoded in common (:class:`TableEncoding`),
    tensors/arrays passed through (encoding ``None``)."""
    if isinstance(real, pd.DataFrame) != isinstance(generated, pd.DataFrame):
        raise ModelError("give both samples as DataFrames, or both as tensors/arrays")
    if isinstance(real, pd.DataFrame):
        enc = TableEncoding.fit(real, generated, categorical=categorical)
        return enc.encode(real, device=device), enc.encode(generated, device=device), enc
    x, y = _pair(real, generated)
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y, None


def energy_distance(x, y, *, unbiased: bool = True) -> float:
    """Squared energy distance ``2E|X − Y| − E|X − X'| − E|Y − Y'|`` between two samples.

    ``unbiased=True`` averages the within-sample distances over distinct pairs (U-statistics), so
    the value is 0 in expectation when the distributions are equal (and may be slightly
    negative); ``unbiased=False`` averages over all pairs (V-statistic) — in 1-D its square
    root is :func:`scipy.stats.energy_distance`.

    Examples
    --------
    >>> import torch
    >>> energy_distance(torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [4.0]]), unbiased=False)
    3.5
    """
    x, y = _pair(x, y)
    n, m = x.shape[0], y.shape[0]
    dxy = torch.cdist(x, y, compute_mode=_EXACT).mean()
    sxx, syy = torch.cdist(x, x, compute_mode=_EXACT).sum(), torch.cdist(y, y, compute_mode=_EXACT).sum()
    if unbiased:
        return float(2 * dxy - sxx / (n * (n - 1)) - syy / (m * (m - 1)))
    return float(2 * dxy - sxx / n ** 2 - syy / m ** 2)


def _wasserstein_1d(xs: torch.Tensor, ys: torch.Tensor, p: float) -> torch.Tensor:
    """W_p^p between the empirical distributions of the rows of sorted ``xs`` ``[k, n]`` and ``ys`` ``[k, m]``."""
    n, m = xs.shape[1], ys.shape[1]
    opts = dict(dtype=xs.dtype, device=xs.device)
    u = torch.cat([torch.arange(1, n + 1, **opts) / n, torch.arange(1, m + 1, **opts) / m]).sort().values
    widths = torch.diff(u, prepend=torch.zeros(1, **opts))
    mid = u - widths / 2
    ix = (mid * n).floor().long().clamp(0, n - 1)
    iy = (mid * m).floor().long().clamp(0, m - 1)
    return ((xs[:, ix] - ys[:, iy]).abs() ** p * widths).sum(1)


def sliced_wasserstein(x, y, *, n_projections: int = 200, p: float = 2.0,
                       seed: int | torch.Generator | None = 0) -> float:
    """Sliced p-Wasserstein distance ``(mean_θ W_p^p(θᵀX, θᵀY))^{1/p}`` over random unit directions.

    Each 1-D distance is exact (the integral of ``|F⁻¹(u) − G⁻¹(u)|^p`` over the merged
    breakpoints of the two empirical quantile functions), so unequal sample sizes are allowed;
    in one dimension (every direction is ±1) the value is the exact 1-D ``W_p`` —
    :func:`scipy.stats.wasserstein_distance` for ``p = 1``.

    Examples
    --------
    >>> import torch
    >>> sliced_wasserstein(torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [3.0], [4.0]]), p=1)
    2.5
    """
    x, y = _pair(x, y)
    if n_projections < 1 or p < 1:
        raise ModelError(f"need n_projections >= 1 and p >= 1 (found {n_projections}, {p})")
    d = x.shape[1]
    if d == 1:
        theta = torch.ones(1, 1, dtype=x.dtype, device=x.device)
    else:
        gen = _generator(seed, x.device)
        theta = torch.randn(n_projections, d, generator=gen, dtype=x.dtype, device=x.device)
        theta = theta / theta.norm(dim=1, keepdim=True)
    xs = (theta @ x.T).sort(dim=1).values
    ys = (theta @ y.T).sort(dim=1).values
    return float(_wasserstein_1d(xs, ys, p).mean() ** (1.0 / p))


def wasserstein2(x, y, *, max_points: int = 3000, seed: int | torch.Generator | None = 0) -> float:
    """Exact 2-Wasserstein distance of the two empirical distributions (uniform weights), by POT's ``emd2``.

    Samples larger than ``max_points`` are subsampled (seeded) to that size; the cost matrix is
    squared Euclidean in float64 and the network simplex solves the transport exactly.

    Examples
    --------
    >>> import torch
    >>> wasserstein2(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    1.0
    """
    import ot
    x, y = _pair(x, y)
    gen = _generator(seed, x.device)
    if x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=gen, device=gen.device)[:max_points].to(x.device)]
    if y.shape[0] > max_points:
        y = y[torch.randperm(y.shape[0], generator=gen, device=gen.device)[:max_points].to(y.device)]
    a, b = x.detach().cpu().numpy(), y.detach().cpu().numpy()
    cost = ot.dist(a, b, metric="sqeuclidean")
    value = ot.emd2(np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b)), cost, numItermax=10_000_000)
    return float(math.sqrt(max(float(value), 0.0)))


def _correlation(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0)
    sd = centred.pow(2).mean(0).sqrt()
    z = centred / torch.where(sd > 0, sd, torch.ones_like(sd))
    corr = z.T @ z / x.shape[0]
    constant = sd <= 0
    corr[constant, :] = 0.0
    corr[:, constant] = 0.0
    return corr


def correlation_error(x, y) -> float:
    """Frobenius norm ‖corr(x) − corr(y)‖_F of the Pearson correlation matrices (a constant column
    has correlation 0 with every column, and 0 on the diagonal).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    >>> round(correlation_error(x, x * torch.tensor([1.0, -1.0])), 6)  # corr +1 vs -1 off the diagonal
    2.828427
    """
    x, y = _pair(x, y)
    return float(torch.linalg.matrix_norm(_correlation(x) - _correlation(y)))


def _kth_radius(points: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row."""
    out = []
    for start in range(0, points.shape[0], chunk):
        d = torch.cdist(points[start:start + chunk], points, compute_mode=_EXACT)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])     # the 0th is the point itself
    return torch.cat(out)


def precision_recall(x, y, *, k: int = 5, chunk: int = 2048) -> dict[str, float]:
    """k-NN manifold precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

    Each real row ``x_i`` has the ball of radius its distance to its k-th nearest real row (the
    real manifold); likewise for generated rows.

    - precision: share of generated rows inside some real ball (realism);
    - recall: share of real rows inside some generated ball (diversity; drops when modes are dropped);
    - density: mean number of real balls holding a generated row, divided by ``k`` (≈ 1 for equal
      distributions, not bounded by 1);
    - coverage: share of real rows whose own ball holds at least one generated row.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``density``, ``coverage``.
    """
    x, y = _pair(x, y)
    if not 1 <= k < min(x.shape[0], y.shape[0]):
        raise ModelError(f"k must be between 1 and the smaller sample size - 1 (found k={k})")
    rx, ry = _kth_radius(x, k, chunk), _kth_radius(y, k, chunk)
    inside_real = torch.zeros(y.shape[0], dtype=x.dtype, device=x.device)    # per generated row: # real balls
    covered = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    recalled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for start in range(0, x.shape[0], chunk):
        d = torch.cdist(x[start:start + chunk], y, compute_mode=_EXACT)                          # [chunk, m]
        in_real_ball = d <= rx[start:start + chunk, None]
        inside_real += in_real_ball.to(x.dtype).sum(0)
        covered[start:start + chunk] = in_real_ball.any(1)
        recalled[start:start + chunk] = (d <= ry[None, :]).any(1)
    return {"precision": float((inside_real > 0).to(x.dtype).mean()), "recall": float(recalled.to(x.dtype).mean()),
            "density": float(inside_real.mean() / k), "coverage": float(covered.to(x.dtype).mean())}


def heldout_nll(generator, real) -> float:
    """−mean ``generator.log_prob(real)`` (nats per row, data units); NaN where there is no such number.

    NaN when the family has no tractable log density, when the table has discrete modelled
    columns (no density in data units), or when a log density is NaN; ``inf`` when the generator
    gives a held-out row zero density (a true, if harsh, result).
    """
    if generator is None or not getattr(generator, "tractable_log_prob", False):
        return math.nan
    transform = getattr(generator, "transform_", None)
    if transform is not None and not transform.all_continuous:
        return math.nan
    try:
        logp = generator.log_prob(real)
    except (ModelError, DatasetError):
        return math.nan
    if torch.isnan(logp).any():
        return math.nan
    return -float(logp.mean())


def _subsample(t: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    if t.shape[0] <= size:
        return t
    return t[torch.randperm(t.shape[0], generator=gen, device=gen.device)[:size].to(t.device)]


def evaluate(real, generated, *, generator=None, seed: int = 0, categorical: Sequence[str] | None = None,
             n_permutations: int = 200, max_points: int = 1000, k: int = 5, c2st_folds: int = 5,
             c2st_epochs: int = 200, device=None) -> dict:
    """Every metric of this module and :mod:`.two_sample` for one (real, generated) pair.

    Parameters
    ----------
    real, generated : DataFrame (same columns) or tensor/array ``[n, d]``
        DataFrames are encoded in common (:class:`TableEncoding`, scale of ``real``).
    generator : Generator, optional
        The fitted generator, for the held-out negative log-likelihood (``nll``) where tractable.
    seed : int
        Seeds every random part (subsamples, permutations, directions, classifier).
    categorical : list of str, optional
        Numeric columns to treat as discrete.
    n_permutations : int
        Permutations of the MMD test.
    max_points : int
        Each sample is subsampled (seeded) to at most this many rows for the pairwise metrics.
    k : int
        Neighbours of precision/recall/density/coverage.
    c2st_folds, c2st_epochs : int
        Folds and training steps of the classifier test.
    device : optional
        Where the tensors go (default: CPU for tables, the input's device for tensors).

    Returns
    -------
    dict
        ``n_real``, ``n_generated`` and the keys of :data:`METRIC_DESCRIPTIONS`.
    """
    x, y, enc = encode_tables(real, generated, categorical=categorical, device=device)
    gen = _generator(seed, x.device)
    xs, ys = _subsample(x, max_points, gen), _subsample(y, max_points, gen)
    out: dict = {"n_real": int(x.shape[0]), "n_generated": int(y.shape[0])}
    mmd = mmd_test(xs, ys, n_permutations=n_permutations, seed=gen)
    out["mmd2"], out["mmd_p_value"] = mmd.statistic, mmd.p_value
    out["energy_distance"] = energy_distance(xs, ys)
    out["sliced_w2"] = sliced_wasserstein(xs, ys, seed=gen)
    out["w2"] = wasserstein2(xs, ys, max_points=max_points, seed=gen)
    c2st = classifier_two_sample_test(xs, ys, folds=c2st_folds, epochs=c2st_epochs, seed=gen)
    out["c2st_accuracy"], out["c2st_auc"], out["c2st_p_value"] = c2st.statistic, c2st.details["auc"], c2st.p_value
    if enc is not None:
        marg = marginal_tests(real, generated, discrete=list(enc.discrete))
    else:
        cols = [f"x{j}" for j in range(x.shape[1])]
        marg = marginal_tests(pd.DataFrame(x.cpu().numpy(), columns=cols), pd.DataFrame(y.cpu().numpy(), columns=cols))
    ks = marg[marg["test"] == "KS"]
    tv = marg[marg["test"] != "KS"]
    out["ks_max"] = float(ks["statistic"].max()) if len(ks) else math.nan
    out["ks_rejected"] = int((ks["p_value"] <= 0.05).sum())
    out["tv_max"] = float(tv["statistic"].max()) if len(tv) else math.nan
    out["correlation_error"] = correlation_error(x, y)
    out.update(precision_recall(xs, ys, k=k))
    out["nll"] = heldout_nll(generator, real)
    return out
