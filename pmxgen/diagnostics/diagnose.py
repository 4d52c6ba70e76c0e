"""All diagnostics of a fit in one object: :func:`diagnose` → :class:`Diagnostics`.

``diagnose(fit_or_run)`` reloads the run when given a FitResult (:func:`pmxgen.load_run`),
simulates ``n_simulations`` replicates of the design at the estimates (one set, seeded, shared
by NPDE and the VPCs), and gathers CWRES/IWRES (from the FitResult), NPDE/NPD, η and ε
shrinkage, the VPC and pcVPC, the one-step-ahead predictive log-likelihood of every observation
(:func:`~pmxgen.diagnostics.one_step_ahead`, column ``OSA_LOGLIK``) and the figures. It uses only the FitResult's fields and the
model's population-model contract (simulation, predictions), never an estimator's internals.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .npde import NPDEResult, compute_npde
from .residuals import epsilon_shrinkage, eta_shrinkage
from .simulate import observation_index, simulate_replicates
from .vpc import VPCResult, compute_vpc

__all__ = ["Diagnostics", "diagnose"]


@dataclass(frozen=True)
class Diagnostics:
    """Diagnostics of a fitted run (made by :func:`diagnose`).

    Attributes
    ----------
    run : pmxgen.runs.Run
    observations : pandas.DataFrame
        ``FitResult.observations`` with ``NPDE``, ``NPD``, ``PDE`` and ``PD`` columns added.
    npde : NPDEResult
    vpc, pcvpc : VPCResult or None
    shrinkage : dict
        η-shrinkage per η name and ε-shrinkage under ``"EPS"`` (fractions, SD-based).
    simulated : numpy.ndarray
        The replicates ``[S, N, J]`` used for NPDE and the VPCs.
    seed : int
    options : dict
        ``bins``, ``stratify``, ``interval``; ``one_step_ahead``: why there are no one-step-ahead
        log-likelihoods, when there are none.
    one_step_ahead : OneStepAhead or None
        One-step-ahead predictive log-likelihoods (``OSA_LOGLIK``, ``OSA_SE`` in ``observations``).
    """

    run: object
    observations: pd.DataFrame
    npde: NPDEResult
    vpc: VPCResult | None
    pcvpc: VPCResult | None
    shrinkage: dict
    simulated: np.ndarray
    seed: int | None
    options: dict = field(default_factory=dict)
    one_step_ahead: object = None

    @property
    def fit(self):
        """The FitResult."""
        return self.run.fit

    @property
    def n_simulations(self) -> int:
        return int(self.simulated.shape[0])

    def npde_tests(self, kind: str = "npde") -> dict:
        """Tests of N(0, 1) for the NPDE (or ``"npd"``): mean, variance, Shapiro–Wilk, KS, global."""
        return self.npde.tests(kind)

    def data_summary(self) -> dict:
        """Subjects, observations, dose records and events, BLQ observations, covariates of the data."""
        data = self.run.data
        return {"source": str(data.source), "subjects": data.n_subjects, "observations": data.n_observations,
                "dose records": data.n_dose_records, "dose events": data.n_dose_events, "BLQ observations":
                data.n_blq, "covariates": ", ".join(data.covariate_names) or "none"}

    def parameter_table(self) -> pd.DataFrame:
        """``FitResult.parameter_table()`` with ``cv_percent`` beside the estimate (Ω diagonal as the %CV
        of a log-normal parameter, ``100·√(exp(ω²) − 1)``, :mod:`pmxgen.estimation.variability`) and the
        shrinkage (%) of each Ω diagonal and σ element."""
        from ..estimation.variability import with_cv_percent
        table = with_cv_percent(self.fit.parameter_table())
        shrink = []
        for name in table["parameter"]:
            value = float("nan")
            if name.startswith("OMEGA(") and "," not in name:
                value = self.shrinkage.get(name[6:-1], float("nan"))
            elif name.startswith("SIGMA("):
                value = self.shrinkage.get("EPS", float("nan"))
            shrink.append(100.0 * value)
        table["shrinkage_percent"] = shrink
        return table

    def covariates(self) -> pd.DataFrame:
        """Baseline covariates, one row per subject (order of ``FitResult.ids``)."""
        batch = self.run.data.batch
        return pd.DataFrame(batch.baseline.cpu().numpy(), columns=list(batch.covariate_names))

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table of the report: parameters, data summary, checklist, NPDE tests, residuals, VPCs."""
        out = {"parameters": self.parameter_table(),
               "data_summary": pd.DataFrame(list(self.data_summary().items()), columns=["item", "value"]),
               "checklist": pd.DataFrame(self.fit.checklist(), columns=["item", "passed", "detail"]),
               "npde_tests": pd.DataFrame([{"kind": k, **self.npde_tests(k)} for k in ("npde", "npd")]),
               "shrinkage": pd.DataFrame([{"name": k, "shrinkage_percent": 100.0 * v}
                                          for k, v in self.shrinkage.items()]),
               "residuals": self.observations}
        if self.vpc is not None:
            out["vpc"] = self.vpc.table
        if self.pcvpc is not None:
            out["pcvpc"] = self.pcvpc.table
        return out

    def _eta_densities(self, omega) -> tuple:
        """(Ω diagonal, prior density) for the η histograms: N(0, ω²) for Gaussian random effects; the
        model's own prior for one non-Gaussian random effect; nothing (no misleading normal curve)
        for several non-Gaussian ones."""
        model, run = self.run.model, self.run
        if getattr(model, "eta_distribution", "gaussian") == "gaussian":
            return omega, None
        if len(self.fit.eta_names) != 1:
            return None, None

        def density(grid):
            eta = torch.as_tensor(grid, dtype=run.data.dtype, device=run.data.device)[:, None]
            with torch.no_grad():
                return torch.exp(model.log_prior(eta, run.values, None)).cpu().numpy()
        return None, density

    def figures(self, per_page: int = 12) -> dict[str, list]:
        """Figures by section title (each a list of matplotlib figures; sections without data are left out)."""
        from .gof import gof_figure, residual_figure
        from .subject_plots import eta_covariate_figure, eta_histograms, individual_fit_pages
        from .traces import convergence_traces
        from .vpc_plot import vpc_figure

        fit = self.fit
        omega = np.diag(self.run.model.omega_matrix(self.run.values, self.run.data.batch).detach().cpu().numpy())
        out = {"Goodness of fit": [gof_figure(self.observations)],
               "Residuals and NPDE": [residual_figure(self.observations)]}
        if fit.eta_names:
            out["Random effects"] = [eta_histograms(fit.individual, fit.eta_names, *self._eta_densities(omega))]
            cov_fig = eta_covariate_figure(fit.individual, fit.eta_names, self.covariates())
            if cov_fig is not None:
                out["Random effects vs covariates"] = [cov_fig]
        if self.vpc is not None:
            out["Visual predictive check"] = [vpc_figure(self.vpc, title="VPC")]
        if self.pcvpc is not None:
            out["Prediction-corrected VPC"] = [vpc_figure(self.pcvpc, title="pcVPC")]
        out["Individual fits"] = individual_fit_pages(self.observations, per_page=per_page)
        traces = convergence_traces(fit.history)
        if traces is not None:
            out["Convergence"] = [traces]
        return out

    def to_inference_data(self, **options):
        """ArviZ InferenceData of the run (see :func:`pmxgen.diagnostics.arviz_export.to_inference_data`)."""
        from .arviz_export import to_inference_data
        return to_inference_data(self.run, **options)

    def summary(self) -> str:
        """A text summary: NPDE tests, shrinkage and VPC coverage."""
        lines = [f"Diagnostics of {self.fit.model_name} ({self.fit.method.upper()}), {self.n_simulations} "
                 f"simulated replicates (seed {self.seed})"]
        for kind in ("npde", "npd"):
            t = self.npde_tests(kind)
            lines.append(f"  {kind.upper():<4} n={t['n']} mean={t['mean']:.3f} (p={t['mean_p']:.3g}) "
                         f"variance={t['variance']:.3f} (p={t['variance_p']:.3g}) SW p={t['shapiro_p']:.3g} "
                         f"KS p={t['ks_p']:.3g} global p={t['global_p']:.3g}")
        if self.npde.n_blq:
            lines.append(f"  {self.npde.n_blq} BLQ observations have no NPDE/NPD")
        if self.npde.failed:
            lines.append(f"  decorrelation failed for subject positions {list(self.npde.failed)} (NaN NPDE)")
        lines.append("  shrinkage (%): " + "  ".join(f"{k} {100 * v:.1f}" for k, v in self.shrinkage.items()))
        osa = self.one_step_ahead
        if osa is not None:
            lines.append(f"  one-step-ahead log-likelihood {osa.total:.3f} (MC SE {osa.se:.3f}, {osa.method}, "
                         f"{osa.n_samples} draws, smallest ESS {osa.min_ess:.0f})")
        for label, result in (("VPC", self.vpc), ("pcVPC", self.pcvpc)):
            if result is not None:
                lines.append(f"  {label}: observed percentiles inside the simulated {100 * result.interval:g} % "
                             f"intervals in {100 * result.coverage():.0f} % of bins")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _shrinkage(run) -> dict:
    shrink = dict(run.fit.shrinkage or {})
    # Recomputed only where the fit could have reported it: η-shrinkage needs EBEs and more than
    # one subject (the FitResult says why it has none), ε-shrinkage needs IWRES.
    if not shrink and run.fit.ebe is not None and run.fit.n_subjects > 1:
        omega = run.model.omega_matrix(run.values, run.data.batch).detach().cpu().numpy()
        shrink = dict(zip(run.fit.eta_names, eta_shrinkage(np.asarray(run.fit.ebe), np.diag(omega)).tolist()))
        if "IWRES" in run.fit.observations.columns:
            shrink["EPS"] = epsilon_shrinkage(run.fit.observations["IWRES"].to_numpy(dtype=float))
    return {str(k): float(v) for k, v in shrink.items()}


