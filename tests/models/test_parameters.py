"""θ / Ω / σ containers: validation, naming, the natural ↔ unconstrained maps and unpacking."""
import math

import numpy as np
import pytest
import torch

from pmxgen.errors import ModelError
from pmxgen.models.parameter_set import OmegaBlock, ParameterSet, Sigma, Theta, omega_blocks

T = torch.float64


def random_pd(k, rng, scale=0.1):
    a = rng.normal(size=(k, k))
    return scale * (a @ a.T / k + 0.5 * np.eye(k))


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("kwargs, text", [
    (dict(init=-1.0, lower=0.0), "strictly inside"),
    (dict(init=0.0, lower=0.0), "strictly inside"),
    (dict(init=5.0, lower=0.0, upper=4.0), "strictly inside"),
    (dict(init=1.0, lower=2.0, upper=1.0), "must be below upper bound"),
    (dict(init=1.0, lower=1.0, upper=1.0), "must be below upper bound"),
    (dict(init=float("nan")), "must be a number"),
    (dict(init=float("inf")), "must be finite"),
    (dict(init=True), "must be a number"),
    (dict(init="1.0"), "must be a number"),
    (dict(init=1.0, lower=float("nan")), "must be a number"),
])
def test_theta_validation(kwargs, text):
    with pytest.raises(ModelError, match=text) as info:
        Theta("CL", **kwargs)
    assert "CL" in str(info.value)


def test_theta_accepts_numpy_numbers_and_fixed_on_bound():
    t = Theta("CL", np.float32(2.5), lower=np.int64(0))
    assert isinstance(t.init, float) and t.init == 2.5 and t.lower == 0.0
    fixed = Theta("F", 1.0, lower=0.0, upper=1.0, fixed=True)   # a fixed θ may sit on its bound
    assert fixed.init == 1.0


def test_theta_from_spec():
    assert Theta.from_spec("V", 30) == Theta("V", 30.0)
    assert Theta.from_spec("V", (0, 30)) == Theta("V", 30.0, lower=0.0)
    assert Theta.from_spec("V", (0, 30, 100)) == Theta("V", 30.0, lower=0.0, upper=100.0)
    with pytest.raises(ModelError, match="give \\(lower, init\\)"):
        Theta.from_spec("V", (0, 1, 2, 3))
    with pytest.raises(ModelError, match="named 'CL'"):
        Theta.from_spec("V", Theta("CL", 1.0))


@pytest.mark.parametrize("names, init, text", [
    (["CL", "V"], [[0.1, 0.05], [0.02, 0.1]], "not symmetric"),
    (["CL", "V"], [[0.1, 0.2], [0.2, 0.1]], "not positive definite"),
    (["CL", "V"], [0.1, -0.1], "not positive definite"),
    (["CL"], [0.0], "not positive definite"),
    (["CL", "V"], [0.1], "give 2 initial variances"),
    (["CL", "V"], np.eye(3) * 0.1, "expected"),
    (["CL", "CL"], [0.1, 0.1], "distinct"),
    ([], [], "distinct"),
    (["CL"], [float("nan")], "finite"),
])
def test_omega_block_validation(names, init, text):
    with pytest.raises(ModelError, match=text):
        OmegaBlock(names, init)


@pytest.mark.parametrize("value", [0.0, -0.1, float("nan"), float("inf"), True, "0.1", None])
def test_sigma_validation(value):
    with pytest.raises(ModelError, match="finite number > 0"):
        Sigma("ADD", value)


def test_parameter_set_rejects_duplicates():
    with pytest.raises(ModelError, match="theta names must be distinct"):
        ParameterSet([Theta("CL", 1.0), Theta("CL", 2.0)], [], [])
    with pytest.raises(ModelError, match="one omega block only"):
        ParameterSet([], [OmegaBlock(["CL"], [0.1]), OmegaBlock(["CL", "V"], [0.1, 0.1])], [])
    with pytest.raises(ModelError, match="sigma names must be distinct"):
        ParameterSet([], [], [Sigma("ADD", 1.0), Sigma("ADD", 2.0)])


def test_omega_blocks_spec():
    blocks = omega_blocks({"CL": 0.1, "V": 0.2})
    assert [b.names for b in blocks] == [("CL",), ("V",)]
    assert omega_blocks(None) == []
    b = OmegaBlock(["KA"], [0.3])
    assert omega_blocks(b) == [b] and omega_blocks([b]) == [b]
    with pytest.raises(ModelError, match="omega must be"):
        omega_blocks(0.1)


