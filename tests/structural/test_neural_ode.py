"""Neural-ODE structural models against closed forms, a second gradient method and finite differences.

Independent references: the closed-form one-compartment models (``pmxgen.get_model``), a
mechanistic :class:`ODEModel` written with the same arithmetic, central differences, and
torchdiffeq's adjoint against backpropagation through pmxgen's own solver.
"""
import math

import pandas as pd
import pytest
import torch

import pmxgen
from pmxgen.errors import EstimationError, IntegrationError, ModelError
from pmxgen.models import NLMEModel
from pmxgen.models.weights import weight_tensors
from pmxgen.structural import NeuralODEModel, ODEModel, mlp
from pmxgen.structural.neural import linear_neural_elimination, neural_absorption, pmxnode_example1

NAN = float("nan")
TIGHT = dict(rtol=1e-10, atol=1e-12)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _all_events() -> pd.DataFrame:
    """Four subjects: oral ADDL doses; an infusion then a bolus into the central; lag and F; steady state."""
    rows = []

    def obs(i, times, cmt=2):
        rows.extend({"ID": i, "TIME": t, "AMT": 0.0, "DV": 1.0, "EVID": 0, "CMT": cmt, "RATE": 0.0, "ADDL": 0,
                     "II": 0.0, "SS": 0} for t in times)

    def dose(i, t, amt, cmt, rate=0.0, addl=0, ii=0.0, ss=0):
        rows.append({"ID": i, "TIME": t, "AMT": amt, "DV": NAN, "EVID": 1, "CMT": cmt, "RATE": rate, "ADDL": addl,
                     "II": ii, "SS": ss})

    dose(1, 0.0, 100.0, 1, addl=3, ii=12.0)                       # oral, 4 doses q12h (ADDL)
    obs(1, [0.5, 2.0, 11.9, 13.0, 30.0, 47.0])
    dose(2, 0.0, 200.0, 2, rate=50.0)                             # 4-h infusion into the central
    obs(2, [1.0, 3.99, 4.0, 6.0])
    dose(2, 8.0, 80.0, 2)                                         # then a bolus into the central
    obs(2, [8.0, 9.0, 20.0])
    dose(3, 0.0, 150.0, 1)                                        # lag (ALAG1) and bioavailability (F1)
    obs(3, [0.2, 0.6, 1.0, 5.0, 24.0])
    dose(4, 0.0, 100.0, 1, ii=12.0, ss=1)                         # steady state q12h
    obs(4, [0.0, 1.0, 6.0, 11.0])
    frame = pd.DataFrame(rows)
    return frame.sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)


def _linear_network(k: float) -> torch.nn.Linear:
    net = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        net.weight.fill_(-k)
    return net


def _oral_neural_elimination(k: float, **options) -> NeuralODEModel:
    """Depot → central with elimination ``dA/dt = W·A`` by a linear layer (W = -k)."""
    def rhs(t, a, p, nn):
        absorbed = p["KA"] * a[:, 0]
        return torch.stack([-absorbed, absorbed + nn["elim"](a[:, 1:2])[:, 0]], dim=-1)

    return NeuralODEModel(rhs, ("depot", "central"), ("KA", "V"), networks={"elim": _linear_network(k)},
                          scale={2: "V"}, default_obs_cmt=2, **options)


@pytest.mark.parametrize("device", DEVICES)
def test_network_reproducing_linear_elimination_matches_the_closed_form_for_every_dosing_event(device):
    ds = pmxgen.read_nonmem(_all_events(), device=device)
    k = 0.15
    ka = torch.tensor([1.2, 0.8, 2.0, 0.5], dtype=torch.float64, device=device)
    v = torch.tensor([20.0, 35.0, 10.0, 50.0], dtype=torch.float64, device=device)
    dose_params = {"ALAG1": torch.tensor(0.5, dtype=torch.float64), "F1": torch.tensor(0.7, dtype=torch.float64)}
    neural = _oral_neural_elimination(k, **TIGHT).predict({"KA": ka, "V": v, **dose_params}, ds.batch).detach()
    exact = pmxgen.get_model("1cmt_oral").predict({"KA": ka, "CL": k * v, "V": v, **dose_params}, ds.batch)
    mask = ds.batch.obs.mask
    assert neural.device.type == device and neural.dtype == torch.float64
    assert bool(mask.sum() == 22)
    rel = ((neural - exact).abs() / exact.abs().clamp(min=1e-12))[mask & (exact.abs() > 1e-9)]
    assert float(rel.max()) < 1e-7, float(rel.max())
    # lag: subject 3 has nothing before 0.5 h; infusion: subject 2 rises linearly at first
    assert float(neural[2, 0]) == 0.0 and float(exact[2, 0]) == 0.0


