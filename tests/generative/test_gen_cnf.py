"""Continuous normalizing flow (FFJORD) generator.

Independent checks: Hutchinson's trace against the exact trace (in expectation, at a point and
through a whole solve), adjoint against direct gradients, a linear velocity field against its
closed form (z(T) = e^{AT}x, log-det T·tr A), inverse(forward(x)) = x, total probability 1 on a
grid, and the held-out KL divergence from the exact 8-Gaussians density after a short fit.
"""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pmxgen.errors import ModelError
from pmxgen.generative import load_generator, make_generator
from pmxgen.generative.cnf import CNFGenerator, VelocityField, exact_divergence, hutchinson_divergence
from pmxgen.generative.toy import sample_toy, toy_log_prob

#: a short FFJORD fit: fixed-step RK4 (4 steps) while training; log_prob and sampling use dopri5
FAST = dict(hidden_features=[32, 32], solver="rk4", step_size=0.25, max_epochs=12, batch_size=200,
            learning_rate=1e-2, patience=100, eval_rtol=1e-6, eval_atol=1e-8)


@pytest.fixture(scope="module")
def toy_fit():
    return make_generator("cnf", seed=0, **FAST).fit(sample_toy("8gaussians", 2000, seed=0))


def _random_generator(dim=2, cond_dim=0, seed=0, **kw):
    """An unfitted-but-built CNF with random (not small) weights, for identities."""
    x = torch.randn(50, dim + cond_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    frame = pd.DataFrame(x.numpy(), columns=[f"X{i}" for i in range(dim + cond_dim)])
    conditions = [f"X{i}" for i in range(dim, dim + cond_dim)] or None
    gen = CNFGenerator(hidden_features=[16, 16], max_epochs=1, bounds=None, seed=seed, **kw).fit(frame, conditions)
    with torch.no_grad():
        for p in gen.network.parameters():
            p.mul_(2.0)
    return gen


@pytest.mark.parametrize("seed", [0, 1])
def test_hutchinson_divergence_is_unbiased(seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        field = VelocityField(3, 0, [16, 16])
    z = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    t = torch.tensor(0.4, dtype=torch.float64)
    out = field(t, z)
    exact = exact_divergence(out, z)
    jac = torch.stack([torch.autograd.grad(out[:, i].sum(), z, retain_graph=True)[0] for i in range(3)], 1)
    torch.testing.assert_close(exact, torch.diagonal(jac, dim1=1, dim2=2).sum(1))
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([hutchinson_divergence(out, z, torch.randint(0, 2, (5, 3), generator=g).double() * 2 - 1)
                         for _ in range(1000)])
    se = draws.std(0) / math.sqrt(1000)
    assert bool((se > 1e-4).all()) and bool(((draws.mean(0) - exact).abs() < 4 * se).all())


def test_hutchinson_log_prob_is_unbiased_through_the_solve():
    """One Rademacher ε per solve: E[log p̂(x)] = log p(x) (exact trace), at a few points."""
    gen = _random_generator(dim=3)
    x = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = gen.log_prob_estimate(x, trace="exact")
    reps = 400
    with torch.no_grad():
        est = gen.log_prob_estimate(x.repeat(reps, 1), trace="hutchinson",
                                    generator=torch.Generator().manual_seed(3)).reshape(reps, 3)
    se = est.std(0) / math.sqrt(reps)
    assert bool((se > 1e-4).all()) and bool(((est.mean(0) - exact).abs() < 4 * se).all())


def test_adjoint_gradients_equal_direct_gradients():
    kw = dict(solver="dopri5", rtol=1e-9, atol=1e-9)
    direct, adjoint = _random_generator(dim=2, cond_dim=1, **kw), _random_generator(dim=2, cond_dim=1, adjoint=True,
                                                                                      **kw)
    adjoint.network.load_state_dict(direct.network.state_dict())
    x = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    c = torch.randn(20, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grads = []
    for gen in (direct, adjoint):
        loss = gen._loss(x, c)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(gen.network.parameters()))]))
    assert float(grads[0].abs().max()) > 1e-2
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_linear_field_matches_the_closed_form():
    """f(z) = A z (time-independent): z(T) = exp(AT) x and log p(x) = log N(e^{AT}x) + T·tr A."""
    gen = _random_generator(dim=2, end_time=1.5)
    a = torch.tensor([[0.3, -0.8], [0.5, -0.4]], dtype=torch.float64)
    gen.network = VelocityField(2, 0, [], "tanh")     # one concat-squash layer, no activation
    with torch.no_grad():
        layer = gen.network.layers[0]
        layer.layer.weight.copy_(2 * a)               # (W z + b)·sigmoid(0) + 0 = A z
        layer.layer.bias.zero_()
        layer.gate.weight.zero_()
        layer.gate.bias.zero_()
        layer.shift.weight.zero_()
    x = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    expected_z = x @ torch.linalg.matrix_exp(1.5 * a).T
    torch.testing.assert_close(gen.forward_transform(x), expected_z, rtol=1e-6, atol=1e-7)
    expected_lp = -0.5 * (expected_z ** 2).sum(1) - math.log(2 * math.pi) + 1.5 * float(torch.trace(a))
    torch.testing.assert_close(gen.log_prob_estimate(x), expected_lp, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(gen.inverse_transform(expected_z), x, rtol=1e-6, atol=1e-7)


def test_held_out_kl_on_8gaussians(toy_fit):
    """E_p[log p − log q] ≥ 0 (not below −3 SE) and small after a short fit (MVN: about 1.4 nats;
    the benchmark's long fits: see benchmarks/gen_toy_likelihood.json)."""
    x = sample_toy("8gaussians", 2000, seed=11)
    diff = toy_log_prob("8gaussians", x) - toy_fit.log_prob(x)
    kl, se = float(diff.mean()), float(diff.std() / math.sqrt(len(x)))
    print(f"CNF held-out KL {kl:.4f} ± {se:.4f}")
    assert -3 * se < kl < 0.5, kl


def test_density_integrates_to_one_and_inverse(toy_fit):
    h = 10 / 64
    grid = torch.arange(-5 + h / 2, 5, h, dtype=torch.float64)
    mass = float(toy_fit.log_prob(torch.cartesian_prod(grid, grid)).exp().sum()) * h * h
    assert mass == pytest.approx(1.0, abs=0.01)
    x = toy_fit.transform_.encode(pd.DataFrame(sample_toy("8gaussians", 20, seed=3).numpy(),
                                               columns=toy_fit.transform_.modelled))
    z = toy_fit.forward_transform(x)
    assert float((z - x).abs().max()) > 0.1
    torch.testing.assert_close(toy_fit.inverse_transform(z), x, rtol=0, atol=1e-5)


def test_conditional_generation_save_load_and_seeds(tmp_path):
    rng = np.random.default_rng(0)
    sex = rng.integers(0, 2, 800)
    frame = pd.DataFrame({"SEX": sex + 1, "WT": np.exp(np.log(65) + 0.25 * sex + 0.15 * rng.standard_normal(800)),
                          "AGE": 40 + 10 * rng.standard_normal(800)})
    kw = {**FAST, "max_epochs": 6}
    gen = make_generator("cnf", seed=1, bounds={"WT": (0, None)}, **kw).fit(frame, conditions=["SEX"])
    men, women = gen.sample(600, {"SEX": 2}, seed=1), gen.sample(600, {"SEX": 1}, seed=1)
    assert (men["SEX"] == 2).all() and (men["WT"] > 0).all()
    assert men["WT"].median() / women["WT"].median() == pytest.approx(math.exp(0.25), rel=0.08)
    back = load_generator(gen.save(tmp_path / "cnf.safetensors"))
    pd.testing.assert_frame_equal(back.sample(30, {"SEX": 1}, seed=2), gen.sample(30, {"SEX": 1}, seed=2))
    again = make_generator("cnf", seed=1, bounds={"WT": (0, None)}, **kw).fit(frame, conditions=["SEX"])
    pd.testing.assert_frame_equal(again.sample(30, {"SEX": 2}, seed=2), gen.sample(30, {"SEX": 2}, seed=2))
    assert not gen.sample(30, {"SEX": 2}, seed=3).equals(gen.sample(30, {"SEX": 2}, seed=2))


def test_trace_choice_and_invalid_settings():
    gen = _random_generator(dim=2)
    assert gen._train_trace() == "exact"
    assert _random_generator(dim=5)._train_trace() == "hutchinson"
    with pytest.raises(ModelError, match="solver"):
        make_generator("cnf", solver="nope").fit(torch.randn(20, 2, dtype=torch.float64))
    with pytest.raises(ModelError, match="eval_solver"):
        make_generator("cnf", eval_solver="rk4").fit(torch.randn(20, 2, dtype=torch.float64))
