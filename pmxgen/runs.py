"""A fitted run brought back together: the FitResult, its model, its data and the fitted values.

Diagnostics (``pmxgen report``) and counterfactual simulation (``pmxgen simulate``) start from a
results folder written by ``pmxgen fit --output DIR``. The FitResult stores how its model was
built (``model_recipe``: a built-in model name with its options, or a model file) and how its
data were read (``data_recipe``), and :func:`load_run` rebuilds both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelError
from .estimation.results import FitResult
from .models.base import PopulationModel
from .models.parameter_set import PopulationValues

__all__ = ["Run", "load_run", "fitted_values", "apply_network_weights", "model_from_recipe", "data_from_recipe"]


@dataclass(frozen=True)
class Run:
    """A FitResult with the model and data it came from, and the fitted population values.

    Attributes
    ----------
    fit : FitResult
    model : PopulationModel
    data : Dataset
    values : PopulationValues
        θ, Ω and σ at the estimates, as tensors on the data's device.
    """

    fit: FitResult
    model: PopulationModel
    data: object
    values: PopulationValues

    @property
    def eta(self) -> torch.Tensor:
        """The individual estimates (EBEs) ``[N, K]`` as a tensor on the data's device."""
        return torch.as_tensor(self.fit.ebe, dtype=self.data.dtype, device=self.data.device)


def fitted_values(model: PopulationModel, fit: FitResult, dtype: torch.dtype = torch.float64,
                  device=None) -> PopulationValues:
    """θ, Ω and σ of ``fit`` as the :class:`PopulationValues` of ``model`` (which must match the fit).

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = pmxgen.fit(model, data, method="foce", covariance=None)
    >>> values = fitted_values(model, fit)
    >>> round(float(values.theta["CL"]), 6) == round(fit.estimates["CL"], 6)
    True
    """
    ps = model.parameter_set
    missing = [n for n in ps.names if n not in fit.estimates]
    if missing:
        raise ModelError(f"the fit has no estimates of {missing}: it was made with another model "
                         f"({fit.model_name!r}) than {model.name!r}")
    phi = torch.tensor([float(fit.estimates[n]) for n in ps.names], dtype=dtype, device=device)
    return ps.unpack(phi)


def apply_network_weights(model: PopulationModel, fit: FitResult) -> None:
    """Set ``model``'s network weights to the fitted ones (names and shapes must match; no-op without weights).

    Raises :class:`~pmxgen.errors.ModelError` when the fit has weights the model lacks, or the
    reverse (a model rebuilt differently from the one fitted).
    """
    from .models.weights import load_weights_state, weights_state
    if fit.network_weights:
        load_weights_state(model, fit.network_weights)
    elif weights_state(model):
        raise ModelError(f"the model has network weights but the fit ({fit.model_name!r}) stores none: it was made "
                         f"with another model")


def model_from_recipe(recipe: dict | None, data=None) -> PopulationModel:
    """Rebuild a model from a FitResult's ``model_recipe``."""
    from .models.library import build_model
    from .models.loader import load_model_file
    if not recipe:
        raise ModelError("the fit does not record how its model was built (a model made in Python); "
                         "pass the model yourself, e.g. Run(fit, model, data, fitted_values(model, fit))")
    if "library" in recipe:
        model = build_model(recipe["library"], data, error=recipe["error"], iiv=tuple(recipe["iiv"]),
                            iov=tuple(recipe.get("iov", ())), omega_init=recipe.get("omega_init", 0.1),
                            full_omega=recipe.get("full_omega", False), init=recipe.get("init") or None,
                            sigma_init=recipe.get("sigma_init") or None)
    elif "file" in recipe:
        model = load_model_file(recipe["file"], data)
    else:
        raise ModelError(f"unknown model recipe {recipe!r}: expected a 'library' or a 'file' entry")
    # Initial estimates and fixed parameters set by NLMEModel.with_initial / with_fixed after the
    # model was built (with_fixed records its values under "initial" too).
    if recipe.get("initial"):
        model = model.with_initial(recipe["initial"])
    if recipe.get("fixed"):
        model = model.with_fixed({name: recipe["initial"][name] for name in recipe["fixed"]})
    return model


def data_from_recipe(recipe: dict | None, dtype: torch.dtype = torch.float64, device=None):
    """Re-read a FitResult's data from its ``data_recipe`` (bundled name first, then the file)."""
    from . import datasets
    from .data import read_nonmem
    from .errors import DatasetError
    if not recipe:
        raise DatasetError("the fit does not record its data", fix="pass the Dataset yourself")
    options = dict(recipe.get("read_options") or {})
    name = recipe.get("dataset")
    if name and name in datasets.list():
        return datasets.load(name, dtype=dtype, device=device, **options)
    source = recipe.get("source")
    if not source or source == "<DataFrame>" or not Path(source).exists():
        raise DatasetError(f"the data of this fit ({source}) cannot be found", source=str(source),
                           fix="pass the Dataset yourself, or run from where the file is")
    return read_nonmem(source, dtype=dtype, device=device, **options)


def load_run(source, *, model: PopulationModel | None = None, data=None, device=None) -> Run:
    """Reload a run from a results folder (``fit.json`` inside), a ``fit.json`` file or a FitResult.

    Parameters
    ----------
    source : path or FitResult
    model, data : optional
        Use these instead of rebuilding them from the fit's recipes.
    device : optional
        Torch device for the re-read data.

    Examples
    --------
    >>> import pmxgen, tempfile
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> fit = pmxgen.fit(model, data, method="foce", covariance=None)
    >>> folder = tempfile.mkdtemp(); _ = pmxgen.report.write_fit(fit, folder)
    >>> run = load_run(folder)
    >>> run.data.n_subjects, tuple(run.eta.shape)
    (12, (12, 2))
    """
    if isinstance(source, FitResult):
        fit = source
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "fit.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: give a folder written by `pmxgen fit --output DIR` "
                                    f"or its fit.json")
        fit = FitResult.from_json(path)
    if data is None:
        data = data_from_recipe(fit.data_recipe, device=device)
    if model is None:
        model = model_from_recipe(fit.model_recipe, data)
    if tuple(map(str, data.ids)) != tuple(map(str, fit.ids)):
        raise ModelError(f"the data ({data.source}, {data.n_subjects} subjects) are not the fitted data "
                         f"({fit.data_source}, {fit.n_subjects} subjects)")
    values = fitted_values(model, fit, dtype=data.dtype, device=data.device)
    apply_network_weights(model, fit)
    eta_names = tuple(model.eta_names(data.batch))
    if eta_names != tuple(fit.eta_names):
        raise ModelError(f"the model's random effects {eta_names} differ from the fit's {tuple(fit.eta_names)}")
    return Run(fit=fit, model=model, data=data, values=values)
