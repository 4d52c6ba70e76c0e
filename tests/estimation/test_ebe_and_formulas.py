"""The FO / FOCE / FOCE-I / Laplace objectives against formulas computed independently.

* A model whose prediction is linear in η with additive error is Gaussian in y: every
  method must give the exact marginal −2LL (multivariate normal, computed with numpy)
  minus N_obs·log 2π.
* On a nonlinear model (theophylline, combined error, full Ω block) each subject's OFV is
  rebuilt from NONMEM's formulas (NONMEM-CONVENTIONS.md) with torch.autograd.functional:
  FO, FOCE (variance at η = 0), FOCE-I (expected information with the ½ΣWᵀW/V² term) and
  Laplace (exact Hessian).
* EBEs are modes: the gradient of −2 log p(y|η)p(η) vanishes there and scipy finds the same point.
* With several warm starts each subject starts from the one with the lowest objective (flip-flop
  modes of the one-compartment oral model).
* FOCE and FOCE-I coincide for additive error and differ otherwise.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import optimize

import pmxgen
from pmxgen.estimation import solve_ebes, subject_objective
from pmxgen.estimation.objective import variance_reference
from pmxgen.models import NLMEModel, OmegaBlock
from linear_gaussian import LinearInTime

LOG2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- linear-Gaussian model
def _linear_individual(theta, eta, covariates):
    return {"A": theta["TA"] + eta["A"], "B": theta["TB"] + eta["B"]}


LIN_THETA = {"TA": 10.0, "TB": -0.6}
LIN_OMEGA = np.array([[1.5, 0.2], [0.2, 0.08]])
LIN_SIGMA = 0.4


def _linear_setup():
    rng = np.random.default_rng(11)
    rows = []
    subjects = []
    for i in range(15):
        n_obs = 2 + i % 5                       # 2..6 observations: padded batch
        t = np.sort(rng.uniform(0.0, 10.0, n_obs))
        eta = rng.multivariate_normal(np.zeros(2), LIN_OMEGA)
        f = (LIN_THETA["TA"] + eta[0]) + (LIN_THETA["TB"] + eta[1]) * t
        y = f + rng.normal(0.0, math.sqrt(LIN_SIGMA), n_obs)
        subjects.append((t, y))
        rows += [{"ID": i + 1, "TIME": tt, "DV": yy} for tt, yy in zip(t, y)]
    data = pmxgen.read_nonmem(pd.DataFrame(rows))
    model = NLMEModel(LinearInTime(), theta=LIN_THETA, omega=OmegaBlock(["A", "B"], LIN_OMEGA),
                      error={"kind": "additive", "init": {"ADD": LIN_SIGMA}}, individual=_linear_individual)
    return model, data, subjects


def _exact_linear_minus2ll(subjects, theta, omega, sigma2):
    total = 0.0
    for t, y in subjects:
        z = np.column_stack([np.ones_like(t), t])
        mean = theta["TA"] + theta["TB"] * t
        cov = z @ omega @ z.T + sigma2 * np.eye(len(t))
        sign, logdet = np.linalg.slogdet(cov)
        assert sign > 0
        r = y - mean
        total += len(t) * LOG2PI + logdet + r @ np.linalg.solve(cov, r)
    return total


def _ebes(model, values, batch, method, tol=1e-13):
    k = len(model.eta_names(batch))
    eta0 = torch.zeros(batch.n_subjects, k, dtype=torch.float64)
    with torch.no_grad():
        ref = variance_reference(model, values, batch, method)
    return solve_ebes(model, values, batch, eta0, variance_at=ref, tol=tol, max_iter=200).eta


@pytest.fixture(scope="module")
def linear():
    return _linear_setup()


@pytest.mark.parametrize("method", ["fo", "foce", "focei", "laplace"])
def test_linear_gaussian_objective_is_exact_marginal(linear, method):
    model, data, subjects = linear
    batch = data.batch
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = _ebes(model, values, batch, method)
    ofv = float(subject_objective(model, values, batch, eta, method).ofv.detach().sum())
    n_obs = sum(len(t) for t, _ in subjects)
    assert data.n_observations == n_obs
    exact = _exact_linear_minus2ll(subjects, LIN_THETA, LIN_OMEGA, LIN_SIGMA)
    assert ofv == pytest.approx(exact - n_obs * LOG2PI, rel=1e-10, abs=1e-8)


def test_linear_gaussian_focei_fit_reaches_exact_mle(linear):
    """FOCE-I is exact here, so its fit must be the maximum of the exact likelihood (found by scipy)."""
    model, data, subjects = linear

    def neg2ll(x):
        om = np.array([[math.exp(x[2]), 0.0], [x[3], math.exp(x[4])]])
        om = om @ om.T
        return _exact_linear_minus2ll(subjects, {"TA": x[0], "TB": x[1]}, om, math.exp(x[5]))

    c = np.linalg.cholesky(LIN_OMEGA)
    x0 = np.array([10.0, -0.6, math.log(c[0, 0]), c[1, 0], math.log(c[1, 1]), math.log(LIN_SIGMA)])
    best = optimize.minimize(neg2ll, x0, method="Nelder-Mead",
                             options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000, "maxfev": 20000})
    best = optimize.minimize(neg2ll, best.x, method="BFGS", options={"gtol": 1e-8})
    fit = pmxgen.fit(model, data, method="focei", covariance=None)
    assert fit.status == "converged"
    assert fit.minus2ll == pytest.approx(best.fun, abs=1e-4)
    assert fit.estimates["TA"] == pytest.approx(best.x[0], abs=1e-3)
    assert fit.estimates["TB"] == pytest.approx(best.x[1], abs=1e-3)
    om = np.array([[math.exp(best.x[2]), 0.0], [best.x[3], math.exp(best.x[4])]])
    om = om @ om.T
    assert fit.estimates["OMEGA(A)"] == pytest.approx(om[0, 0], rel=1e-2)
    assert fit.estimates["OMEGA(B,A)"] == pytest.approx(om[1, 0], rel=1e-2, abs=1e-4)
    assert fit.estimates["SIGMA(ADD)"] == pytest.approx(math.exp(best.x[5]), rel=1e-2)


def test_laplace_m3_objective_matches_hand_computation(linear):
    """BLQ (M3) observations contribute −2 log Φ((LLOQ − f)/sd); Laplace uses the exact Hessian of the
    resulting objective at its mode. Linear model, every subject's mode found by scipy."""
    model, _, subjects = linear
    lloq = 6.0
    rows = []
    for i, (t, y) in enumerate(subjects):
        for tt, yy in zip(t, y):
            rows.append({"ID": i + 1, "TIME": tt, "DV": yy, "BLQ": int(yy < lloq), "LLOQ": lloq})
    frame = pd.DataFrame(rows)
    assert 5 <= frame["BLQ"].sum() <= len(frame) // 2
    data = pmxgen.read_nonmem(frame)
    assert data.n_blq == frame["BLQ"].sum()
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta_hat = _ebes(model, values, data.batch, "laplace")
    ofv = subject_objective(model, values, data.batch, eta_hat, "laplace").ofv.detach().numpy()
    omega_inv = np.linalg.inv(LIN_OMEGA)
    sd = math.sqrt(LIN_SIGMA)
    for i, (t, y) in enumerate(subjects):
        blq = y < lloq

        def joint(e, t=t, y=y, blq=blq):          # −2 log p(y|η)p(η) without any log 2π
            f = (LIN_THETA["TA"] + e[0]) + (LIN_THETA["TB"] + e[1]) * torch.tensor(t)
            yy = torch.tensor(y)
            dens = torch.log(torch.tensor(LIN_SIGMA)) + (yy - f) ** 2 / LIN_SIGMA
            cens = -2 * torch.special.log_ndtr((lloq - f) / sd)
            prior = e @ torch.tensor(omega_inv) @ e + math.log(np.linalg.det(LIN_OMEGA))
            return torch.where(torch.tensor(blq), cens, dens).sum() + prior

        def fun(x):
            xt = torch.tensor(x, requires_grad=True)
            val = joint(xt)
            (g,) = torch.autograd.grad(val, xt)
            return float(val.detach()), g.numpy()

        res = optimize.minimize(fun, np.zeros(2), jac=True, method="BFGS", options={"gtol": 1e-9})
        np.testing.assert_allclose(eta_hat[i].numpy(), res.x, atol=1e-5)
        hess = torch.autograd.functional.hessian(joint, torch.tensor(res.x))
        expected = res.fun + float(torch.logdet(hess / 2))
        assert ofv[i] == pytest.approx(expected, abs=1e-6), i


