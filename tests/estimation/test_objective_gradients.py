"""Exact gradients of the FO / FOCE / FOCE-I / Laplace objectives against finite differences.

The autograd gradient follows the estimator: φ is a leaf requiring grad, the EBEs are solved
at φ.detach(), and ``subject_objective`` carries the implicit derivative dη̂/dφ. The central
differences re-solve the EBEs at every perturbed φ (warm start, tight tolerance), so they
differentiate the objective as the optimizer sees it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pmxgen
from pmxgen.estimation import solve_ebes, subject_objective
from pmxgen.estimation.objective import variance_reference
from pmxgen.models import NLMEModel, OmegaBlock

METHODS = ("fo", "foce", "focei", "laplace")


def _total_ofv(model, batch, phi, eta0, method):
    """Σ OFV at φ (differentiable in φ when it requires grad) and the EBEs used."""
    ps = model.parameter_set
    detached = ps.unpack(phi.detach())
    if method == "fo":
        eta = torch.zeros_like(eta0)
    else:
        with torch.no_grad():
            ref = variance_reference(model, detached, batch, method)
        eta = solve_ebes(model, detached, batch, eta0, variance_at=ref, tol=1e-13, max_iter=200).eta
    ofv = subject_objective(model, ps.unpack(phi), batch, eta, method).ofv
    return ofv.sum(), eta


def _gradients(model, data, phi0, method, rel_step=1e-5):
    batch = data.batch
    eta0 = torch.zeros(batch.n_subjects, len(model.eta_names(batch)), dtype=torch.float64)
    phi = phi0.clone().requires_grad_(True)
    total, eta_hat = _total_ofv(model, batch, phi, eta0, method)
    assert torch.isfinite(total)
    (grad,) = torch.autograd.grad(total, phi)
    fd = np.empty(phi0.numel())
    for k in range(phi0.numel()):
        h = rel_step * max(abs(float(phi0[k])), 1e-3)
        e = torch.zeros_like(phi0)
        e[k] = h
        up, _ = _total_ofv(model, batch, phi0 + e, eta_hat, method)
        down, _ = _total_ofv(model, batch, phi0 - e, eta_hat, method)
        fd[k] = (float(up.detach()) - float(down.detach())) / (2 * h)
    return grad.numpy(), fd


def _assert_close(grad, fd, names):
    scale = np.abs(fd).max()
    assert scale > 1.0                      # evaluated away from the optimum: a real gradient
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-6 * scale, err_msg=f"parameters {names}")


def _perturbed_initial(model, factors):
    phi = model.parameter_set.initial_natural().clone()
    return phi * torch.tensor(factors, dtype=torch.float64)


# ---------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def theoph():
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    return model, data


def _design(n=20):
    return pmxgen.design_frame(n, doses=[{"time": 0, "amt": 100}], obs_times=[0.5, 1, 2, 4, 8, 12, 24])


@pytest.fixture(scope="module")
def block_combined():
    sim = pmxgen.simulate_dataset("1cmt_oral", _design(), theta={"KA": 1.0, "CL": 4.0, "V": 30.0},
                                  omega=(["CL", "V"], [[0.09, 0.03], [0.03, 0.06]]),
                                  error={"additive": 0.1, "proportional": 0.15}, seed=3)
    model = NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": (0, 1.2), "CL": (0, 3.5), "V": (0, 33.0)},
                      omega=OmegaBlock(["CL", "V"], [[0.1, 0.02], [0.02, 0.05]]),
                      error={"kind": "combined", "init": {"ADD": 0.02, "PROP": 0.03}})
    assert model.parameter_set.names == ("KA", "CL", "V", "OMEGA(CL)", "OMEGA(V,CL)", "OMEGA(V)", "SIGMA(ADD)",
                                      "SIGMA(PROP)")
    return model, sim.dataset


@pytest.fixture(scope="module")
def blq_data():
    sim = pmxgen.simulate_dataset("1cmt_oral", _design(), theta={"KA": 1.0, "CL": 4.0, "V": 30.0},
                                  omega={"KA": 0.2, "CL": 0.09}, error={"additive": 0.05, "proportional": 0.15},
                                  seed=5)
    frame = sim.dataset.to_frame()
    lloq = 0.6
    obs = frame["EVID"] == 0
    frame["BLQ"] = (obs & (frame["DV"] < lloq)).astype(int)
    frame["LLOQ"] = np.where(obs, lloq, np.nan)
    frame.loc[frame["BLQ"] == 1, "DV"] = 0.0          # not used: M3 takes P(y < LLOQ)
    data = pmxgen.read_nonmem(frame)
    assert 10 <= data.n_blq <= data.n_observations // 2
    return data


@pytest.fixture(scope="module")
def positive_data():
    sim = pmxgen.simulate_dataset("1cmt_oral", _design(), theta={"KA": 1.0, "CL": 4.0, "V": 30.0},
                                  omega={"KA": 0.2, "CL": 0.09}, error={"proportional": 0.15}, seed=5)
    batch = sim.dataset.batch
    assert bool((batch.obs.dv[batch.obs.mask] > 0).all())
    return sim.dataset


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("method", METHODS)
def test_theophylline_additive_gradient(theoph, method):
    model, data = theoph
    phi0 = _perturbed_initial(model, [0.8, 1.1, 0.95, 2.0, 1.3, 0.7])
    grad, fd = _gradients(model, data, phi0, method)
    _assert_close(grad, fd, model.parameter_set.names)


@pytest.mark.parametrize("method", METHODS)
def test_full_omega_block_combined_error_gradient(block_combined, method):
    model, data = block_combined
    grad, fd = _gradients(model, data, model.parameter_set.initial_natural(), method)
    _assert_close(grad, fd, model.parameter_set.names)
    # the off-diagonal Ω element really enters the objective
    assert abs(fd[model.parameter_set.names.index("OMEGA(V,CL)")]) > 1e-3


def test_laplace_m3_blq_gradient(blq_data):
    data = blq_data
    model = pmxgen.build_model("1cmt_oral", data, error="combined", iiv=("KA", "CL"))
    grad, fd = _gradients(model, data, model.parameter_set.initial_natural(), "laplace")
    _assert_close(grad, fd, model.parameter_set.names)


def test_blq_observations_enter_the_laplace_objective(blq_data):
    """The M3 terms contribute: moving the LLOQ changes the objective."""
    data = blq_data
    model = pmxgen.build_model("1cmt_oral", data, error="combined", iiv=("KA", "CL"))
    phi = model.parameter_set.initial_natural()
    eta0 = torch.zeros(data.n_subjects, 2, dtype=torch.float64)
    base, _ = _total_ofv(model, data.batch, phi, eta0, "laplace")
    frame = data.to_frame()
    frame.loc[frame["BLQ"] == 1, "LLOQ"] = 0.3
    lower, _ = _total_ofv(model, pmxgen.read_nonmem(frame).batch, phi, eta0, "laplace")
    # P(y < 0.3) < P(y < 0.6): a lower LLOQ makes the BLQ records less likely, the OFV larger
    assert float(lower.detach()) > float(base.detach()) + 1.0


@pytest.mark.parametrize("method", METHODS)
def test_exponential_error_gradient(positive_data, method):
    data = positive_data
    model = pmxgen.build_model("1cmt_oral", data, error="exponential", iiv=("KA", "CL"))
    phi0 = _perturbed_initial(model, [0.9, 1.1, 1.05, 1.5, 0.8, 1.3])
    grad, fd = _gradients(model, data, phi0, method)
    _assert_close(grad, fd, model.parameter_set.names)


def test_focei_objective_where_the_eta_hessian_is_indefinite(theoph):
    """Away from a mode the exact η-Hessian can be indefinite; objective.py then documents a
    fall-back to the expected curvature. FOCE-I's curvature is the expected information
    (positive definite), so its objective and gradient must stay finite.

    (Reached when an EBE search stops short of a strict mode.) At η_KA = 2 the exact Hessian
    of −2 log p(y|η)p(η) has a negative eigenvalue for some theophylline subject.
    """
    model, data = theoph
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = torch.tensor([[2.0, 0.0]] * data.n_subjects, dtype=torch.float64)
    # the premise: some subject's exact Hessian is indefinite there
    from pmxgen.estimation.linearization import inner_objective
    from pmxgen.estimation.objective import exact_eta_hessian
    e = eta.clone().requires_grad_(True)
    m, v = model.moments(e, values, data.batch)
    inner = inner_objective(model, m, v, e, values.omega, model.observed(data.batch))
    _, hess = exact_eta_hessian(inner, e, create_graph=False)
    assert float(torch.linalg.eigvalsh(hess)[:, 0].min()) < 0
    phi = model.parameter_set.initial_natural().requires_grad_(True)
    ofv = subject_objective(model, model.parameter_set.unpack(phi), data.batch, eta, "focei").ofv
    assert bool(torch.isfinite(ofv).all())
    (g,) = torch.autograd.grad(ofv.sum(), phi)
    assert bool(torch.isfinite(g).all())
