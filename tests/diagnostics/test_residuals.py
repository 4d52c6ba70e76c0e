"""WRES/CWRES whitening with the symmetric inverse square root (as NONMEM), checked against
hand computations (scipy), its defining properties, and NONMEM's own CWRES for pheno."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

import pmxgen
from pmxgen.diagnostics.residuals import inverse_sqrt_covariance, nlme_residuals, whitened_residuals
from pmxgen.estimation.ebe import solve_ebes
from pmxgen.models import NLMEModel

DT = torch.float64
REFERENCE = Path(__file__).parent / "reference" / "pheno_nonmem.json"


def _problem(seed=0):
    """Three subjects, four slots: padding, a BLQ observation, junk values in the unused slots."""
    rng = np.random.default_rng(seed)
    n, j, k = 3, 4, 2
    G = rng.normal(size=(n, j, k))
    a = rng.normal(size=(k, k))
    omega = a @ a.T + 0.5 * np.eye(k)
    v = rng.uniform(0.1, 2.0, size=(n, j))
    e = rng.normal(size=(n, j))
    use = np.array([[True, True, True, False],     # 3 observations, 1 padding slot
                    [True, False, True, False],    # slot 1 BLQ, slot 3 padding
                    [True, True, True, True]])
    for arr in (G, v, e):                          # unused slots hold large junk that must not mix in
        arr[~use] = 1e3
    return G, omega, v, e, use


def _torch(*arrays):
    return [torch.as_tensor(a, dtype=DT) if a.dtype != bool else torch.as_tensor(a) for a in arrays]


def test_whitening_matches_scipy_sqrtm_with_padding_and_blq():
    G, omega, v, e, use = _problem()
    out = whitened_residuals(*_torch(e, G, omega, v, use)).numpy()
    for i in range(len(e)):
        u = use[i]
        c = G[i][u] @ omega @ G[i][u].T + np.diag(v[i][u])      # covariance of the used observations only
        w = linalg.inv(np.real(linalg.sqrtm(c)))                  # symmetric inverse square root
        lam, q = linalg.eigh(c)
        np.testing.assert_allclose(w, q @ np.diag(lam ** -0.5) @ q.T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out[i][u], w @ e[i][u], rtol=1e-9, atol=1e-12)
        assert np.isnan(out[i][~u]).all()


def test_unused_slots_do_not_change_the_used_residuals():
    G, omega, v, e, use = _problem()
    base = whitened_residuals(*_torch(e, G, omega, v, use))
    G2, v2, e2 = G.copy(), v.copy(), e.copy()
    G2[~use], v2[~use], e2[~use] = -7.0, 1e-6, 55.0
    other = whitened_residuals(*_torch(e2, G2, omega, v2, use))
    torch.testing.assert_close(base, other, equal_nan=True, rtol=1e-12, atol=1e-12)


def test_symmetric_whitening_has_cholesky_sum_of_squares_but_other_residuals():
    G, omega, v, e, use = _problem(seed=3)
    out = whitened_residuals(*_torch(e, G, omega, v, use)).numpy()
    for i in range(len(e)):
        u = use[i]
        c = G[i][u] @ omega @ G[i][u].T + np.diag(v[i][u])
        r, ei = out[i][u], e[i][u]
        chol = linalg.solve_triangular(linalg.cholesky(c, lower=True), ei, lower=True)
        quad = ei @ linalg.solve(c, ei)
        np.testing.assert_allclose(r @ r, quad, rtol=1e-10)             # same rᵀr = eᵀC⁻¹e ...
        np.testing.assert_allclose(chol @ chol, quad, rtol=1e-10)
        np.testing.assert_allclose(r, np.real(linalg.sqrtm(linalg.inv(c))) @ ei, rtol=1e-9, atol=1e-12)
        assert np.abs(r - chol).max() > 1e-2                            # ... but not the Cholesky vector


def test_whitening_is_equivariant_to_the_order_of_observations():
    # C^(-1/2) e does not depend on the order of the observations; L^(-1) e does.
    G, omega, v, e, use = _problem(seed=5)
    perm = np.array([2, 0, 3, 1])
    a = whitened_residuals(*_torch(e, G, omega, v, use)).numpy()
    b = whitened_residuals(*_torch(e[:, perm], G[:, perm], omega, v[:, perm], use[:, perm])).numpy()
    np.testing.assert_allclose(b, a[:, perm], rtol=1e-10, atol=1e-12)


def test_inverse_sqrt_is_batched_and_flags_non_positive_definite():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 3, 3))
    c = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(3)
    c[4] = np.diag([1.0, -1.0, 2.0])
    w = inverse_sqrt_covariance(torch.as_tensor(c)).numpy()
    for i in range(4):
        np.testing.assert_allclose(w[i] @ c[i] @ w[i], np.eye(3), atol=1e-10)
        np.testing.assert_allclose(w[i], w[i].T, atol=1e-14)
    assert np.isnan(w[4]).all()


def _pheno_model(estimates):
    def individual(theta, eta, cov):
        tvv = theta["V"] * cov["WGT"] * torch.where(cov["APGR"] < 5, 1 + theta["APGR_V"], torch.ones_like(theta["V"]))
        return {"CL": theta["CL"] * cov["WGT"] * torch.exp(eta["CL"]), "V": tvv * torch.exp(eta["V"])}

    return NLMEModel(pmxgen.get_model("1cmt_iv"),
                     theta={"CL": (0, estimates["THETA(1)"]), "V": (0, estimates["THETA(2)"]),
                            "APGR_V": (-0.99, estimates["THETA(3)"])},
                     omega={"CL": estimates["OMEGA(1,1)"], "V": estimates["OMEGA(2,2)"]},
                     error={"kind": "proportional", "init": {"PROP": estimates["SIGMA(1,1)"]}},
                     individual=individual)


@pytest.fixture(scope="module")
def pheno_at_nonmem_estimates():
    ref = json.loads(REFERENCE.read_text())
    data = pmxgen.datasets.load("pheno")
    model = _pheno_model(ref["estimates"])
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    batch = data.batch
    eta = solve_ebes(model, values, batch, torch.zeros(batch.n_subjects, 2, dtype=DT), tol=1e-14).eta
    return ref, data, model, values, eta


def test_cwres_equal_nonmem_on_pheno(pheno_at_nonmem_estimates):
    """NONMEM 7.4.2's FOCE-I CWRES of pheno_real (pharmpy test data), at its final estimates."""
    ref, data, model, values, eta = pheno_at_nonmem_estimates
    np.testing.assert_allclose(eta.numpy(), np.column_stack([ref["ebe"]["ETA(1)"], ref["ebe"]["ETA(2)"]]), atol=1e-5)
    res = nlme_residuals(model, values, data.batch, eta)
    mask = data.batch.obs.mask
    obs = ref["observations"]
    np.testing.assert_allclose(res["PRED"][mask].numpy(), obs["PRED"], rtol=1e-4)      # table: 5 digits
    np.testing.assert_allclose(res["IPRED"][mask].numpy(), obs["IPRED"], rtol=1e-4)
    cwres = res["CWRES"][mask].numpy()
    np.testing.assert_allclose(cwres, obs["CWRES"], atol=1e-4)
    assert np.corrcoef(cwres, obs["CWRES"])[0, 1] > 0.99999999


