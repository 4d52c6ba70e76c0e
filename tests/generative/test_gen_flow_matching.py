"""Flow matching: exact OT pairing, the one-Euler-step check of Tong et al. (2023), likelihood, contract."""
import itertools
import math

import numpy as np
import ot
import pandas as pd
import pytest
import torch

from pmxgen.errors import ModelError
from pmxgen.generative import load_generator, make_generator, mmd2, multiscale_bandwidths, sample_toy
from pmxgen.generative.flow_matching import ot_coupling

F64 = torch.float64


def _w2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact 2-Wasserstein distance of two equal-weight samples (POT network simplex, float64)."""
    return float(np.sqrt(ot.emd2([], [], ot.dist(a.numpy(), b.numpy()), numItermax=10_000_000)))


def test_ot_coupling_is_the_optimal_permutation():
    """Against brute force over all 7! pairings: the returned permutation has the least total squared cost."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(7, 2, dtype=F64, generator=g), torch.randn(7, 2, dtype=F64, generator=g) + 1
    cost = torch.cdist(x0, x1) ** 2
    best = min(sum(float(cost[p[j], j]) for j in range(7)) for p in itertools.permutations(range(7)))
    src = ot_coupling(x0, x1)
    assert sorted(src.tolist()) == list(range(7))
    assert sum(float(cost[src[j], j]) for j in range(7)) == pytest.approx(best, rel=1e-12)


@pytest.fixture(scope="module")
def moons_flows():
    """OT-CFM and I-CFM from 8 Gaussians to two moons, same network, data and budget (fast version of
    benchmarks/gen_flow_matching_ot.py)."""
    data = sample_toy("moons", 2000, seed=0)
    common = dict(source="8gaussians", hidden=[64, 64], max_epochs=60, batch_size=128, learning_rate=3e-3,
                  validation_fraction=0, seed=0)
    return {c: make_generator("flow_matching", coupling=c, **common).fit(data) for c in ("ot", "independent")}


def test_one_euler_step_ot_beats_independent_coupling(moons_flows):
    """Tong et al. (2023): at ONE Euler step the OT-CFM flow lands near the moons while I-CFM's does not;
    with dopri5 both are close. W2 is exact (POT); the floor is W2 between two samples of the moons."""
    target = sample_toy("moons", 1000, seed=99)
    floor = _w2(sample_toy("moons", 1000, seed=5), target)
    start = _w2(sample_toy("8gaussians", 1000, seed=6), target)
    w = {}
    for name, gen in moons_flows.items():
        gen.set_params(ode_method="euler", n_steps=1)
        w[name, "euler1"] = _w2(gen.sample(1000, seed=3), target)
        gen.set_params(ode_method="dopri5")
        w[name, "dopri5"] = _w2(gen.sample(1000, seed=3), target)
    print({f"{k[0]}/{k[1]}": round(v, 3) for k, v in w.items()}, "floor", round(floor, 3), "source", round(start, 3))
    assert w["ot", "euler1"] < 0.5 * w["independent", "euler1"]
    assert w["ot", "euler1"] < 2.0 * floor
    for name in ("ot", "independent"):
        assert w[name, "dopri5"] < 2.0 * floor < 0.4 * start


def test_ot_flow_samples_match_by_mmd(moons_flows):
    """Kernel two-sample check: MMD² of OT-CFM samples to fresh moons is a small fraction of the source's
    and well below the multivariate normal baseline's."""
    target = sample_toy("moons", 1500, seed=11)
    scales = multiscale_bandwidths(target)
    gen = moons_flows["ot"].set_params(ode_method="dopri5")
    model = float(mmd2(gen.sample(1500, seed=12), target, scales))
    same = float(mmd2(sample_toy("moons", 1500, seed=13), target, scales))
    source = float(mmd2(sample_toy("8gaussians", 1500, seed=14), target, scales))
    mvn = float(mmd2(make_generator("mvn").fit(sample_toy("moons", 2000, seed=0)).sample(1500, seed=15), target, scales))
    print(f"MMD² flow {model:.4f}, same density {same:.4f}, MVN {mvn:.4f}, source {source:.4f}")
    assert model < 0.05 * source and model < 0.5 * mvn


