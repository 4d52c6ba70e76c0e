"""Every docstring example in pmxgen.models, .estimation, .diagnostics, .report and .generative runs and gives its output."""
import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("pmxgen.models", "pmxgen.estimation", "pmxgen.diagnostics", "pmxgen.report", "pmxgen.generative")


def _modules():
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=package + ".")]
    return sorted(set(names))


MODULES = _modules()


def test_every_package_has_modules():
    for package in PACKAGES:
        assert any(m.startswith(package + ".") for m in MODULES), package


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                             report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
