"""Property tests of every flow type (pmxgen.generative.flows) with randomised parameters.

Each flow is checked against independent computations: its own inverse, the autograd Jacobian
(log|det| by torch.linalg.slogdet), an unbatched flow holding one batch element's parameters, and,
for the affine flow, torch.distributions.MultivariateNormal.
"""
import math
import warnings

import pytest
import torch

from pmxgen.errors import ConvergenceWarning, ModelError
from pmxgen.generative import flows as fl
from pmxgen.generative.flows import (
    FLOW_TYPES,
    AffineCouplingFlow,
    AffineFlow,
    ComposedFlow,
    FlowDistribution,
    PlanarFlow,
    RadialFlow,
    build_flow,
)

KINDS = ("affine", "diagonal", "planar", "radial", "coupling", "composed")
CASES = [(kind, dim) for kind in KINDS for dim in (1, 2, 3, 4) if not (kind == "coupling" and dim < 2)]
#: batch shape → leading sample shape of the inputs
BATCHES = {(): (2, 5), (3,): (4,)}
F64 = torch.float64


def draws(shape, seed, scale=1.5):
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def autograd_log_abs_det(flow, x):
    """log|det ∂y/∂x| per sample from the autograd Jacobian (row i = grad of Σ y_i; samples are independent)."""
    x = x.detach().clone().requires_grad_(True)
    y, _ = flow(x)
    rows = [torch.autograd.grad(y[..., i].sum(), x, retain_graph=True)[0] for i in range(flow.dim)]
    jac = torch.stack(rows, dim=-2)
    sign, logabs = torch.linalg.slogdet(jac)
    assert bool((sign != 0).all())
    return logabs


