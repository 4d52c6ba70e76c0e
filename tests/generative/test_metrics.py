"""Sample-based metrics of generators, each checked against an independent computation or known truth."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import optimize, stats

from pmxgen.errors import DatasetError, ModelError
from pmxgen.generative import make_generator
from pmxgen.generative.kernels import mmd2
from pmxgen.generative.metrics import (TableEncoding, correlation_error, energy_distance, evaluate, heldout_nll,
                                       precision_recall, sliced_wasserstein, wasserstein2)
from pmxgen.generative.two_sample import auc, classifier_two_sample_test, marginal_tests, mmd_test

F64 = torch.float64


def _normal(n, d, seed, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, dtype=F64, generator=g) * scale + shift


# -- MMD permutation test ------------------------------------------------------------------------------

def test_mmd_permutation_test_has_nominal_level_and_power():
    """400 pairs of samples of one distribution (n = m = 30, 2-D): with 99 permutations the test's
    exact level is 5/100, so the rejection rate at 5 % is 0.05 ± 0.011 (MC SD); accept ±3 SD.
    A mean shift of 0.8 is rejected nearly always."""
    reps, level = 400, 0.05
    rejected = sum(mmd_test(_normal(30, 2, 2 * r), _normal(30, 2, 2 * r + 1), n_permutations=99, seed=r).reject(level)
                   for r in range(reps))
    rate = rejected / reps
    sd = math.sqrt(level * (1 - level) / reps)
    assert abs(rate - level) < 3 * sd, rate
    power = np.mean([mmd_test(_normal(30, 2, 2 * r), _normal(30, 2, 2 * r + 1, shift=0.8), n_permutations=99,
                              seed=r).reject(level) for r in range(40)])
    assert power >= 0.9, power


def test_mmd_statistic_and_permutations_match_the_kernel_module():
    """The statistic is kernels.mmd2 with the same bandwidths; each permutation statistic equals mmd2
    of the relabelled samples (checked by recomputing the permutations from the same generator)."""
    x, y = _normal(25, 3, 0), _normal(35, 3, 1, shift=0.3)
    res = mmd_test(x, y, bandwidths=[0.7, 2.0], n_permutations=5, seed=3)
    assert res.statistic == pytest.approx(float(mmd2(x, y, [0.7, 2.0])), rel=1e-10)
    z = torch.cat([x, y])
    gen = torch.Generator().manual_seed(3)
    ranks = torch.rand(5, 60, generator=gen, dtype=F64).argsort(1).argsort(1)
    expected = [float(mmd2(z[r < 25], z[r >= 25], [0.7, 2.0])) for r in ranks]
    np.testing.assert_allclose(res.null, expected, rtol=1e-9, atol=1e-12)
    again = mmd_test(x, y, bandwidths=[0.7, 2.0], n_permutations=5, seed=3)
    assert again.p_value == res.p_value and np.array_equal(again.null, res.null)


# -- energy distance -------------------------------------------------------------------------------------

def test_energy_distance_is_scipy_in_1d_and_the_gaussian_closed_form():
    x, y = _normal(57, 1, 0), _normal(43, 1, 1, shift=0.5, scale=2.0)
    ref = stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy())
    assert math.sqrt(energy_distance(x, y, unbiased=False)) == pytest.approx(ref, rel=1e-10)
    # X ~ N(0, 1), Y ~ N(1, 2²): 2E|X−Y| − E|X−X'| − E|Y−Y'| with E|N(δ, s²)| = s√(2/π)e^{−δ²/2s²} + δ(1 − 2Φ(−δ/s))
    s, delta = math.sqrt(1 + 4), 1.0
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-delta ** 2 / (2 * s ** 2)) + delta * (1 - 2 * stats.norm.cdf(-delta / s))
    closed = 2 * e_xy - 2 * 1 / math.sqrt(math.pi) - 2 * 2 / math.sqrt(math.pi)
    got = np.array([energy_distance(_normal(1000, 1, 2 * r), _normal(1000, 1, 2 * r + 1, shift=1.0, scale=2.0))
                    for r in range(30)])
    se = got.std(ddof=1) / math.sqrt(len(got))
    assert se < 0.015 and abs(got.mean() - closed) < 4 * se, (got.mean(), se, closed)      # closed = 0.534


def test_energy_distance_is_zero_in_expectation_for_identical_distributions():
    """Mean of the unbiased statistic over 300 pairs of small 2-D samples is within 3 SE of 0, while the
    biased (V-statistic) version is clearly positive — so the check can tell a biased estimate."""
    u = np.array([energy_distance(_normal(20, 2, 2 * r), _normal(20, 2, 2 * r + 1)) for r in range(300)])
    v = np.array([energy_distance(_normal(20, 2, 2 * r), _normal(20, 2, 2 * r + 1), unbiased=False)
                  for r in range(300)])
    se = u.std(ddof=1) / math.sqrt(len(u))
    assert abs(u.mean()) < 3 * se, (u.mean(), se)
    assert v.mean() > 10 * se


# -- Wasserstein -----------------------------------------------------------------------------------------

def test_sliced_wasserstein_in_1d_is_the_exact_1d_distance():
    x, y = _normal(37, 1, 0), _normal(52, 1, 1, shift=0.4, scale=1.5)
    ref1 = stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy())
    assert sliced_wasserstein(x, y, p=1) == pytest.approx(ref1, rel=1e-10)
    import ot
    cost = ot.dist(x.numpy(), y.numpy(), metric="sqeuclidean")
    ref2 = math.sqrt(ot.emd2(np.full(37, 1 / 37), np.full(52, 1 / 52), cost))
    assert sliced_wasserstein(x, y, p=2) == pytest.approx(ref2, rel=1e-8)


def test_sliced_wasserstein_of_a_translation():
    """y = x + δ: every projection is shifted by θ·δ exactly, so SW2² = mean (θ·δ)² → |δ|²/d."""
    x = _normal(300, 3, 0)
    delta = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    got = sliced_wasserstein(x, x + delta, n_projections=4000, seed=1)
    assert got == pytest.approx(float(delta.norm()) / math.sqrt(3), rel=0.03)


def test_exact_w2_equals_the_optimal_assignment():
    """Equal sizes and uniform weights: optimal transport is an assignment (scipy's Hungarian solver)."""
    x, y = _normal(60, 2, 0), _normal(60, 2, 1, shift=0.7)
    cost = torch.cdist(x, y).numpy() ** 2
    rows, cols = optimize.linear_sum_assignment(cost)
    assert wasserstein2(x, y) == pytest.approx(math.sqrt(cost[rows, cols].mean()), rel=1e-9)
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-12)


