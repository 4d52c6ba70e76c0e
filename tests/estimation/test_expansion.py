"""Derivatives of the predictions from the Taylor expansion against autograd.

The expansion (``pmxgen.estimation.expansion``) replaces differentiation through the
structural model by central differences in one replicated forward evaluation. Checked here:
its Jacobian, Hessian and third derivatives against autograd on closed forms (every dosing
feature the superposition has), the FO/FOCE/FOCE-I/Laplace objectives, their gradients and the
EBEs against the autograd path, and whole FOCE-I and Laplace fits of an ODE model (expansion)
against the same model in closed form (autograd): two independent derivative routes and two
solvers give one answer.
"""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import pmxgen
from pmxgen.errors import EstimationError, ModelError
from pmxgen.estimation import solve_ebes, subject_objective
from pmxgen.estimation.objective import variance_reference
from pmxgen.estimation.expansion import TaylorExpansion, expand_predictions, expanded_model, resolve_derivatives
from pmxgen.models import NLMEModel, build_model


def _frame(rows):
    cols = ["ID", "TIME", "AMT", "DV", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


def _dosing_data():
    """Two subjects: repeated doses with ADDL; a steady-state infusion, then a bolus (CMT 0: model defaults)."""
    nan = float("nan")
    rows = [(1, 0, 100, nan, 1, 1, 0, 0, 12, 2, 0)]
    rows += [(1, t, 0, 1.0, 0, 0, 0, 0, 0, 0, 0) for t in (0.5, 2, 6, 13, 25, 30, 40)]
    rows += [(2, 0, 50, nan, 1, 1, 0, 25, 24, 0, 1)]
    rows += [(2, t, 0, 1.0, 0, 0, 0, 0, 0, 0, 0) for t in (1, 3, 8, 20)]
    rows += [(2, 30, 80, nan, 1, 1, 0, 0, 0, 0, 0)]
    rows += [(2, t, 0, 1.0, 0, 0, 0, 0, 0, 0, 0) for t in (31, 34, 48)]
    return pmxgen.read_nonmem(_frame(rows))


def _autograd_derivatives(structural, params, names, batch):
    """``[N, J, P]`` Jacobian, ``[N, J, P, P]`` Hessian and ``[N, J, P, P, P]`` third derivatives in
    log-parameters, by autograd."""
    u = torch.stack([torch.log(params[n]) for n in names], -1).requires_grad_(True)

    def f(uu):
        p = dict(params)
        p.update({n: torch.exp(uu[:, k]) for k, n in enumerate(names)})
        return structural.predict(p, batch)

    out = f(u)
    n, j = out.shape
    jac = torch.zeros(n, j, len(names), dtype=out.dtype)
    p_count = len(names)
    hess = torch.zeros(n, j, p_count, p_count, dtype=out.dtype)
    third = torch.zeros(n, j, p_count, p_count, p_count, dtype=out.dtype)
    for col in range(j):
        (g,) = torch.autograd.grad(out[:, col].sum(), u, create_graph=True)
        jac[:, col] = g.detach()
        for k in range(p_count):
            (h,) = torch.autograd.grad(g[:, k].sum(), u, create_graph=True)
            hess[:, col, k] = h.detach()
            for m in range(k, p_count):
                (t,) = torch.autograd.grad(h[:, m].sum(), u, retain_graph=True)
                third[:, col, k, m] = third[:, col, m, k] = t
    return out.detach(), jac, hess, third


@pytest.mark.parametrize("model_name", ["1cmt_oral", "2cmt_oral", "2cmt_iv"])
def test_jacobian_and_hessian_match_autograd_on_closed_forms(model_name):
    data = _dosing_data()
    structural = pmxgen.get_model(model_name)
    values = {"KA": 1.3, "CL": 3.0, "V": 30.0, "V1": 20.0, "Q": 6.0, "V2": 45.0, "F1": 0.8}
    params = {name: torch.tensor([values[name], 1.3 * values[name]], dtype=torch.float64)
              for name in structural.parameter_names}
    params["F1"] = torch.tensor([0.8, 0.7], dtype=torch.float64)
    names = tuple(params)
    f, jac, hess, third = _autograd_derivatives(structural, params, names, data.batch)
    ex = expand_predictions(structural, params, data.batch, names)
    mask = data.batch.obs.mask
    torch.testing.assert_close(ex.f0[mask], f[mask], rtol=1e-14, atol=0.0)   # f(exp(log p)): rounding only
    scale = f.abs().amax(-1, keepdim=True).unsqueeze(-1)          # per subject
    assert float(((ex.jac - jac).abs() / scale)[mask].max()) < 1e-8
    assert float(((ex.hess - hess).abs() / scale.unsqueeze(-1))[mask].max()) < 1e-6
    assert ex.order == 2 and ex.third is None
    # Third order: the same first and second derivatives, and third derivatives to ~1e-6.
    ex3 = expand_predictions(structural, params, data.batch, names, order=3)
    assert ex3.order == 3 and torch.equal(ex3.jac, ex.jac) and torch.equal(ex3.hess, ex.hess)
    assert float(third.abs().amax()) > 1.0
    assert float(((ex3.third - third).abs() / scale[..., None, None])[mask].max()) < 1e-5
    # The stand-in reproduces value and first derivatives at p0 and is quadratic around it.
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    g = ex.predict(p, data.batch)
    assert torch.equal(g.detach(), ex.f0)
    (dcl,) = torch.autograd.grad(g[mask].sum(), p["CL"])
    k = names.index("CL")
    expected = (jac[..., k] * mask).sum(-1) / params["CL"]
    torch.testing.assert_close(dcl, expected, rtol=1e-7, atol=0.0)


def test_expanded_model_falls_back_where_it_cannot_expand():
    data = pmxgen.datasets.load("theophylline")
    batch = data.batch
    model = build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    eta = torch.zeros(batch.n_subjects, 2, dtype=torch.float64)
    expanded = expanded_model(model, eta, values, batch)
    assert isinstance(expanded.structural, TaylorExpansion)
    assert expanded.structural.names == ("KA", "CL", "V")
    assert model.structural is not expanded.structural             # the original is untouched
    assert expanded_model(expanded, eta, values, batch) is None     # never expands twice
    params = model.individual_parameters(eta, values, batch)
    with pytest.raises(ModelError, match="expand again for this batch"):
        expanded.structural.predict({k: v[:3] for k, v in params.items()}, batch.select(torch.arange(3)))

    def shifted(theta, eta_d, cov):                                  # a moving parameter that can be 0
        return {"KA": theta["KA"] * torch.exp(eta_d["KA"]), "CL": theta["CL"] * torch.exp(eta_d["CL"]),
                "V": theta["V"], "ALAG1": theta["KA"] * 0.0 + eta_d["KA"] * 0.0}
    lagged = NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": 1.5, "CL": 2.8, "V": 32.0},
                       omega={"KA": 0.4, "CL": 0.07}, individual=shifted)
    assert expanded_model(lagged, eta, lagged.parameter_set.unpack(lagged.parameter_set.initial_natural()), batch) is None

    def constant_lag(theta, eta_d, cov):                             # a constant 0 is held, not expanded
        out = shifted(theta, eta_d, cov)
        out["ALAG1"] = torch.zeros(batch.n_subjects, dtype=torch.float64)
        return out
    held = NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": 1.5, "CL": 2.8, "V": 32.0},
                     omega={"KA": 0.4, "CL": 0.07}, individual=constant_lag)
    ex = expanded_model(held, eta, held.parameter_set.unpack(held.parameter_set.initial_natural()), batch)
    assert ex.structural.names == ("KA", "CL", "V") and set(ex.structural.held) == {"ALAG1"}


