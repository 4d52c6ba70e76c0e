"""The covariance step: NONMEM's R, S and sandwich rules on a function with known derivatives,
failure reporting (never an exception), and the matrices of a real fit recomputed by hand.

NONMEM conventions (NONMEM-CONVENTIONS.md): R = Hessian of the OFV, S = Σᵢ gᵢgᵢᵀ;
sandwich R⁻¹SR⁻¹, MATRIX=R 2R⁻¹, MATRIX=S 4S⁻¹; Ω and σ on the variance scale.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import pmxgen
from pmxgen.estimation import FitResult, covariance_step, solve_ebes, subject_objective
from pmxgen.models import NLMEModel


# ------------------------------------------------------------------------ a known objective
class Known:
    """OFVᵢ(φ) = (φ − aᵢ)ᵀBᵢ(φ − aᵢ) + cᵢ φ₀³ for 7 subjects, 3 parameters (derivatives by hand)."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.a = rng.normal(size=(7, 3))
        self.B = []
        for _ in range(7):
            m = rng.normal(size=(3, 3))
            self.B.append(m @ m.T + 0.5 * np.eye(3))
        self.c = rng.uniform(0.1, 0.5, size=7)

    def subject_gradients(self, phi):
        return np.stack([2 * B @ (phi - a) + np.array([3 * c * phi[0] ** 2, 0, 0])
                         for a, B, c in zip(self.a, self.B, self.c)])

    def total_gradient(self, phi):
        return self.subject_gradients(phi).sum(0)

    def hessian(self, phi):
        h = sum(2 * B for B in self.B)
        h[0, 0] += 6 * self.c.sum() * phi[0]
        return h


PHI = np.array([1.3, -0.7, 0.004])          # the last one is below the 0.01 step floor
NAMES = ("TH1", "TH2", "OMEGA(CL)")


