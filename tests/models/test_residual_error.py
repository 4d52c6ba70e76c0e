"""Residual error models: variance formulas, sampling and the Gaussian / censored likelihood terms."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from pmxgen.errors import ModelError
from pmxgen.models.residual_error import (ERROR_MODELS, VARIANCE_FLOOR, ResidualError, censored_neg2ll,
                                          normal_neg2ll, residual_error)

T = torch.float64
F = np.array([[0.0, 0.5, 2.0, 10.0], [-1.0, 3.0, 40.0, 1e-3]])
ADD, PROP, EXP = 0.3, 0.05, 0.08


def expected_variance(kind, f, add=ADD, prop=PROP, exp=EXP):
    add, prop, exp = (np.asarray(v, dtype=float) for v in (add, prop, exp))
    if add.ndim == 1:
        add, prop, exp = add[:, None], prop[:, None], exp[:, None]
    if kind == "additive":
        v = add + 0 * f
    elif kind == "proportional":
        v = prop * f ** 2
    elif kind == "combined":
        v = add + prop * f ** 2
    elif kind == "combined_sd":
        v = (np.sqrt(add) + np.sqrt(prop) * np.abs(f)) ** 2
    else:
        v = exp + 0 * f
    return np.maximum(v, VARIANCE_FLOOR)


def sigma_for(kind, add=ADD, prop=PROP, exp=EXP):
    names = {"additive": ["ADD"], "proportional": ["PROP"], "combined": ["ADD", "PROP"],
             "combined_sd": ["ADD", "PROP"], "exponential": ["EXP"]}[kind]
    vals = {"ADD": add, "PROP": prop, "EXP": exp}
    return {n: torch.as_tensor(vals[n], dtype=T) for n in names}


def test_error_model_names():
    assert set(ERROR_MODELS) == {"additive", "proportional", "combined", "combined_sd", "exponential"}


@pytest.mark.parametrize("kind", ["additive", "proportional", "combined", "combined_sd", "exponential"])
def test_variance_formulas(kind):
    err = ResidualError(kind)
    v = err.variance(torch.as_tensor(F, dtype=T), sigma_for(kind))
    assert v.shape == F.shape
    np.testing.assert_allclose(v.numpy(), expected_variance(kind, F), rtol=1e-13)


def test_combined_and_combined_sd_differ():
    """Variance sum vs SD sum: at f = 10 with σ²_ADD = 0.3, σ²_PROP = 0.05."""
    f = torch.tensor([[10.0]], dtype=T)
    v_sum = float(ResidualError("combined").variance(f, sigma_for("combined")))
    v_sd = float(ResidualError("combined_sd").variance(f, sigma_for("combined_sd")))
    assert v_sum == pytest.approx(0.3 + 0.05 * 100, rel=1e-14)
    assert v_sd == pytest.approx((math.sqrt(0.3) + math.sqrt(0.05) * 10) ** 2, rel=1e-14)
    assert v_sd > v_sum


def test_proportional_variance_floor_at_zero_prediction():
    v = ResidualError("proportional").variance(torch.zeros(1, 2, dtype=T), sigma_for("proportional"))
    assert torch.all(v == VARIANCE_FLOOR)


@pytest.mark.parametrize("kind", ["additive", "proportional", "combined", "combined_sd", "exponential"])
def test_per_subject_sigma_broadcasts(kind):
    add = np.array([0.3, 1.2])
    prop = np.array([0.05, 0.01])
    exp = np.array([0.08, 0.2])
    err = ResidualError(kind)
    v = err.variance(torch.as_tensor(F, dtype=T), sigma_for(kind, add, prop, exp))
    assert v.shape == F.shape
    np.testing.assert_allclose(v.numpy(), expected_variance(kind, F, add, prop, exp), rtol=1e-13)
    # row i equals the scalar-σ result with subject i's values
    for i in range(2):
        vi = err.variance(torch.as_tensor(F[i:i + 1], dtype=T), sigma_for(kind, add[i], prop[i], exp[i]))
        np.testing.assert_allclose(v[i].numpy(), vi[0].numpy(), rtol=1e-15)


def test_transform_and_log_scale():
    y = torch.tensor([0.5, 2.0], dtype=T)
    assert ResidualError("exponential").log_scale
    np.testing.assert_allclose(ResidualError("exponential").transform(y).numpy(), np.log([0.5, 2.0]))
    for kind in ("additive", "proportional", "combined", "combined_sd"):
        assert not ResidualError(kind).log_scale
        assert torch.equal(ResidualError(kind).transform(y), y)


@pytest.mark.parametrize("kind", ["additive", "proportional", "combined", "combined_sd"])
def test_sample_mean_and_variance(kind):
    n = 200_000
    f_levels = np.array([0.5, 4.0, 20.0])
    f = torch.as_tensor(np.repeat(f_levels[:, None], n, axis=1), dtype=T)
    gen = torch.Generator().manual_seed(1234)
    y = ResidualError(kind).sample(f, sigma_for(kind), generator=gen).numpy()
    var = expected_variance(kind, f_levels)
    for i, level in enumerate(f_levels):
        se = math.sqrt(var[i] / n)
        assert abs(y[i].mean() - level) < 5 * se
        assert y[i].var() == pytest.approx(var[i], rel=0.02)
        # and Gaussian: a Kolmogorov-Smirnov check against N(f, var)
        ks = stats.kstest(y[i, :20_000], "norm", args=(level, math.sqrt(var[i])))
        assert ks.pvalue > 1e-4


def test_sample_exponential_is_log_normal():
    n = 200_000
    s2 = 0.09
    f_levels = np.array([0.2, 5.0])
    f = torch.as_tensor(np.repeat(f_levels[:, None], n, axis=1), dtype=T)
    gen = torch.Generator().manual_seed(99)
    y = ResidualError("exponential", {"EXP": s2}).sample(f, {"EXP": torch.tensor(s2, dtype=T)}, generator=gen)
    y = y.numpy()
    assert (y > 0).all()
    for i, level in enumerate(f_levels):
        logy = np.log(y[i])
        assert abs(logy.mean() - math.log(level)) < 5 * math.sqrt(s2 / n)
        assert logy.var() == pytest.approx(s2, rel=0.02)
        mean = level * math.exp(s2 / 2)
        var = level ** 2 * (math.exp(s2) - 1) * math.exp(s2)
        assert y[i].mean() == pytest.approx(mean, rel=0.005)
        assert y[i].var() == pytest.approx(var, rel=0.05)


def test_sample_is_reproducible_with_a_generator():
    f = torch.full((3, 7), 2.0, dtype=T)
    err = ResidualError("combined")
    s = sigma_for("combined")
    a = err.sample(f, s, generator=torch.Generator().manual_seed(5))
    b = err.sample(f, s, generator=torch.Generator().manual_seed(5))
    c = err.sample(f, s, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_combined_sample_draws_proportional_then_additive_epsilon():
    """Y = F + F·EPS(1) + EPS(2) as NONMEM: two standard normal arrays, proportional first."""
    f = torch.as_tensor(F, dtype=T)
    y = ResidualError("combined").sample(f, sigma_for("combined"), generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    eps1, eps2 = torch.randn(f.shape, generator=gen, dtype=T), torch.randn(f.shape, generator=gen, dtype=T)
    torch.testing.assert_close(y, f + f * math.sqrt(PROP) * eps1 + math.sqrt(ADD) * eps2, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("kind", ["additive", "proportional", "combined", "combined_sd"])
def test_sample_without_variance_is_the_prediction(kind):
    """The variance floor keeps the likelihood finite; sampling with zero variance returns f exactly."""
    f = torch.as_tensor(F, dtype=T)
    sigma = {k: torch.zeros_like(v) for k, v in sigma_for(kind).items()}
    assert torch.equal(ResidualError(kind).sample(f, sigma, generator=torch.Generator().manual_seed(0)), f)
    zero = torch.zeros(2, 3, dtype=T)               # proportional error at f = 0 (an oral dose time)
    assert torch.equal(ResidualError("proportional").sample(zero, sigma_for("proportional")), zero)


def test_normal_neg2ll_matches_scipy():
    rng = np.random.default_rng(0)
    y, mean = rng.normal(size=50), rng.normal(size=50)
    var = rng.uniform(0.01, 5, size=50)
    got = normal_neg2ll(torch.as_tensor(y), torch.as_tensor(mean), torch.as_tensor(var)).numpy()
    np.testing.assert_allclose(got, -2 * stats.norm.logpdf(y, loc=mean, scale=np.sqrt(var)), rtol=1e-12)


def test_censored_neg2ll_matches_scipy():
    rng = np.random.default_rng(1)
    lloq, mean = rng.normal(size=50), rng.normal(scale=3, size=50)
    var = rng.uniform(0.01, 2, size=50)
    got = censored_neg2ll(torch.as_tensor(lloq), torch.as_tensor(mean), torch.as_tensor(var)).numpy()
    np.testing.assert_allclose(got, -2 * stats.norm.logcdf(lloq, loc=mean, scale=np.sqrt(var)), rtol=1e-10)
    # far in the lower tail it stays finite and accurate
    far = censored_neg2ll(torch.tensor([0.0], dtype=T), torch.tensor([30.0], dtype=T), torch.tensor([1.0], dtype=T))
    assert float(far[0]) == pytest.approx(-2 * stats.norm.logcdf(-30.0), rel=1e-10)


def test_init_and_fixed():
    err = ResidualError("combined", {"add": 0.5}, fixed=("prop",))
    assert err.init == {"ADD": 0.5, "PROP": 0.04}
    assert [(s.name, s.init, s.fixed) for s in err.sigmas()] == [("ADD", 0.5, False), ("PROP", 0.04, True)]


@pytest.mark.parametrize("build, text", [
    (lambda: ResidualError("gaussian"), "unknown residual error model 'gaussian'"),
    (lambda: ResidualError("additive", {"PROP": 0.1}), "has σ ADD; found 'PROP'"),
    (lambda: ResidualError("exponential", {"ADD": 0.1}), "has σ EXP"),
    (lambda: ResidualError("combined", fixed=("EXP",)), "cannot fix"),
    (lambda: residual_error("poisson"), "unknown residual error model"),
    (lambda: residual_error({"kind": "nope"}), "unknown residual error model"),
    (lambda: residual_error(0.1), "error must be a ResidualError"),
    (lambda: ResidualError("additive", {"ADD": -1.0}).sigmas(), "finite number > 0"),
])
def test_bad_specs_raise_model_error(build, text):
    with pytest.raises(ModelError, match=text):
        build()


def test_residual_error_spec_forms():
    err = ResidualError("proportional", {"PROP": 0.02})
    assert residual_error(err) is err
    assert residual_error("additive") == ResidualError("additive")
    assert residual_error({"kind": "combined", "init": {"ADD": 2.0}}).init == {"ADD": 2.0, "PROP": 0.04}
