"""pmxgen's batched Dormand–Prince integrator against exact solutions and torchdiffeq's dopri5."""
import math

import pytest
import torch
from torchdiffeq import odeint

import pmxgen
from pmxgen.errors import IntegrationError
from pmxgen.structural.dopri5 import integrate_unit_interval
from pmxgen.structural.ode import ODEModel, michaelis_menten_oral_rhs


def _oral_field(ka, k):
    def field(s, y):
        return torch.stack([-ka * y[:, 0], ka * y[:, 0] - k * y[:, 1]], dim=-1)
    return field


@pytest.mark.parametrize("rtol", [1e-6, 1e-9])
def test_matches_the_bateman_solution_within_tolerance(rtol):
    ka = torch.tensor([0.5, 2.0, 8.0, 30.0], dtype=torch.float64)
    k = torch.tensor([0.1, 0.3, 1.0, 0.05], dtype=torch.float64)
    y0 = torch.tensor([[100.0, 0.0]] * 4, dtype=torch.float64)
    y1 = integrate_unit_interval(_oral_field(ka, k), y0, rtol=rtol, atol=rtol * 1e-3, max_steps=10_000)
    depot = 100 * torch.exp(-ka)
    central = 100 * ka / (ka - k) * (torch.exp(-k) - torch.exp(-ka))
    assert torch.allclose(y1[:, 0], depot, rtol=50 * rtol, atol=1e-3 * rtol)
    assert torch.allclose(y1[:, 1], central, rtol=50 * rtol, atol=1e-3 * rtol)


def test_agrees_with_torchdiffeq_dopri5():
    ka = torch.tensor([1.0, 3.0], dtype=torch.float64)
    p = {"KA": ka, "VM": torch.tensor([20.0, 5.0], dtype=torch.float64),
         "KM": torch.tensor([5.0, 0.5], dtype=torch.float64), "V": torch.tensor([40.0, 10.0], dtype=torch.float64)}
    y0 = torch.tensor([[200.0, 0.0], [50.0, 10.0]], dtype=torch.float64)

    def field(s, y):
        return 12.0 * michaelis_menten_oral_rhs(s, y, p)      # 12 h mapped onto s in [0, 1]

    ours = integrate_unit_interval(field, y0, rtol=1e-10, atol=1e-12, max_steps=10_000)
    theirs = odeint(field, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-10, atol=1e-12,
                    method="dopri5")[-1]
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-9)


def test_gradients_flow_through_the_steps():
    k = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    y1 = integrate_unit_interval(lambda s, y: -k * y, torch.tensor([[5.0]], dtype=torch.float64),
                                 rtol=1e-10, atol=1e-12, max_steps=1000)
    (grad,) = torch.autograd.grad(y1.sum(), k)
    assert float(grad) == pytest.approx(-5.0 * math.exp(-0.7), rel=1e-8)


def test_failures_are_integration_errors():
    with pytest.raises(IntegrationError, match="more than 20 steps"):
        integrate_unit_interval(lambda s, y: -1e6 * y, torch.ones(1, 1, dtype=torch.float64), rtol=1e-10,
                                atol=1e-12, max_steps=20)
    with pytest.raises(IntegrationError, match="non-finite"):
        integrate_unit_interval(lambda s, y: y * y * 1e3, torch.ones(1, 1, dtype=torch.float64), rtol=1e-6,
                                atol=1e-9, max_steps=10_000)


def test_ode_model_uses_it_and_matches_the_closed_form():
    """Through the event engine: error about 0.3 × rtol against the exact solution. (torchdiffeq's
    dopri8 at rtol 1e-10 was off by 3.5e-7 on this problem, so it is no reference.)"""
    data = pmxgen.datasets.load("sim_mm_oral")
    batch = data.batch.select(torch.arange(10))
    params = {"KA": torch.full((10,), 1.0, dtype=torch.float64), "CL": torch.linspace(1.0, 4.0, 10, dtype=torch.float64),
              "V": torch.full((10,), 40.0, dtype=torch.float64)}
    closed = pmxgen.get_model("1cmt_oral")
    exact = closed.predict(params, batch)
    for rtol in (1e-7, 1e-10):
        ode = closed.as_ode(rtol=rtol, atol=rtol * 1e-2)
        assert ode.method == "dopri5"
        torch.testing.assert_close(ode.predict(params, batch), exact, rtol=3 * rtol, atol=0.0)
    mm = ODEModel(michaelis_menten_oral_rhs, ("depot", "central"), ("KA", "VM", "KM", "V"), default_dose_cmt=1,
                  default_obs_cmt=2, scale={2: "V"}, rtol=1e-12, atol=1e-14, max_steps=3)
    mm_params = {"KA": params["KA"], "VM": params["CL"] * 10, "KM": params["KA"] * 5, "V": params["V"]}
    with pytest.raises(IntegrationError, match="dopri5 solver failed"):
        mm.predict(mm_params, batch)


def test_an_infinite_right_hand_side_at_the_start_is_an_integration_error():
    """An infinite derivative at s = 0 used to divide by zero in the starting-step choice."""
    with pytest.raises(IntegrationError, match="not finite at the start"):
        integrate_unit_interval(lambda s, y: y * float("inf"), torch.ones(2, 1, dtype=torch.float64),
                                rtol=1e-6, atol=1e-8, max_steps=10)
