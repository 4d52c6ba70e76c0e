"""NPDE and NPD: exact against closed forms, N(0, 1) under the true model, not under misspecified ones.

Measured with the seeds below (1100 NPDE, 1000 replicates): true model KS p = 0.37 (mean 0.029,
variance 1.02, global p = 1); CL x 2: KS p = 3e-79; additive error SD 0.1 instead of the true
combined error: KS p = 2e-12; additive SD 0.2: KS p = 0.14, global p = 7e-8.
`python tests/diagnostics/npde_vpc_calibration.py` repeats this over 20 simulated studies.
"""
import numpy as np
import pandas as pd
import pytest
import torch
from truth_model import TRUTH, values_of
from scipy import stats

import pmxgen
from pmxgen.diagnostics import compute_npde, npde_from_simulations, simulate_replicates
from pmxgen.errors import ModelError


def test_npde_equal_exact_whitened_residuals_for_known_gaussian():
    """Simulations from N(m, V): NPDE -> L⁻¹(y − m) with V = L Lᵀ, NPD -> (y − m)/sd (closed forms)."""
    rng = np.random.default_rng(4)
    n, j, k = 30, 3, 40000
    a = rng.normal(size=(n, j, j))
    cov = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(j)
    mean = rng.normal(size=(n, j))
    chol = np.linalg.cholesky(cov)
    y = mean + np.einsum("nij,nj->ni", chol, rng.standard_normal((n, j)))
    sims = mean + np.einsum("nij,knj->kni", chol, rng.standard_normal((k, n, j)))
    r = npde_from_simulations(y, sims, np.ones((n, j), bool))
    exact_npde = np.linalg.solve(chol, (y - mean)[..., None])[..., 0]
    exact_npd = (y - mean) / np.sqrt(np.einsum("nii->ni", cov))
    inner = np.abs(exact_npde) < 2.5
    assert np.abs(r.npde - exact_npde)[inner].max() < 0.06
    assert np.abs(r.npd - exact_npd)[np.abs(exact_npd) < 2.5].max() < 0.06
    # pde/pd and boundaries as in the npde package
    assert np.allclose(r.pde, stats.norm.cdf(r.npde)) and r.pde.min() >= 1 / (2 * k)


def test_boundaries_follow_the_npde_package():
    sims = np.zeros((10, 1, 2))
    sims[:, 0, 0] = np.arange(10.0)
    sims[:, 0, 1] = np.arange(10.0) * 2
    r = npde_from_simulations(np.array([[-5.0, 100.0]]), sims, np.ones((1, 2), bool))
    assert r.pd[0].tolist() == [1 / 20, 1 - 1 / 20]
    assert np.allclose(r.npd[0], stats.norm.ppf([1 / 20, 1 - 1 / 20]))


def test_true_model_gives_standard_normal_npde(known_truth):
    model, values, data = known_truth
    r = compute_npde(model, values, data, n_simulations=1000, seed=1)
    t = r.tests()
    assert t["n"] == data.n_observations == 1100
    assert t["ks_p"] > 0.01, t
    assert t["mean_p"] > 0.01 and t["variance_p"] > 0.01, t
    assert abs(t["mean"]) < 0.1 and abs(t["variance"] - 1) < 0.1
    assert stats.kstest(r.values("npd"), "norm").pvalue > 0.01


@pytest.mark.parametrize("wrong, sd, test", [("clearance", None, "ks_p"), ("error model", 0.1, "ks_p"),
                                             ("error model", 0.2, "global_p")])
def test_misspecified_model_is_detected(known_truth, wrong, sd, test):
    """CL x 2, or additive error instead of the true combined error. With additive SD 0.2 the NPDE
    variance is 1 (0.998) and KS misses the wrong shape (p = 0.14); the npde package's global
    test (Shapiro-Wilk part) finds it (p = 7e-8)."""
    model, values, data = known_truth
    if wrong == "clearance":
        model_w, values_w = model, values_of(model, dict(TRUTH, CL=2 * TRUTH["CL"]))
    else:
        model_w = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL", "V"))
        values_w = values_of(model_w, {**{k: v for k, v in TRUTH.items() if not k.startswith("SIGMA")},
                                       "SIGMA(ADD)": sd ** 2})
    t = compute_npde(model_w, values_w, data, n_simulations=1000, seed=1).tests()
    assert t[test] < 1e-6 and t["global_p"] < 1e-6, t


