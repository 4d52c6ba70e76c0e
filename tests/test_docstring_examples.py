"""Every docstring example in every module of pmxgen runs and gives its output.

The modules are found by walking the package with :mod:`pkgutil`, so a new module is covered
without being listed here. ``pmxgen.__main__`` is left out: importing it runs the command line.
"""
import doctest
import importlib
import pkgutil

import pytest

import pmxgen

#: Modules that must not be imported to be tested (importing ``pmxgen.__main__`` runs the CLI).
NOT_IMPORTED = {"pmxgen.__main__"}


def _modules() -> list[str]:
    names = ["pmxgen"] + [m.name for m in pkgutil.walk_packages(pmxgen.__path__, prefix="pmxgen.")]
    return sorted(set(names) - NOT_IMPORTED)


MODULES = _modules()


def test_every_subpackage_and_module_is_collected():
    """The walk reaches every subpackage (and the modules outside them), not only those once listed here."""
    expected = {"pmxgen.cli", "pmxgen.runs", "pmxgen.errors", "pmxgen.data", "pmxgen.data.reader",
                "pmxgen.structural", "pmxgen.structural.ode", "pmxgen.structural.dopri5", "pmxgen.simulation",
                "pmxgen.simulation.dataset_simulation", "pmxgen.datasets", "pmxgen.models", "pmxgen.estimation",
                "pmxgen.diagnostics", "pmxgen.report", "pmxgen.generative", "pmxgen.generative.flows.planar"}
    assert expected <= set(MODULES), sorted(expected - set(MODULES))
    top_level = {f"pmxgen.{m.name}" for m in pkgutil.iter_modules(pmxgen.__path__)} - NOT_IMPORTED
    assert len(top_level) >= 10 and top_level <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                             report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
