"""Nonlinear mixed-effects models: a structural model, individual parameters and a residual error."""
from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping as _MappingABC
from typing import Callable, Mapping, Sequence

import torch

from ..data.batching import BaselineCovariates, SubjectBatch
from ..errors import DatasetError, DatasetWarning, ModelError
from ..structural.base import DOSE_PARAMETER, StructuralModel
from .base import ObservedData, PopulationModel
from .parameter_set import ParameterSet, PopulationValues, Theta, omega_blocks
from .residual_error import ResidualError, censored_neg2ll, normal_neg2ll, residual_error

__all__ = ["NLMEModel", "ObservedData", "IndividualModel"]

#: ``individual(theta, eta, covariates) -> {parameter: [N] tensor}``.
IndividualModel = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]],
                           Mapping[str, torch.Tensor]]


class NLMEModel(PopulationModel):
    """A nonlinear mixed-effects model.

    Parameters
    ----------
    structural : StructuralModel
        Predictions from individual parameters and dose events (see :mod:`pmxgen.structural`).
    theta : dict or sequence of Theta
        Fixed effects: ``{name: init}``, ``{name: (lower, init)}``, ``{name: (lower, init, upper)}``
        or :class:`Theta` objects (with ``fixed=True`` to fix).
    omega : dict, OmegaBlock or list of OmegaBlock
        Between-subject random effects: ``{eta name: variance}`` for a diagonal Ω, or blocks.
    error : str, dict or ResidualError
        Residual error model (``additive``, ``proportional``, ``combined``, ``combined_sd``,
        ``exponential``) with initial σ².
    individual : callable, optional
        ``individual(theta, eta, covariates) -> {parameter: [N] tensor}``: any torch expression of
        θ (dict of tensors), η (dict of ``[N]`` tensors, by η name) and covariates (dict of ``[N]``
        baseline values by column name; categorical columns hold integer codes). Default:
        ``P_i = θ_P · exp(η_P)`` (η_P absent means no variability) for every structural parameter,
        times ``exp(η_IOV_P)`` when an inter-occasion effect named ``IOV_P`` exists.
    iov : dict, OmegaBlock or list of OmegaBlock, optional
        Inter-occasion random effects (one draw per subject and occasion, same Ω on every
        occasion), for data read with ``occasion=``. In ``individual`` their names give the value
        of the occasion being predicted. The structural model is evaluated once per occasion with
        that occasion's parameters, and each observation takes the prediction of its own
        occasion: exact when each occasion starts from a reset (EVID 3/4, SS=1) or a washout.
    name : str, optional
    networks : torch.nn.Module or dict of them, optional
        Network weights that are population parameters (e.g. an MLP used inside
        ``individual``): estimators that support weights (FO…Laplace, VEM) optimise them with θ,
        Ω and σ; results report their count and norm and store them (safetensors). Held in
        float64 in :attr:`networks`. The networks of a structural model that has them (a
        :class:`~pmxgen.structural.NeuralODEModel`) are added automatically.

    Observations flagged BLQ in the data contribute P(y < LLOQ) (Beal's M3).

    Examples
    --------
    >>> import pmxgen
    >>> from pmxgen.models import NLMEModel
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": (0, 1.5), "CL": (0, 2.8), "V": (0, 32.0)},
    ...                   omega={"KA": 0.4, "CL": 0.07}, error={"kind": "additive", "init": {"ADD": 0.5}})
    >>> model.parameter_set.names
    ('KA', 'CL', 'V', 'OMEGA(KA)', 'OMEGA(CL)', 'SIGMA(ADD)')
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> eta = torch.zeros(data.n_subjects, 2, dtype=torch.float64)
    >>> model.log_likelihood(eta, values, data.batch).shape
    torch.Size([12])
    """

    def __init__(self, structural: StructuralModel, *, theta, omega=None, error="additive",
                 individual: IndividualModel | None = None, iov=None, name: str | None = None, networks=None):
        if not isinstance(structural, StructuralModel):
            raise ModelError(f"structural must be a StructuralModel (found {type(structural).__name__}); "
                             f"use pmxgen.get_model(name)")
        self.structural = structural
        held = getattr(structural, "networks", None)     # e.g. a NeuralODEModel's: population parameters too
        if isinstance(held, torch.nn.ModuleDict) and len(held):
            given = (dict(networks.items()) if isinstance(networks, (Mapping, torch.nn.ModuleDict)) else
                     {} if networks is None else {"network": networks})
            networks = {**held, **given}
        self.networks = networks
        if isinstance(theta, Mapping):
            thetas = [Theta.from_spec(k, v) for k, v in theta.items()]
        elif isinstance(theta, Sequence) and all(isinstance(t, Theta) for t in theta):
            thetas = list(theta)
        else:
            raise ModelError("theta must be a dict {name: init or (lower, init[, upper])} or a list of Theta")
        self.error: ResidualError = residual_error(error)
        iiv_blocks = omega_blocks(omega)
        iov_blocks = omega_blocks(iov)
        self.iiv_names = tuple(n for b in iiv_blocks for n in b.names)
        self.iov_names = tuple(n for b in iov_blocks for n in b.names)
        clash = set(self.iiv_names) & set(self.iov_names)
        if clash:
            raise ModelError(f"η names {sorted(clash)} are used for both IIV and IOV; name IOV effects apart "
                             f"(e.g. IOV_CL)")
        self.parameter_set = ParameterSet(thetas, iiv_blocks + iov_blocks, self.error.sigmas())
        self.individual = individual if individual is not None else self._default_individual
        if not callable(self.individual):
            raise ModelError("individual must be a callable (theta, eta, covariates) -> dict of [N] tensors")
        self._custom_individual = individual is not None
        self.name = name or f"{structural.name} ({self.error.kind} error)"
        if individual is None:
            known = set(structural.parameter_names)
            stray = [t.name for t in thetas if t.name not in known and not DOSE_PARAMETER.match(t.name)]
            if stray:
                raise ModelError(f"theta {stray} are not parameters of {structural.name} "
                                 f"({', '.join(structural.parameter_names)}); pass individual=... to use them")
            missing = [p for p in structural.parameter_names if p not in {t.name for t in thetas}]
            if missing:
                raise ModelError(f"theta lacks {missing} of {structural.name}; give them or pass individual=...")
            bad = [n for n in self.iiv_names if n not in known] + \
                  [n for n in self.iov_names if not (n.startswith("IOV_") and n[4:] in known)]
            if bad:
                raise ModelError(f"η {bad} do not match a parameter of {structural.name} (IIV: the parameter "
                                 f"name, IOV: IOV_<parameter>); pass individual=... for other effects")

    def with_initial(self, values: Mapping[str, float]) -> "NLMEModel":
        """A copy of this model whose initial estimates are replaced by ``values``.

        ``values`` maps parameter names (as in ``parameter_set.all_names``: ``CL``, ``OMEGA(CL)``,
        ``SIGMA(ADD)``, natural scale, Ω and σ as variances) to new initial values; names not
        given keep theirs. Use it to restart from a previous fit (``model.with_initial(fit.estimates)``)
        or to check that other starts reach the same optimum. Bounds and fixed flags are kept
        (a fixed parameter given here is fixed at the new value); an unknown name or a value
        outside a bound raises :class:`~pmxgen.errors.ModelError`.
        A recorded ``recipe`` (built-in or file models) keeps the new values under ``"initial"``.

        Examples
        --------
        >>> import pmxgen
        >>> model = pmxgen.models.build_model("1cmt_oral", error="additive", iiv=("KA", "CL"))
        >>> tripled = model.with_initial({t.name: 3 * t.init for t in model.parameter_set.theta})
        >>> tripled.parameter_set.theta[1].init == 3 * model.parameter_set.theta[1].init
        True
        """
        if not isinstance(values, Mapping):
            raise ModelError(f"with_initial needs a mapping name -> value (found {type(values).__name__})")
        initial = {str(k): float(v) for k, v in values.items()}
        clone = copy.copy(self)
        clone.parameter_set = self.parameter_set.with_initial(initial)
        if self.recipe is not None:
            # The recipe rebuilds the model with the same starting point (see pmxgen.runs).
            clone.recipe = {**self.recipe, "initial": {**self.recipe.get("initial", {}), **initial}}
        return clone

    def with_fixed(self, values: Mapping[str, float]) -> "NLMEModel":
        """A copy of this model with the parameters in ``values`` fixed at those values (NONMEM's FIX).

        ``values`` maps names as in :meth:`with_initial` to values. θ and σ are fixed one by
        one; Ω by whole blocks, as NONMEM does (an element of a diagonal block is split off into
        its own block; a full block needs all its elements named). Use it to fix a parameter
        at a literature value, or to profile the likelihood: refit with one parameter fixed
        and compare OFVs (a difference above 3.84 excludes that value at the 95 % level).
        A recorded ``recipe`` keeps the names under ``"fixed"`` (see :meth:`with_initial`).

        Examples
        --------
        >>> import pmxgen
        >>> model = pmxgen.models.build_model("1cmt_oral", error="additive", iiv=("KA", "CL"))
        >>> fixed = model.with_fixed({"KA": 1.5, "OMEGA(KA)": 0.2})
        >>> fixed.parameter_set.names
        ('CL', 'V', 'OMEGA(CL)', 'SIGMA(ADD)')
        >>> fixed.parameter_set.theta[0]
        Theta(name='KA', init=1.5, lower=0.0, upper=inf, fixed=True)
        """
        if not isinstance(values, Mapping):
            raise ModelError(f"with_fixed needs a mapping name -> value (found {type(values).__name__})")
        clone = self.with_initial(values)
        clone.parameter_set = clone.parameter_set.with_fixed(values.keys())
        if clone.recipe is not None:
            clone.recipe = {**clone.recipe, "fixed": sorted(set(clone.recipe.get("fixed", ())) | set(values))}
        return clone

    def with_structural(self, structural: StructuralModel) -> "NLMEModel":
        """A shallow copy of this model with another structural model (e.g. a Taylor expansion of it)."""
        clone = copy.copy(self)
        clone.structural = structural
        return clone

    @property
    def log_scale_observations(self) -> bool:
        """Whether the likelihood is on the log scale of DV (exponential error)."""
        return self.error.log_scale

    # --------------------------------------------------------------- η layout
    def n_occasions(self, batch: SubjectBatch) -> int:
        if not self.iov_names:
            return 0
        occ = batch.obs.occasion[batch.obs.mask]
        return int(occ.max()) + 1 if occ.numel() else 1

    def eta_names(self, batch: SubjectBatch) -> tuple[str, ...]:
        names = list(self.iiv_names)
        for o in range(self.n_occasions(batch)):
            names += [f"{n}[occ {o + 1}]" for n in self.iov_names]
        return tuple(names)

    def omega_matrix(self, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        if not self.iov_names:
            return values.omega
        k1, k2 = len(self.iiv_names), len(self.iov_names)
        n_occ = self.n_occasions(batch)
        om = values.omega
        iiv = om[..., :k1, :k1]
        iov = om[..., k1:, k1:]
        total = om.new_zeros(om.shape[:-2] + (k1 + n_occ * k2, k1 + n_occ * k2))
        total[..., :k1, :k1] = iiv
        for o in range(n_occ):
            s = k1 + o * k2
            total[..., s:s + k2, s:s + k2] = iov
        return total

    # ------------------------------------------------------------ predictions
    def _default_individual(self, theta, eta, covariates):
        out = {}
        for name, value in theta.items():
            v = value
            if name in eta:
                v = v * torch.exp(eta[name])
            if f"IOV_{name}" in eta:
                v = v * torch.exp(eta[f"IOV_{name}"])
            out[name] = v
        return out

    def covariates(self, batch: SubjectBatch) -> Mapping[str, torch.Tensor]:
        """Baseline covariates by column name, ``[N]`` each.

        A read-only mapping (:class:`~pmxgen.data.batching.BaselineCovariates`) whose tensors are
        made when looked up, so that data with thousands of covariate columns cost nothing per
        evaluation; ``dict(model.covariates(batch))`` gives a plain dict.
        """
        return batch.baseline_covariates()

    def individual_parameters(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch,
                              occasion: int | None = None) -> dict[str, torch.Tensor]:
        """Individual parameters ``{name: [N]}`` (for ``occasion``, 0-based, with IOV)."""
        k1 = len(self.iiv_names)
        eta_d = {n: eta[:, k] for k, n in enumerate(self.iiv_names)}
        if self.iov_names:
            o = 0 if occasion is None else occasion
            s = k1 + o * len(self.iov_names)
            eta_d.update({n: eta[:, s + k] for k, n in enumerate(self.iov_names)})
        view = _CovariateView(self.covariates(batch), batch.covariate_names)
        try:
            raw = self.individual(values.theta, eta_d, view)
        except KeyError as exc:
            raise ModelError(f"the individual-parameter function asked for {exc.args[0]!r}, which is missing; "
                             f"θ: {', '.join(values.theta)}; η: {', '.join(eta_d)}; covariates: "
                             f"{', '.join(batch.covariate_names) or 'none'}") from None
        if not isinstance(raw, Mapping):
            raise ModelError(f"individual(...) must return a dict name -> [N] tensor (returned {type(raw).__name__})")
        n = batch.n_subjects
        params = {}
        for k, v in raw.items():
            t = torch.as_tensor(v, dtype=batch.dtype, device=batch.device)
            if t.dim() == 0:
                t = t.expand(n)
            if t.shape != (n,):
                raise ModelError(f"individual parameter {k} has shape {tuple(t.shape)}; expected ({n},)")
            params[str(k)] = t
        self._covariates_read = frozenset(view.read)
        missing = [p for p in self.structural.parameter_names if p not in params]
        if missing:
            raise ModelError(f"individual(...) returned no {', '.join(missing)}; {self.structural.name} needs "
                             f"{', '.join(self.structural.parameter_names)}")
        return params

    def predict(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        if not self.iov_names:
            return self.structural.predict(self.individual_parameters(eta, values, batch), batch)
        occ = batch.obs.occasion
        out = None
        for o in range(self.n_occasions(batch)):
            f = self.structural.predict(self.individual_parameters(eta, values, batch, occasion=o), batch)
            out = f if out is None else torch.where(occ == o, f, out)
        return out

    # ------------------------------------------------------------- likelihood
    def observed(self, batch: SubjectBatch) -> ObservedData:
        """Observations on the likelihood scale (log for exponential error)."""
        obs = batch.obs
        y = torch.where(obs.mask, obs.dv, torch.ones_like(obs.dv))
        lloq = torch.where(obs.blq, obs.lloq, torch.ones_like(obs.lloq))
        return ObservedData(y=self.error.transform(y), mask=obs.mask, blq=obs.blq & obs.mask,
                            lloq=self.error.transform(lloq))

    def moments(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch, *,
                variance_at: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and residual variance of each observation on the likelihood scale, ``[N, J]`` each.

        ``variance_at``: predictions at which to evaluate the variance instead of the
        predictions at η (FOCE without interaction evaluates it at η = 0).
        """
        f = self.predict(eta, values, batch)
        var = self.error.variance(f if variance_at is None else variance_at, values.sigma)
        mask = batch.obs.mask
        mean = torch.where(mask, self.error.transform(torch.where(mask, f, torch.ones_like(f))), torch.zeros_like(f))
        return mean, torch.where(mask, var, torch.ones_like(var))

    def observation_neg2ll(self, mean: torch.Tensor, var: torch.Tensor, data: ObservedData) -> torch.Tensor:
        """−2 log-likelihood of each observation ``[N, J]`` (0 on padding), M3 for BLQ ones."""
        dens = normal_neg2ll(data.y, mean, var)
        out = torch.where(data.normal, dens, torch.zeros_like(dens))
        if bool(data.blq.any()):
            cens = censored_neg2ll(data.lloq, mean, var)
            out = torch.where(data.blq, cens, out)
        return out

    def log_likelihood(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch) -> torch.Tensor:
        mean, var = self.moments(eta, values, batch)
        return -0.5 * self.observation_neg2ll(mean, var, self.observed(batch)).sum(-1)

    def sample_y(self, eta: torch.Tensor, values: PopulationValues, batch: SubjectBatch,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        f = self.predict(eta, values, batch)
        y = self.error.sample(f, values.sigma, generator)
        return torch.where(batch.obs.mask, y, torch.zeros_like(y))

    # ------------------------------------------------------------- validation
    def check(self, dataset) -> None:
        """Raise a clear error where the model cannot be fitted to ``dataset`` at its initial values."""
        self.structural.check_dataset(dataset)
        batch = dataset.batch
        if self.error.log_scale:
            bad = batch.obs.mask & ~batch.obs.blq & ~(batch.obs.dv > 0)
            if bool(bad.any()):
                pos = int(batch.obs.row[bad][0])
                raise DatasetError("exponential (log-transform-both-sides) error needs DV > 0",
                                   source=dataset.source, row=dataset.row_of(pos), column=dataset.columns.get("DV"),
                                   value=float(batch.obs.dv[bad][0]),
                                   fix="flag such observations BLQ (M3) or choose an additive/combined error model")
        phi = self.parameter_set.initial_natural(dtype=batch.dtype, device=batch.device)
        values = self.parameter_set.unpack(phi)
        eta = torch.zeros(batch.n_subjects, len(self.eta_names(batch)), dtype=batch.dtype, device=batch.device)
        with torch.no_grad():
            params = self.individual_parameters(eta, values, batch)
            for k, v in params.items():
                if not bool(torch.isfinite(v).all()):
                    i = int(torch.nonzero(~torch.isfinite(v)).flatten()[0])
                    raise ModelError(f"individual parameter {k} is not finite at the initial estimates for "
                                     f"subject {dataset.ids[i]}; check initial values and covariates")
            f = self.predict(eta, values, batch)
        self._warn_time_varying(dataset, getattr(self, "_covariates_read", frozenset()))
        bad = batch.obs.mask & ~torch.isfinite(f)
        if bool(bad.any()):
            pos = int(batch.obs.row[bad][0])
            raise ModelError(f"{self.structural.name} gives a non-finite prediction at the initial estimates for "
                             f"the observation on data row {dataset.row_of(pos)}; check initial values")
        if self.error.kind == "proportional":
            zero = batch.obs.mask & ~batch.obs.blq & (f.abs() < 1e-8)
            if bool(zero.any()):
                pos = int(batch.obs.row[zero][0])
                raise DatasetError("proportional error: the model predicts 0 for this observation, so its residual "
                                   "variance is 0 (e.g. a sample at the dose time of an oral dose)",
                                   source=dataset.source, row=dataset.row_of(pos), column=dataset.columns.get("DV"),
                                   value=float(batch.obs.dv[zero][0]),
                                   fix="use the combined error model, or exclude the record (MDV=1)")


    def _warn_time_varying(self, dataset, used) -> None:
        """Warn where a covariate the model reads changes within a subject (only its first value is used)."""
        batch = dataset.batch
        for k, name in enumerate(batch.covariate_names):
            if name not in used:
                continue
            for table in (batch.obs, batch.doses):
                values = table.covariates[..., k]
                changed = table.mask & (values != batch.baseline[:, k:k + 1])
                if bool(changed.any()):
                    i, j = (int(x) for x in torch.nonzero(changed)[0])
                    row = dataset.row_of(int(table.row[i, j]))
                    warnings.warn(DatasetWarning(
                        f"covariate {name} changes within subjects (ID {dataset.ids[i]}: "
                        f"{float(batch.baseline[i, k]):g} on its first record, {float(values[i, j]):g} on data "
                        f"row {row}); the model uses each subject's first value throughout, as time-varying "
                        f"covariate effects are not supported yet. Make {name} constant within subjects (e.g. "
                        f"its baseline) to use it knowingly"), stacklevel=3)
                    break


class _CovariateView(_MappingABC):
    """Covariates by name; lookups are case-insensitive and name what exists when missing.

    Wraps the mapping of :meth:`NLMEModel.covariates` without copying it (a column's tensor is
    made only when the individual-parameter function looks it up).
    """

    def __init__(self, values: Mapping, names):
        self._values = values
        self._names = tuple(names)
        self._upper: dict | None = None
        #: Names actually looked up (so a model check can tell which covariates the model uses).
        self.read: set[str] = set()

    def _real(self, key):
        if isinstance(self._values, BaselineCovariates):
            return self._values.name(key)
        if key in self._values:
            return key
        if self._upper is None:
            self._upper = {}
            for k in self._values:
                self._upper.setdefault(str(k).upper(), k)
        return self._upper.get(str(key).upper())

    def __getitem__(self, key):
        real = self._real(key)
        if real is None:
            raise KeyError(key)
        self.read.add(real)
        return self._values[real]

    def __contains__(self, key) -> bool:
        return self._real(key) is not None

    def get(self, key, default=None):
        real = self._real(key)
        if real is None:
            return default
        self.read.add(real)
        return self._values[real]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)