# -- classifier two-sample test ---------------------------------------------------------------------------

def test_c2st_is_chance_under_the_null_and_detects_differences():
    """Null: 20 pairs of 80 + 80 rows; accuracy SD ≈ 0.045 per pair, so the mean is 0.5 ± 0.01 (SE). The
    p-value is exact whatever the training (100 steps here, to keep the test fast)."""
    null = [classifier_two_sample_test(_normal(80, 2, 2 * r), _normal(80, 2, 2 * r + 1), seed=r, epochs=100)
            for r in range(20)]
    acc = np.array([t.statistic for t in null])
    assert abs(acc.mean() - 0.5) < 0.03, acc.mean()
    assert sum(t.reject() for t in null) <= 4            # nominal 5 %: P(>= 5 of 20) = 0.003
    separable = classifier_two_sample_test(_normal(100, 2, 0), _normal(100, 2, 1, shift=6.0), seed=0)
    # first fold: 40 rows, all correct: p = 1 / C(40, 20)
    assert separable.statistic > 0.97 and separable.details["auc"] > 0.99
    assert separable.p_value == pytest.approx(1 / math.comb(40, 20)) 
    # a difference of scale only (same mean): the hidden layer finds it, a linear classifier could not
    scale = classifier_two_sample_test(_normal(200, 2, 0), _normal(200, 2, 1, scale=3.0), seed=0)
    assert scale.statistic > 0.7 and scale.p_value < 1e-3


def test_c2st_p_value_is_the_exact_arrangement_tail():
    """The first-fold p-value counts, over every arrangement of the fold's labels (equal counts), those with
    at least as many correct predictions as observed: checked by enumeration on 10 rows."""
    import itertools
    from pmxgen.generative.two_sample import _first_fold_p_value
    predicted = torch.tensor([1, 1, 1, 0, 0, 1, 0, 1, 1, 0], dtype=F64)
    labels = torch.tensor([1, 1, 0, 0, 0, 1, 1, 1, 0, 0], dtype=F64)
    observed = int((predicted == labels).sum())
    tails = []
    for ones in itertools.combinations(range(10), 5):
        arrangement = torch.zeros(10, dtype=F64)
        arrangement[list(ones)] = 1
        tails.append(int((predicted == arrangement).sum()) >= observed)
    assert _first_fold_p_value(predicted, labels) == pytest.approx(np.mean(tails), rel=1e-12)


def test_c2st_is_reproducible_and_auc_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    x, y = _normal(80, 3, 0), _normal(120, 3, 1, shift=0.5)
    a = classifier_two_sample_test(x, y, seed=7)
    b = classifier_two_sample_test(x, y, seed=7)
    assert (a.statistic, a.p_value, a.details["auc"]) == (b.statistic, b.p_value, b.details["auc"])
    assert a.details["n_per_sample"] == 80
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.05])
    labels = torch.tensor([0, 0, 1, 1, 1, 0, 1])
    assert auc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels.numpy(), scores.numpy()))


