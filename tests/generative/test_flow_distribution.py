"""FlowDistribution: densities against scipy and numerical integration, sampling, seeds, gradients, a fit.

References: scipy.stats.multivariate_t / chi2 / f / t / gamma, scipy.integrate.quad, a 2-D grid
integral, closed-form Gaussian maximum likelihood (sample mean and covariance).
"""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from pmxgen.errors import ModelError
from pmxgen.generative.flows import AffineFlow, FlowDistribution, build_flow
from pmxgen.generative.flows.distribution import standard_gamma

KINDS = ("affine", "diagonal", "planar", "radial", "coupling", "composed")
F64 = torch.float64


@pytest.mark.parametrize("base", ["normal", "student_t"])
@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_of_rsample_matches_returned_log_prob(make_flow, kind, base):
    flow = make_flow(kind, 3, (3,), seed=4)
    q = FlowDistribution(flow, base=base, df=3.5)
    x, log_q = q.rsample(50, seed=2)
    assert x.shape == (50, 3, 3) and log_q.shape == (50, 3)
    torch.testing.assert_close(q.log_prob(x), log_q, rtol=0, atol=1e-9)
    z = q.sample_base(50, seed=2)
    x2, ld = flow(z)
    torch.testing.assert_close(x2, x, rtol=0, atol=0)
    torch.testing.assert_close(log_q, q.base_log_prob(z) - ld, rtol=0, atol=0)


@pytest.mark.parametrize("dim", [1, 3])
def test_student_t_base_matches_scipy(dim):
    df = 2.7
    loc = torch.linspace(-1.0, 1.0, dim, dtype=F64)
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(dim), dtype=F64)
    tril = torch.linalg.cholesky(a @ a.T + 0.3 * torch.eye(dim, dtype=F64))
    x = 3.0 * torch.randn(40, dim, generator=torch.Generator().manual_seed(1), dtype=F64)
    identity = FlowDistribution(AffineFlow(dim), base="student_t", df=df)
    expected = stats.multivariate_t(loc=np.zeros(dim), shape=np.eye(dim), df=df).logpdf(x.numpy())
    np.testing.assert_allclose(identity.log_prob(x).detach().numpy(), expected, rtol=0, atol=1e-12)
    flow = AffineFlow(dim)
    flow.set_(loc, tril)
    q = FlowDistribution(flow, base="student_t", df=df)
    expected = stats.multivariate_t(loc=loc.numpy(), shape=(tril @ tril.T).numpy(), df=df).logpdf(x.numpy())
    np.testing.assert_allclose(q.log_prob(x).detach().numpy(), expected, rtol=0, atol=1e-12)
    normal = FlowDistribution(flow)
    expected = stats.multivariate_normal(loc.numpy(), (tril @ tril.T).numpy()).logpdf(x.numpy())
    np.testing.assert_allclose(normal.log_prob(x).detach().numpy(), expected, rtol=0, atol=1e-12)


def integrate_1d(q, moment=0):
    """∫ x^moment q(x) dx by the trapezoid rule after x = sinh(u), u in [-14, 14] (|x| up to 6e5)."""
    u = torch.linspace(-14.0, 14.0, 200001, dtype=F64)
    x = torch.sinh(u)
    with torch.no_grad():
        integrand = torch.exp(q.log_prob(x[:, None])) * torch.cosh(u) * x ** moment
    return torch.trapezoid(integrand, u).item()


@pytest.mark.parametrize("base", ["normal", "student_t"])
@pytest.mark.parametrize("kind", ["affine", "planar", "radial", "composed"])
def test_one_dimensional_densities_integrate_to_one(make_flow, kind, base):
    q = FlowDistribution(make_flow(kind, 1, seed=6), base=base, df=3.0)
    # radial densities have a kink at x0 (|x - x0|), which limits the trapezoid rule to O(h²) ≈ 1e-8
    assert integrate_1d(q) == pytest.approx(1.0, abs=1e-7)
    if base == "normal":   # the mean of the density equals the Monte-Carlo mean of rsample
        draws = q.sample(20000, seed=3)
        assert draws.mean().item() == pytest.approx(integrate_1d(q, 1), abs=4 * draws.std().item() / math.sqrt(20000))


@pytest.mark.parametrize("base", ["normal", "student_t"])
@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_one_dimensional_densities_integrate_to_one_scipy_quad(make_flow, kind, base):
    q = FlowDistribution(make_flow(kind, 1, seed=6), base=base, df=3.0)

    def density(v):
        with torch.no_grad():
            return math.exp(q.log_prob(torch.tensor([v], dtype=F64)).item())

    total, err = integrate.quad(density, -np.inf, np.inf, limit=200, epsabs=1e-10, epsrel=1e-10)
    assert err < 1e-8
    assert total == pytest.approx(1.0, abs=1e-8)


def test_two_dimensional_density_with_coupling_integrates_to_one(make_flow):
    q = FlowDistribution(make_flow("composed", 2, seed=2, scale=0.7))
    with torch.no_grad():
        x = q.sample(20000, seed=1)
        lo, hi = x.min(0).values - 3 * x.std(0), x.max(0).values + 3 * x.std(0)
        g0 = torch.linspace(lo[0].item(), hi[0].item(), 700, dtype=F64)
        g1 = torch.linspace(lo[1].item(), hi[1].item(), 700, dtype=F64)
        grid = torch.stack(torch.meshgrid(g0, g1, indexing="ij"), dim=-1)
        dens = torch.exp(q.log_prob(grid))
    total = torch.trapezoid(torch.trapezoid(dens, g1, dim=1), g0).item()
    assert total == pytest.approx(1.0, abs=2e-3)