def test_gaussian_source_log_prob_is_a_normalised_density():
    """The change-of-variables density of a Gaussian-source flow integrates to 1 over a grid covering
    the data (quadrature) and exact and Hutchinson traces agree on average."""
    x = sample_toy("moons", 1000, seed=0)
    gen = make_generator("flow_matching", hidden=[32, 32], max_epochs=30, batch_size=100, learning_rate=5e-3,
                         validation_fraction=0, seed=0, rtol=1e-4, atol=1e-4).fit(x)
    h = 0.15
    u = torch.arange(-4.5, 4.5 + 1e-9, h, dtype=F64)
    grid = torch.cartesian_prod(u, u)
    mass = float(gen.log_prob(grid).exp().sum()) * h * h
    assert mass == pytest.approx(1.0, abs=0.03)
    pts = x[:3].repeat_interleave(200, 0)
    exact = gen.log_prob(x[:3])
    hutch = gen.set_params(trace="hutchinson").log_prob(pts).reshape(3, 200)
    se = hutch.std(1) / math.sqrt(200)
    assert bool(((hutch.mean(1) - exact).abs() < 4 * se + 1e-3).all())


def test_conditional_ot_pairs_within_condition_groups():
    """With a discrete condition, OT pairing permutes source draws only inside each group, so x0 stays
    independent of the condition; the fitted conditional flow carries the condition's effect."""
    rng = np.random.default_rng(0)
    sex = rng.integers(1, 3, 800)
    frame = pd.DataFrame({"SEX": sex, "A": 2.0 * (sex - 1.5) + 0.3 * rng.standard_normal(800),
                          "B": rng.standard_normal(800)})
    gen = make_generator("flow_matching", hidden=[32, 32], max_epochs=40, batch_size=100, learning_rate=5e-3,
                         validation_fraction=0, seed=0, bounds=None).fit(frame, conditions=["SEX"])
    c = gen.transform_.encode_conditions(frame[["SEX"]].iloc[:100])
    x0 = torch.randn(100, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    x1 = gen.transform_.encode(frame.iloc[:100])
    paired = gen._pair(x0, x1, c, None)
    for level in c.unique():
        rows = (c[:, 0] == level).nonzero()[:, 0]
        assert sorted(map(tuple, paired[rows].tolist())) == sorted(map(tuple, x0[rows].tolist()))
    men = gen.sample(500, conditions={"SEX": 2}, seed=1)["A"].mean()
    women = gen.sample(500, conditions={"SEX": 1}, seed=1)["A"].mean()
    assert men - women == pytest.approx(2.0, abs=0.3)


def test_save_load_seed_and_toy_source_rules(tmp_path):
    x = sample_toy("moons", 400, seed=0)
    gen = make_generator("flow_matching", source="8gaussians", hidden=[16], max_epochs=5, batch_size=100,
                         seed=3).fit(x)
    a = gen.sample(200, seed=1)
    assert torch.equal(a, gen.sample(200, seed=1)) and not torch.equal(a, gen.sample(200, seed=2))
    back = load_generator(gen.save(tmp_path / "fm.safetensors"))
    assert torch.equal(back.sample(200, seed=1), a)
    assert back.get_params()["source"] == "8gaussians"
    assert bool(torch.isfinite(gen.log_prob(x[:4])).all())  # 8 Gaussians has a closed-form source density
    moons_source = make_generator("flow_matching", source="moons", hidden=[16], max_epochs=2).fit(x)
    with pytest.raises(ModelError, match="no closed-form density"):
        moons_source.log_prob(x[:2])
    frame = pd.DataFrame({"WT": np.linspace(40, 90, 50), "AGE": np.linspace(20, 70, 50), "HT": np.linspace(150, 190, 50)})
    with pytest.raises(ModelError, match="two unbounded continuous"):
        make_generator("flow_matching", source="8gaussians", max_epochs=1).fit(frame)
    with pytest.raises(ModelError, match="coupling must be"):
        make_generator("flow_matching", coupling="sinkhorn").fit(x)