def diagnose(fit_or_run, *, n_simulations: int = 500, seed: int | None = 0, bins=None, stratify: str | None = None,
             pred_corr: bool | None = None, interval: float = 0.95, model=None, data=None,
             osa_samples: int | None = 1000) -> Diagnostics:
    """Simulation-based and residual diagnostics of a fit.

    Parameters
    ----------
    fit_or_run : FitResult, Run, or a results folder
        A FitResult is reloaded with :func:`pmxgen.load_run` (its model and data are rebuilt from
        its recipes, or taken from ``model`` and ``data``).
    n_simulations : int
        Replicates of the design simulated at the estimates (NPDE and VPC). The npde package
        recommends at least 1000 for NPDE.
    seed : int
        Same seed, same diagnostics.
    bins : sequence of float or int, optional
        VPC bin edges, or the largest number of automatic bins.
    stratify : str, optional
        Covariate to stratify the VPCs by.
    pred_corr : bool, optional
        None (default): both the VPC and the prediction-corrected VPC; True: only the pcVPC;
        False: only the VPC.
    interval : float
        Width of the simulated prediction intervals of the VPC percentiles.
    model, data : optional
        Passed to :func:`pmxgen.load_run`.
    osa_samples : int or None
        Importance draws per subject of the one-step-ahead log-likelihoods
        (:func:`~pmxgen.diagnostics.one_step_ahead`, seeded with ``seed``); None or 0 skips them.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = pmxgen.fit(model, data, method="foce", covariance=None)
    >>> d = diagnose(fit, n_simulations=200, seed=1)
    >>> d.observations[["CWRES", "NPDE"]].notna().all().tolist(), d.vpc is not None, d.pcvpc is not None
    ([True, True], True, True)
    """
    from ..runs import Run, load_run

    run = fit_or_run if isinstance(fit_or_run, Run) else load_run(fit_or_run, model=model, data=data)
    batch = run.data.batch
    sims = simulate_replicates(run.model, run.values, batch, n_simulations, seed=seed)
    npde = compute_npde(run.model, run.values, batch, simulated=sims)
    common = {"simulated": sims, "bins": bins, "stratify": stratify, "interval": interval}
    vpc = compute_vpc(run.model, run.values, run.data, pred_corr=False, **common) if pred_corr is not True else None
    pcvpc = compute_vpc(run.model, run.values, run.data, pred_corr=True, **common) if pred_corr is not False \
        else None
    subject, sample, row = observation_index(batch)
    extra = pd.DataFrame({"ROW": row, "NPDE": npde.npde[subject, sample], "NPD": npde.npd[subject, sample],
                          "PDE": npde.pde[subject, sample], "PD": npde.pd[subject, sample]})
    observations = run.fit.observations.drop(columns=[c for c in extra.columns if c != "ROW"], errors="ignore")
    observations = observations.merge(extra, on="ROW", how="left", validate="one_to_one")
    options = {"bins": bins, "stratify": stratify, "interval": interval}
    osa = None
    if osa_samples:
        from ..errors import EstimationError, ModelError
        from .one_step_ahead import one_step_ahead
        try:
            osa = one_step_ahead(run, n_samples=int(osa_samples), seed=0 if seed is None else int(seed))
        except (ModelError, EstimationError) as exc:      # reported, not faked: the report says why
            options["one_step_ahead"] = f"not computed: {exc}"
        else:
            observations = observations.drop(columns=["OSA_LOGLIK", "OSA_SE"], errors="ignore").merge(
                osa.table[["ROW", "OSA_LOGLIK", "OSA_SE"]], on="ROW", how="left", validate="one_to_one")
    else:
        options["one_step_ahead"] = "not requested (osa_samples=0)"
    return Diagnostics(run=run, observations=observations, npde=npde, vpc=vpc, pcvpc=pcvpc, shrinkage=_shrinkage(run),
                       simulated=torch.as_tensor(sims).cpu().numpy(), seed=seed, options=options,
                       one_step_ahead=osa)
