"""``pmxgen.fit``: one entry point for every registered estimation method."""
from __future__ import annotations

from ..data.dataset import Dataset
from ..models.base import PopulationModel
from .registry import MethodNames, make_estimator
from .results import FitResult

__all__ = ["fit", "ALL_METHODS"]

#: Every method name :func:`fit` accepts: a live view of the estimator registry
#: (:mod:`pmxgen.estimation.registry`), so estimators registered later appear too.
ALL_METHODS = MethodNames()


def fit(model: PopulationModel, data: Dataset, method: str = "focei", **options) -> FitResult:
    """Fit ``model`` to ``data`` by ``method``; ``options`` are the estimator's hyperparameters.

    ``method`` names a registered estimator (:data:`ALL_METHODS`: ``fo``, ``foce``, ``focei``,
    ``laplace``, ``saem``, ``mcem``, ``vem`` and any registered later; case, '-' and '_' are
    ignored). An option the estimator does not have raises
    :class:`~pmxgen.errors.EstimationError` naming the options it has.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.models.build_model("1cmt_oral", data, iiv=("KA", "CL"))
    >>> result = pmxgen.fit(model, data, method="foce", covariance=None)
    >>> result.status
    'converged'
    >>> pmxgen.fit(model, data, method="foce", n_explore=10)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pmxgen.errors.EstimationError: method 'foce' has no option 'n_explore'; its options are ...
    """
    return make_estimator(method, **options).fit(model, data)
