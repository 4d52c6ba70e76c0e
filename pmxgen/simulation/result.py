"""The result of a dosing simulation: tidy profiles, exposures, summaries, PTA, xarray export, figure."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .exposure import METRICS, Target, parse_target, wilson_interval
from .regimen import RegimenError

__all__ = ["SimulationResult"]

_KEY = ["subject", "regimen", "replicate"]


@dataclass(frozen=True)
class SimulationResult:
    """Simulated concentrations and exposures of subjects × regimens × replicates.

    Attributes
    ----------
    profiles : pandas.DataFrame or None
        Tidy long table ``subject, regimen, replicate, time, value`` (error-free concentration)
        and ``dv`` (with residual error) when simulated with it; None with ``keep_profiles=False``.
    exposures : pandas.DataFrame or None
        One row per subject, regimen, replicate and window: ``auc cmax tmax cmin ctrough cavg``
        (and ``t_above ft_above`` with a threshold); only the first ``keep_exposures`` subjects of
        each replicate when that is a number (virtual subjects are iid, so they are a random sample).
    moments : pandas.DataFrame
        ``regimen, replicate, window, metric, n, mean, sd`` over **all** subjects (streamed).
    attainment : pandas.DataFrame
        ``regimen, replicate, target, n, hits`` over all subjects for the targets given to the simulation.
    at_observations : pandas.DataFrame or None
        Individual simulations: each subject's own regimen at its observation records
        (``subject, replicate, time, value``; rows in the data's order).
    windows : dict
        Regimen label → {window: (start, end)}.
    subjects : pandas.DataFrame or None
        The simulated subjects (the same in every regimen): ``subject, replicate``, their η
        (``ETA(name)``) and covariates; the rows kept as for ``exposures``.
    meta : dict
        Mode, seed, numbers of subjects/replicates, parameter draws rejected, device, timing.
    stratified : pandas.DataFrame or None
        ``regimen, replicate, target, stratum, n, hits`` over all subjects, when the simulation
        was given strata (e.g. a virtual population's SEX or age band); see :meth:`pta_by_stratum`.
    """

    profiles: pd.DataFrame | None
    exposures: pd.DataFrame | None
    moments: pd.DataFrame
    attainment: pd.DataFrame
    at_observations: pd.DataFrame | None
    windows: dict
    subjects: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)
    stratified: pd.DataFrame | None = None

    @property
    def regimens(self) -> list[str]:
        return list(self.windows)

    # ------------------------------------------------------------------ summaries
    def summary(self, quantiles=(0.05, 0.5, 0.95)) -> pd.DataFrame:
        """Per regimen, window and metric: n, mean, sd (all subjects) and quantiles (kept exposures).

        Quantiles pool subjects and replicates; they are NaN when no exposures were kept.
        """
        mom = self.moments
        pooled = []
        for (reg, win, met), g in mom.groupby(["regimen", "window", "metric"], sort=False):
            n = g["n"].sum()
            mean = (g["mean"] * g["n"]).sum() / n
            ss = ((g["n"] - 1) * g["sd"] ** 2 + g["n"] * (g["mean"] - mean) ** 2).sum()
            pooled.append({"regimen": reg, "window": win, "metric": met, "n": int(n), "mean": mean,
                           "sd": float(np.sqrt(ss / max(n - 1, 1)))})
        out = pd.DataFrame(pooled)
        for q in quantiles:
            out[f"q{100 * q:g}"] = np.nan
        if self.exposures is not None and len(out):
            long = self.exposures.melt(id_vars=_KEY + ["window"], var_name="metric", value_name="v")
            qs = long.groupby(["regimen", "window", "metric"], sort=False)["v"].quantile(list(quantiles)).unstack()
            qs.columns = [f"q{100 * q:g}" for q in quantiles]
            out = out.drop(columns=list(qs.columns)).merge(qs.reset_index(), on=["regimen", "window", "metric"],
                                                           how="left")
        return out

    def pta(self, target=None, *, goal: float | None = None, level: float = 0.95) -> pd.DataFrame:
        """Probability of target attainment per regimen (and target), with an interval.

        With one replicate the interval is Wilson's binomial interval; with several
        (parameter uncertainty) it is the central ``level`` range of the per-replicate PTAs.
        ``target`` (text or Target) not among the simulation's targets is evaluated on the kept
        exposures. ``goal`` adds ``meets_goal`` (PTA ≥ goal).

        Examples
        --------
        >>> import pandas as pd
        >>> att = pd.DataFrame({"regimen": ["A", "B"], "replicate": [0, 0], "target": ["auc>=1"] * 2,
        ...                     "n": [100, 100], "hits": [95, 80]})
        >>> res = SimulationResult(None, None, pd.DataFrame(), att, None, {"A": {}, "B": {}})
        >>> res.pta(goal=0.9)[["regimen", "pta", "meets_goal"]].values.tolist()
        [['A', 0.95, True], ['B', 0.8, False]]
        """
        att = self.attainment
        if target is not None:
            t = parse_target(target)
            if str(t) in set(att["target"]) if len(att) else False:
                att = att[att["target"] == str(t)]
            else:
                att = self._attainment_from_exposures(t)
        out = _pta_table(att, ["regimen", "target"], level)
        if goal is not None:
            out["meets_goal"] = out["pta"] >= goal
        return out

    def pta_by_stratum(self, *, goal: float | None = None, level: float = 0.95) -> pd.DataFrame:
        """Probability of target attainment per regimen, target and stratum (intervals as :meth:`pta`).

        Needs a simulation given strata (``stratified``), e.g.
        :func:`pmxgen.simulation.simulate_virtual_population` with ``strata="SEX"``.

        Examples
        --------
        >>> import pandas as pd
        >>> st = pd.DataFrame({"regimen": ["A", "A"], "replicate": [0, 0], "target": ["auc>=1"] * 2,
        ...                    "stratum": ["F", "M"], "n": [50, 50], "hits": [45, 30]})
        >>> res = SimulationResult(None, None, pd.DataFrame(), pd.DataFrame(), None, {"A": {}}, stratified=st)
        >>> res.pta_by_stratum()[["stratum", "pta"]].values.tolist()
        [['F', 0.9], ['M', 0.6]]
        """
        if self.stratified is None:
            raise RegimenError("this simulation was not given strata; simulate a virtual population with strata=...")
        out = _pta_table(self.stratified, ["regimen", "target", "stratum"], level)
        if goal is not None:
            out["meets_goal"] = out["pta"] >= goal
        return out

    def _attainment_from_exposures(self, target: Target) -> pd.DataFrame:
        if self.exposures is None:
            raise RegimenError(f"target {target} was not given to the simulation and no exposures were kept; "
                               f"pass targets=[...] to the simulation")
        if target.metric not in self.exposures.columns:
            raise RegimenError(f"metric {target.metric!r} was not computed (t_above/ft_above need threshold=...)")
        rows = []
        for reg, wins in self.windows.items():
            win = target.window or list(wins)[-1]
            g = self.exposures[(self.exposures["regimen"] == reg) & (self.exposures["window"] == win)]
            if not len(g):
                raise RegimenError(f"regimen {reg!r} has no window {win!r}; its windows: {', '.join(wins)}")
            for rep, gg in g.groupby("replicate"):
                rows.append({"regimen": reg, "replicate": rep, "target": str(target), "n": len(gg),
                             "hits": int(target.attained(gg[target.metric].to_numpy()).sum())})
        return pd.DataFrame(rows)

    def summary_text(self, metrics=("auc", "cmax", "cmin", "ctrough")) -> str:
        """A printable table: mean and 5–95 % range of the main metrics per regimen and window, then PTA."""
        s = self.summary()
        s = s[s["metric"].isin(metrics)]
        lines = [f"pmxgen simulation: {self.meta.get('mode', '')}, {self.meta.get('n_subjects', '?')} subjects x "
                 f"{len(self.windows)} regimens x {self.meta.get('replicates', 1)} replicates "
                 f"(seed {self.meta.get('seed')})"]
        if self.meta.get("rejected_parameter_draws"):
            lines.append(f"parameter draws rejected (non-PD Omega, variances <= 0 or theta outside bounds): "
                         f"{self.meta['rejected_parameter_draws']}")
        if len(s):
            table = s.pivot_table(index=["regimen", "window"], columns="metric", values="mean", sort=False)
            lines += ["", "Mean exposure per regimen and window",
                      table.to_string(float_format=lambda v: f"{v:.4g}")]
            if s["q5"].notna().any():
                rng = s.assign(range=s.apply(lambda r: f"{r['q5']:.4g}-{r['q95']:.4g}", axis=1))
                table = rng.pivot_table(index=["regimen", "window"], columns="metric", values="range",
                                        aggfunc="first", sort=False)
                lines += ["", "5-95 % range", table.to_string()]
        pta = self.pta() if len(self.attainment) else None
        if pta is not None and len(pta):
            lines += ["", "Probability of target attainment",
                      pta.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
        if self.stratified is not None and len(self.stratified):
            lines += ["", f"Probability of target attainment by {self.meta.get('strata', 'stratum')}",
                      self.pta_by_stratum().to_string(index=False, float_format=lambda v: f"{v:.3f}")]
        return "\n".join(lines)

    # -------------------------------------------------------------------- exports
    def to_xarray(self):
        """An :class:`xarray.Dataset`: exposures ``(regimen, replicate, subject, window)`` per metric and
        concentrations ``(regimen, replicate, subject, point)`` with time ``(regimen, point)`` (NaN padding).

        Examples
        --------
        >>> import pandas as pd
        >>> exp = pd.DataFrame({"subject": [1, 2], "regimen": ["A", "A"], "replicate": [0, 0],
        ...                     "window": ["last", "last"], "auc": [1.0, 2.0]})
        >>> res = SimulationResult(None, exp, pd.DataFrame(), pd.DataFrame(), None, {"A": {"last": (0, 12)}})
        >>> res.to_xarray()["auc"].sel(regimen="A", window="last").values.tolist()
        [[1.0, 2.0]]
        """
        import xarray as xr
        data_vars, coords = {}, {}
        if self.exposures is not None and len(self.exposures):
            metrics = [m for m in METRICS if m in self.exposures.columns]
            frame = self.exposures.set_index(["regimen", "replicate", "subject", "window"])[metrics]
            ds = xr.Dataset.from_dataframe(frame)
            data_vars.update({m: ds[m] for m in metrics})
        if self.profiles is not None and len(self.profiles):
            prof = self.profiles.copy()
            prof["point"] = prof.groupby(_KEY, sort=False).cumcount()
            cols = ["value"] + (["dv"] if "dv" in prof.columns else [])
            ds = xr.Dataset.from_dataframe(prof.set_index(["regimen", "replicate", "subject", "point"])[cols])
            data_vars["concentration"] = ds["value"]
            if "dv" in cols:
                data_vars["dv"] = ds["dv"]
            times = prof.drop_duplicates(["regimen", "point"]).set_index(["regimen", "point"])["time"]
            coords["time"] = xr.DataArray.from_series(times)
        out = xr.Dataset(data_vars)
        if coords:
            out = out.assign_coords(time=coords["time"])
        out.attrs.update({k: (v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else json.dumps(v))
                          for k, v in self.meta.items()})
        return out

    def plot(self, path=None, *, metric: str = "auc", window: str | None = None):
        """Summary figure: median and 90 % band of concentrations per regimen; ``metric`` distributions
        (or means ± SD when no exposures were kept) and PTA per regimen. Returns the Figure."""
        import matplotlib
        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        n_panels = 2 + (len(self.attainment) > 0)
        fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, 4.2))
        ax = axes[0]
        if self.profiles is not None and len(self.profiles):
            for reg, g in self.profiles.groupby("regimen", sort=False):
                q = g.groupby("time")["value"].quantile([0.05, 0.5, 0.95]).unstack()
                line, = ax.plot(q.index, q[0.5], label=reg)
                ax.fill_between(q.index, q[0.05], q[0.95], color=line.get_color(), alpha=0.2)
            ax.set_xlabel("time")
            ax.set_ylabel("concentration")
            ax.set_title("median and 90 % interval")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "profiles not kept", ha="center", va="center", transform=ax.transAxes)
        ax = axes[1]
        regs = self.regimens
        if self.exposures is not None and metric in self.exposures.columns:
            vals = []
            for reg in regs:
                win = window or list(self.windows[reg])[-1]
                sel = self.exposures[(self.exposures["regimen"] == reg) & (self.exposures["window"] == win)]
                vals.append(sel[metric].to_numpy())
            ax.boxplot(vals, showfliers=False)
            ax.set_xticks(range(1, len(regs) + 1), regs, rotation=30, ha="right", fontsize=7)
        else:
            s = self.summary()
            s = s[s["metric"] == metric]
            ax.bar(range(len(s)), s["mean"], yerr=s["sd"])
        ax.set_ylabel(f"{metric} [{window or 'last window'}]")
        if n_panels == 3:
            ax = axes[2]
            pta = self.pta()
            for tgt, g in pta.groupby("target", sort=False):
                ax.errorbar(g["regimen"], g["pta"], yerr=[g["pta"] - g["lower"], g["upper"] - g["pta"]], fmt="o",
                            capsize=3, label=tgt)
            ax.axhline(0.9, color="grey", lw=0.8, ls="--")
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("probability of target attainment")
            ax.tick_params(axis="x", rotation=30, labelsize=7)
            ax.legend(fontsize=7)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig

    def write(self, folder) -> list[Path]:
        """Write profiles.csv, exposures.csv, summary.csv, pta.csv, summary.png, simulation.nc (or .json)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, frame in (("profiles", self.profiles), ("exposures", self.exposures),
                            ("at_observations", self.at_observations)):
            if frame is not None:
                frame.to_csv(out / f"{name}.csv", index=False)
                paths.append(out / f"{name}.csv")
        self.summary().to_csv(out / "summary.csv", index=False)
        paths.append(out / "summary.csv")
        if len(self.attainment):
            self.pta().to_csv(out / "pta.csv", index=False)
            paths.append(out / "pta.csv")
        if self.stratified is not None and len(self.stratified):
            self.pta_by_stratum().to_csv(out / "pta_strata.csv", index=False)
            paths.append(out / "pta_strata.csv")
        self.plot(out / "summary.png")
        paths.append(out / "summary.png")
        try:
            self.to_xarray().to_netcdf(out / "simulation.nc")
            paths.append(out / "simulation.nc")
        except (ImportError, ValueError, TypeError) as exc:   # no netCDF engine: JSON instead
            (out / "simulation.json").write_text(json.dumps({"meta": self.meta, "error_netcdf": str(exc),
                                                             "windows": self.windows}, indent=2, default=str))
            paths.append(out / "simulation.json")
        (out / "meta.json").write_text(json.dumps({"meta": self.meta, "windows": self.windows}, indent=2, default=str))
        paths.append(out / "meta.json")
        return paths


def _pta_table(att: pd.DataFrame, keys: list, level: float) -> pd.DataFrame:
    """PTA per ``keys`` group: pooled proportion, Wilson interval (one replicate) or replicate quantiles."""
    rows = []
    for group, g in att.groupby(keys, sort=False):
        n, hits = g["n"].to_numpy(), g["hits"].to_numpy()
        p = hits.sum() / n.sum() if n.sum() else float("nan")
        if len(g) > 1:
            per = hits / np.maximum(n, 1)
            lo, hi = np.quantile(per, [(1 - level) / 2, (1 + level) / 2])
            how = "replicates"
        else:
            lo, hi = (float(v[0]) for v in wilson_interval(hits, n, level))
            how = "wilson"
        rows.append({**dict(zip(keys, group)), "n": int(n.sum()), "pta": float(p), "lower": float(lo),
                     "upper": float(hi), "interval": how})
    return pd.DataFrame(rows, columns=keys + ["n", "pta", "lower", "upper", "interval"])