def test_zero_initialised_network_gives_the_mechanistic_model_exactly():
    frame = _all_events()
    frame.loc[frame["CMT"] == 2, "CMT"] = 1                      # one compartment: everything into the central
    frame = frame[frame["ID"] != 2].reset_index(drop=True)       # (subject 2's infusion is covered above)
    ds = pmxgen.read_nonmem(frame)
    p = {"CL": torch.tensor([2.0, 1.5, 4.0], dtype=torch.float64),
         "V": torch.tensor([20.0, 10.0, 40.0], dtype=torch.float64), "S_N": torch.tensor(1.3)}

    def mechanistic(t, a, q):                                    # the same arithmetic, no network
        return -q["CL"].unsqueeze(-1) * (a / q["V"].unsqueeze(-1))

    neural = linear_neural_elimination(seed=4).predict(p, ds.batch)
    plain = ODEModel(mechanistic, ("central",), ("CL", "V"), scale={1: "V"}).predict(p, ds.batch)
    assert torch.equal(neural, plain)                            # bit for bit
    closed = pmxgen.get_model("1cmt_iv").predict(p, ds.batch)
    assert torch.allclose(neural, closed, rtol=1e-5)

    # pmxNODE's model with both networks at zero: nothing changes the bolus, Cc = DOSE / V
    data = pmxgen.datasets.load("pmxnode_example1")
    b = data.batch
    flat = pmxnode_example1(seed=2).predict({"V": torch.tensor(2.0), "DOSE": b.baseline[:, 0],
                                             "S_C": torch.tensor(1.0), "S_T": torch.tensor(1.0)}, b)
    expected = (b.baseline[:, 0] / 2.0).unsqueeze(-1).expand_as(flat)
    assert torch.equal(flat[b.obs.mask], expected[b.obs.mask])


def _gradient_problem(gradient: str):
    """A loss of the predictions of a neural-absorption model with random (non-zero) networks."""
    frame = _all_events()
    frame = frame[(frame["SS"] == 0) & (frame["ID"] < 4) & (frame["TIME"] < 14)].reset_index(drop=True)
    # an oral bolus and an ADDL repeat, an infusion and a bolus into the central, a lag time
    ds = pmxgen.read_nonmem(frame)
    model = neural_absorption(hidden=4, seed=3, gradient=gradient, rtol=1e-8, atol=1e-10)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in model.networks.parameters():
            w.copy_(0.3 * torch.randn(w.shape, generator=gen, dtype=torch.float64))
    theta = torch.tensor([1.0, 2.5, 20.0, 0.4], dtype=torch.float64)       # KA, CL, V, ALAG1
    weights = torch.linspace(0.5, 1.5, ds.batch.obs.time.numel(), dtype=torch.float64).reshape(ds.batch.obs.time.shape)

    def loss(th):
        f = model.predict({"KA": th[0], "CL": th[1], "V": th[2], "ALAG1": th[3]}, ds.batch)
        return (weights * f * f).sum()

    return model, theta, loss


