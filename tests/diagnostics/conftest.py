"""Shared fixtures of the diagnostics tests: a known-truth simulated study and a small real fit."""
import pytest
import torch

import pmxgen
from truth_model import TRUTH, values_of


@pytest.fixture(scope="session")
def known_truth():
    """(true model, its values, a dataset whose DVs were simulated from it)."""
    design = pmxgen.datasets.load("sim_1cmt_oral_wt")
    model = pmxgen.build_model("1cmt_oral", design, error="combined", iiv=("KA", "CL", "V"))
    values = values_of(model, TRUTH)
    gen = torch.Generator().manual_seed(20261122)
    with torch.no_grad():
        eta = model.sample_eta(values, design.batch, generator=gen)
        dv = model.sample_y(eta, values, design.batch, generator=gen)
    return model, values, design.with_dv(dv)


@pytest.fixture(scope="session")
def theo_fit():
    """FOCE fit of theophylline (no covariance step), with its data and model."""
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    fit = pmxgen.fit(model, data, method="foce", covariance=None, cpu_threads=1)
    return fit, model, data