def test_resolve_derivatives():
    data = pmxgen.datasets.load("theophylline")
    closed = build_model("1cmt_oral", data, iiv=("KA", "CL"))
    ode = NLMEModel(pmxgen.get_model("1cmt_oral").as_ode(), theta={"KA": 1.5, "CL": 2.8, "V": 32.0},
                    omega={"KA": 0.4})
    assert resolve_derivatives("auto", closed) == "autograd"
    assert resolve_derivatives("auto", ode) == "expansion"
    assert resolve_derivatives("expansion", closed) == "expansion"
    with pytest.raises(EstimationError, match="derivatives must be one of"):
        resolve_derivatives("symbolic", closed)
    with pytest.raises(EstimationError, match="derivatives must be one of"):
        pmxgen.fit(closed, data, derivatives="symbolic")


@pytest.fixture(scope="module")
def small_oral():
    design = pmxgen.design_frame(10, doses=[{"time": 0, "amt": 100}], obs_times=[0.5, 2, 6, 12], obs_cmt=2)
    sim = pmxgen.simulate_dataset("1cmt_oral", design, theta={"KA": 1.2, "CL": 4.0, "V": 35.0},
                                  omega={"KA": 0.16, "CL": 0.09, "V": 0.04},
                                  error={"additive": 0.05, "proportional": 0.12}, seed=11)
    return sim.dataset