# ----------------------------------------------------------------------------------------------- names
def mixed_set():
    """θ of every transform kind (one fixed), a diagonal block, a full block, a fixed block, σ (one fixed)."""
    theta = [Theta("A", 1.5), Theta("CL", 3.0, lower=0.0), Theta("EMAX", -2.0, upper=1.0),
             Theta("F", 0.7, lower=0.0, upper=1.0), Theta("FIX", 9.0, fixed=True)]
    omega = [OmegaBlock(["CL", "V"], [0.09, 0.04]),
             OmegaBlock(["KA", "Q", "V2"], [[0.2, 0.05, 0.01], [0.05, 0.1, -0.02], [0.01, -0.02, 0.3]]),
             OmegaBlock(["D1"], [0.5], fixed=True)]
    sigma = [Sigma("ADD", 0.25), Sigma("PROP", 0.01, fixed=True)]
    return ParameterSet(theta, omega, sigma)


def test_names_and_order():
    ps = mixed_set()
    assert ps.names == ("A", "CL", "EMAX", "F", "OMEGA(CL)", "OMEGA(V)",
                        "OMEGA(KA)", "OMEGA(Q,KA)", "OMEGA(Q)", "OMEGA(V2,KA)", "OMEGA(V2,Q)", "OMEGA(V2)",
                        "SIGMA(ADD)")
    assert ps.all_names == ("A", "CL", "EMAX", "F", "FIX", "OMEGA(CL)", "OMEGA(V)",
                            "OMEGA(KA)", "OMEGA(Q,KA)", "OMEGA(Q)", "OMEGA(V2,KA)", "OMEGA(V2,Q)", "OMEGA(V2)",
                            "OMEGA(D1)", "SIGMA(ADD)", "SIGMA(PROP)")
    assert ps.eta_names == ("CL", "V", "KA", "Q", "V2", "D1")
    assert ps.n_estimated == 13 and ps.n_eta == 6
    assert [ps.kind_of(n) for n in ("EMAX", "OMEGA(Q,KA)", "SIGMA(ADD)")] == ["theta", "omega", "sigma"]


def test_kind_of_unknown_name_raises_a_clear_error():
    with pytest.raises((KeyError, ModelError), match="NOPE"):
        mixed_set().kind_of("NOPE")


def test_fixed_parameters_in_full_natural():
    ps = mixed_set()
    phi = ps.initial_natural()
    assert phi.dtype == T and phi.shape == (13,)
    phi = phi + 0.001 * torch.arange(13, dtype=T)       # move the estimated ones
    full = ps.full_natural(phi)
    assert list(full) == list(ps.all_names)
    assert full["FIX"] == 9.0 and full["OMEGA(D1)"] == 0.5 and full["SIGMA(PROP)"] == 0.01
    for k, name in enumerate(ps.names):
        assert full[name] == pytest.approx(float(phi[k]), abs=0, rel=1e-15)


# ------------------------------------------------------------------------------------ transformations
@pytest.mark.parametrize("theta, values", [
    (Theta("X", 1.5), [-40.0, -1.0, 0.0, 2.5, 1e4]),
    (Theta("X", 3.0, lower=0.0), [1e-8, 0.3, 3.0, 2e3]),
    (Theta("X", 3.0, lower=-5.0), [-4.999, 0.0, 17.0]),
    (Theta("X", -2.0, upper=1.0), [-300.0, -2.0, 0.999]),
    (Theta("X", 0.7, lower=0.0, upper=1.0), [1e-6, 0.3, 0.7, 0.999]),
    (Theta("X", 20.0, lower=-10.0, upper=50.0), [-9.5, 0.0, 49.0]),
])
def test_theta_round_trip_and_transform_formula(theta, values):
    ps = ParameterSet([theta], [], [])
    lo, hi = theta.lower, theta.upper
    for v in values:
        phi = torch.tensor([v], dtype=T)
        x = ps.to_unconstrained(phi)
        if math.isfinite(lo) and math.isfinite(hi):
            u = (v - lo) / (hi - lo)
            expected = math.log(u / (1 - u))
        elif math.isfinite(lo):
            expected = math.log(v - lo)
        elif math.isfinite(hi):
            expected = math.log(hi - v)
        else:
            expected = v
        assert float(x[0]) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        back = ps.from_unconstrained(x)
        assert float(back[0]) == pytest.approx(v, rel=1e-12, abs=1e-12)


