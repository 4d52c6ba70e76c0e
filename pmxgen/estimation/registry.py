"""The one list of estimators that :func:`pmxgen.fit`, ``pmxgen.ALL_METHODS`` and ``pmxgen fit`` read.

A new estimator is one module with an :class:`~pmxgen.estimation.base.Estimator` subclass and a
call of :func:`register_estimator` (or the class decorator :func:`registered`). Importing the
module registers it; for the command line, ``pmxgen fit ... --plugin my_estimator.py`` (a file
or a module name) imports it first, and an installed package can declare its estimators as
entry points in the group ``pmxgen.estimators``, which are loaded with the built-ins.

Examples
--------
>>> from pmxgen.estimation.registry import estimator_names, get_estimator_class
>>> "focei" in estimator_names(), get_estimator_class("FOCE-I").__name__
(True, 'FOCEI')
"""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import EstimationError

__all__ = ["register_estimator", "registered", "load_plugin", "get_estimator_class", "make_estimator", "estimator_names",
           "estimator_classes", "estimators_supporting_weights", "MethodNames", "normalise_method"]

_REGISTRY: dict[str, type] = {}


def normalise_method(name: str) -> str:
    """Lower case without '-' and '_' (``FOCE-I`` → ``focei``)."""
    return str(name).lower().replace("-", "").replace("_", "")


def register_estimator(cls: type, *, replace: bool = False) -> type:
    """Add an :class:`~pmxgen.estimation.base.Estimator` subclass under ``cls.name``; returns ``cls``."""
    from .base import Estimator
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise EstimationError(f"register_estimator takes an Estimator subclass (found {cls!r})")
    key = normalise_method(cls.name)
    if not key or key == "estimator":
        raise EstimationError(f"{cls.__name__} needs a class attribute `name` (its method name)")
    if key in _REGISTRY and _REGISTRY[key] is not cls and not replace:
        raise EstimationError(f"an estimator named {key!r} is registered already ({_REGISTRY[key].__name__}); "
                              f"pass replace=True to replace it")
    _REGISTRY[key] = cls
    return cls


def registered(cls: type) -> type:
    """Class decorator form of :func:`register_estimator`."""
    return register_estimator(cls)


_ENTRY_POINTS_LOADED = False


def _ensure_builtins() -> None:
    global _ENTRY_POINTS_LOADED
    # Importing the built-in estimator modules registers them.
    from . import classical, energy_em, saem, score, variational
    del classical, energy_em, saem, score, variational
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        from importlib.metadata import entry_points
        for entry in entry_points(group="pmxgen.estimators"):
            try:
                cls = entry.load()
            except Exception as exc:
                raise EstimationError(f"the estimator plugin {entry.name} ({entry.value}) failed to load: "
                                      f"{type(exc).__name__}: {exc}") from exc
            if normalise_method(getattr(cls, "name", "")) not in _REGISTRY:
                register_estimator(cls)


def load_plugin(spec: str) -> None:
    """Import an estimator plugin (a ``.py`` file or a module name) so that its registrations take effect."""
    import importlib
    import runpy
    from pathlib import Path
    try:
        if spec.endswith(".py") or Path(spec).is_file():
            if not Path(spec).is_file():
                raise EstimationError(f"estimator plugin {spec} does not exist")
            runpy.run_path(spec, run_name=f"pmxgen_plugin_{Path(spec).stem}")
        else:
            importlib.import_module(spec)
    except EstimationError:
        raise
    except Exception as exc:
        raise EstimationError(f"estimator plugin {spec} failed to load: {type(exc).__name__}: {exc}") from exc


def estimator_names() -> tuple[str, ...]:
    """Method names in registration order."""
    _ensure_builtins()
    return tuple(_REGISTRY)


def estimator_classes() -> dict[str, type]:
    """Method name → estimator class."""
    _ensure_builtins()
    return dict(_REGISTRY)


def get_estimator_class(method: str) -> type:
    """The estimator class registered for ``method`` (case, '-' and '_' ignored)."""
    _ensure_builtins()
    key = normalise_method(method)
    if key not in _REGISTRY:
        raise EstimationError(f"unknown method {method!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def make_estimator(method: str, **options):
    """An estimator for ``method`` with hyperparameters ``options`` (unknown ones raise EstimationError)."""
    cls = get_estimator_class(method)
    known = cls._param_names()
    unknown = [k for k in options if k not in known]
    if unknown:
        raise EstimationError(f"method {normalise_method(method)!r} has no option {unknown[0]!r}; its options are "
                              f"{', '.join(known)}")
    return cls(**options)


def estimators_supporting_weights() -> tuple[str, ...]:
    """Methods that optimise network weights."""
    return tuple(k for k, c in estimator_classes().items() if c.supports_network_weights)


class MethodNames(Sequence):
    """A live, read-only view of the registered method names (``pmxgen.ALL_METHODS``)."""

    def __getitem__(self, index):
        return estimator_names()[index]

    def __len__(self) -> int:
        return len(estimator_names())

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (tuple, list, Sequence)) else NotImplemented

    def __hash__(self):
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))