def test_adjoint_and_backprop_gradients_agree_with_each_other_and_with_central_differences():
    grads = {}
    for gradient in ("backprop", "adjoint"):
        model, theta, loss = _gradient_problem(gradient)
        th = theta.clone().requires_grad_(True)
        params = [th] + list(model.networks.parameters())
        value = loss(th)
        grads[gradient] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)])
    assert bool((grads["backprop"].abs() > 1e-3).all())        # every weight matters (no zero layer)
    assert torch.allclose(grads["adjoint"], grads["backprop"], rtol=1e-5, atol=1e-6), \
        (grads["adjoint"] - grads["backprop"]).abs().max()
    # central differences in θ (KA, CL, V, ALAG1) and in two network weights
    model, theta, loss = _gradient_problem("backprop")
    with torch.no_grad():
        for k in (1, 2, 3):                                       # CL, V, ALAG1
            h = 1e-5 * float(theta[k])
            up, down = theta.clone(), theta.clone()
            up[k] += h
            down[k] -= h
            fd = (loss(up) - loss(down)) / (2 * h)
            assert math.isclose(float(fd), float(grads["backprop"][k]), rel_tol=1e-5, abs_tol=1e-6), k
        w = next(model.networks.parameters())
        for flat in (0, 3):
            h = 1e-5
            w.view(-1)[flat] += h
            plus = loss(theta)
            w.view(-1)[flat] -= 2 * h
            minus = loss(theta)
            w.view(-1)[flat] += h
            assert math.isclose(float((plus - minus) / (2 * h)), float(grads["backprop"][4 + flat]), rel_tol=1e-5,
                                abs_tol=1e-6), flat


def test_adjoint_refuses_second_derivatives_clearly():
    model, theta, loss = _gradient_problem("adjoint")
    th = theta.clone().requires_grad_(True)
    with pytest.raises(ModelError, match="first derivatives only"):
        torch.autograd.grad(loss(th), th, create_graph=True)
    with pytest.raises(ModelError, match="gradient must be one of"):
        neural_absorption(gradient="forward")


def _nan_network_model(**options) -> NLMEModel:
    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.where(x > 0.5, torch.full_like(x, NAN), -x)

    def rhs(t, a, p, nn):
        return p["V"].unsqueeze(-1) * nn["broken"](a / p["V"].unsqueeze(-1))

    model = NeuralODEModel(rhs, ("central",), ("V",), networks={"broken": Broken()}, scale={1: "V"}, **options)
    return NLMEModel(model, theta={"V": (0, 10.0)}, omega={"V": 0.1},
                     error={"kind": "proportional", "init": {"PROP": 0.01}})


def test_a_network_returning_nan_gives_a_clear_error_never_a_nan_result():
    data = pmxgen.datasets.load("indomethacin")       # 25 mg / 10 = 2.5 > 0.5 from the first interval
    model = _nan_network_model()
    eta = torch.zeros(data.n_subjects, 1, dtype=torch.float64)
    values = model.parameter_set.unpack(model.parameter_set.initial_natural())
    with pytest.raises(IntegrationError, match="non-finite value .*network output"):
        model.predict(eta, values, data.batch)
    with pytest.raises((EstimationError, ModelError, IntegrationError), match="non-finite"):
        pmxgen.fit(model, data, method="focei", covariance=None)


def test_solver_failure_gives_a_clear_error():
    data = pmxgen.datasets.load("indomethacin")
    model = NLMEModel(linear_neural_elimination(max_steps=2), theta={"CL": (0, 8.0), "V": (0, 10.0), "S_N": 1.0},
                      omega={"CL": 0.1}, error={"kind": "proportional", "init": {"PROP": 0.01}})
    with pytest.raises((EstimationError, IntegrationError), match="max_steps"):
        pmxgen.fit(model, data, method="focei", covariance=None)


def test_networks_are_population_parameters_of_the_nlme_model():
    structural = pmxnode_example1(hidden=5)
    extra = mlp((1, 3, 1), seed=9)
    model = NLMEModel(structural, theta={"V": (0, 2.0)}, omega={"V": 0.1}, error="proportional",
                      individual=lambda th, eta, cov: {"V": th["V"] * torch.exp(eta["V"]), "DOSE": cov["DOSE"],
                                                       "S_C": extra(cov["DOSE"][:, None])[:, 0] + 1.0,
                                                       "S_T": torch.ones_like(eta["V"])},
                      networks={"cov": extra})
    assert sorted(model.networks) == ["cov", "nn_c", "nn_t"]
    held = {id(w): w.numel() for w in weight_tensors(model)}
    assert {id(w) for w in structural.networks.parameters()} <= set(held) and sum(held.values()) == 2 * 16 + 10
    same = NLMEModel(structural, theta={"V": (0, 2.0)}, omega={"V": 0.1}, error="proportional",
                     individual=lambda th, eta, cov: {}, networks=structural.networks)
    assert sum(w.numel() for w in weight_tensors(same)) == 32                  # not counted twice
    with pytest.raises(ModelError, match="sizes"):
        mlp((3,))