def test_unconstrained_values_map_inside_the_bounds():
    ps = ParameterSet([Theta("L", 1.0, lower=0.5), Theta("U", 1.0, upper=2.0), Theta("B", 1.0, lower=-1, upper=3)],
                      [], [])
    x = torch.linspace(-30, 30, 61, dtype=T)
    for xi in x:
        phi = ps.from_unconstrained(torch.stack([xi, xi, xi]))
        assert phi[0] > 0.5 and phi[1] < 2.0 and -1 <= phi[2] <= 3


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("diagonal", [True, False])
def test_block_round_trip_random_pd(k, diagonal):
    rng = np.random.default_rng(100 + k)
    names = [f"E{i}" for i in range(k)]
    for _ in range(5):
        m = random_pd(k, rng)
        block = OmegaBlock(names, np.diag(m) if diagonal else m)
        ps = ParameterSet([Theta("CL", 2.0, lower=0)], [block], [Sigma("ADD", 0.3)])
        phi = ps.initial_natural()
        x = ps.to_unconstrained(phi)
        assert x.shape == phi.shape
        np.testing.assert_allclose(ps.from_unconstrained(x).numpy(), phi.numpy(), rtol=1e-12, atol=1e-14)
        # the block part of x is log-variances (diagonal) or the log-Cholesky factor (full)
        xb = x[1:-1].numpy()
        if diagonal:
            np.testing.assert_allclose(xb, np.log(np.diag(m)), rtol=1e-12)
        else:
            chol = np.linalg.cholesky(m)
            expected = [math.log(chol[r, c]) if r == c else chol[r, c] for r in range(k) for c in range(r + 1)]
            np.testing.assert_allclose(xb, expected, rtol=1e-10, atol=1e-14)
        assert float(x[-1]) == pytest.approx(math.log(0.3), rel=1e-14)
        # and any x maps to a positive-definite block
        x2 = torch.as_tensor(rng.normal(size=x.shape[0]), dtype=T)
        om = ps.unpack(ps.from_unconstrained(x2)).omega.numpy()
        np.linalg.cholesky(om)
        np.testing.assert_allclose(om, om.T, rtol=0, atol=0)


def test_mixed_set_round_trip():
    ps = mixed_set()
    phi = ps.initial_natural()
    np.testing.assert_allclose(ps.from_unconstrained(ps.to_unconstrained(phi)).numpy(), phi.numpy(), rtol=1e-12)
    x = torch.as_tensor(np.random.default_rng(3).normal(size=ps.n_estimated), dtype=T)
    np.testing.assert_allclose(ps.to_unconstrained(ps.from_unconstrained(x)).numpy(), x.numpy(), rtol=1e-10,
                               atol=1e-12)


def test_to_unconstrained_rejects_non_pd_block():
    ps = ParameterSet([], [OmegaBlock(["CL", "V"], [[0.1, 0.01], [0.01, 0.1]])], [])
    phi = torch.tensor([0.1, 0.5, 0.1], dtype=T)      # OMEGA(V,CL) = 0.5 > sqrt(0.1 * 0.1)
    with pytest.raises(ModelError, match="not positive definite"):
        ps.to_unconstrained(phi)


def test_gradcheck_from_unconstrained():
    ps = mixed_set()
    x = torch.as_tensor(np.random.default_rng(7).normal(scale=0.5, size=ps.n_estimated), dtype=T)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(ps.from_unconstrained, (x,))


def test_gradcheck_unpack_chain():
    ps = mixed_set()
    x = ps.to_unconstrained(ps.initial_natural()).detach().requires_grad_(True)

    def f(x):
        v = ps.unpack(ps.from_unconstrained(x))
        return torch.cat([torch.stack(list(v.theta.values())), v.omega.flatten(), torch.stack(list(v.sigma.values()))])

    assert torch.autograd.gradcheck(f, (x,))