def test_cholesky_cwres_would_not_equal_nonmem_on_pheno(pheno_at_nonmem_estimates):
    # The same linearisation whitened by the Cholesky factor is far from NONMEM's numbers:
    # the comparison above can tell the two apart.
    ref, data, model, values, eta = pheno_at_nonmem_estimates
    from pmxgen.estimation.linearization import linearize
    lin = linearize(model, eta, values, data.batch)
    d = model.observed(data.batch)
    with torch.no_grad():
        use = d.normal
        g = torch.where(use[..., None], lin.G, torch.zeros_like(lin.G))
        cov = g @ model.omega_matrix(values, data.batch) @ g.transpose(-1, -2) + torch.diag_embed(
            torch.where(use, lin.v, torch.ones_like(lin.v)))
        e = torch.where(use, d.y - lin.m + (lin.G @ eta[..., None])[..., 0], torch.zeros_like(lin.m))
        chol = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), e[..., None], upper=False)[..., 0]
    mask = data.batch.obs.mask
    diff = np.abs(chol[mask].numpy() - np.asarray(ref["observations"]["CWRES"]))
    assert diff.max() > 0.5


def test_foce_cwres_take_the_residual_variance_at_eta_zero(pheno_at_nonmem_estimates):
    """CWRES of a fit without interaction: V(η = 0) in C; independent computation with scipy and
    finite-difference Jacobians of the predictions."""
    ref, data, model, values, eta = pheno_at_nonmem_estimates
    batch = data.batch
    zeros = torch.zeros_like(eta)
    with torch.no_grad():
        pred = model.predict(zeros, values, batch)
    res0 = nlme_residuals(model, values, batch, eta, variance_at=pred)
    res1 = nlme_residuals(model, values, batch, eta)
    mask = batch.obs.mask.numpy()
    sigma2 = ref["estimates"]["SIGMA(1,1)"]
    omega = np.diag([ref["estimates"]["OMEGA(1,1)"], ref["estimates"]["OMEGA(2,2)"]])
    h = 1e-6
    with torch.no_grad():
        f = model.predict(eta, values, batch).numpy()
        jac = np.stack([(model.predict(eta + h * torch.eye(2, dtype=DT)[k], values, batch).numpy()
                         - model.predict(eta - h * torch.eye(2, dtype=DT)[k], values, batch).numpy()) / (2 * h)
                        for k in range(2)], -1)
    y, p, et = batch.obs.dv.numpy(), pred.numpy(), eta.numpy()
    for i in range(batch.n_subjects):
        u = mask[i]
        gi = jac[i][u]
        e = y[i][u] - (f[i][u] - gi @ et[i])
        for got, var in ((res0, p[i][u] ** 2 * sigma2), (res1, f[i][u] ** 2 * sigma2)):
            c = gi @ omega @ gi.T + np.diag(var)
            expected = np.real(linalg.sqrtm(linalg.inv(c))) @ e
            np.testing.assert_allclose(got["CWRES"][i].numpy()[u], expected, rtol=1e-6, atol=1e-7)
    assert np.abs(res0["CWRES"].numpy()[mask] - res1["CWRES"].numpy()[mask]).max() > 0.1
    for key in ("PRED", "IPRED", "RES", "WRES", "IWRES"):
        torch.testing.assert_close(res0[key], res1[key], equal_nan=True)


