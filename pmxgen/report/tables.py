"""Result files of a fit: ``results.json``, NONMEM-like tables and the text summary."""
from __future__ import annotations

import json
from pathlib import Path

from ..estimation.results import FitResult, _encode

__all__ = ["results_summary", "write_fit"]


def results_summary(fit: FitResult) -> dict:
    """The compact ``results.json`` content: objective, parameters with SE/RSE, covariance status, EBEs.

    Examples
    --------
    >>> import pmxgen
    >>> data = pmxgen.datasets.load("theophylline")
    >>> fit = pmxgen.fit(pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL")), data,
    ...                  method="foce", covariance=None)
    >>> summary = results_summary(fit)
    >>> summary["method"], sorted(summary["parameters"]["CL"])
    ('foce', ['estimate', 'fixed', 'rse', 'se'])
    """
    rse = fit.rse
    return _encode({
        "method": fit.method, "model": fit.model_name, "data": fit.data_source, "status": fit.status,
        "messages": list(fit.messages), "ofv": fit.ofv, "minus2ll": fit.minus2ll, "aic": fit.aic, "bic": fit.bic,
        "n_subjects": fit.n_subjects, "n_observations": fit.n_observations, "n_estimated": fit.n_estimated,
        "parameters": {name: {"estimate": fit.estimates[name], "se": fit.se[name], "rse": rse[name],
                              "fixed": fit.fixed[name]} for name in fit.parameter_names},
        "covariance": {"status": fit.covariance_status, "method": fit.covariance_method,
                       "message": fit.covariance_message, "condition_number": fit.condition_number},
        "importance_sampling": fit.importance_sampling,
        "shrinkage": fit.shrinkage,
        "ebe": None if fit.ebe is None else {str(i): dict(zip(fit.eta_names, map(float, row)))
                                             for i, row in zip(fit.ids, fit.ebe)},
        "unavailable": dict(fit.unavailable),
        "network_weights": {"count": fit.n_network_weights, "norm": fit.network_weight_norm},
        "elapsed_seconds": fit.elapsed_seconds,
    })


def write_fit(fit: FitResult, directory: str | Path) -> list[Path]:
    """Write ``results.json``, ``fit.json`` (lossless), ``observations.csv``, ``subjects.csv``,
    ``parameters.csv`` and ``summary.txt`` into ``directory`` (and ``fit.weights.safetensors`` for a
    model with network weights); returns the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "fit.json", out / "observations.csv", out / "subjects.csv",
             out / "parameters.csv", out / "summary.txt"]
    paths[0].write_text(json.dumps(results_summary(fit), indent=2))
    fit.to_json(paths[1])
    fit.observations.to_csv(paths[2], index=False)
    fit.individual.to_csv(paths[3], index=False)
    fit.parameter_table().to_csv(paths[4], index=False)
    paths[5].write_text(fit.summary() + "\n")
    if fit.network_weights:
        paths.append(out / "fit.weights.safetensors")     # written by fit.to_json beside fit.json
    return paths


