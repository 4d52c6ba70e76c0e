"""Reports of fits: result files and tables, and the HTML diagnostics report.

The package is callable: ``pmxgen.report(fit_or_folder, "report.html", ...)`` is
:func:`pmxgen.report.write_report`. The HTML report (matplotlib) is imported on first use.
"""
import importlib
import sys
import types

from .tables import results_summary, write_fit

_LAZY = {"write_report": "html", "render_html": "html", "write_tables": "html",
         "write_generator_report": "generators"}

__all__ = ["results_summary", "write_fit", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _CallableModule(types.ModuleType):
    """This package, callable as :func:`write_report`."""

    def __call__(self, *args, **kwargs):
        return self.write_report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