@pytest.mark.parametrize("batch_shape", list(BATCHES), ids=["batch()", "batch(3)"])
@pytest.mark.parametrize("kind,dim", CASES)
def test_bijection_and_log_det(make_flow, kind, dim, batch_shape):
    flow = make_flow(kind, dim, batch_shape, seed=dim)
    shape = BATCHES[batch_shape] + batch_shape + (dim,)
    x = draws(shape, seed=10 + dim)
    with torch.no_grad():
        y, ld = flow(x)
        assert y.shape == x.shape and ld.shape == x.shape[:-1]
        assert not torch.allclose(y, x, atol=1e-2), "randomised flow should not be near the identity"
        x_back, ld_inv = flow.inverse(y)
        assert (x_back - x).abs().max().item() < 1e-10 * (1 + x.abs().max().item())
        assert (ld_inv + ld).abs().max().item() < 1e-10 * (1 + ld.abs().max().item())
        y2 = draws(shape, seed=20 + dim)
        x2, ld2_inv = flow.inverse(y2)
        y2_back, ld2 = flow(x2)
        assert (y2_back - y2).abs().max().item() < 1e-10 * (1 + y2.abs().max().item())
        assert (ld2 + ld2_inv).abs().max().item() < 1e-10 * (1 + ld2.abs().max().item())
    reference = autograd_log_abs_det(flow, x)
    torch.testing.assert_close(ld, reference, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_elements_are_independent_flows(make_flow, kind):
    """Element n of a batched flow = an unbatched flow with the parameters [n]; no cross-talk."""
    dim = 2
    flow = make_flow(kind, dim, (3,), seed=5)
    spec = {"composed": "affine+diagonal+planar*2+radial*2+coupling*2"}.get(kind, kind)   # as make_flow builds it
    single = build_flow(spec, dim, (), hidden=8)
    with torch.no_grad():
        for (name, p), (name1, p1) in zip(flow.named_parameters(), single.named_parameters(), strict=True):
            assert name == name1, spec
            p1.copy_(p[1])
    x = draws((4, 3, dim), seed=6)
    y, ld = flow(x)
    y1, ld1 = single(x[:, 1])
    torch.testing.assert_close(y[:, 1], y1, rtol=0, atol=1e-13)
    torch.testing.assert_close(ld[:, 1], ld1, rtol=0, atol=1e-13)
    # full Jacobian over the whole batch is block diagonal: output (s, n) depends only on input (s, n)
    jac = torch.autograd.functional.jacobian(lambda t: flow(t)[0], x[:2])        # [2, 3, d, 2, 3, d]
    jac = jac.reshape(6, dim, 6, dim).permute(0, 2, 1, 3)
    off = ~torch.eye(6, dtype=torch.bool)
    assert jac[off].abs().max().item() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_broadcast_against_batch_shape(make_flow, kind):
    flow = make_flow(kind, 3, (3,), seed=2)
    x = draws((3,), seed=1)
    y, ld = flow(x)                              # [dim] is broadcast to [3, dim]
    y_full, ld_full = flow(x.expand(3, 3))
    assert y.shape == (3, 3) and ld.shape == (3,)
    torch.testing.assert_close(y, y_full, rtol=0, atol=0)
    torch.testing.assert_close(ld, ld_full, rtol=0, atol=0)
    x_back, _ = flow.inverse(y)
    torch.testing.assert_close(x_back, x.expand(3, 3), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dim", [1, 2, 4])
def test_identity_at_initialisation(dim):
    spec = "affine+diagonal+planar*2+radial*2" + ("+coupling*2" if dim > 1 else "")
    flow = build_flow(spec, dim, (3,), seed=7)
    x = draws((5, 3, dim), seed=3)
    y, ld = flow(x)
    assert torch.equal(y, x) and torch.equal(ld, torch.zeros_like(ld))
    x_back, ld_inv = flow.inverse(x)
    assert torch.equal(x_back, x) and torch.equal(ld_inv, torch.zeros_like(ld_inv))


def test_same_seed_same_parameters():
    spec = "affine+planar*2+radial*2+coupling*2"
    a, b, c = (build_flow(spec, 3, (2,), seed=s) for s in (11, 11, 12))
    for (name, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), name
        if pa.abs().sum() > 0:      # randomly initialised: w, x0, hidden layers
            assert not torch.equal(pa, pc), name
    single = PlanarFlow(2, seed=4)
    assert torch.equal(single.w, PlanarFlow(2, seed=4).w) and not torch.equal(single.w, PlanarFlow(2, seed=5).w)
    assert torch.equal(RadialFlow(2, seed=4).x0, RadialFlow(2, seed=torch.Generator().manual_seed(4)).x0)


def test_parameters_carry_batch_shape_and_count():
    flow = build_flow("affine+planar+radial+coupling", 3, (5, 2), hidden=4, n_hidden_layers=2)
    for name, p in flow.named_parameters():
        assert isinstance(p, torch.nn.Parameter) and p.shape[:2] == (5, 2), name
    # per flow: affine 3+3+3, planar 3+3+1, radial 3+1+1, coupling (2->4->4->2: 8+4+16+4+8+2)
    assert flow.num_parameters == 9 + 7 + 5 + 42
    assert sum(p.numel() for p in flow.parameters()) == 10 * flow.num_parameters


# ---------------------------------------------------------------- affine
def random_gaussian(batch_shape, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(*batch_shape, dim, generator=gen, dtype=F64)
    a = torch.randn(*batch_shape, dim, dim, generator=gen, dtype=F64)
    cov = a @ a.transpose(-1, -2) + 0.5 * torch.eye(dim, dtype=F64)
    return loc, torch.linalg.cholesky(cov)


@pytest.mark.parametrize("dim", [1, 2, 4])
def test_affine_flow_on_normal_base_is_multivariate_normal(dim):
    loc, tril = random_gaussian((3,), dim, seed=dim)
    flow = AffineFlow(dim, (3,))
    flow.set_(loc, tril)
    torch.testing.assert_close(flow.loc, loc, rtol=0, atol=0)
    torch.testing.assert_close(flow.scale_tril, tril, rtol=1e-14, atol=1e-14)
    reference = torch.distributions.MultivariateNormal(loc, scale_tril=tril)
    x = reference.sample((50,))
    torch.testing.assert_close(FlowDistribution(flow).log_prob(x), reference.log_prob(x), rtol=0, atol=1e-10)
    draws_, log_q = FlowDistribution(flow).rsample(20, seed=0)
    torch.testing.assert_close(log_q, reference.log_prob(draws_), rtol=0, atol=1e-10)


def test_affine_set_broadcasts_and_diagonal_kind():
    flow = AffineFlow(2, (4,), kind="diagonal")
    flow.set_(torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.5, 3.0], dtype=F64))
    torch.testing.assert_close(flow.scale_tril, torch.diag(torch.tensor([0.5, 3.0], dtype=F64)).expand(4, 2, 2),
                               rtol=1e-15, atol=0)
    assert flow.loc.shape == (4, 2) and flow.num_parameters == 4
    with pytest.raises(ModelError, match="kind='diagonal'.*below the diagonal"):
        flow.set_(torch.zeros(2, dtype=F64), torch.tensor([[1.0, 0.0], [0.3, 1.0]], dtype=F64))


@pytest.mark.parametrize("scale,match", [
    (torch.tensor([[1.0, 0.2], [0.0, 1.0]]), "above the diagonal"),
    (torch.tensor([[1.0, 0.0], [0.2, -1.0]]), "diagonal of scale_tril must be positive"),
    (torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]), "finite"),
    (torch.eye(3), r"scale_tril has shape \(3, 3\)"),
])
def test_affine_set_rejects_bad_factors(scale, match):
    flow = AffineFlow(2, (4,))
    before = [p.detach().clone() for p in flow.parameters()]
    with pytest.raises(ModelError, match=match):
        flow.set_(torch.zeros(2), scale)
    assert all(torch.equal(a, b) for a, b in zip(before, flow.parameters()))   # unchanged on error