@pytest.mark.parametrize("kind", ["sandwich", "R", "S"])
def test_known_function_nonmem_formulas(kind):
    known = Known()
    res = covariance_step(PHI, NAMES, known.total_gradient, known.subject_gradients, kind=kind)
    assert res.status == "ok" and res.message == "" and res.kind == kind
    r = known.hessian(PHI)
    g = known.subject_gradients(PHI)
    s = g.T @ g
    expected = {"sandwich": np.linalg.inv(r) @ s @ np.linalg.inv(r), "R": 2 * np.linalg.inv(r),
                "S": 4 * np.linalg.inv(s)}[kind]
    np.testing.assert_allclose(res.matrix, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
    assert np.array_equal(res.matrix, res.matrix.T)
    if kind in ("sandwich", "R"):
        np.testing.assert_allclose(res.r_matrix, r, rtol=1e-7)
    else:
        assert res.r_matrix is None
    if kind in ("sandwich", "S"):
        np.testing.assert_allclose(res.s_matrix, s, rtol=1e-12)
    else:
        assert res.s_matrix is None
    d = np.sqrt(np.diag(expected))
    w = np.linalg.eigvalsh(expected / np.outer(d, d))
    assert res.condition_number == pytest.approx(w[-1] / w[0], rel=1e-6)


def test_not_positive_definite_r_is_reported_not_raised():
    known = Known()

    def saddle_gradient(phi):                   # OFV − 40 φ₁²: R has a negative eigenvalue along TH2
        return known.total_gradient(phi) - np.array([0.0, 80.0 * phi[1], 0.0]) * 10

    res = covariance_step(PHI, NAMES, saddle_gradient, known.subject_gradients, kind="R")
    assert res.status == "failed" and res.matrix is None
    assert "not positive definite" in res.message and "R matrix" in res.message and "TH2" in res.message
    assert math.isnan(res.condition_number)


def test_singular_s_is_reported():
    known = Known()

    def rank_one(phi):                           # every subject gradient along the same direction
        return np.outer(np.arange(1, 8), [1.0, 2.0, 0.5])

    res = covariance_step(PHI, NAMES, known.total_gradient, rank_one, kind="sandwich")
    assert res.status == "failed" and res.matrix is None
    assert "S matrix" in res.message and "not positive definite" in res.message


def test_non_finite_and_exceptions_are_reported():
    known = Known()
    res = covariance_step(PHI, NAMES, lambda p: known.total_gradient(p) * np.nan, known.subject_gradients)
    assert res.status == "failed" and "non-finite" in res.message and res.matrix is None

    def boom(phi):
        raise RuntimeError("linalg.cholesky: The factorization could not be completed")

    res = covariance_step(PHI, NAMES, known.total_gradient, boom, kind="S")
    assert res.status == "failed" and "RuntimeError" in res.message
    with pytest.raises(ValueError):
        covariance_step(PHI, NAMES, known.total_gradient, known.subject_gradients, kind="T")



def test_a_variance_at_its_boundary_gets_a_forward_difference_and_a_note():
    known = Known()
    phi = np.array([1.3, -0.7, 1e-9])       # OMEGA(CL) so near 0 that φ − step would be negative
    tried = []

    def gradient(p):
        tried.append(p[2])
        return known.total_gradient(p)

    for kind in ("sandwich", "R"):
        res = covariance_step(phi, NAMES, gradient, known.subject_gradients, kind=kind)
        assert res.status == "ok"
        assert res.message.startswith("R's column for OMEGA(CL) = 1e-09 by a forward difference")
        assert "removing or fixing it" in res.message
        # Forward difference in OMEGA(CL) (exact for this quadratic part), central elsewhere.
        np.testing.assert_allclose(res.r_matrix, known.hessian(phi), rtol=1e-6)
    assert min(tried) >= 1e-9                 # never evaluated at a negative variance
    res = covariance_step(phi, NAMES, gradient, known.subject_gradients, kind="S")
    assert res.status == "ok" and res.message == ""
    # When the step fails anyway, the note comes with the reason.
    res = covariance_step(phi, NAMES, gradient, lambda p: known.subject_gradients(p)[:1], kind="sandwich")
    assert res.status == "failed" and "S matrix" in res.message and "forward difference" in res.message


def test_a_difference_point_that_cannot_be_evaluated_is_named():
    known = Known()

    def gradient(p):
        if p[0] > 1.3:
            raise ValueError("overflow")
        return known.total_gradient(p)

    res = covariance_step(PHI, NAMES, gradient, known.subject_gradients, kind="R")
    assert res.status == "failed" and res.matrix is None
    assert "gradient at TH1 = 1.3" in res.message and "(estimate 1.3)" in res.message
    assert "ValueError: overflow" in res.message

# ------------------------------------------------------------------------ an unidentifiable model
def _product_individual(theta, eta, covariates):
    return {"KA": theta["KA"] * torch.exp(eta["KA"]), "CL": theta["TH1"] * theta["TH2"] * torch.exp(eta["CL"]),
            "V": theta["V"]}


@pytest.fixture(scope="module")
def theoph():
    return pmxgen.datasets.load("theophylline")


@pytest.mark.parametrize("kind", ["sandwich", "R"])
def test_unidentifiable_parameter_fails_covariance_but_returns_fit(theoph, kind):
    """CL = TH1·TH2: only the product is identifiable, so R and S are singular (exactly, along
    (TH1, −TH2)). The covariance step must fail with a message, and the fit still come back."""
    model = NLMEModel(pmxgen.get_model("1cmt_oral"),
                      theta={"KA": (0, 1.5), "TH1": (0, 1.4), "TH2": (0, 2.0), "V": (0, 32.0)},
                      omega={"KA": 0.3, "CL": 0.1}, error={"kind": "additive", "init": {"ADD": 0.5}},
                      individual=_product_individual)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = pmxgen.fit(model, theoph, method="focei", covariance=kind)
    assert isinstance(fit, FitResult)
    assert fit.status == "converged"
    assert fit.estimates["TH1"] * fit.estimates["TH2"] == pytest.approx(2.79, rel=0.02)   # CL is estimable
    assert fit.covariance_status == "failed", (fit.covariance_message, fit.se)
    assert "not positive definite" in fit.covariance_message
    assert fit.covariance is None
    assert all(math.isnan(v) for v in fit.se.values())
    if kind == "sandwich":
        again = FitResult.from_json(fit.to_json())
        assert again.covariance is None and again.covariance_status == "failed"
        assert again.covariance_message == fit.covariance_message
        assert all(math.isnan(v) for v in again.se.values())


# ------------------------------------------------------------------------ theophylline FOCE-I by hand
@pytest.fixture(scope="module")
def theoph_fits(theoph):
    model = pmxgen.build_model("1cmt_oral", theoph, error="additive", iiv=("KA", "CL"))
    fits = {kind: pmxgen.fit(model, theoph, method="focei", covariance=kind) for kind in ("sandwich", "R")}
    return model, fits


def _r_and_s_by_hand(model, data, fit):
    """R by central differences of the exact gradient (EBEs re-solved), S from subject gradients;
    both with respect to φ in ``estimated_names`` order on the natural (variance) scale."""
    ps = model.parameter_set
    batch = data.batch
    phi_hat = torch.tensor([fit.estimates[n] for n in fit.estimated_names], dtype=torch.float64)
    eta_start = torch.tensor(fit.ebe, dtype=torch.float64)

    def ofv(phi):
        eta = solve_ebes(model, ps.unpack(phi.detach()), batch, eta_start, tol=1e-13, max_iter=200).eta
        return subject_objective(model, ps.unpack(phi), batch, eta, "focei").ofv

    def gradient(phi):
        p = phi.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ofv(p).sum(), p)
        return g.numpy()

    n_par = phi_hat.numel()
    r = np.empty((n_par, n_par))
    for k in range(n_par):
        h = 1e-4 * abs(float(phi_hat[k]))
        e = torch.zeros(n_par, dtype=torch.float64)
        e[k] = h
        r[:, k] = (gradient(phi_hat + e) - gradient(phi_hat - e)) / (2 * h)
    r = 0.5 * (r + r.T)
    p = phi_hat.clone().requires_grad_(True)
    per_subject = ofv(p)
    g = np.stack([torch.autograd.grad(per_subject[i], p, retain_graph=True)[0].numpy()
                  for i in range(batch.n_subjects)])
    np.testing.assert_allclose(g.sum(0), gradient(phi_hat), rtol=1e-8, atol=1e-8)
    return r, g.T @ g


