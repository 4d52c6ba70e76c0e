"""Exceptions and warnings raised by pmxgen.

Every message says what was found, where it was found and what to do about it.
"""
from __future__ import annotations

__all__ = [
    "PmxgenError",
    "DatasetError",
    "ModelError",
    "EstimationError",
    "IntegrationError",
    "DatasetWarning",
    "ConvergenceWarning",
    "UsageError",
    "dataset_message",
]


class PmxgenError(Exception):
    """Base class of every pmxgen exception."""


class DatasetError(PmxgenError, ValueError):
    """Bad input data: names the file, the row (as in the file), the column, the value and the fix.

    Attributes
    ----------
    source : str
        File name (or ``"<DataFrame>"``).
    row : int or None
        Line number in the file (1-based, header = line 1) or DataFrame row position.
    column : str or None
        Column name as written in the file.
    value : object
        The offending value.
    """

    def __init__(self, problem: str, *, source: str = "<DataFrame>", row: int | None = None,
                 column: str | None = None, value: object = None, fix: str = "") -> None:
        self.problem, self.source, self.row, self.column, self.value, self.fix = (
            problem, source, row, column, value, fix)
        super().__init__(dataset_message(problem, source=source, row=row, column=column, value=value, fix=fix))


def dataset_message(problem: str, *, source: str = "<DataFrame>", row: int | None = None, column: str | None = None,
                    value: object = None, fix: str = "") -> str:
    """The text of a :class:`DatasetError` or :class:`DatasetWarning`: where, what, the value found, what to do.

    Parameters
    ----------
    problem : str
        What is wrong.
    source : str
        File name (or ``"<DataFrame>"``).
    row : int, optional
        Line number in the file (or DataFrame index label).
    column : str, optional
        Column name as written in the data.
    value : object, optional
        The offending value (shown with ``repr``).
    fix : str
        What to do about it.

    Returns
    -------
    str
        ``"<source>, row <row>, column <column>: <problem> (found <value>). <Fix>"``.

    Examples
    --------
    >>> print(dataset_message("AMT is negative", source="d.csv", row=3, column="AMT", value=-5, fix="give AMT > 0"))
    d.csv, row 3, column AMT: AMT is negative (found -5). Give AMT > 0
    """
    where = f"{source}"
    if row is not None:
        where += f", row {row}"
    if column is not None:
        where += f", column {column}"
    text = f"{where}: {problem}"
    if value is not None:
        text += f" (found {value!r})"
    if fix:
        text += f". {fix[0].upper()}{fix[1:]}"
    return text


class ModelError(PmxgenError, ValueError):
    """A model is inconsistent with itself or with the data it is applied to."""


class EstimationError(PmxgenError, RuntimeError):
    """An estimator could not proceed."""


class IntegrationError(PmxgenError, RuntimeError):
    """Numerical integration of a model failed (non-finite values, stiffness, step-size underflow)."""


class UsageError(PmxgenError, ValueError):
    """A command line that cannot be carried out (unknown option for a method, unparsable value, missing file)."""


class DatasetWarning(UserWarning):
    """Data are usable but unusual (e.g. a subject without observations)."""


class ConvergenceWarning(UserWarning):
    """An iterative algorithm stopped before meeting its convergence criterion."""
