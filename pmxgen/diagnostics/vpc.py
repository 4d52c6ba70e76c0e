"""Visual predictive checks: VPC and prediction-corrected VPC (pcVPC), with BLQ and strata.

Observations are grouped into time bins (given, or automatic: one bin per nominal time when
the design has few distinct times, quantile bins otherwise). In each bin the 5th, 50th and
95th percentiles (``quantiles``) of the observed data are compared with the same percentiles
of every simulated replicate of the design: the replicates give, for each percentile, a
simulated median and an ``interval`` (default 95 %) prediction interval.

Prediction correction (Bergstrand et al. 2011): ``pcY = Y · PRED_bin / PRED`` with
``PRED_bin`` the median population prediction of the bin (``pcY = Y + PRED_bin − PRED`` on a
log scale), applied to observations and simulations alike. Where PRED is 0 (e.g. a sample at
the time of an oral dose) the correction is undefined: such observations are left uncorrected
when their bin's median PRED is 0 too, and otherwise left out and counted (``n_excluded``).

BLQ: where the data carry an LLOQ (BLQ observations, or an LLOQ column), observed BLQ records
and simulated values below the LLOQ count as censored: they take part in the percentiles as
values below every quantified value, and a percentile that falls below the LLOQ is reported
as NaN (censored). Each bin then also reports the observed fraction below the LLOQ and its
simulated interval. Stratification splits subjects by a covariate (each value for a covariate
with few values, else at the median) and bins each stratum separately.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import DatasetError, ModelError
from ..models.base import PopulationModel
from ..models.parameter_set import PopulationValues
from .simulate import observation_batch, simulate_replicates

__all__ = ["VPCResult", "auto_bins", "vpc_from_simulations", "compute_vpc", "strata_from_covariate"]

#: Placeholder that sorts below every quantified value (censored observations); a percentile
#: below ``_CENSORED_LIMIT`` involves censored values and is reported as NaN.
_CENSORED = -1e300
_CENSORED_LIMIT = -1e200


def auto_bins(time: np.ndarray, max_bins: int = 10) -> np.ndarray:
    """Bin edges for observation ``time``: midpoints between nominal times when there are at most
    ``max_bins`` distinct times, otherwise edges at quantiles (equal counts) of the times.

    Examples
    --------
    >>> auto_bins(np.array([1, 1, 2, 2, 4, 4, 8, 8.0]))
    array([-inf,  1.5,  3. ,  6. ,  inf])
    >>> len(auto_bins(np.linspace(0, 10, 500), max_bins=5)) - 1
    5
    """
    t = np.asarray(time, dtype=float)
    t = t[np.isfinite(t)]
    unique = np.unique(t)
    if unique.size <= max_bins:
        inner = (unique[1:] + unique[:-1]) / 2
    else:
        inner = np.unique(np.quantile(t, np.linspace(0, 1, max_bins + 1)[1:-1]))
        inner = inner[(inner > unique[0]) & (inner < unique[-1])]
    return np.concatenate([[-np.inf], inner, [np.inf]])


def _edges(bins, time: np.ndarray) -> np.ndarray:
    if bins is None or isinstance(bins, (int, np.integer)):
        return auto_bins(time, 10 if bins is None else int(bins))
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or not (np.diff(edges) > 0).all():
        raise DatasetError(f"VPC bins must be increasing bin edges (found {list(np.atleast_1d(edges))})",
                           source="vpc", fix="give at least two increasing times, e.g. bins=[0, 1, 2, 4, 8, 24]")
    outside = (time < edges[0]) | (time > edges[-1])
    if outside.any():
        raise DatasetError(f"{int(outside.sum())} observation times lie outside the VPC bins "
                           f"[{edges[0]:g}, {edges[-1]:g}] (e.g. {time[outside][0]:g})", source="vpc",
                           fix="widen the first and last edges (they may be -inf and inf)")
    return edges


def strata_from_covariate(values: np.ndarray, name: str, max_levels: int = 5) -> np.ndarray:
    """Stratum labels per subject: each value when there are at most ``max_levels``, else a median split.

    Examples
    --------
    >>> strata_from_covariate(np.array([50., 55., 60., 70., 75., 80.]), "WT").tolist()
    ['WT <= 65', 'WT <= 65', 'WT <= 65', 'WT > 65', 'WT > 65', 'WT > 65']
    >>> strata_from_covariate(np.array([0., 1., 1.]), "SEX").tolist()
    ['SEX = 0', 'SEX = 1', 'SEX = 1']
    """
    v = np.asarray(values, dtype=float)
    levels = np.unique(v)
    if levels.size <= max_levels:
        return np.array([f"{name} = {x:g}" for x in v], dtype=object)
    cut = float(np.median(v))
    return np.where(v <= cut, f"{name} <= {cut:g}", f"{name} > {cut:g}").astype(object)


@dataclass(frozen=True)
class VPCResult:
    """Observed and simulated percentiles per (stratum, bin).

    Attributes
    ----------
    table : pandas.DataFrame
        One row per stratum and bin: ``stratum, bin, lower, upper`` (edges), ``time`` (median
        observation time), ``n``; for each percentile ``q`` (e.g. ``p5``): ``obs_q``, ``sim_q_lo``,
        ``sim_q_med``, ``sim_q_hi``; with BLQ data also ``obs_fblq``, ``sim_fblq_lo``, ``sim_fblq_med``,
        ``sim_fblq_hi``.
    points : pandas.DataFrame
        The observations as plotted: ``stratum, time, dv`` (prediction-corrected for a pcVPC), ``blq``.
    quantiles : tuple of float
    interval : float
    pred_corrected : bool
    lloq : float or None
        The smallest LLOQ of the data, when there is one.
    n_simulations : int
    n_excluded : int
        Observations left out of a pcVPC because their PRED is not positive while the median PRED
        of their bin is (a bin whose PREDs are all 0, e.g. pre-dose samples, is left uncorrected).
    """

    table: pd.DataFrame
    points: pd.DataFrame
    quantiles: tuple
    interval: float
    pred_corrected: bool
    lloq: float | None
    n_simulations: int
    n_excluded: int = 0

    @property
    def labels(self) -> list[str]:
        """Column stems of the percentiles (``p5``, ``p50``, ``p95``)."""
        return [_label(q) for q in self.quantiles]

    def inside(self) -> pd.DataFrame:
        """For each (stratum, bin) and percentile: whether the observed percentile lies in the simulated
        interval. Censored (NaN) percentiles count as below the LLOQ, i.e. below every quantified value;
        where the observed percentile and the whole interval are censored the flag is NaN (no information)."""
        out = self.table[["stratum", "bin"]].copy()
        for lab in self.labels:
            obs, lo, hi = (self.table[c].astype(float).fillna(-np.inf)
                           for c in (f"obs_{lab}", f"sim_{lab}_lo", f"sim_{lab}_hi"))
            ok = ((obs >= lo) & (obs <= hi)).astype(float)
            out[lab] = ok.where(np.isfinite(obs) | np.isfinite(hi))
        return out

    def coverage(self) -> float:
        """Fraction of (bin, percentile) pairs whose observed percentile lies inside its simulated interval."""
        flags = self.inside()[self.labels].to_numpy(dtype=float)
        flags = flags[np.isfinite(flags)]
        return float(flags.mean()) if flags.size else float("nan")


def _label(q: float) -> str:
    return f"p{100 * q:g}".replace(".", "_")


def vpc_from_simulations(time, observed, simulated, use, *, bins=None, pred=None, strata=None, blq=None,
                         lloq=None, quantiles=(0.05, 0.5, 0.95), interval: float = 0.95,
                         log_scale: bool = False) -> VPCResult:
    """A VPC (or pcVPC when ``pred`` is given) from observations and simulated replicates.

    Parameters
    ----------
    time, observed : array ``[N, J]``
    simulated : array ``[S, N, J]``
    use : bool array ``[N, J]``
        Observation records (False on padding).
    bins : sequence of float or int, optional
        Bin edges, or the largest number of automatic bins (default: :func:`auto_bins`).
    pred : array ``[N, J]``, optional
        Population predictions (PRED): prediction-correct observations and simulations.
    strata : array ``[N]``, optional
        A stratum label per subject.
    blq : bool array ``[N, J]``, optional
        Observations below the LLOQ.
    lloq : array ``[N, J]``, optional
        LLOQ per observation on the scale of ``observed`` (NaN where there is none): simulated values
        below it are censored.
    quantiles : tuple of float
    interval : float
        Width of the simulated prediction interval of each percentile.
    log_scale : bool
        Observations are on a log scale (additive prediction correction).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> time = np.tile(np.arange(1.0, 6.0), (40, 1))
    >>> r = vpc_from_simulations(time, rng.normal(size=(40, 5)), rng.normal(size=(200, 40, 5)),
    ...                          np.ones((40, 5), bool))
    >>> len(r.table), r.labels
    (5, ['p5', 'p50', 'p95'])
    >>> r.coverage() >= 0.8
    True
    """
    time = np.asarray(time, dtype=float)
    y = np.asarray(observed, dtype=float)
    ys = np.asarray(simulated, dtype=float)
    use = np.asarray(use, dtype=bool)
    if ys.ndim != 3 or ys.shape[1:] != y.shape or time.shape != y.shape or use.shape != y.shape:
        raise ModelError(f"vpc needs time/observed/use [N, J] and simulated [S, N, J]; found {time.shape}, "
                         f"{y.shape}, {use.shape}, {ys.shape}")
    if not 0 < interval < 1:
        raise ModelError(f"interval must lie in (0, 1) (found {interval})")
    n_sim = ys.shape[0]
    blq = np.zeros_like(use) if blq is None else (np.asarray(blq, dtype=bool) & use)
    lloq_arr = np.full_like(y, np.nan) if lloq is None else np.asarray(lloq, dtype=float)
    censoring = bool(np.isfinite(lloq_arr[use]).any() or blq.any())
    strata = np.full(y.shape[0], "all", dtype=object) if strata is None else np.asarray(strata, dtype=object)
    if strata.shape != (y.shape[0],):
        raise ModelError(f"strata must give one label per subject ({y.shape[0]}); found shape {strata.shape}")
    with np.errstate(invalid="ignore"):
        sim_blq = ys < lloq_arr                                               # False where lloq is NaN
    if pred is not None:
        pred = np.asarray(pred, dtype=float)
    edges = _edges(bins, time[use])
    rows, point_frames, excluded = [], [], 0
    bin_of = np.clip(np.searchsorted(edges, time, side="right") - 1, 0, len(edges) - 2)
    for stratum in sorted(pd.unique(strata), key=str):
        in_stratum = use & (strata == stratum)[:, None]
        for b in range(len(edges) - 1):
            sel = in_stratum & (bin_of == b)
            n = int(sel.sum())
            if n == 0:
                continue
            yo, ysim, ob, sb = y[sel], ys[:, sel], blq[sel], sim_blq[:, sel]
            t_sel = time[sel]
            if pred is not None:
                yo, ysim, keep = _prediction_corrected(yo, ysim, pred[sel], log_scale)
                excluded += int((~keep).sum())
                yo, ysim, ob, sb, t_sel = yo[keep], ysim[:, keep], ob[keep], sb[:, keep], t_sel[keep]
                n = int(keep.sum())
                if n == 0:
                    continue
            yo_c = np.where(ob, _CENSORED, yo)
            ys_c = np.where(sb, _CENSORED, ysim)
            obs_q = np.quantile(yo_c, quantiles)
            sim_q = np.quantile(ys_c, quantiles, axis=1)                  # [Q, S]
            lo, med, hi = np.quantile(sim_q, [(1 - interval) / 2, 0.5, (1 + interval) / 2], axis=1)   # [Q] each
            row = {"stratum": stratum, "bin": b, "lower": edges[b], "upper": edges[b + 1],
                   "time": float(np.median(t_sel)), "n": n}
            for k, q in enumerate(quantiles):
                lab = _label(q)
                vals = [np.nan if v < _CENSORED_LIMIT else float(v) for v in (obs_q[k], lo[k], med[k], hi[k])]
                row.update({f"obs_{lab}": vals[0], f"sim_{lab}_lo": vals[1], f"sim_{lab}_med": vals[2],
                            f"sim_{lab}_hi": vals[3]})
            if censoring:
                frac = sb.mean(axis=1)
                flo, fmed, fhi = np.quantile(frac, [(1 - interval) / 2, 0.5, (1 + interval) / 2])
                row.update({"obs_fblq": float(ob.mean()), "sim_fblq_lo": flo, "sim_fblq_med": fmed,
                            "sim_fblq_hi": fhi})
            rows.append(row)
            point_frames.append(pd.DataFrame({"stratum": stratum, "time": t_sel, "dv": yo, "blq": ob}))
    points = pd.concat(point_frames, ignore_index=True) if point_frames else \
        pd.DataFrame(columns=["stratum", "time", "dv", "blq"])
    known = lloq_arr[use & np.isfinite(lloq_arr)]
    return VPCResult(table=pd.DataFrame(rows), points=points, quantiles=tuple(float(q) for q in quantiles),
                     interval=float(interval), pred_corrected=pred is not None,
                     lloq=float(known.min()) if known.size else None, n_simulations=n_sim, n_excluded=excluded)


def _prediction_corrected(yo: np.ndarray, ysim: np.ndarray, p: np.ndarray, log_scale: bool):
    """Bergstrand's correction within one bin; ``keep`` is False where it is undefined (PRED <= 0 in a
    bin whose median PRED is positive: such observations are left out and counted)."""
    p_bin = float(np.median(p))
    if log_scale:
        shift = p_bin - p
        return yo + shift, ysim + shift, np.ones(p.shape, dtype=bool)
    positive = p > 0
    ratio = np.where(positive, p_bin / np.where(positive, p, 1.0), 1.0 if p_bin == 0 else np.nan)
    keep = np.isfinite(ratio)
    return yo * ratio, ysim * ratio, keep


def compute_vpc(model: PopulationModel, values: PopulationValues, data, *, n_simulations: int = 500,
                seed: int | torch.Generator | None = 0, bins=None, stratify: str | None = None,
                pred_corr: bool = False, quantiles=(0.05, 0.5, 0.95), interval: float = 0.95,
                simulated: torch.Tensor | None = None) -> VPCResult:
    """VPC or pcVPC of ``data`` under ``model`` at ``values`` (simulates the replicates unless given).

    Parameters
    ----------
    model, values, data
        The model, θ/Ω/σ to simulate at, and the dataset to check.
    n_simulations, seed
        Replicates of the design to simulate (ignored when ``simulated`` is given).
    bins : sequence of float or int, optional
        Bin edges, or the largest number of automatic bins.
    stratify : str, optional
        A covariate (baseline value per subject) to stratify by.
    pred_corr : bool
        Prediction-corrected VPC (PRED from ``model.predict`` at η = 0).
    quantiles, interval
        See :func:`vpc_from_simulations`.
    simulated : torch.Tensor, optional
        Replicates ``[S, N, J]`` already simulated.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> r = compute_vpc(model, values, data, n_simulations=100, seed=1, pred_corr=True, stratify="WT")
    >>> sorted(r.table.stratum.unique()), r.pred_corrected
    (['WT <= 70.5', 'WT > 70.5'], True)
    """
    batch = observation_batch(data)
    if simulated is None:
        simulated = simulate_replicates(model, values, batch, n_simulations, seed=seed)
    obs = batch.obs
    strata = None
    if stratify:
        try:
            k = batch.covariate_index(stratify)
        except KeyError as exc:
            raise DatasetError(str(exc.args[0]), source=getattr(data, "source", "<data>"), column=stratify,
                               fix="stratify by one of the data's covariates") from None
        strata = strata_from_covariate(batch.baseline[:, k].cpu().numpy(), batch.covariate_names[k])
    pred = None
    log_scale = bool(getattr(getattr(model, "error", None), "log_scale", False))
    if pred_corr:
        eta0 = torch.zeros(batch.n_subjects, len(model.eta_names(batch)), dtype=batch.dtype, device=batch.device)
        with torch.no_grad():
            p = model.predict(eta0, values, batch)
        pred = (torch.log(p.clamp_min(1e-300)) if log_scale else p).cpu().numpy()
    mask = obs.mask.cpu().numpy()
    y = obs.dv.cpu().numpy()
    sims = torch.as_tensor(simulated).cpu().numpy()
    lloq = _lloq(obs.lloq.cpu().numpy(), mask)
    log_pc = log_scale and pred_corr
    if log_pc:
        y, sims, lloq = (np.log(np.clip(v, 1e-300, None)) for v in (y, sims, lloq))
    result = vpc_from_simulations(obs.time.cpu().numpy(), y, sims, mask, bins=bins, pred=pred, strata=strata,
                                  blq=obs.blq.cpu().numpy(), lloq=lloq, quantiles=quantiles, interval=interval,
                                  log_scale=log_pc)
    return _exp_result(result) if log_pc else result


def _lloq(lloq: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """LLOQ per observation (NaN where the data have none); observations without one get the smallest
    LLOQ of the data, so that simulated values are censored alike everywhere."""
    known = mask & (lloq > 0)
    if not known.any():
        return np.full(lloq.shape, np.nan)
    return np.where(known, lloq, lloq[known].min())


def _exp_result(result: VPCResult) -> VPCResult:
    """A log-scale pcVPC back on the observation scale (percentiles commute with exp)."""
    table = result.table.copy()
    cols = [c for c in table.columns if c.startswith(("obs_p", "sim_p"))]
    table[cols] = np.exp(table[cols])
    points = result.points.copy()
    points["dv"] = np.exp(points["dv"])
    lloq = None if result.lloq is None else float(np.exp(result.lloq))
    return VPCResult(table=table, points=points, quantiles=result.quantiles, interval=result.interval,
                     pred_corrected=True, lloq=lloq, n_simulations=result.n_simulations,
                     n_excluded=result.n_excluded)
