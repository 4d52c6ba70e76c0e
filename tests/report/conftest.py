"""Shared fixtures of the report tests: one theophylline fit, its results folder and its HTML report."""
import pytest

import pmxgen


@pytest.fixture(scope="session")
def theo_results(tmp_path_factory):
    """(FitResult, results folder written like `pmxgen fit --output DIR`)."""
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    fit = pmxgen.fit(model, data, method="foce", covariance="sandwich", cpu_threads=1)
    folder = tmp_path_factory.mktemp("theo_results")
    pmxgen.report.write_fit(fit, folder)
    return fit, folder


@pytest.fixture(scope="session")
def theo_report(theo_results, tmp_path_factory):
    """(Diagnostics, list of written paths with the HTML first) of the theophylline fit."""
    fit, folder = theo_results
    diag = pmxgen.diagnostics.diagnose(folder, n_simulations=150, seed=11, stratify="WT")
    out = tmp_path_factory.mktemp("theo_report") / "report.html"
    paths = pmxgen.report(diag, out)
    return diag, paths