# --------------------------------------------------------------------------- nonlinear model, by hand
ADD, PROP = 0.1, 0.02


@pytest.fixture(scope="module")
def theoph():
    data = pmxgen.datasets.load("theophylline")
    model = NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": (0, 1.6), "CL": (0, 2.7), "V": (0, 31.0)},
                      omega=OmegaBlock(["KA", "CL"], [[0.4, 0.05], [0.05, 0.09]]),
                      error={"kind": "combined", "init": {"ADD": ADD, "PROP": PROP}})
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    return model, data, values


class ByHand:
    """Per-subject quantities computed with torch.autograd.functional from the predictions alone.

    Row i of the predictions depends on η_i only, so the per-subject Jacobians / Hessians are
    the diagonal blocks of the full ones.
    """

    def __init__(self, model, values, batch):
        self.model, self.values, self.batch = model, values, batch
        self.mask = batch.obs.mask
        self.y = torch.where(self.mask, batch.obs.dv, torch.zeros_like(batch.obs.dv))
        self.omega = values.omega
        self.omega_inv = torch.linalg.inv(values.omega)
        self.n = batch.n_subjects
        self.idx = torch.arange(self.n)

    def f(self, eta):
        return self.model.predict(eta, self.values, self.batch)

    def jacobian(self, eta):
        jac = torch.autograd.functional.jacobian(self.f, eta)        # [N, J, N, K]
        return jac[self.idx, :, self.idx, :]                          # [N, J, K]

    def neg2_joint(self, eta, variance=None):
        """−2 log p(y_i|η_i) p(η_i) per subject [N]; V from ``variance`` [N, J] if given (FOCE)."""
        f = self.f(eta)
        v = ADD + PROP * f * f if variance is None else variance
        v = torch.where(self.mask, v, torch.ones_like(v))
        dens = torch.where(self.mask, LOG2PI + torch.log(v) + (self.y - f) ** 2 / v, torch.zeros_like(v))
        prior = torch.einsum("nk,kl,nl->n", eta, self.omega_inv, eta) + torch.logdet(self.omega) + 2 * LOG2PI
        return dens.sum(-1) + prior

    def hessian(self, eta, variance=None):
        h = torch.autograd.functional.hessian(lambda e: self.neg2_joint(e, variance).sum(), eta)
        return h[self.idx, :, self.idx, :]                            # [N, K, K]

    def gradient(self, eta, variance=None):
        e = eta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.neg2_joint(e, variance).sum(), e)
        return g

    def base(self, eta, variance=None):
        """Σ_j [log V_j + (y_j − f_j)²/V_j] + ηᵀΩ⁻¹η + log|Ω| per subject."""
        f = self.f(eta)
        v = ADD + PROP * f * f if variance is None else variance
        v = torch.where(self.mask, v, torch.ones_like(v))
        dens = torch.where(self.mask, torch.log(v) + (self.y - f) ** 2 / v, torch.zeros_like(v))
        return (dens.sum(-1) + torch.einsum("nk,kl,nl->n", eta, self.omega_inv, eta) + torch.logdet(self.omega))