def _oral_model(structural, init=None):
    v = {"KA": 1.0, "CL": 3.0, "V": 30.0, "OMEGA(KA)": 0.1, "OMEGA(CL)": 0.1, "OMEGA(V)": 0.1, "SIGMA(ADD)": 0.01,
         "SIGMA(PROP)": 0.02}
    v.update(init or {})
    return NLMEModel(structural, theta={k: (0, v[k]) for k in ("KA", "CL", "V")},
                     omega={k: v[f"OMEGA({k})"] for k in ("KA", "CL", "V")},
                     error={"kind": "combined", "init": {"ADD": v["SIGMA(ADD)"], "PROP": v["SIGMA(PROP)"]}})


@pytest.mark.parametrize("method", ["fo", "foce", "focei"])
def test_objective_gradient_and_ebes_agree_with_autograd(small_oral, method):
    batch = small_oral.batch
    model = _oral_model(pmxgen.get_model("1cmt_oral"))
    ps = model.parameter_set
    phi0 = ps.initial_natural(dtype=torch.float64)
    eta0 = torch.zeros(batch.n_subjects, 3, dtype=torch.float64)
    results = {}
    with torch.no_grad():                 # FOCE's EBEs use the residual variance at η = 0
        ref = variance_reference(model, ps.unpack(phi0), batch, method)
    for how in ("autograd", "expansion"):
        modes = solve_ebes(model, ps.unpack(phi0), batch, eta0, variance_at=ref, tol=1e-12, derivatives=how)
        phi = phi0.clone().requires_grad_(True)
        ofv = subject_objective(model, ps.unpack(phi), batch, modes.eta, method, derivatives=how).ofv
        (grad,) = torch.autograd.grad(ofv.sum(), phi)
        results[how] = modes.eta, ofv.detach(), grad
    (eta_a, ofv_a, grad_a), (eta_e, ofv_e, grad_e) = results["autograd"], results["expansion"]
    torch.testing.assert_close(eta_e, eta_a, rtol=0, atol=1e-7)
    torch.testing.assert_close(ofv_e, ofv_a, rtol=0, atol=1e-8)
    assert float(grad_a.abs().max()) > 1.0
    torch.testing.assert_close(grad_e, grad_a, rtol=1e-6, atol=1e-7 * float(grad_a.abs().max()))


def _with_blq(data, lloq: float):
    """``data`` with the observations below ``lloq`` flagged BLQ (M3; their DV set to 0)."""
    frame = data.to_frame()
    obs = frame["EVID"] == 0
    frame["BLQ"] = (obs & (frame["DV"] < lloq)).astype(int)
    frame["LLOQ"] = frame["DV"].where(~obs, lloq).where(obs)
    frame.loc[frame["BLQ"] == 1, "DV"] = 0.0
    out = pmxgen.read_nonmem(frame)
    assert 3 <= out.n_blq <= out.n_observations // 2
    return out


