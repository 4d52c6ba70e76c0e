"""A naive pooled start for models with network weights: fit θ, σ and the weights at η = 0.

Fitting a neural-ODE model by FOCE-I from zero-initialised networks spends most of its
iterations finding the rough shape of the curves, each iteration paying for the EBEs and the
η-derivatives of the predictions. :func:`pretrain_population` finds that shape first, cheaply:
it minimises the −2 log-likelihood of all observations under the population predictions
(η = 0; a naive pooled fit) over θ, σ and the weights with L-BFGS, then hands a model whose
initial θ and σ are the result (the weights are set in place) to any estimator.
"""
from __future__ import annotations

import math

import torch

from ..errors import EstimationError, IntegrationError, ModelError
from ..models.weights import weight_tensors

__all__ = ["pretrain_population"]


def pretrain_population(model, data, *, max_iter: int = 200, weight_decay: float = 0.0, tol: float = 1e-9):
    """Fit θ, σ and network weights to the population predictions (η = 0); returns the re-initialised model.

    Parameters
    ----------
    model : NLMEModel
        A model whose ``networks`` hold weights (in the structural model or in ``individual``).
        Its weights are changed in place; Ω is left as it is.
    data : Dataset
    max_iter : int
        L-BFGS iterations (strong Wolfe line search).
    weight_decay : float
        ``weight_decay·‖w‖²`` added to the objective (as the estimators' option).
    tol : float
        Stop when the objective changes less than this between iterations.

    Returns
    -------
    NLMEModel
        ``model.with_initial(...)`` with the naive pooled θ and σ (and the weights set).

    Examples
    --------
    >>> import torch, pmxgen
    >>> from pmxgen.models import NLMEModel
    >>> from pmxgen.structural.neural import linear_neural_elimination
    >>> data = pmxgen.datasets.load("indomethacin")
    >>> model = NLMEModel(linear_neural_elimination(hidden=2, rtol=1e-4, atol=1e-6),
    ...                   theta={"CL": (0, 5.0), "V": (0, 10.0), "S_N": 1.0}, omega={"CL": 0.1},
    ...                   error={"kind": "proportional", "init": {"PROP": 0.1}})
    >>> started = pretrain_population(model, data, max_iter=3)
    >>> started.parameter_set.theta[0].init != 5.0, bool(sum(w.abs().sum() for w in model.networks.parameters()) > 0)
    (True, True)
    """
    if not isinstance(max_iter, int) or max_iter < 1:
        raise EstimationError(f"max_iter must be a positive integer (found {max_iter!r})")
    ps = model.parameter_set
    batch = data.batch
    dtype, device = batch.dtype, batch.device
    phi0 = ps.initial_natural(dtype=dtype, device=device)
    x = ps.to_unconstrained(phi0).detach().clone().requires_grad_(True)
    weights = weight_tensors(model)
    eta = torch.zeros(batch.n_subjects, len(model.eta_names(batch)), dtype=dtype, device=device)
    optimiser = torch.optim.LBFGS([x, *weights], lr=1.0, max_iter=max_iter, tolerance_change=tol,
                                  tolerance_grad=1e-7, history_size=20, line_search_fn="strong_wolfe")
    state = {"best": math.inf, "evaluations": 0}

    def closure():
        optimiser.zero_grad()
        state["evaluations"] += 1
        try:
            values = ps.unpack(ps.from_unconstrained(x))
            total = -2.0 * model.log_likelihood(eta, values, batch).sum()
            if weight_decay:
                total = total + weight_decay * sum((w * w).sum() for w in weights)
        except (IntegrationError, ModelError, torch.linalg.LinAlgError) as exc:
            if state["evaluations"] == 1:
                raise EstimationError(f"pretraining cannot evaluate the model at its initial estimates: {exc}") \
                    from exc
            return torch.tensor(1e12, dtype=dtype, device=device)     # a trial point out of range
        if not bool(torch.isfinite(total)):
            return torch.tensor(1e12, dtype=dtype, device=device)
        total.backward()
        state["best"] = min(state["best"], float(total.detach()))
        return total

    optimiser.step(closure)
    if not math.isfinite(state["best"]):
        raise EstimationError("pretraining found no finite objective; check the initial estimates")
    natural = ps.full_natural(ps.from_unconstrained(x.detach()))
    keep = {name: value for name, value in natural.items() if ps.kind_of(name) != "omega"}
    return model.with_initial(keep)
