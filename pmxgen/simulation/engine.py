"""The batched simulation loop: replicates × chunks of subjects × arms, with common random numbers.

A *source* supplies, for replicate ``r`` and subjects ``[a, b)``, their covariates, random
effects η and a seed for residual noise (:mod:`.population`: virtual subjects; :mod:`.counterfactual`:
observed subjects). Subjects are processed in chunks of whole blocks of :data:`BLOCK`
subjects; each block's random numbers come from its own generator seeded by
``(seed, replicate, block)``, so results do not depend on the chunk size, and every arm
(regimen) of a chunk sees the same η and the same residual-noise draws (common random
numbers: the same virtual patient in every arm). Only the per-chunk tensors, the kept rows
(``keep_profiles``/``keep_exposures``) and running sums live in memory.
"""
from __future__ import annotations

import math
import time as _time
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from ..structural.closed_form import LinearCompartmentModel
from .exposure import Target, WindowEvaluator, exact_auc, grid_metrics, refine_extrema, refine_time_above
from .regimen import RegimenError
from .result import SimulationResult
from .schedule import Arm, arm_batch, with_observations

__all__ = ["BLOCK", "Options", "simulate_arms", "block_seed", "arm_exposures"]

#: Subjects per block of random numbers (chunks are whole blocks).
BLOCK = 256
#: Upper bound on rows × grid points of one chunk's concentration tensor.
_MAX_ELEMENTS = 1 << 22


def block_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the generator of one block, from the user's seed and the block's keys."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, *map(int, keys)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class Source(Protocol):
    n_subjects: int
    replicates: int
    covariate_names: tuple

    def values(self, r: int): ...

    def block(self, r: int, a: int, b: int) -> tuple: ...


@dataclass
class Options:
    """Settings of :func:`simulate_arms` (see :func:`pmxgen.simulation.simulate_population`)."""

    residual_error: bool = False
    keep_profiles: bool | int = True
    keep_exposures: bool | int = True
    threshold: float | None = None
    targets: tuple = ()
    chunk_size: int = 8192
    refine: bool = True
    refine_iterations: int = 8
    #: Optional ``(codes [n_subjects] int, level labels)``: target attainment is also counted per
    #: stratum (subject position → code), in ``SimulationResult.stratified``.
    strata: tuple | None = None


class _Moments:
    """Running count, mean and M2 per key (Chan et al. parallel update)."""

    def __init__(self):
        self.acc: dict = {}

    def add(self, key, values: np.ndarray):
        v = values[np.isfinite(values)]
        if not len(v):
            return
        n_b, mean_b, m2_b = len(v), float(v.mean()), float(((v - v.mean()) ** 2).sum())
        n_a, mean_a, m2_a = self.acc.get(key, (0, 0.0, 0.0))
        n = n_a + n_b
        delta = mean_b - mean_a
        self.acc[key] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n)

    def frame(self, names) -> pd.DataFrame:
        rows = [dict(zip(names, key), n=n, mean=mean, sd=math.sqrt(m2 / (n - 1)) if n > 1 else float("nan"))
                for key, (n, mean, m2) in self.acc.items()]
        return pd.DataFrame(rows, columns=list(names) + ["n", "mean", "sd"])


def _kept(limit, n_total: int) -> int:
    if limit is True:
        return n_total
    if limit is False or limit is None:
        return 0
    return min(int(limit), n_total)


def _exact_path(model) -> bool:
    return isinstance(getattr(model, "structural", None), LinearCompartmentModel) and \
        hasattr(model, "individual_parameters")