@pytest.mark.parametrize("blq", [False, True], ids=["uncensored", "blq_m3"])
def test_laplace_objective_and_gradient_by_third_order_expansion(small_oral, blq):
    """Laplace's gradient holds third derivatives of the predictions: a second-order expansion
    would get it wrong (checked below), the third-order one agrees with autograd, also with
    BLQ observations (M3), for which Laplace is the method."""
    data = _with_blq(small_oral, 0.9) if blq else small_oral
    batch = data.batch
    model = _oral_model(pmxgen.get_model("1cmt_oral"))
    ps = model.parameter_set
    phi0 = ps.initial_natural(dtype=torch.float64)
    eta = solve_ebes(model, ps.unpack(phi0), batch, torch.zeros(batch.n_subjects, 3, dtype=torch.float64),
                     tol=1e-12).eta
    results = {}
    for how in ("autograd", "expansion"):
        phi = phi0.clone().requires_grad_(True)
        ofv = subject_objective(model, ps.unpack(phi), batch, eta, "laplace", derivatives=how).ofv
        (grad,) = torch.autograd.grad(ofv.sum(), phi)
        results[how] = ofv.detach(), grad
    (ofv_a, grad_a), (ofv_e, grad_e) = results["autograd"], results["expansion"]
    # The OFV holds log|H| with H from second differences (relative error ~1e-8).
    torch.testing.assert_close(ofv_e, ofv_a, rtol=0, atol=1e-7)
    assert float(grad_a.abs().max()) > 1.0
    torch.testing.assert_close(grad_e, grad_a, rtol=1e-5, atol=1e-6 * float(grad_a.abs().max()))
    # The same objective on a second-order expansion: right value, wrong gradient.
    phi = phi0.clone().requires_grad_(True)
    values = ps.unpack(phi)
    quadratic = expanded_model(model, eta, ps.unpack(phi0), batch)
    ofv_q = subject_objective(quadratic, values, batch, eta, "laplace", derivatives="autograd").ofv
    (grad_q,) = torch.autograd.grad(ofv_q.sum(), phi)
    torch.testing.assert_close(ofv_q.detach(), ofv_a, rtol=0, atol=1e-7)
    assert float((grad_q - grad_a).abs().max()) > 1e-3 * float(grad_a.abs().max())


@pytest.mark.parametrize("kind", ["sandwich", "R"])
def test_covariance_step_agrees_between_derivative_routes(small_oral, kind):
    """Also guards the covariance step's tight EBE re-solves: at the fitting tolerance (1e-8)
    the two routes' R matrices differed by ~1 % and SEs by up to 12 %."""
    fits = {how: pmxgen.fit(_oral_model(pmxgen.get_model("1cmt_oral")), small_oral, method="focei",
                            covariance=kind, derivatives=how) for how in ("autograd", "expansion")}
    assert fits["autograd"].options["derivatives"] == "autograd"
    assert fits["expansion"].options["derivatives"] == "expansion"
    for name in fits["autograd"].estimated_names:
        assert fits["expansion"].se[name] == pytest.approx(fits["autograd"].se[name], rel=1e-4), name


@pytest.mark.parametrize("method", ["focei", "laplace"])
def test_ode_fit_by_expansion_equals_closed_form_fit_by_autograd(small_oral, method):
    """FOCE-I (second-order expansion) and Laplace (third order) of one model, two ways: ODE
    solver + expansion, and closed form + autograd.

    The ODE fit starts 10 % away from the closed-form estimates (to keep the test short). The
    sample drives SIGMA(ADD) to about 1e-8 (the additive part is not identifiable here), hence
    the absolute tolerance.
    """
    closed = pmxgen.fit(_oral_model(pmxgen.get_model("1cmt_oral")), small_oral, method=method, covariance=None)
    start = {k: 1.1 * v for k, v in closed.estimates.items()}
    ode = pmxgen.fit(_oral_model(pmxgen.get_model("1cmt_oral").as_ode(), start), small_oral, method=method,
                     covariance=None)
    assert closed.options["derivatives"] == "autograd" and ode.options["derivatives"] == "expansion"
    assert closed.status == ode.status == "converged"
    assert abs(closed.ofv - ode.ofv) < 1e-4
    for name in closed.estimated_names:
        assert ode.estimates[name] == pytest.approx(closed.estimates[name], rel=1e-4, abs=1e-6), name