# -- marginal tests and correlation error -----------------------------------------------------------------

def test_marginal_tests_match_scipy_and_a_direct_ecdf():
    rng = np.random.default_rng(0)
    real = pd.DataFrame({"WT": rng.lognormal(4.2, 0.2, 80), "RACE": rng.choice(["A", "B", "C"], 80)})
    fake = pd.DataFrame({"WT": rng.lognormal(4.3, 0.25, 120), "RACE": rng.choice(["A", "B", "C", "D"], 120)})
    table = marginal_tests(real, fake, discrete=["RACE"]).set_index("column")
    ks = stats.ks_2samp(real["WT"], fake["WT"])
    grid = np.sort(np.concatenate([real["WT"], fake["WT"]]))
    ecdf = lambda v: np.searchsorted(np.sort(v), grid, side="right") / len(v)
    assert table.loc["WT", "statistic"] == pytest.approx(np.abs(ecdf(real["WT"]) - ecdf(fake["WT"])).max())
    assert table.loc["WT", "statistic"] == pytest.approx(ks.statistic)
    assert table.loc["WT", "p_value"] == pytest.approx(ks.pvalue)
    counts = np.array([[(f["RACE"] == v).sum() for v in "ABCD"] for f in (real, fake)])
    shares = counts / counts.sum(1, keepdims=True)
    assert table.loc["RACE", "statistic"] == pytest.approx(0.5 * np.abs(shares[0] - shares[1]).sum())
    assert table.loc["RACE", "p_value"] == pytest.approx(stats.chi2_contingency(counts)[1])


def test_correlation_error_is_the_frobenius_norm_of_numpy_correlations():
    x = _normal(200, 4, 0) @ torch.tensor([[1.0, 0.5, 0, 0], [0, 1, 0.3, 0], [0, 0, 1, -0.6], [0, 0, 0, 1]], dtype=F64)
    y = _normal(150, 4, 1)
    expected = np.linalg.norm(np.corrcoef(x.numpy().T) - np.corrcoef(y.numpy().T))
    assert correlation_error(x, y) == pytest.approx(expected, rel=1e-10)
    constant = torch.cat([y[:, :3], torch.zeros(150, 1, dtype=F64)], 1)     # a constant column: correlation 0
    c = np.corrcoef(x.numpy().T)
    d = np.corrcoef(y[:, :3].numpy().T)
    ref = c.copy()
    ref[:3, :3] -= d
    assert correlation_error(x, constant) == pytest.approx(np.linalg.norm(ref), rel=1e-10)


# -- precision / recall / density / coverage ---------------------------------------------------------------

def _mixture(n, seed, modes=((-4.0, 0.0), (4.0, 0.0))):
    g = torch.Generator().manual_seed(seed)
    centre = torch.tensor(modes, dtype=F64)[torch.randint(len(modes), (n,), generator=g)]
    return centre + torch.randn(n, 2, dtype=F64, generator=g)


def test_precision_recall_detect_a_dropped_and_an_invented_mode():
    real = _mixture(400, 0)
    full = precision_recall(real, _mixture(400, 1))
    dropped = precision_recall(real, _mixture(400, 2, modes=((-4.0, 0.0),)))
    invented = precision_recall(real, _mixture(400, 3, modes=((-4.0, 0.0), (4.0, 0.0), (0.0, 8.0), (0.0, -8.0))))
    assert min(full.values()) > 0.85, full
    assert dropped["recall"] < 0.6 and dropped["coverage"] < 0.6 and dropped["precision"] > 0.85, dropped
    assert invented["precision"] < 0.6 and invented["density"] < 0.6 and invented["recall"] > 0.85, invented


def test_precision_recall_match_a_direct_loop():
    x, y = _normal(40, 2, 0), _normal(30, 2, 1, shift=0.5)
    k = 3
    dx, dy, dxy = (torch.cdist(a, b).numpy() for a, b in ((x, x), (y, y), (x, y)))
    rx = np.sort(dx, 1)[:, k]
    ry = np.sort(dy, 1)[:, k]
    precision = np.mean([any(dxy[i, j] <= rx[i] for i in range(40)) for j in range(30)])
    recall = np.mean([any(dxy[i, j] <= ry[j] for j in range(30)) for i in range(40)])
    density = sum(dxy[i, j] <= rx[i] for i in range(40) for j in range(30)) / (k * 30)
    coverage = np.mean([any(dxy[i, j] <= rx[i] for j in range(30)) for i in range(40)])
    got = precision_recall(x, y, k=k)
    assert got == pytest.approx({"precision": precision, "recall": recall, "density": density,
                                 "coverage": coverage})


