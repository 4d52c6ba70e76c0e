"""Probabilistic PCA (Tipping & Bishop 1999): likelihood, estimators and the population model.

    x_i = μ + W z_i + ε_i,   z_i ~ N(0, I_k),   ε_i ~ N(0, σ² I_d),   so x_i ~ N(μ, W Wᵀ + σ² I_d).

The pieces live in three modules, gathered here:

* :mod:`~pmxgen.models.ppca_core` — :func:`ppca_log_likelihood` (exact, NaN = missing, integrated
  out) and :func:`ppca_posterior` (posterior of z);
* :mod:`~pmxgen.models.ppca_fit` — :func:`fit_ppca` (closed form, EM, gradient) and :class:`PPCAResult`;
* :mod:`~pmxgen.models.ppca_model` — :func:`ppca_dataset`, :func:`ppca_matrix` and :class:`PPCAModel`,
  PPCA in the :class:`~pmxgen.models.PopulationModel` contract.

Examples
--------
>>> import numpy as np
>>> from pmxgen.models.ppca import fit_ppca, ppca_dataset, PPCAModel
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(50, 2)) @ rng.normal(size=(2, 5)) + 0.2 * rng.normal(size=(50, 5))
>>> fit = fit_ppca(X, 2)
>>> data = ppca_dataset(X)
>>> model = PPCAModel.from_data(data, 2)
>>> values = model.population_values(fit.mean, fit.components, fit.noise_variance)
>>> bool(np.isclose(float(model.log_marginal(values, data.batch).sum()), fit.log_likelihood, rtol=1e-12))
True
"""
from .ppca_core import ppca_log_likelihood, ppca_posterior
from .ppca_fit import PPCA_METHODS, PPCAResult, fit_ppca
from .ppca_model import PPCAModel, PPCANoise, ppca_dataset, ppca_matrix

__all__ = ["ppca_log_likelihood", "ppca_posterior", "fit_ppca", "PPCAResult", "PPCA_METHODS", "PPCAModel",
           "PPCANoise", "ppca_dataset", "ppca_matrix"]