# ---------------------------------------------------------------- invertibility constraints
def test_planar_constraint_holds_for_extreme_parameters():
    flow = PlanarFlow(3, (6,), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        flow.w.copy_(torch.randn(6, 3, generator=gen, dtype=F64) * torch.tensor([1e-3, 1, 10, 1, 1, 100.0])[:, None])
        # raw wᵀu from −1e6 to 1e4 (plus a component orthogonal to w)
        orthogonal = torch.linalg.cross(flow.w, torch.randn(6, 3, generator=gen, dtype=F64))
        w_unit2 = flow.w / (flow.w * flow.w).sum(-1, keepdim=True)
        flow.u.copy_(torch.tensor([-1e6, -50.0, -2.0, 0.0, 3.0, 1e4], dtype=F64)[:, None] * w_unit2 + orthogonal)
        flow.b.copy_(torch.tensor([0.0, 2.0, -1.0, 0.5, 0.0, -3.0]))
    assert (flow.w * flow.u).sum(-1)[0].item() == pytest.approx(-1e6, rel=1e-9)
    wu = (flow.w * flow.u_hat).sum(-1)
    assert bool((wu >= -1 - 1e-9).all()), wu
    assert wu[0].item() == pytest.approx(-1.0, abs=1e-9)          # saturated: wᵀû → −1, never below
    x = draws((200, 6, 3), seed=2)
    with torch.no_grad():
        y, ld = flow(x)
        x_back, ld_inv = flow.inverse(y)
    assert bool(torch.isfinite(ld).all())
    # element 0 is saturated (wᵀû = −1: det ∂y/∂x → 0 on the hyperplane wᵀx + b = 0, here down to e^-23),
    # so its inverse is ill-conditioned by construction; the others invert to round-off
    assert (x_back - x)[:, 1:].abs().max().item() < 1e-10
    assert (ld + ld_inv)[:, 1:].abs().max().item() < 1e-8
    assert (x_back - x)[:, 0].abs().max().item() < 1e-5
    assert (ld + ld_inv)[:, 0].abs().max().item() < 1e-2


def test_planar_inverse_reports_non_convergence_and_propagates_nan():
    flow = PlanarFlow(2, (3,), seed=0, max_iter=1)
    with torch.no_grad():
        flow.u.copy_(torch.tensor([[2.0, -1.0], [0.5, 3.0], [-1.0, -1.0]]))
        flow.w.copy_(torch.tensor([[1.0, 0.5], [-0.3, 1.0], [0.7, 0.7]]))
    y = draws((5, 3, 2), seed=1)
    with pytest.warns(ConvergenceWarning, match="did not converge in 1 iterations.*Increase max_iter"):
        flow.inverse(y)
    flow.max_iter = 100
    y[2, 1, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, ld = flow.inverse(y)
    assert bool(torch.isnan(x[2, 1]).all()) and bool(torch.isnan(ld[2, 1]))
    finite = torch.ones(5, 3, dtype=torch.bool)
    finite[2, 1] = False
    assert bool(torch.isfinite(x[finite]).all())
    y_back, _ = flow(x)
    torch.testing.assert_close(y_back[finite], y[finite], rtol=0, atol=1e-12)


def test_radial_constraint_holds_for_extreme_parameters():
    flow = RadialFlow(2, (5,), seed=0)
    with torch.no_grad():
        flow.alpha_raw.copy_(torch.tensor([-30.0, 30.0, 0.0, 5.0, -5.0]))
        flow.beta_raw.copy_(torch.tensor([-40.0, -30.0, 40.0, -800.0, 20.0]))
    alpha, beta = flow.alpha, flow.beta
    assert bool((alpha > 0).all()) and bool((beta >= -alpha).all())
    x = draws((100, 5, 2), seed=4)
    with torch.no_grad():
        y, ld = flow(x)
        x_back, ld_inv = flow.inverse(y)
    assert bool(torch.isfinite(ld).all())
    # element 0 is saturated (wᵀû = −1: det ∂y/∂x → 0 on the hyperplane wᵀx + b = 0, here down to e^-23),
    # so its inverse is ill-conditioned by construction; the others invert to round-off
    assert (x_back - x)[:, 1:].abs().max().item() < 1e-10
    assert (ld + ld_inv)[:, 1:].abs().max().item() < 1e-8
    assert (x_back - x)[:, 0].abs().max().item() < 1e-5
    assert (ld + ld_inv)[:, 0].abs().max().item() < 1e-2


def test_radial_inverse_matches_scalar_root_finding():
    """The closed-form radius equals a bisection solution of r_y = r (α + β + r)/(α + r)."""
    flow = RadialFlow(3, (4,), seed=3)
    with torch.no_grad():
        flow.alpha_raw.copy_(torch.tensor([0.3, -2.0, 1.5, 0.0]))
        flow.beta_raw.copy_(torch.tensor([-1.0, 2.0, -3.0, 0.5]))
    y = draws((10, 4, 3), seed=9)
    x, _ = flow.inverse(y)
    alpha, beta = flow.alpha.detach(), flow.beta.detach()
    ry = torch.linalg.vector_norm(y - flow.x0.detach(), dim=-1)
    lo, hi = torch.zeros_like(ry), ry + beta.abs() + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        above = mid * (alpha + beta + mid) / (alpha + mid) > ry
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    torch.testing.assert_close(torch.linalg.vector_norm(x - flow.x0, dim=-1).detach(), 0.5 * (lo + hi),
                               rtol=0, atol=1e-12)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", KINDS)
def test_inverse_gradients_match_finite_differences(make_flow, kind):
    """Gradients through the inverse (planar: root finding + one implicit Newton step) are exact."""
    flow = make_flow(kind, 2, (2,), seed=8, scale=0.7)
    y = draws((3, 2, 2), seed=5, scale=1.0)
    names = [name for name, _ in flow.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_(True) for p in flow.parameters())

    def objective(*params):
        x, ld = _inverse_with(flow, dict(zip(names, params)), y)
        return (x * torch.linspace(0.5, 1.5, 2, dtype=F64)).sum() + ld.sum()

    assert torch.autograd.gradcheck(objective, values, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def _inverse_with(flow, params, y):
    class Inverse(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = flow

        def forward(self, t):
            return self.f.inverse(t)

    return torch.func.functional_call(Inverse(), {f"f.{k}": v for k, v in params.items()}, (y,))


# ---------------------------------------------------------------- construction and contract errors
def test_build_flow_spec_and_masks():
    flow = build_flow(" Affine + coupling*3+radial ", 3, seed=1)
    assert [type(f).__name__ for f in flow] == ["AffineFlow"] + ["AffineCouplingFlow"] * 3 + ["RadialFlow"]
    assert [flow[k].mask.tolist() for k in (1, 2, 3)] == [[True, False, True], [False, True, False],
                                                         [True, False, True]]
    assert flow[0].kind == "lower" and build_flow("diagonal", 2)[0].kind == "diagonal"
    assert set(FLOW_TYPES) == {"affine", "diagonal", "planar", "radial", "coupling"}
    with pytest.raises(ModelError, match="unknown flow type 'maf'.*affine, diagonal, planar, radial, coupling"):
        build_flow("affine+maf", 2)
    for bad in ("", "affine++planar", "planar*0", "planar*x"):
        with pytest.raises(ModelError, match="build_flow"):
            build_flow(bad, 2)
    with pytest.raises(ModelError, match="dim must be at least 2.*PlanarFlow or RadialFlow"):
        build_flow("affine+coupling", 1)


def test_constructor_errors():
    with pytest.raises(ModelError, match="dim must be an int >= 1; found 0"):
        PlanarFlow(0)
    with pytest.raises(ModelError, match="batch_shape must be a tuple"):
        RadialFlow(2, batch_shape=(2.5,))
    with pytest.raises(ModelError, match="dtype must be a floating"):
        AffineFlow(2, dtype=torch.int64)
    with pytest.raises(ModelError, match="kind must be one of"):
        AffineFlow(2, kind="upper")
    with pytest.raises(ModelError, match="mask must keep some"):
        AffineCouplingFlow(3, mask=torch.tensor([True, True, True]))
    with pytest.raises(ModelError, match="mask must be None, 'even', 'odd'"):
        AffineCouplingFlow(3, mask="left")
    with pytest.raises(ModelError, match=r"member 1 \(PlanarFlow\) has batch_shape=\(3,\)"):
        ComposedFlow([AffineFlow(2, (2,)), PlanarFlow(2, (3,))])
    with pytest.raises(ModelError, match="member 1 .* has dim=3"):
        ComposedFlow([AffineFlow(2), PlanarFlow(3)])
    with pytest.raises(ModelError, match="needs at least one flow"):
        ComposedFlow([])
    with pytest.raises(ModelError, match="not a pmxgen Flow"):
        ComposedFlow([AffineFlow(2), torch.nn.Linear(2, 2)])


@pytest.mark.parametrize("kind", KINDS)
def test_contract_errors(kind):
    flow = build_flow({"composed": "affine+planar+radial+coupling"}.get(kind, kind), 2, (3,))
    cases = [
        (torch.zeros(5, 3, 3, dtype=F64), r"shape \(5, 3, 3\); its last dimension must be the flow's dim = 2"),
        (torch.zeros(5, 4, 2, dtype=F64), r"batch dimensions \(5, 4\) do not broadcast with the flow's "
                                          r"batch_shape \(3,\)"),
        (torch.zeros(5, 3, 2, dtype=torch.int64), "dtype torch.int64; expected a floating tensor"),
        (torch.zeros(5, 3, 2, dtype=torch.float32), "dtype torch.float32 but the flow's parameters are torch.float64"),
        (torch.zeros((), dtype=F64), r"shape \(\); its last dimension"),
        ([[0.0, 0.0]], "must be a torch.Tensor"),
    ]
    for x, match in cases:
        with pytest.raises(ModelError, match=match):
            flow(x)
        with pytest.raises(ModelError, match=match):
            flow.inverse(x)
    with pytest.raises(ModelError, match=r"\.inverse: y has dtype torch.int64"):
        flow.inverse(torch.zeros(3, 2, dtype=torch.int32).long())


def test_float32_flows_work():
    flow = build_flow("affine+planar*2+radial*2+coupling*2", 3, (2,), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    x = torch.randn(10, 2, 3, generator=gen)
    y, ld = flow(x)
    x_back, ld_inv = flow.inverse(y)
    assert y.dtype == torch.float32 and ld.dtype == torch.float32
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-4)
    torch.testing.assert_close(ld_inv, -ld, rtol=0, atol=1e-4)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_flows_run_on_device(make_flow, device):
    flow = make_flow("composed", 3, (4,), seed=3).to(device)
    q = FlowDistribution(flow, base="student_t")
    x, log_q = q.rsample(8, seed=1)
    assert x.device.type == device and log_q.device.type == device
    torch.testing.assert_close(q.log_prob(x), log_q, rtol=0, atol=1e-9)
    assert math.isfinite(log_q.sum().item())
    assert fl.Flow in type(flow).__mro__