def arm_exposures(model, values, eta: torch.Tensor, batch, arm: Arm, threshold: float | None = None,
                  refine: bool = True, iterations: int = 8, profile: bool = True) -> tuple[torch.Tensor | None, dict]:
    """Concentrations ``[B, G]`` on the arm's grid and ``{window: {metric: [B]}}`` for rows ``batch``.

    Closed-form models: exact AUC, Cmax/Cmin refined and threshold crossings solved on the
    model; regimen arms evaluate each window with a :class:`WindowEvaluator` (and skip the
    full grid when ``profile`` is False: the returned concentrations are then None).

    Examples
    --------
    >>> import torch, pmxgen
    >>> from pmxgen.simulation.regimen import Regimen
    >>> from pmxgen.simulation.schedule import regimen_arm, arm_batch
    >>> model = pmxgen.models.NLMEModel(pmxgen.get_model("1cmt_iv"), theta={"CL": (0, 2.0), "V": (0, 10.0)},
    ...                                 omega={"CL": 0.1}, error="additive")
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> arm = regimen_arm(Regimen.every(12, dose=100, n=3))
    >>> batch = arm_batch(arm, model.structural, torch.zeros(1, 0, dtype=torch.float64), ())
    >>> conc, m = arm_exposures(model, values, torch.zeros(1, 1, dtype=torch.float64), batch, arm)
    >>> round(float(m["first"]["cmax"][0]), 6), round(float(m["first"]["ctrough"][0]), 6)
    (10.0, 0.90718)
    """
    with torch.no_grad():
        exact = _exact_path(model)
        fast = exact and arm.regimen is not None
        conc = model.predict(eta, values, batch) if (profile or not fast) else None
        params = model.individual_parameters(eta, values, batch) if exact else None
        out = {}
        for w in arm.windows:
            a, b = arm.windows[w]
            i0, i1 = arm.window_index(w)
            tw = arm.time[i0:i1 + 1]
            if fast:
                ev = WindowEvaluator(model.structural, params, batch, a, b)
                if conc is None:
                    n = batch.n_subjects
                    t = torch.as_tensor(tw, dtype=batch.dtype, device=batch.device).expand(n, -1)
                    cw = ev(t, torch.as_tensor(arm.pre[i0:i1 + 1], device=batch.device).expand(n, -1))
                else:
                    cw = conc[:, i0:i1 + 1]
                evaluate = ev
            else:
                cw = conc[:, i0:i1 + 1]

                def evaluate(times):
                    b2 = with_observations(batch, times, torch.zeros_like(times, dtype=torch.bool))
                    return model.predict(eta, values, b2)
            last = len(tw) - 1
            m = grid_metrics(cw, tw, (0, last), threshold)
            if exact and refine:
                t = torch.as_tensor(tw, dtype=cw.dtype, device=cw.device)
                lo, hi, sign, f_lo, f_hi = [], [], [], [], []
                for key, sgn in (("imax", 1.0), ("imin", -1.0)):
                    i = m[key]
                    il, ih = (i - 1).clamp(min=0), (i + 1).clamp(max=last)
                    lo.append(t[il])
                    hi.append(t[ih])
                    f_lo.append(cw.gather(1, il.unsqueeze(-1))[:, 0])
                    f_hi.append(cw.gather(1, ih.unsqueeze(-1))[:, 0])
                    sign.append(torch.full_like(lo[-1], sgn))
                best, at = refine_extrema(evaluate, torch.stack(lo, -1), torch.stack(hi, -1), torch.stack(sign, -1),
                                          iterations, torch.stack(f_lo, -1), torch.stack(f_hi, -1))
                better = best[:, 0] > m["cmax"]
                m["tmax"] = torch.where(better, at[:, 0], m["tmax"])
                m["cmax"] = torch.maximum(m["cmax"], best[:, 0])
                m["cmin"] = torch.minimum(m["cmin"], -best[:, 1])
                if threshold is not None:
                    m["t_above"] = refine_time_above(evaluate, cw, tw, (0, last), float(threshold))
                    m["ft_above"] = m["t_above"] / (b - a)
            m.pop("imax"), m.pop("imin")
            out[w] = m
        if exact:
            names = list(arm.windows)
            win = torch.tensor([arm.windows[w] for w in names], dtype=batch.dtype, device=batch.device)
            auc = exact_auc(model.structural, params, batch, win)
            for k, w in enumerate(names):
                out[w]["auc"] = auc[:, k]
        for w, (a, b) in arm.windows.items():
            out[w]["cavg"] = out[w]["auc"] / (b - a)
    return conc, out


def _check_targets(arms, targets) -> list[tuple[Target, dict]]:
    """Each target with its window per arm; arms without a named window are left out of that target."""
    out = []
    for t in targets:
        per_arm = {}
        for arm in arms:
            w = t.window or list(arm.windows)[-1]
            if w in arm.windows:
                per_arm[arm.label] = w
        if not per_arm:
            raise RegimenError(f"target {t}: no regimen has a window {t.window!r} "
                               f"(windows: {sorted({w for a in arms for w in a.windows})})")
        out.append((t, per_arm))
    return out