def test_base_samplers_follow_their_distributions():
    dim, df = 3, 2.5
    q = FlowDistribution(AffineFlow(dim, (2,)), base="student_t", df=df)
    # fixed seeds; over 40 seeds the p-values of these KS tests were uniform (KS of the p-values: p = 0.91)
    z = q.sample(4000, seed=8)                                       # [4000, 2, 3]
    radius = (z * z).sum(-1).flatten().numpy() / dim
    assert stats.kstest(radius, stats.f(dim, df).cdf).pvalue > 1e-3
    assert stats.kstest(z[..., 0].flatten().numpy(), stats.t(df).cdf).pvalue > 1e-3
    normal = FlowDistribution(AffineFlow(dim)).sample(4000, seed=7)
    assert stats.kstest((normal * normal).sum(-1).numpy(), stats.chi2(dim).cdf).pvalue > 1e-3
    for a in (0.4, 1.0, 7.5):
        g = standard_gamma((5000,), a, torch.Generator().manual_seed(3)).numpy()
        assert stats.kstest(g, stats.gamma(a).cdf).pvalue > 1e-3, a
    with pytest.raises(ModelError, match="concentration must be positive"):
        standard_gamma((3,), 0.0, torch.Generator())


@pytest.mark.parametrize("base", ["normal", "student_t"])
def test_same_seed_same_draws(make_flow, base):
    q = FlowDistribution(make_flow("composed", 2, (3,), seed=1), base=base)
    a, la = q.rsample(7, generator=torch.Generator().manual_seed(5))
    b, lb = q.rsample(7, seed=5)
    c, _ = q.rsample(7, seed=6)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert torch.equal(q.sample(7, seed=5), a.detach())
    gen = torch.Generator().manual_seed(5)
    first, second = q.sample(7, gen), q.sample(7, gen)              # a generator advances
    assert torch.equal(first, a.detach()) and not torch.equal(first, second)
    assert q.rsample((2, 4), seed=0)[0].shape == (2, 4, 3, 2)


@pytest.mark.parametrize("base", ["normal", "student_t"])
def test_gradients_flow_to_every_parameter(make_flow, base):
    flow = make_flow("composed", 3, (2,), seed=3, scale=0.5)
    q = FlowDistribution(flow, base=base)
    x, log_q = q.rsample(16, seed=0)
    (log_q.mean() + (x * x).mean()).backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        if p.numel():
            assert p.grad.abs().max().item() > 0, name
        p.grad = None
    target = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    q.log_prob(target).mean().backward()                            # through the inverses
    for name, p in flow.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        if p.numel():
            assert p.grad.abs().max().item() > 0, name


def test_distribution_errors():
    flow = AffineFlow(2, (3,))
    with pytest.raises(ModelError, match="base must be one of"):
        FlowDistribution(flow, base="laplace")
    with pytest.raises(ModelError, match="df must be a positive finite number; found -1"):
        FlowDistribution(flow, base="student_t", df=-1.0)
    with pytest.raises(ModelError, match="flow must be a pmxgen Flow; found Linear"):
        FlowDistribution(torch.nn.Linear(2, 2))
    with pytest.raises(ModelError, match="sample shape must be a non-negative int"):
        FlowDistribution(flow).rsample(-2)
    with pytest.raises(ModelError, match=r"AffineFlow.inverse: y has shape \(4, 2\), whose batch dimensions"):
        FlowDistribution(flow).log_prob(torch.zeros(4, 2, dtype=F64))


# ---------------------------------------------------------------- a short maximum-likelihood fit
def banana(n, curvature, seed):
    """x1 ~ N(0, 1), x2 | x1 ~ N(c (x1² − 1), 0.3²), one curvature per subject: [n, N, 2]."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.as_tensor(curvature, dtype=F64)
    x1 = torch.randn(n, c.numel(), generator=gen, dtype=F64)
    x2 = c * (x1 * x1 - 1) + 0.3 * torch.randn(n, c.numel(), generator=gen, dtype=F64)
    return torch.stack([x1, x2], dim=-1)


def fit_by_max_likelihood(flow, data, steps, lr=0.03):
    q = FlowDistribution(flow)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = -q.log_prob(data).mean(0).sum()                       # independent subjects: sum of means
        loss.backward()
        opt.step()
    return q


def test_batched_flows_fit_their_own_non_gaussian_targets():
    curvature = [1.0, -0.7, 0.4]
    train, test = banana(400, curvature, seed=1), banana(2000, curvature, seed=2)
    # affine only: its maximum-likelihood solution is the Gaussian fit (closed form)
    affine = fit_by_max_likelihood(AffineFlow(2, (3,)), train, steps=300, lr=0.05)
    mean, centred = train.mean(0), train - train.mean(0)
    cov = torch.einsum("snk,snl->nkl", centred, centred) / train.shape[0]
    gaussian = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    torch.testing.assert_close(affine.log_prob(train).mean(0), gaussian.log_prob(train).mean(0), rtol=0, atol=2e-3)
    # couplings (then an affine map): each subject's flow learns its own banana
    flow = build_flow("coupling*2+affine", 2, (3,), seed=0, hidden=16)
    q = fit_by_max_likelihood(flow, train, steps=300)
    with torch.no_grad():
        gain = q.log_prob(test).mean(0) - gaussian.log_prob(test).mean(0)
        truth = torch.distributions.Normal(0.0, 1.0).log_prob(test[..., 0]) + torch.distributions.Normal(
            torch.tensor(curvature, dtype=F64) * (test[..., 0] ** 2 - 1), 0.3).log_prob(test[..., 1])
        ideal = truth.mean(0) - gaussian.log_prob(test).mean(0)
    assert bool((gain > 0.75 * ideal).all()), (gain, ideal)       # most of the attainable gain, per subject
    assert bool((gain < ideal + 0.05).all()), (gain, ideal)       # and not better than the truth on test data
