"""The data sets bundled with pmxgen: real ones, simulated ones with known truth, covariate panels.

Each data set is a folder ``<name>/`` holding ``<name>.csv`` and a ``README.md``. Most are
NONMEM event tables (:func:`load` reads them); simulated ones also hold ``truth.json`` with the
parameters that generated them (made by ``datasets/make_simulated.py``). Covariate panels
(:data:`TABLES`, e.g. ``diabetes``: one row per patient, no doses) are read by :func:`load_table`
as a DataFrame; :func:`baseline_covariates` makes such a panel from a NONMEM set's subjects. The folders are found in the installed data
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
>>> pmxgen.datasets.load_table("diabetes").shape
(442, 11)
"""
from __future__ import annotations

import builtins
import importlib.resources
import json
from pathlib import Path

__all__ = ["load", "path", "truth", "describe", "kind", "load_table", "baseline_covariates", "REAL", "TABLES",
           "READ_OPTIONS", "COVARIATE_COLUMNS"]
# ``list`` is public (``pmxgen.datasets.list()``) but left out of ``__all__`` so that
# ``from pmxgen.datasets import *`` does not shadow the builtin ``list``.

#: The real (not simulated) data sets.
REAL: tuple[str, ...] = ("theophylline", "indomethacin", "pheno", "moxo", "pmxnode_example1")
#: Covariate panels (one row per subject, no dose records): read with :func:`load_table`.
TABLES: tuple[str, ...] = ("diabetes",)
#: The baseline covariates :func:`baseline_covariates` takes by default from a NONMEM data set
#: (others: every covariate column but the occasion).
COVARIATE_COLUMNS: dict[str, tuple[str, ...]] = {"pheno": ("WGT", "APGR"), "moxo": ("AGE", "SEX", "WT", "CRCL"),
                                                 "theophylline": ("WT",)}
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
    """Real data sets first (in :data:`REAL` order), then the others alphabetically, covariate panels last."""
    names = set(names)
    return ([n for n in REAL if n in names] + sorted(names - set(REAL) - set(TABLES))
            + [n for n in TABLES if n in names])


def kind(name: str) -> str:
    """``"nonmem"`` (an event table for :func:`load`) or ``"covariates"`` (a panel for :func:`load_table`).

    Examples
    --------
    >>> kind("pheno"), kind("diabetes")
    ('nonmem', 'covariates')
    """
    _folder(name)
    return "covariates" if name in TABLES else "nonmem"


def list(kind: str | None = None) -> builtins.list[str]:  # noqa: A001 - public name, pmxgen.datasets.list()
    """Names of the bundled data sets: the real ones, then the simulated ones, then covariate panels.

    ``kind``: ``"nonmem"`` or ``"covariates"`` to list only those (see :func:`kind`).

    Examples
    --------
    >>> import pmxgen
    >>> pmxgen.datasets.list()[:4]
    ['theophylline', 'indomethacin', 'pheno', 'moxo']
    >>> pmxgen.datasets.list("covariates")
    ['diabetes']
    """
    names = _ordered(_folders())
    if kind is None:
        return names
    if kind not in ("nonmem", "covariates"):
        raise ValueError(f"kind must be 'nonmem' or 'covariates' (found {kind!r})")
    return [n for n in names if (n in TABLES) == (kind == "covariates")]


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
    if name in TABLES and name in _folders():
        from ..errors import DatasetError
        raise DatasetError(f"{name!r} is a covariate panel (one row per subject, no doses), not a NONMEM data set",
                           source=str(path(name)), fix=f"read it with pmxgen.datasets.load_table({name!r})")
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


def load_table(name: str):
    """The covariate panel ``name`` (one of :data:`TABLES`) as a :class:`pandas.DataFrame`.

    Examples
    --------
    >>> panel = load_table("diabetes")
    >>> panel.columns.tolist()[:4], int(panel["SEX"].nunique())
    (['AGE', 'SEX', 'BMI', 'BP'], 2)
    """
    import pandas as pd
    if name not in TABLES:
        from ..errors import DatasetError
        _folder(name)
        raise DatasetError(f"{name!r} is a NONMEM data set, not a covariate panel", source=str(path(name)),
                           fix=f"read it with pmxgen.datasets.load({name!r}), or take its subjects' covariates "
                               f"with pmxgen.datasets.baseline_covariates({name!r})")
    return pd.read_csv(path(name))


def baseline_covariates(data, columns=None):
    """One row per subject: ``ID`` and the baseline (first-record) values of covariate columns.

    Parameters
    ----------
    data : str or Dataset
        A bundled NONMEM data set name or a :class:`~pmxgen.data.Dataset`.
    columns : list of str, optional
        Covariates to take; default :data:`COVARIATE_COLUMNS` for the bundled sets that have an
        entry, otherwise every covariate column but the occasion. Covariates that change within
        a subject (``moxo``'s simulated AGE, WT, CRCL) are taken at the subject's first record.

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> panel = baseline_covariates("pheno")
    >>> panel.shape, panel.columns.tolist()
    ((59, 3), ['ID', 'WGT', 'APGR'])
    """
    import pandas as pd
    from ..errors import DatasetError
    if isinstance(data, str):
        name = data
        data = load(name)
    else:
        name = getattr(data, "bundled_name", None)
    names = builtins.list(data.batch.covariate_names)
    if columns is None:
        occasion = ((getattr(data, "recipe", None) or {}).get("read_options") or {}).get("occasion")
        columns = COVARIATE_COLUMNS.get(name) or [c for c in names if c != occasion]
    missing = [c for c in columns if c not in names]
    if missing:
        raise DatasetError(f"no covariate column {missing} in the data", source=str(data.source),
                           fix=f"choose among {names}")
    baseline = data.batch.baseline.detach().cpu().numpy()
    frame = pd.DataFrame({"ID": builtins.list(data.ids)})
    for c in columns:
        values = baseline[:, names.index(c)]
        categories = getattr(data, "categories", {}).get(c)
        if categories:
            frame[c] = [categories[int(v)] for v in values]
        elif (values == values.round()).all():
            frame[c] = values.astype("int64")
        else:
            frame[c] = values
    return frame