def test_focei_and_laplace_subject_ofv_match_nonmem_formulas(theoph):
    model, data, values = theoph
    batch = data.batch
    eta_hat = _ebes(model, values, batch, "focei")
    focei = subject_objective(model, values, batch, eta_hat, "focei").ofv.detach()
    laplace = subject_objective(model, values, batch, eta_hat, "laplace").ofv.detach()
    hand = ByHand(model, values, batch)
    f = hand.f(eta_hat)
    v = torch.where(hand.mask, ADD + PROP * f * f, torch.ones_like(f))
    a = torch.where(hand.mask, 1 / v, torch.zeros_like(v))
    G = hand.jacobian(eta_hat)
    W = 2 * PROP * f[..., None] * G                                     # dV/dη
    fisher = (hand.omega_inv + torch.einsum("nj,njk,njl->nkl", a, G, G)
              + 0.5 * torch.einsum("nj,njk,njl->nkl", a * a, W, W))
    hess = hand.hessian(eta_hat)
    base = hand.base(eta_hat)
    expected_focei = base + torch.logdet(fisher)
    expected_laplace = base + torch.logdet(hess / 2)
    # (pmxgen evaluates at the Newton-polished mode; the EBE tolerance leaves ~1e-8 here)
    np.testing.assert_allclose(focei.numpy(), expected_focei.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(laplace.numpy(), expected_laplace.numpy(), rtol=0, atol=1e-6)
    # the two differ only by the curvature determinant
    np.testing.assert_allclose((laplace - focei).numpy(),
                               (torch.logdet(hess / 2) - torch.logdet(fisher)).numpy(), rtol=0, atol=1e-6)
    # and the ½ΣWᵀW/V² term matters on this model (the check above can tell it apart)
    gauss_newton = hand.omega_inv + torch.einsum("nj,njk,njl->nkl", a, G, G)
    assert float((torch.logdet(fisher) - torch.logdet(gauss_newton)).sum()) > 0.05


def test_foce_subject_ofv_matches_formula_with_variance_at_eta_zero(theoph):
    model, data, values = theoph
    batch = data.batch
    eta_hat = _ebes(model, values, batch, "foce")
    foce = subject_objective(model, values, batch, eta_hat, "foce").ofv.detach()
    hand = ByHand(model, values, batch)
    f0 = hand.f(torch.zeros_like(eta_hat))
    v0 = torch.where(hand.mask, ADD + PROP * f0 * f0, torch.ones_like(f0))
    # the FOCE EBE is the mode of the objective with V fixed at its η = 0 value
    assert float(hand.gradient(eta_hat, v0).abs().max()) < 1e-5
    G = hand.jacobian(eta_hat)
    a = torch.where(hand.mask, 1 / v0, torch.zeros_like(v0))
    expected = hand.base(eta_hat, v0) + torch.logdet(hand.omega_inv + torch.einsum("nj,njk,njl->nkl", a, G, G))
    np.testing.assert_allclose(foce.numpy(), expected.numpy(), rtol=0, atol=1e-6)


def test_fo_subject_ofv_matches_formula(theoph):
    model, data, values = theoph
    batch = data.batch
    zero = torch.zeros(batch.n_subjects, 2, dtype=torch.float64)
    fo = subject_objective(model, values, batch, zero, "fo").ofv.detach()
    hand = ByHand(model, values, batch)
    f = hand.f(zero)
    G = hand.jacobian(zero)
    for i in range(batch.n_subjects):
        m = hand.mask[i]
        cov = G[i][m] @ values.omega @ G[i][m].T + torch.diag(ADD + PROP * f[i][m] ** 2)
        r = hand.y[i][m] - f[i][m]
        expected = torch.logdet(cov) + r @ torch.linalg.solve(cov, r)
        assert float(fo[i]) == pytest.approx(float(expected), rel=1e-10, abs=1e-8)


def test_ebes_are_modes_and_match_scipy(theoph):
    model, data, values = theoph
    batch = data.batch
    eta_hat = _ebes(model, values, batch, "focei")
    hand = ByHand(model, values, batch)
    assert float(hand.gradient(eta_hat).abs().max()) < 1e-5
    assert bool((torch.linalg.eigvalsh(hand.hessian(eta_hat)) > 0).all())       # minima, not saddles
    for i in (0, 7):
        def fun(x):
            rows = eta_hat.clone()
            xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            full = torch.cat([rows[:i], xt[None], rows[i + 1:]])
            val = hand.neg2_joint(full)[i]
            (gr,) = torch.autograd.grad(val, xt)
            return float(val.detach()), gr.numpy()
        res = optimize.minimize(fun, np.zeros(2), jac=True, method="BFGS", options={"gtol": 1e-8})
        assert np.abs(res.jac).max() < 1e-5
        np.testing.assert_allclose(eta_hat[i].numpy(), res.x, atol=1e-5)


# --------------------------------------------------------------------------- FOCE versus FOCE-I
@pytest.fixture(scope="module")
def sim_data():
    design = pmxgen.design_frame(12, doses=[{"time": 0, "amt": 100}], obs_times=[0.5, 1, 2, 4, 8, 12, 24])
    return pmxgen.simulate_dataset("1cmt_oral", design, theta={"KA": 1.0, "CL": 4.0, "V": 30.0},
                                   omega={"KA": 0.2, "CL": 0.09}, error={"additive": 0.05, "proportional": 0.15},
                                   seed=21).dataset


@pytest.mark.parametrize("error,equal", [("additive", True), ("proportional", False), ("combined", False)])
def test_foce_equals_focei_only_for_additive_error(sim_data, error, equal):
    data = sim_data
    model = pmxgen.build_model("1cmt_oral", data, error=error, iiv=("KA", "CL"))
    batch = data.batch
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta_foce = _ebes(model, values, batch, "foce")
    eta_focei = _ebes(model, values, batch, "focei")
    ofv_foce = subject_objective(model, values, batch, eta_foce, "foce").ofv.detach()
    ofv_focei = subject_objective(model, values, batch, eta_focei, "focei").ofv.detach()
    if equal:
        assert torch.equal(eta_foce, eta_focei)
        assert torch.equal(ofv_foce, ofv_focei)
    else:
        assert float((eta_foce - eta_focei).abs().max()) > 1e-4
        assert abs(float(ofv_foce.sum() - ofv_focei.sum())) > 1e-2



def test_each_subject_starts_from_its_best_warm_start():
    """The one-compartment oral model is bimodal in η (flip-flop: KA ↔ CL/V with V scaled): from
    a flip-flop start every subject converges to the worse mode; given the right mode as an
    alternative start, each subject takes the start with the lower objective and stays there."""
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.models.build_model("1cmt_oral", data, error="combined", iiv=("KA", "CL", "V"))
    pop = {"KA": 1.5, "CL": 2.8, "V": 31.0, "OMEGA(KA)": 1.0, "OMEGA(CL)": 1.0, "OMEGA(V)": 1.0,
           "SIGMA(ADD)": 0.05, "SIGMA(PROP)": 0.01}
    ps = model.parameter_set
    values = ps.unpack(torch.tensor([pop[n] for n in ps.names], dtype=torch.float64))
    n = data.n_subjects
    good = solve_ebes(model, values, data.batch, torch.zeros(n, 3, dtype=torch.float64), tol=1e-12)
    ka, cl, v = (pop[p] * torch.exp(good.eta[:, i]) for i, p in enumerate(("KA", "CL", "V")))
    flip = torch.stack([torch.log(cl / v / pop["KA"]), good.eta[:, 1], torch.log(cl / ka / pop["V"])], -1)
    flipped = solve_ebes(model, values, data.batch, flip, tol=1e-12)
    assert bool(flipped.converged.all()) and bool((flipped.objective > good.objective + 5).all())
    # half the subjects get the good start first, half as the alternative
    first = torch.where((torch.arange(n) % 2 == 0)[:, None], flip, good.eta)
    second = torch.where((torch.arange(n) % 2 == 0)[:, None], good.eta, flip)
    both = solve_ebes(model, values, data.batch, first, tol=1e-12, alternatives=(second,))
    torch.testing.assert_close(both.objective, good.objective, rtol=0, atol=1e-8)
    torch.testing.assert_close(both.eta, good.eta, rtol=0, atol=1e-5)
    # an alternative must beat the first start by more than switch_margin
    kept = solve_ebes(model, values, data.batch, flip, tol=1e-12, alternatives=(good.eta,), switch_margin=1e6)
    torch.testing.assert_close(kept.objective, flipped.objective, rtol=0, atol=1e-8)