# -- mixed tables, held-out NLL, evaluate ---------------------------------------------------------------

def _panel(n, seed):
    rng = np.random.default_rng(seed)
    sex = rng.integers(1, 3, n)
    wt = np.exp(np.log(70) + 0.15 * (sex - 1) + 0.2 * rng.standard_normal(n))
    return pd.DataFrame({"WT": wt, "SEX": sex, "RACE": rng.choice(["A", "B", "C"], n), "AGE": rng.integers(18, 80, n)})


def test_table_encoding_of_mixed_columns():
    real, fake = _panel(50, 0), _panel(40, 1)
    fake.loc[0, "RACE"] = "Z"                        # a level the real data lack gets its own indicator
    enc = TableEncoding.fit(real, fake)
    assert enc.continuous == ["WT", "AGE"] and enc.discrete == {"SEX": [1, 2], "RACE": ["A", "B", "C", "Z"]}
    assert enc.features == ["WT", "SEX=2", "RACE=A", "RACE=B", "RACE=C", "RACE=Z", "AGE"]
    x, y = enc.encode(real), enc.encode(fake)
    assert x[:, 0].mean().abs() < 1e-12 and (x[:, 0].std(unbiased=False) - 1).abs() < 1e-12
    np.testing.assert_allclose(y[:, 0].numpy(), (fake["WT"] - real["WT"].mean()) / real["WT"].std(ddof=0))
    assert np.array_equal(y[:, 1].numpy(), (fake["SEX"] == 2).to_numpy(float))
    assert y[0, 5] == 1 and y[:, 2:6].sum(1).eq(1).all()
    with pytest.raises(DatasetError, match="other columns"):
        TableEncoding.fit(real, fake.drop(columns=["AGE"]))
    bad = fake.copy()
    bad.loc[4, "WT"] = np.nan
    with pytest.raises(DatasetError, match="row 4, column WT: missing value"):
        evaluate(real, bad)


def test_heldout_nll_of_the_gaussian_baseline_is_its_entropy():
    """MVN fitted on Gaussian data (bounds off): the held-out NLL estimates the entropy ½ log det(2πeΣ)."""
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.multivariate_normal([0, 0], cov, 4000), columns=["A", "B"])
    test = pd.DataFrame(rng.multivariate_normal([0, 0], cov, 4000), columns=["A", "B"])
    gen = make_generator("mvn", bounds=None).fit(train)
    entropy = 0.5 * math.log(np.linalg.det(2 * math.pi * math.e * cov))
    assert heldout_nll(gen, test) == pytest.approx(entropy, abs=0.05)
    assert math.isnan(heldout_nll(make_generator("mvn").fit(_panel(100, 0)), _panel(100, 1)))   # discrete columns
    assert math.isnan(heldout_nll(None, test))


def test_evaluate_ranks_a_faithful_generator_above_an_independent_one():
    """Real: WT depends on SEX and AGE on WT; 'good' is another draw of the same law, 'bad' permutes each
    column independently (same marginals, no dependence)."""
    real = _panel(300, 0)
    real["AGE"] = (20 + 0.6 * (real["WT"] - 50) + np.random.default_rng(9).normal(0, 3, 300)).round()
    good = _panel(300, 1)
    good["AGE"] = (20 + 0.6 * (good["WT"] - 50) + np.random.default_rng(8).normal(0, 3, 300)).round()
    rng = np.random.default_rng(2)
    bad = pd.DataFrame({c: rng.permutation(good[c].to_numpy()) for c in good.columns})
    rg = evaluate(real, good, seed=0, n_permutations=200)
    rb = evaluate(real, bad, seed=0, n_permutations=200)
    assert rg["mmd_p_value"] > 0.01 and rb["mmd_p_value"] < 0.01
    assert rb["correlation_error"] > 3 * rg["correlation_error"]
    assert rb["c2st_accuracy"] > rg["c2st_accuracy"] + 0.1
    for key in ("energy_distance", "sliced_w2", "w2", "mmd2"):
        assert rb[key] > rg[key], key
    assert rg["ks_rejected"] == 0 and rg["tv_max"] < 0.1 and math.isnan(rg["nll"])
    assert evaluate(real, good, seed=0, n_permutations=200) == rg                 # seeded


def test_evaluate_on_tensors_and_errors():
    x, y = _normal(100, 2, 0), _normal(100, 2, 1)
    out = evaluate(x, y, seed=0, n_permutations=50)
    assert out["n_real"] == 100 and out["ks_max"] < 0.3 and math.isnan(out["tv_max"])
    with pytest.raises(ModelError, match="same columns"):
        evaluate(x, _normal(100, 3, 1))
    with pytest.raises(ModelError, match="both samples as DataFrames"):
        evaluate(pd.DataFrame(x.numpy()), y)
