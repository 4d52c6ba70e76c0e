"""The data sets bundled with pmxgen: real ones and simulated ones with known truth.

Each data set is a folder ``<name>/`` holding ``<name>.csv`` (NONMEM format) and a
``README.md``; simulated ones also hold ``truth.json`` with the parameters that generated
them (made by ``datasets/make_simulated.py``). The folders are found in the installed data
package ``pmxgen._bundled`` (a wheel carries them), or else in the ``datasets/`` folder of a
source checkout.

Examples
--------
>>> import pmxgen
>>> "theophylline" in pmxgen.datasets.list()
True
>>> pmxgen.datasets.load("theophylline").n_subjects
12
>>> pmxgen.datasets.truth("sim_1cmt_oral_wt")["model"]
'1cmt_oral'
"""
from __future__ import annotations

import builtins
import importlib.resources
import json
from pathlib import Path

__all__ = ["load", "path", "truth", "describe", "REAL", "READ_OPTIONS"]
# ``list`` is public (``pmxgen.datasets.list()``) but left out of ``__all__`` so that
# ``from pmxgen.datasets import *`` does not shadow the builtin ``list``.

#: The real (not simulated) data sets.
REAL: tuple[str, ...] = ("theophylline", "indomethacin", "pheno", "moxo", "pmxnode_example1")
#: Default :func:`pmxgen.read_nonmem` options of each data set (overridden by ``load``'s keywords).
READ_OPTIONS: dict[str, dict] = {"moxo": {"occasion": "VISI"}}

_PACKAGE = "pmxgen._bundled"


def _roots() -> builtins.list[Path]:
    """Folders that may hold the data sets: the installed data package, then the source checkout."""
    roots: builtins.list[Path] = []
    try:
        resource = importlib.resources.files(_PACKAGE)
    except (ModuleNotFoundError, TypeError):
        resource = None
    if resource is not None:
        # a regular package gives a Path; a namespace package a MultiplexedPath of Paths
        candidates = getattr(resource, "_paths", None) or [resource]
        for c in candidates:
            p = Path(str(c))
            if p.is_dir():
                roots.append(p)
    checkout = Path(__file__).resolve().parents[2] / "datasets"
    if checkout.is_dir() and checkout not in roots:
        roots.append(checkout)
    return roots


def _folders() -> dict[str, Path]:
    """Name → folder of every bundled data set (first root wins)."""
    found: dict[str, Path] = {}
    for root in _roots():
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and (folder / f"{folder.name}.csv").is_file() and folder.name not in found:
                found[folder.name] = folder
    return found


def _folder(name: str) -> Path:
    folders = _folders()
    if name not in folders:
        available = ", ".join(_ordered(folders)) or "none (the datasets folder was not found)"
        raise KeyError(f"unknown data set {name!r}; available: {available}")
    return folders[name]


def _ordered(names) -> builtins.list[str]:
    """Real data sets first (in :data:`REAL` order), then the others alphabetically."""
    names = set(names)
    return [n for n in REAL if n in names] + sorted(names - set(REAL))


def list() -> builtins.list[str]:  # noqa: A001 - public name, pmxgen.datasets.list()
    """Names of the bundled data sets: the real ones, then the simulated ones.

    Examples
    --------
    >>> import pmxgen
    >>> pmxgen.datasets.list()[:4]
    ['theophylline', 'indomethacin', 'pheno', 'moxo']
    """
    return _ordered(_folders())


def path(name: str) -> Path:
    """The CSV file of data set ``name``.

    Raises
    ------
    KeyError
        For an unknown name (the message lists the available ones).

    Examples
    --------
    >>> import pmxgen
    >>> pmxgen.datasets.path("pheno").name
    'pheno.csv'
    """
    return _folder(name) / f"{name}.csv"


def load(name: str, **read_kwargs):
    """Read data set ``name`` with :func:`pmxgen.read_nonmem`.

    Parameters
    ----------
    name : str
        One of :func:`list`.
    **read_kwargs
        Options of :func:`pmxgen.read_nonmem`; they override the data set's defaults
        (:data:`READ_OPTIONS`: ``moxo`` is read with ``occasion='VISI'``).

    Returns
    -------
    Dataset

    Examples
    --------
    >>> import pmxgen
    >>> pmxgen.datasets.load("moxo").occasion_labels
    [3, 8]
    >>> pmxgen.datasets.load("moxo", occasion=None).occasion_labels is None
    True
    """
    from ..data import read_nonmem
    options = {**READ_OPTIONS.get(name, {}), **read_kwargs}
    dataset = read_nonmem(path(name), **options)
    dataset.bundled_name = name
    return dataset


def truth(name: str) -> dict:
    """The true parameters of simulated data set ``name`` (its ``truth.json``).

    Keys include ``model``, ``theta``, ``omega`` (variances), ``omega_matrix``, ``error``
    (SDs), ``seed``, ``n_subjects``, ``individual_model`` and ``design``.

    Raises
    ------
    KeyError
        For an unknown name, or a real data set (which has no known truth).

    Examples
    --------
    >>> import pmxgen
    >>> pmxgen.datasets.truth("sim_2cmt_iv_infusion")["theta"]["CL"]
    5.0
    """
    file = _folder(name) / "truth.json"
    if not file.is_file():
        simulated = [n for n, f in _folders().items() if (f / "truth.json").is_file()]
        raise KeyError(f"data set {name!r} is real data: it has no known true parameters (no truth.json); "
                       f"simulated data sets with a truth are: {', '.join(_ordered(simulated))}")
    return json.loads(file.read_text())


def describe(name: str) -> str:
    """The README of data set ``name`` (source, design, units, true values for simulated ones).

    Examples
    --------
    >>> import pmxgen
    >>> pmxgen.datasets.describe("theophylline").splitlines()[0]
    '# theophylline'
    """
    file = _folder(name) / "README.md"
    if not file.is_file():
        return f"# {name}\n\n(no README)\n"
    return file.read_text()
