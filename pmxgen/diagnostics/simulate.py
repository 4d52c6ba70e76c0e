"""Replicates of a study simulated from a population model at fixed parameter values.

Simulation-based diagnostics (NPDE, VPC, posterior predictive checks) compare the observed
data with many copies of the same design simulated from the model: each replicate draws new
random effects ``η ~ N(0, Ω)`` for every subject and new observations with residual error,
at the fitted θ, Ω and σ. Replicates are computed in chunks of whole copies of the design
(``SubjectBatch.repeat``), so no Python loop runs over subjects.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ModelError
from ..models.base import PopulationModel
from ..models.parameter_set import PopulationValues

__all__ = ["simulate_replicates", "generator_for", "observation_batch", "observation_index"]

#: Largest number of simulated observations (replicates × subjects × samples) made at once.
MAX_ELEMENTS = 4_000_000


def observation_batch(data):
    """The :class:`~pmxgen.data.SubjectBatch` of a Dataset (or the batch itself)."""
    return data.batch if hasattr(data, "batch") else data


def observation_index(batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subject position, sample position and data row of every observation, in data-row order.

    ``values[subject, sample]`` of an ``[N, J]`` array then lines up with ``FitResult.observations``
    (sorted by ``ROW``).

    Examples
    --------
    >>> import pmxgen
    >>> subject, sample, row = observation_index(pmxgen.datasets.load("theophylline").batch)
    >>> subject[:3].tolist(), sample[:3].tolist(), row[:3].tolist()
    ([0, 0, 0], [0, 1, 2], [1, 2, 3])
    """
    mask = batch.obs.mask.cpu().numpy()
    subject, sample = np.nonzero(mask)
    row = batch.obs.row.cpu().numpy()[subject, sample]
    order = np.argsort(row, kind="stable")
    return subject[order], sample[order], row[order]


def generator_for(seed: int | torch.Generator | None, device) -> torch.Generator:
    """A torch generator on ``device``: ``seed`` itself, or a new one seeded with ``seed`` (0 when None)."""
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator(device=device)
    gen.manual_seed(0 if seed is None else int(seed))
    return gen


def simulate_replicates(model: PopulationModel, values: PopulationValues, data, n_simulations: int, *,
                        seed: int | torch.Generator | None = 0, max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """Observations of ``n_simulations`` replicates of the design of ``data``, ``[S, N, J]``.

    Parameters
    ----------
    model : PopulationModel
        Provides ``sample_eta`` (η ~ N(0, Ω)) and ``sample_y`` (observations given η).
    values : PopulationValues
        θ, Ω and σ to simulate at (e.g. ``Run.values``, the estimates).
    data : Dataset or SubjectBatch
        The design: doses, sampling times and covariates of every subject.
    n_simulations : int
        Number of replicates ``S``.
    seed : int or torch.Generator
        Same seed, same replicates.
    max_elements : int
        Replicates are simulated in chunks of at most this many observations.

    Returns
    -------
    torch.Tensor
        ``[S, N, J]`` on the data's device, on the observation scale; 0 on padding.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    >>> values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    >>> sims = simulate_replicates(model, values, data, 50, seed=1)
    >>> tuple(sims.shape)
    (50, 12, 11)
    >>> bool((sims == simulate_replicates(model, values, data, 50, seed=1)).all())
    True
    """
    batch = observation_batch(data)
    if isinstance(n_simulations, bool) or int(n_simulations) != n_simulations or n_simulations < 1:
        raise ModelError(f"n_simulations must be a whole number >= 1 (found {n_simulations!r})")
    n_simulations = int(n_simulations)
    n, j = batch.obs.time.shape
    gen = generator_for(seed, batch.device)
    per_chunk = max(1, min(n_simulations, int(max_elements) // max(1, n * j)))
    chunks = []
    done = 0
    with torch.no_grad():
        while done < n_simulations:
            size = min(per_chunk, n_simulations - done)
            rep = batch.repeat(size) if size > 1 else batch
            eta = model.sample_eta(values, rep, generator=gen)
            y = model.sample_y(eta, values, rep, generator=gen)
            chunks.append(y.reshape(size, n, j))
            done += size
    sims = torch.cat(chunks, dim=0)
    bad = ~torch.isfinite(sims) & batch.obs.mask
    if bool(bad.any()):
        s, i, k = (int(v) for v in torch.nonzero(bad)[0])
        raise ModelError(f"the model simulated a non-finite observation (replicate {s}, subject position {i}, "
                         f"sample {k}); check the parameter values and the model's predictions")
    return sims