def test_same_seed_same_npde_and_shared_simulations(known_truth):
    model, values, data = known_truth
    small = data.subset(data.ids[:10])
    a = compute_npde(model, values, small, n_simulations=200, seed=5)
    b = compute_npde(model, values, small, n_simulations=200, seed=5)
    c = compute_npde(model, values, small, simulated=simulate_replicates(model, values, small, 200, seed=5))
    assert np.array_equal(a.npde, b.npde, equal_nan=True) and np.array_equal(a.npde, c.npde, equal_nan=True)
    assert not np.array_equal(a.npde, compute_npde(model, values, small, n_simulations=200, seed=6).npde,
                              equal_nan=True)


def test_chunked_simulations_are_reproducible_replicates(known_truth):
    """Chunks draw their random numbers in another order (the numbers depend on ``max_elements``),
    but each chunking is reproducible and gives replicates of the same distribution."""
    model, values, data = known_truth
    small = data.subset(data.ids[:5])
    whole = simulate_replicates(model, values, small, 400, seed=2)
    chunked = simulate_replicates(model, values, small, 400, seed=2, max_elements=5 * 11 * 7)
    assert whole.shape == chunked.shape == (400, 5, 11)
    assert torch.equal(chunked, simulate_replicates(model, values, small, 400, seed=2, max_elements=5 * 11 * 7))
    for i in range(5):   # same distribution per subject and sample time (two-sample KS)
        assert stats.ks_2samp(whole[:, i, 5].numpy(), chunked[:, i, 5].numpy()).pvalue > 1e-3


def test_blq_observations_get_nan_and_are_counted(known_truth):
    model, values, data = known_truth
    frame = data.subset(data.ids[:20]).to_frame()
    obs = frame["EVID"] == 0
    frame["BLQ"] = (obs & (frame["DV"] < 0.3)).astype(int)
    frame["LLOQ"] = np.where(obs, 0.3, np.nan)
    censored = pmxgen.read_nonmem(frame)
    n_blq = int(frame["BLQ"].sum())
    assert censored.n_blq == n_blq > 0
    r = compute_npde(model, values, censored, n_simulations=300, seed=0)
    assert r.n_blq == n_blq
    assert int(np.isfinite(r.npde).sum()) == censored.n_observations - n_blq
    blq = censored.batch.obs.blq.numpy()
    assert np.isnan(r.npde[blq]).all() and np.isnan(r.npd[blq]).all()


def test_too_few_simulations_and_bad_shapes_are_errors(known_truth):
    model, values, data = known_truth
    with pytest.raises(ModelError, match="cannot decorrelate a subject with 11 observations"):
        compute_npde(model, values, data.subset(data.ids[:3]), n_simulations=8, seed=0)
    with pytest.raises(ModelError, match="observed \\[N, J\\], simulated \\[K, N, J\\]"):
        npde_from_simulations(np.zeros((2, 3)), np.zeros((10, 2, 4)), np.ones((2, 3), bool))
    with pytest.raises(ModelError, match="whole number"):
        simulate_replicates(model, values, data, 0)


def test_normality_tests_match_scipy():
    from pmxgen.diagnostics import normality_tests
    v = np.random.default_rng(3).normal(0.1, 1.2, 500)
    t = normality_tests(v)
    assert t["ks_p"] == pytest.approx(stats.kstest(v, "norm").pvalue)
    assert t["mean_p"] == pytest.approx(stats.ttest_1samp(v, 0).pvalue)
    chi2 = 499 * v.var(ddof=1)
    assert t["variance_p"] == pytest.approx(2 * stats.chi2.sf(chi2, 499))
    assert pd.isna(normality_tests([1.0])["ks_p"])