# -------------------------------------------------------------------------------------------- unpack
def test_unpack_places_blocks():
    ps = mixed_set()
    phi = ps.initial_natural()
    v = ps.unpack(phi)
    assert set(v.theta) == {"A", "CL", "EMAX", "F", "FIX"}
    assert float(v.theta["FIX"]) == 9.0 and float(v.theta["EMAX"]) == -2.0
    assert set(v.sigma) == {"ADD", "PROP"} and float(v.sigma["PROP"]) == 0.01
    expected = np.zeros((6, 6))
    expected[0, 0], expected[1, 1] = 0.09, 0.04
    expected[2:5, 2:5] = [[0.2, 0.05, 0.01], [0.05, 0.1, -0.02], [0.01, -0.02, 0.3]]
    expected[5, 5] = 0.5
    np.testing.assert_array_equal(v.omega.numpy(), expected)
    # an estimated off-diagonal element lands in both triangles
    phi2 = phi.clone()
    phi2[ps.names.index("OMEGA(V2,KA)")] = 0.033
    om = ps.unpack(phi2).omega
    assert float(om[4, 2]) == 0.033 and float(om[2, 4]) == 0.033


def test_unpack_batched():
    ps = mixed_set()
    rng = np.random.default_rng(11)
    n = 4
    base = ps.initial_natural()
    phi = base + torch.as_tensor(rng.normal(scale=1e-3, size=(n, ps.n_estimated)), dtype=T)
    v = ps.unpack(phi)
    assert v.omega.shape == (n, 6, 6)
    for name, t in list(v.theta.items()) + list(v.sigma.items()):
        assert t.shape == (n,), name
    for i in range(n):
        vi = ps.unpack(phi[i])
        np.testing.assert_array_equal(v.omega[i].numpy(), vi.omega.numpy())
        for name in vi.theta:
            assert float(v.theta[name][i]) == float(vi.theta[name])
    assert torch.equal(v.theta["FIX"], torch.full((n,), 9.0, dtype=T))
    assert torch.equal(v.omega, v.omega.transpose(-1, -2))


def test_per_subject_gradients_through_batched_unpack():
    """Each row of a batched φ gets its own gradient (what the estimators use)."""
    ps = mixed_set()
    n = 3
    phi = ps.initial_natural().expand(n, -1).clone().requires_grad_(True)
    v = ps.unpack(phi)
    w = torch.arange(1, n + 1, dtype=T)
    (w * v.omega[:, 2, 3]).sum().backward()
    k = ps.names.index("OMEGA(Q,KA)")
    expected = torch.zeros(n, ps.n_estimated, dtype=T)
    expected[:, k] = w
    np.testing.assert_allclose(phi.grad.numpy(), expected.numpy(), rtol=1e-15)


def test_fixed_full_block_keeps_its_covariances():
    """A fixed full Ω block (NONMEM's $OMEGA BLOCK(2) FIX) must keep its off-diagonal element."""
    init = np.array([[0.09, 0.03], [0.03, 0.04]])
    ps = ParameterSet([Theta("CL", 3.0, lower=0)], [OmegaBlock(["CL", "V"], init, fixed=True)], [Sigma("ADD", 0.5)])
    assert ps.names == ("CL", "SIGMA(ADD)")
    phi = ps.initial_natural()
    np.testing.assert_array_equal(ps.unpack(phi).omega.numpy(), init)
    assert "OMEGA(V,CL)" in ps.all_names
    assert ps.full_natural(phi)["OMEGA(V,CL)"] == 0.03


# ------------------------------------------------------------------------------------ with_initial etc.
def test_with_initial():
    ps = mixed_set()
    new = ps.with_initial({"CL": 4.0, "OMEGA(Q,KA)": -0.03, "OMEGA(V)": 0.2, "SIGMA(ADD)": 1.5, "FIX": 8.0})
    full = new.full_natural(new.initial_natural())
    assert full["CL"] == 4.0 and full["FIX"] == 8.0 and full["SIGMA(ADD)"] == 1.5
    assert full["OMEGA(V)"] == 0.2 and full["OMEGA(Q,KA)"] == -0.03
    assert full["A"] == 1.5 and full["OMEGA(KA)"] == 0.2          # untouched ones keep their values
    assert new.names == ps.names and new.all_names == ps.all_names
    om = new.unpack(new.initial_natural()).omega
    assert float(om[2, 3]) == float(om[3, 2]) == -0.03
    # the original is unchanged
    assert ps.full_natural(ps.initial_natural())["CL"] == 3.0
    assert new.theta[1].lower == 0.0 and new.theta[4].fixed


