"""The estimator base class: explicit hyperparameters, declared model needs, shared fit plumbing.

An estimator is a class with keyword hyperparameters in ``__init__`` (stored under the same
names, as in scikit-learn), the capability tiers it needs from a model (``requires``, see
:mod:`pmxgen.models.base`), whether it optimises network weights, the command-line options it
takes (``cli_options``), and a ``_fit(model, data) -> FitResult``. :meth:`Estimator.fit`
validates the hyperparameters and the model's capabilities before any work, and runs
``_fit`` with the torch thread setting of the estimator. Registered with
:func:`~pmxgen.estimation.registry.register_estimator`, it is reachable from
:func:`pmxgen.fit`, ``pmxgen.ALL_METHODS`` and ``pmxgen fit --method``.
"""
from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..data.dataset import Dataset
from ..errors import EstimationError, ModelError
from ..models.base import PopulationModel, require_capabilities

__all__ = ["Estimator", "CliOption", "STATUSES", "check_integer", "check_positive"]

#: The statuses a FitResult may carry.
STATUSES = ("converged", "max_iterations", "failed")


@dataclass(frozen=True)
class CliOption:
    """A command-line option of an estimator: ``pmxgen fit ... FLAG VALUE`` sets keyword ``keyword``.

    ``none_value`` is a spelling on the command line that means ``None`` (e.g. ``none``).
    """

    flag: str
    keyword: str
    type: Callable = str
    help: str = ""
    choices: tuple | None = None
    none_value: str | None = None

    def convert(self, text: str):
        if self.none_value is not None and text == self.none_value:
            return None
        return self.type(text)


def check_integer(owner: str, name: str, value, low: int) -> None:
    """Raise EstimationError unless ``value`` is an integer ≥ ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise EstimationError(f"{owner}: {name} must be an integer >= {low} (found {value!r})")


def check_positive(owner: str, name: str, value, *, allow_zero: bool = False, allow_none: bool = False) -> None:
    """Raise EstimationError unless ``value`` is a finite number > 0 (≥ 0 with ``allow_zero``)."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise EstimationError(f"{owner}: {name} must be a finite number {'>= 0' if allow_zero else '> 0'}"
                              f"{' or None' if allow_none else ''} (found {value!r})")


class Estimator(ABC):
    """Base of every estimator (see the module docstring).

    Subclasses set ``name`` (the method name in results and the registry), ``requires``
    (capability tiers), ``supports_network_weights`` and ``supports_occasions``, define
    ``__init__`` with explicit keyword hyperparameters stored as attributes of the same name,
    and implement :meth:`_validate` (hyperparameters) and :meth:`_fit`.

    Examples
    --------
    >>> from pmxgen.estimation import FOCEI
    >>> est = FOCEI(max_iter=50, covariance=None)
    >>> est.get_params()["max_iter"], est.set_params(max_iter=80).max_iter
    (50, 80)
    """

    #: Method name (FitResult.method, registry key).
    name: ClassVar[str] = "estimator"
    #: Capability tiers a model must offer.
    requires: ClassVar[tuple[str, ...]] = ()
    #: Whether the estimator optimises ``model.networks`` weights with the named parameters.
    supports_network_weights: ClassVar[bool] = False
    #: Whether the estimator handles inter-occasion random effects (``model.iov_names``).
    supports_occasions: ClassVar[bool] = False
    #: Whether the estimator needs at least one random effect.
    needs_random_effects: ClassVar[bool] = False
    #: Options of ``pmxgen fit`` for this estimator.
    cli_options: ClassVar[tuple[CliOption, ...]] = ()
    #: One line for ``pmxgen fit --help`` and the registry listing.
    summary: ClassVar[str] = ""

    cpu_threads: int | None = 1

    # ------------------------------------------------------------ parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            sig = inspect.signature(init)
            for p in list(sig.parameters.values())[1:]:
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    continue
                if p.name not in names:
                    names.append(p.name)
            if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
                break
        return names

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters by name (as passed to ``__init__``)."""
        return {name: getattr(self, name) for name in self._param_names() if hasattr(self, name)}

    def set_params(self, **params) -> "Estimator":
        """Set hyperparameters by name; unknown names raise :class:`~pmxgen.errors.EstimationError`."""
        known = self._param_names()
        for key, value in params.items():
            if key not in known:
                raise EstimationError(f"{type(self).__name__} has no hyperparameter {key!r} "
                                      f"(it has {', '.join(known)})")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # ------------------------------------------------------------ validation
    @abstractmethod
    def _validate(self, model, data) -> None:
        """Check the hyperparameters (raise EstimationError naming the bad one)."""

    def check_model(self, model, data) -> None:
        """Check that ``model`` offers what this estimator needs and that ``data`` can be fitted."""
        who = self.name.upper()
        require_capabilities(model, self.requires, who)
        if not isinstance(data, Dataset):
            raise EstimationError(f"data must be a pmxgen Dataset (found {type(data).__name__}); use "
                                  f"pmxgen.read_nonmem")
        if data.n_observations == 0:
            raise EstimationError("the data have no observations to fit")
        if model.iov_names and not self.supports_occasions:
            raise ModelError(f"{who} does not handle inter-occasion variability yet ({', '.join(model.iov_names)}); "
                             f"fit this model with method='focei'")
        weights = sum(p.numel() for p in model.networks.parameters())
        if weights and not self.supports_network_weights:
            from .registry import estimators_supporting_weights
            raise ModelError(f"{who} does not optimise network weights ({weights} in {model.name}); fit this model "
                             f"with one of: {', '.join(estimators_supporting_weights())}")
        if self.needs_random_effects and len(model.eta_names(data.batch)) == 0:
            raise EstimationError(f"{who} needs random effects (the model has none); fit a model without random "
                                  f"effects with method='focei' (naive pooled)")

    def _check_threads(self) -> None:
        t = self.cpu_threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise EstimationError(f"cpu_threads must be a positive integer or None (found {t!r})")

    # ------------------------------------------------------------------- fit
    def fit(self, model: PopulationModel, data: Dataset):
        """Estimate ``model``'s parameters from ``data``; returns a frozen :class:`~pmxgen.FitResult`.

        Hyperparameters and the model's capabilities are checked first. Network weights of
        the model are restored to their values before the fit afterwards: the fitted weights
        are in the result (``FitResult.network_weights``).
        """
        self._validate(model, data)
        self._check_threads()
        self.check_model(model, data)
        model.check(data)
        from ..models.weights import load_weights_state, weights_state
        initial_weights = weights_state(model)
        previous = torch.get_num_threads()
        if self.cpu_threads is not None and data.device.type == "cpu":
            torch.set_num_threads(int(self.cpu_threads))
        try:
            return self._fit(model, data)
        finally:
            torch.set_num_threads(previous)
            if initial_weights:
                load_weights_state(model, initial_weights)

    @abstractmethod
    def _fit(self, model, data):
        """Estimate (hyperparameters and model already checked)."""

    def options(self) -> dict:
        """The options recorded in a FitResult: the method name and every hyperparameter."""
        return {"method": self.name, **{k: (v if isinstance(v, (int, float, str, bool, type(None), dict, list, tuple))
                                            else repr(v)) for k, v in self.get_params().items()}}