def test_foce_fit_reports_cwres_with_variance_at_eta_zero():
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.build_model("1cmt_oral", data, error="combined", iiv=("KA", "CL"))
    fit = pmxgen.fit(model, data, method="foce", covariance=None, cpu_threads=1)
    at = model.with_initial(fit.estimates).parameter_set
    values = at.unpack(at.initial_natural())
    eta = torch.as_tensor(fit.ebe, dtype=DT)
    with torch.no_grad():
        pred = model.predict(torch.zeros_like(eta), values, data.batch)
    mask = data.batch.obs.mask
    foce = nlme_residuals(model, values, data.batch, eta, variance_at=pred)["CWRES"][mask].numpy()
    inter = nlme_residuals(model, values, data.batch, eta)["CWRES"][mask].numpy()
    order = np.argsort(data.batch.obs.row[mask].numpy(), kind="stable")      # file order, as fit.observations
    got = fit.observations["CWRES"].to_numpy()
    np.testing.assert_allclose(got, foce[order], rtol=1e-8, atol=1e-10)
    assert np.abs(got - inter[order]).max() > 1e-2


def test_pheno_focei_fit_reports_nonmem_cwres():
    """pmxgen's own FOCE-I fit of pheno (from the $THETA/$OMEGA/$SIGMA of pheno_real.mod): same OFV as
    NONMEM, and the CWRES in FitResult.observations equal NONMEM's within the small estimate differences."""
    ref = json.loads(REFERENCE.read_text())
    data = pmxgen.datasets.load("pheno")
    initial = {"THETA(1)": 0.00469307, "THETA(2)": 1.00916, "THETA(3)": 0.1, "OMEGA(1,1)": 0.0309626,
               "OMEGA(2,2)": 0.031128, "SIGMA(1,1)": 0.013241}
    fit = pmxgen.fit(_pheno_model(initial), data, method="focei", covariance=None, cpu_threads=1)
    assert fit.ofv == pytest.approx(ref["ofv"], abs=1e-3)
    cwres = fit.observations["CWRES"].to_numpy()                  # file order = the NONMEM table's order
    np.testing.assert_allclose(fit.observations["TIME"], ref["observations"]["TIME"])
    np.testing.assert_allclose(cwres, ref["observations"]["CWRES"], atol=5e-4)
