"""``pmxgen.fit``: one entry point for every estimation method."""
from __future__ import annotations

from ..data.dataset import Dataset
from ..errors import EstimationError
from ..models.base import PopulationModel
from .classical import ClassicalEstimator
from .objective import METHODS as CLASSICAL_METHODS
from .results import FitResult
from .saem import MCEM, SAEM

__all__ = ["fit", "ALL_METHODS"]

#: Every method name :func:`fit` accepts.
ALL_METHODS = CLASSICAL_METHODS + ("saem", "mcem", "vem")


def fit(model: PopulationModel, data: Dataset, method: str = "focei", **options) -> FitResult:
    """Fit ``model`` to ``data`` by ``method``; ``options`` go to the estimator.

    ``fo``, ``foce``, ``focei`` and ``laplace`` use :class:`ClassicalEstimator`; ``saem`` and
    ``mcem`` use :class:`~pmxgen.estimation.saem.SAEM` and :class:`~pmxgen.estimation.saem.MCEM`;
    ``vem`` uses :class:`~pmxgen.estimation.variational.VariationalEM`.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.models.build_model("1cmt_oral", data, iiv=("KA", "CL"))
    >>> result = pmxgen.fit(model, data, method="foce", covariance=None)
    >>> result.status
    'converged'
    """
    key = str(method).lower().replace("-", "")
    if key == "saem":
        return SAEM(**options).fit(model, data)
    if key == "mcem":
        return MCEM(**options).fit(model, data)
    if key == "vem":
        from .variational import VariationalEM
        return VariationalEM(**options).fit(model, data)
    if key not in CLASSICAL_METHODS:
        raise EstimationError(f"unknown method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    return ClassicalEstimator(key, **options).fit(model, data)
