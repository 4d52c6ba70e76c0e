r"""Fitting energy-based and score models: :func:`fit_energy` (Adam or L-BFGS, seeded).

One helper for every loss of :mod:`~pmxgen.generative.score.losses` and
:mod:`~pmxgen.generative.score.contrastive`: the loss is a :class:`~pmxgen.generative.score.Loss`
module or a name with default settings (:data:`LOSSES`). The model's parameters and the loss's
own (e.g. NCE's log-normaliser) are optimised together on the model's device and dtype; the
data are checked once (a NaN or infinite value raises a
:class:`~pmxgen.errors.DatasetError` naming its row and column).

Examples
--------
>>> import torch
>>> from pmxgen.generative.score import GaussianEnergy, fit_energy
>>> x = 2.0 + torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> model = GaussianEnergy(2)
>>> fit = fit_energy(model, x, loss="explicit", optimizer="lbfgs", max_iter=100)
>>> bool(torch.allclose(model.mean, x.mean(0)))
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import EstimationError, ModelError
from ._common import as_data, check_int, check_positive, make_generator
from .contrastive import ContrastiveDivergence, NoiseContrastiveEstimation
from .losses import (
    DenoisingScoreMatching,
    ExplicitScoreMatching,
    Loss,
    NoiseConditionalScoreMatching,
    SlicedScoreMatching,
)

__all__ = ["fit_energy", "EnergyFit", "LOSSES", "OPTIMIZERS", "SCHEDULES"]

#: Loss names accepted by :func:`fit_energy` and the loss each builds (default settings).
LOSSES = {
    "explicit": ExplicitScoreMatching,
    "sliced": lambda: SlicedScoreMatching(variance_reduction=False),
    "sliced_vr": lambda: SlicedScoreMatching(variance_reduction=True),
    "denoising": DenoisingScoreMatching,
    "noise_conditional": NoiseConditionalScoreMatching,
    "cd": ContrastiveDivergence,
    "nce": NoiseContrastiveEstimation,
}
OPTIMIZERS = ("adam", "lbfgs")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class EnergyFit:
    """What :func:`fit_energy` did (the model itself is fitted in place).

    Attributes
    ----------
    history : torch.Tensor
        Loss value at each iteration ``[n_iter]`` (float64, CPU); for L-BFGS, at each evaluation.
    n_iter : int
        Iterations (optimizer steps, or L-BFGS evaluations) run.
    stopped_early : bool
        Whether early stopping (``patience``) ended the run before ``max_iter``.
    loss : Loss
        The loss module used (holds e.g. the noise ladder or NCE's fitted log-normaliser).
    """

    history: torch.Tensor
    n_iter: int
    stopped_early: bool
    loss: Loss


def _resolve_loss(loss: str | Loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]()
    raise ModelError(f"fit_energy: loss must be a Loss module or one of {sorted(LOSSES)}; found {loss!r}")


def fit_energy(model: torch.nn.Module, data: object, *, loss: str | Loss = "sliced_vr", max_iter: int = 1000,
               learning_rate: float | None = None, batch_size: int | None = None, optimizer: str = "adam",
               schedule: str = "cosine", patience: int | None = None, tol: float = 1e-4,
               seed: int | torch.Generator | None = 0) -> EnergyFit:
    """Fit ``model`` (in place) to ``data`` by minimising ``loss``.

    Parameters
    ----------
    model : torch.nn.Module
        An energy or score model of dimension D (e.g. :class:`~pmxgen.generative.score.GaussianEnergy`,
        :class:`~pmxgen.generative.score.EnergyNetwork`); its parameters fix device and dtype.
    data : tensor, array or DataFrame
        ``[N, D]``, finite.
    loss : Loss or str, default "sliced_vr"
        A loss module, or one of :data:`LOSSES` with its default settings.
    max_iter : int, default 1000
        Optimizer steps (Adam) or the most loss evaluations (L-BFGS).
    learning_rate : float, optional
        Default 1e-2 for Adam, 1.0 for L-BFGS.
    batch_size : int, optional
        Rows drawn (with replacement, seeded) per Adam step; default all rows every step.
    optimizer : {"adam", "lbfgs"}, default "adam"
        L-BFGS (strong Wolfe line search, full batch) only for deterministic losses (explicit SM).
    schedule : {"cosine", "constant"}, default "cosine"
        Adam learning rate: cosine decay to 0 over ``max_iter`` (lets stochastic losses settle), or
        constant.
    patience : int, optional
        Early stopping: stop when an exponential moving average (weight 0.1) of the loss has not
        improved by ``tol·max(1, |best|)`` for ``patience`` steps. Default: run ``max_iter`` steps.
    tol : float, default 1e-4
    seed : int, torch.Generator or None, default 0
        All random numbers of the fit (mini-batches, projections, noise, Langevin chains).

    Returns
    -------
    EnergyFit

    Raises
    ------
    DatasetError
        Data that are not a 2-D table of finite numbers (names the row and column of a NaN).
    ModelError
        A model without parameters, a width other than the model's ``dim``, bad settings.
    EstimationError
        A non-finite loss (names the iteration; lower the learning rate).

    Examples
    --------
    >>> import torch
    >>> from pmxgen.generative.score import GaussianEnergy, SlicedScoreMatching
    >>> x = torch.randn(400, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    >>> model = GaussianEnergy(2, mean=torch.ones(2))
    >>> fit = fit_energy(model, x, loss=SlicedScoreMatching(n_projections=2), max_iter=200,
    ...                  learning_rate=0.05, seed=0)
    >>> fit.n_iter, bool(fit.history[-1] < fit.history[0]), bool(model.mean.abs().max() < 0.2)
    (200, True, True)
    """
    who = "fit_energy"
    params = list(model.parameters())
    if not params:
        raise ModelError(f"{who}: the model has no parameters to fit")
    loss_fn = _resolve_loss(loss)
    max_iter = check_int(max_iter, "max_iter", who)
    if optimizer not in OPTIMIZERS:
        raise ModelError(f"{who}: optimizer must be one of {OPTIMIZERS}; found {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ModelError(f"{who}: schedule must be one of {SCHEDULES}; found {schedule!r}")
    lr = check_positive(learning_rate if learning_rate is not None else (1e-2 if optimizer == "adam" else 1.0),
                        "learning_rate", who)
    if patience is not None:
        patience = check_int(patience, "patience", who)
    tol = check_positive(tol, "tol", who)
    dim = getattr(model, "dim", None)
    x = as_data(data, who, dtype=params[0].dtype, device=params[0].device, dim=dim if isinstance(dim, int) else None)
    n_rows = x.shape[0]
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", who)
    gen = make_generator(seed)
    loss_fn.setup(model, x, gen)
    all_params = params + [p for p in loss_fn.parameters() if p.requires_grad]
    history: list[float] = []

    def evaluate(batch: torch.Tensor) -> torch.Tensor:
        value = loss_fn(model, batch, gen)
        if not bool(torch.isfinite(value)):
            raise EstimationError(f"{who}: the loss is not finite ({value.item()}) at iteration {len(history) + 1}; "
                                  f"lower learning_rate (now {lr}) or rescale the data")
        history.append(float(value.detach()))
        return value

    if optimizer == "lbfgs":
        if loss_fn.stochastic or batch_size is not None:
            raise ModelError(f"{who}: optimizer='lbfgs' needs a deterministic full-batch loss (explicit score "
                             f"matching); {type(loss_fn).__name__} draws random numbers: use optimizer='adam'")
        opt = torch.optim.LBFGS(all_params, lr=lr, max_iter=max_iter, max_eval=max_iter, history_size=50,
                                tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            value = evaluate(x)
            value.backward()
            return value

        opt.step(closure)
        return EnergyFit(torch.tensor(history, dtype=torch.float64), len(history), False, loss_fn)

    opt = torch.optim.Adam(all_params, lr=lr)
    best, ema, waited, stopped = math.inf, None, 0, False
    for it in range(max_iter):
        if schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * it / max_iter))
        if batch_size is None:
            batch = x
        else:
            idx = torch.randint(n_rows, (batch_size,), generator=gen).to(x.device)
            batch = x[idx]
        opt.zero_grad()
        evaluate(batch).backward()
        opt.step()
        if patience is not None:
            ema = history[-1] if ema is None else 0.9 * ema + 0.1 * history[-1]
            if ema < best - tol * max(1.0, abs(best) if math.isfinite(best) else 1.0):
                best, waited = ema, 0
            else:
                waited += 1
                if waited >= patience:
                    stopped = True
                    break
    return EnergyFit(torch.tensor(history, dtype=torch.float64), len(history), stopped, loss_fn)