def simulate_arms(model, arms: list[Arm], source: Source, options: Options, meta: dict) -> SimulationResult:
    """Run every arm on every chunk of every replicate; returns a :class:`SimulationResult`."""
    started = _time.perf_counter()
    structural = getattr(model, "structural", None)
    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        raise RegimenError(f"arm labels must be distinct: {labels}")
    targets = _check_targets(arms, options.targets)
    if options.threshold is None and any(t.metric in ("t_above", "ft_above") for t, _ in targets):
        raise RegimenError("targets on t_above/ft_above need threshold=...")
    n = source.n_subjects
    post = {a.label: ~a.pre for a in arms}
    j_max = max(int(p.sum()) for p in post.values())
    g_max = max(a.n_points for a in arms)
    rows_cap = max(BLOCK, (_MAX_ELEMENTS // max(g_max, 1)) // BLOCK * BLOCK)
    chunk = min(max(BLOCK, int(math.ceil(options.chunk_size / BLOCK)) * BLOCK), rows_cap)
    keep_prof, keep_exp = _kept(options.keep_profiles, n), _kept(options.keep_exposures, n)
    moments, hits, strata_hits = _Moments(), {}, {}
    if options.strata is not None and len(options.strata[0]) != n:
        raise RegimenError(f"strata give {len(options.strata[0])} codes for {n} subjects")
    profiles, exposures, subject_rows = [], [], []
    eta_names = list(getattr(source, "eta_names", ()))
    nonfinite = 0
    for r in range(source.replicates):
        values = source.values(r)
        for c0 in range(0, n, chunk):
            c1 = min(c0 + chunk, n)
            parts = [source.block(r, a, min(a + BLOCK, c1)) for a in range(c0, c1, BLOCK)]
            subjects = np.concatenate([p[0] for p in parts])
            baseline = torch.cat([p[1] for p in parts])
            eta = torch.cat([p[2] for p in parts])
            keep_e = max(0, min(c1, keep_exp) - c0)
            if keep_e:
                subject_rows.append(pd.DataFrame({
                    "subject": subjects[:keep_e], "replicate": r,
                    **{f"ETA({k})": v for k, v in zip(eta_names, eta[:keep_e].T.cpu().numpy())},
                    **{k: v for k, v in zip(source.covariate_names, baseline[:keep_e].T.cpu().numpy())}}))
            observed = None
            if parts[0][4] is not None:
                observed = _cat_batches([p[4] for p in parts])
            for arm in arms:
                batch = arm_batch(arm, structural, baseline, source.covariate_names, observed=observed)
                keep_p = max(0, min(c1, keep_prof) - c0)
                conc, metrics = arm_exposures(model, values, eta, batch, arm, options.threshold, options.refine,
                                              options.refine_iterations, profile=keep_p > 0)
                finite = torch.ones(len(subjects), dtype=torch.bool, device=eta.device)
                for m in metrics.values():
                    for v in m.values():
                        finite &= torch.isfinite(v)
                nonfinite += int((~finite).sum())
                if keep_p:
                    pm = torch.as_tensor(post[arm.label], device=conc.device)
                    cp = conc[:keep_p][:, pm]
                    prof = {"value": cp.cpu().numpy()}
                    if options.residual_error:
                        prof["dv"] = _residuals(model, values, cp, parts, keep_p, j_max).cpu().numpy()
                    profiles.append((arm.label, r, subjects[:keep_p], arm.time[post[arm.label]], prof))
                for w, m in metrics.items():
                    arrays = {k: v.cpu().numpy() for k, v in m.items()}
                    for k, v in arrays.items():
                        moments.add((arm.label, r, w, k), v)
                    keep_e = max(0, min(c1, keep_exp) - c0)
                    if keep_e:
                        exposures.append(pd.DataFrame({"subject": subjects[:keep_e], "regimen": arm.label,
                                                       "replicate": r, "window": w,
                                                       **{k: v[:keep_e] for k, v in arrays.items()}}))
                for t, per_arm in targets:
                    if arm.label not in per_arm:
                        continue
                    v = metrics[per_arm[arm.label]][t.metric].cpu().numpy()
                    key = (arm.label, r, str(t))
                    ok = np.isfinite(v)
                    h0, n0 = hits.get(key, (0, 0))
                    hits[key] = (h0 + int(t.attained(v[ok]).sum()), n0 + int(ok.sum()))
                    if options.strata is not None:
                        codes, levels = options.strata[0][c0:c1], options.strata[1]
                        got = np.bincount(codes, weights=(t.attained(np.where(ok, v, 0.0)) & ok), minlength=len(levels))
                        cnt = np.bincount(codes, weights=ok, minlength=len(levels))
                        for k, level in enumerate(levels):
                            h0, n0 = strata_hits.get(key + (level,), (0, 0))
                            strata_hits[key + (level,)] = (h0 + int(got[k]), n0 + int(cnt[k]))
    if nonfinite:
        warnings.warn(f"{nonfinite} simulated subject-arm rows had non-finite concentrations; their exposures are "
                      f"NaN and left out of means and PTA", RuntimeWarning, stacklevel=3)
    arm_order = {a.label: k for k, a in enumerate(arms)}
    prof_frame = _profile_frame(profiles, options.residual_error) if keep_prof else None
    if prof_frame is not None and len(prof_frame):
        # canonical order whatever the chunking: regimen (as given), replicate, subject, time
        key = prof_frame["regimen"].map(arm_order)
        prof_frame = prof_frame.assign(_a=key).sort_values(["_a", "replicate", "subject"], kind="stable") \
            .drop(columns="_a").reset_index(drop=True)
    exp_frame = pd.concat(exposures, ignore_index=True) if exposures else None
    if exp_frame is not None:
        win_order = {w: k for a in arms for k, w in enumerate(a.windows)}
        exp_frame = exp_frame.assign(_a=exp_frame["regimen"].map(arm_order), _w=exp_frame["window"].map(win_order)) \
            .sort_values(["_a", "replicate", "_w", "subject"], kind="stable").drop(columns=["_a", "_w"]) \
            .reset_index(drop=True)
    att = pd.DataFrame([{"regimen": k[0], "replicate": k[1], "target": k[2], "n": v[1], "hits": v[0]}
                        for k, v in hits.items()], columns=["regimen", "replicate", "target", "n", "hits"])
    stratified = None
    if options.strata is not None:
        stratified = pd.DataFrame([{"regimen": k[0], "replicate": k[1], "target": k[2], "stratum": k[3], "n": v[1],
                                    "hits": v[0]} for k, v in strata_hits.items()],
                                  columns=["regimen", "replicate", "target", "stratum", "n", "hits"])
    meta = {**meta, "n_subjects": n, "replicates": source.replicates, "chunk_size": chunk,
            "nonfinite_rows": nonfinite, "exact_auc": _exact_path(model), "residual_error": options.residual_error,
            "threshold": options.threshold, "targets": [str(t) for t, _ in targets],
            "elapsed_seconds": _time.perf_counter() - started}
    return SimulationResult(profiles=prof_frame, exposures=exp_frame,
                            moments=moments.frame(["regimen", "replicate", "window", "metric"]), attainment=att,
                            at_observations=None, windows={a.label: dict(a.windows) for a in arms},
                            subjects=pd.concat(subject_rows, ignore_index=True) if subject_rows else None, meta=meta,
                            stratified=stratified)


def _cat_batches(batches):
    if len(batches) == 1:
        return batches[0]
    from dataclasses import fields, replace

    def cat(objs):
        first = objs[0]
        changes = {}
        for f in fields(first):
            v = getattr(first, f.name)
            if isinstance(v, torch.Tensor):
                changes[f.name] = torch.cat([getattr(o, f.name) for o in objs])
            elif hasattr(v, "__dataclass_fields__"):
                changes[f.name] = cat([getattr(o, f.name) for o in objs])
        return replace(first, **changes)
    return cat(batches)


def _residuals(model, values, conc: torch.Tensor, parts, n_rows: int, j_max: int) -> torch.Tensor:
    """Observations with residual error for the first ``n_rows`` rows, block by block, the same draws in every arm."""
    out, start = [], 0
    for p in parts:
        size = min(len(p[0]), n_rows - start)
        if size <= 0:
            break
        f = conc[start:start + size]
        pad = torch.ones(len(p[0]), j_max, dtype=f.dtype, device=f.device)   # whole block: same draws in any case
        pad[:size, :f.shape[1]] = f
        gen = torch.Generator(device=f.device)
        gen.manual_seed(p[3])
        if not hasattr(model, "error"):
            raise RegimenError("residual error needs a model with a residual-error model (model.error)")
        y = model.error.sample(pad, values.sigma, gen)
        out.append(y[:size, :f.shape[1]])
        start += size
    return torch.cat(out)


def _profile_frame(profiles, residual: bool) -> pd.DataFrame:
    frames = []
    for label, r, subjects, times, prof in profiles:
        b, g = prof["value"].shape
        cols = {"subject": np.repeat(subjects, g), "regimen": label, "replicate": r, "time": np.tile(times, b),
                "value": prof["value"].reshape(-1)}
        if residual:
            cols["dv"] = prof["dv"].reshape(-1)
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["subject", "regimen", "replicate", "time", "value"])