def test_with_initial_errors():
    ps = mixed_set()
    with pytest.raises(ModelError, match="unknown parameters \\['NOPE'\\]"):
        ps.with_initial({"NOPE": 1.0})
    with pytest.raises(ModelError, match="strictly inside"):
        ps.with_initial({"CL": -1.0})
    with pytest.raises(ModelError, match="not positive definite"):
        ps.with_initial({"OMEGA(Q,KA)": 1.0})
    with pytest.raises(ModelError, match="finite number > 0"):
        ps.with_initial({"SIGMA(ADD)": 0.0})


def test_near_bounds():
    ps = ParameterSet([Theta("CL", 3.0, lower=0.0), Theta("F", 0.5, lower=0.0, upper=1.0), Theta("E", 1.0),
                       Theta("K", 10.0, lower=0.0, fixed=True)],
                      [OmegaBlock(["CL", "V"], [[0.1, 0.0], [0.0, 0.1]]), OmegaBlock(["KA"], [0.1])],
                      [Sigma("ADD", 1.0)])
    names = ps.names
    assert names == ("CL", "F", "E", "OMEGA(CL)", "OMEGA(V,CL)", "OMEGA(V)", "OMEGA(KA)", "SIGMA(ADD)")

    def phi(**kw):
        vals = dict(zip(names, ps.initial_natural().tolist()))
        vals.update({k.replace("_", "(", 1) + ")" if k.startswith("OMEGA_") else k: v for k, v in kw.items()})
        return torch.tensor([vals[n] for n in names], dtype=T)

    assert ps.near_bounds(phi()) == []
    # tolerance for CL: 1e-3 * max(|0|, min(1, |3 - 0|)) = 1e-3
    assert ps.near_bounds(phi(CL=0.0009)) == ["CL"]
    assert ps.near_bounds(phi(CL=0.0011)) == []
    # F in (0, 1) from 0.5: 1e-3 * max(1, 0.5) at the upper bound, 1e-3 * max(0, 0.5) at the lower one
    assert ps.near_bounds(phi(F=0.9995)) == ["F"]
    assert ps.near_bounds(phi(F=0.998)) == []
    assert ps.near_bounds(phi(F=0.0004)) == ["F"]
    assert ps.near_bounds(phi(F=0.0006)) == []
    assert ps.near_bounds(phi(E=-1e6)) == []                      # no finite bound
    assert ps.near_bounds(phi(OMEGA_KA=1e-7)) == ["OMEGA(KA)"]
    assert ps.near_bounds(phi(OMEGA_V=1e-6, CL=1e-4)) == ["CL", "OMEGA(V)"]


def test_near_bounds_does_not_grow_with_a_large_initial_value():
    """A large initial value must not flag an estimate far from its bound (the tolerance was
    1e-3 * |init| = 1 here, so V = 0.5 was 'near 0'); a parameter on a small scale is judged on its
    own scale (init 1e-3: 5e-4 is not near 0, 1e-7 is)."""
    ps = ParameterSet([Theta("V", 1000.0, lower=0.0), Theta("K", 1e-3, lower=0.0),
                       Theta("VMAX", 5000.0, lower=10.0, upper=1e5)], [], [Sigma("ADD", 1.0)])

    def phi(v=1000.0, k=1e-3, vmax=5000.0):
        return torch.tensor([v, k, vmax, 1.0], dtype=T)

    assert ps.near_bounds(phi(v=0.5)) == []
    assert ps.near_bounds(phi(v=2e-3)) == []
    assert ps.near_bounds(phi(v=5e-4)) == ["V"]
    assert ps.near_bounds(phi(k=5e-4)) == []
    assert ps.near_bounds(phi(k=1e-7)) == ["K"]
    # a bound away from 0: relative to the bound (1e-3 * 10 and 1e-3 * 1e5)
    assert ps.near_bounds(phi(vmax=10.02)) == []
    assert ps.near_bounds(phi(vmax=10.005)) == ["VMAX"]
    assert ps.near_bounds(phi(vmax=99950.0)) == ["VMAX"]
    assert ps.near_bounds(phi(vmax=99800.0)) == []