def test_theophylline_covariances_match_hand_computation(theoph, theoph_fits):
    model, fits = theoph_fits
    sandwich = fits["sandwich"]
    assert sandwich.estimated_names == ("KA", "CL", "V", "OMEGA(KA)", "OMEGA(CL)", "SIGMA(ADD)")
    r, s = _r_and_s_by_hand(model, theoph, sandwich)
    r_inv = np.linalg.inv(r)
    expected = {"sandwich": r_inv @ s @ r_inv, "R": 2 * r_inv}
    for kind, fit in fits.items():
        assert fit.covariance_status == "ok", kind
        assert fit.covariance_method == kind
        # same estimates in all three fits, so the hand matrices apply to each
        assert fit.estimates == pytest.approx(sandwich.estimates, rel=1e-12)
        # The covariance step re-solves the EBEs at a decrement of 1e-14 as the hand computation
        # does (1e-13); at the fitting tolerance (1e-8) the two differed by up to 1e-3 here.
        np.testing.assert_allclose(fit.covariance, expected[kind], rtol=1e-5,
                                   atol=1e-5 * np.abs(expected[kind]).max(), err_msg=kind)
        for i, name in enumerate(fit.estimated_names):
            assert fit.se[name] == pytest.approx(math.sqrt(fit.covariance[i, i]), rel=1e-12)


def test_theophylline_sandwich_and_r_standard_errors(theoph_fits):
    _, fits = theoph_fits
    sandwich, r_based = fits["sandwich"].se, fits["R"].se
    for name in fits["sandwich"].estimated_names:
        assert math.isfinite(sandwich[name]) and sandwich[name] > 0, name
        assert 0.5 < r_based[name] / sandwich[name] < 2.0, (name, r_based[name], sandwich[name])
    # Ω and σ on the variance scale: the SE of an SD would be SE(var)/(2·SD), not this
    est = fits["sandwich"].estimates
    for name in ("OMEGA(KA)", "OMEGA(CL)", "SIGMA(ADD)"):
        rse = fits["sandwich"].rse[name]
        assert rse == pytest.approx(100 * sandwich[name] / est[name], rel=1e-12)
    assert 0 < fits["sandwich"].condition_number < 1000
