"""Gaussian copula with empirical marginals: exact marginals and score correlation, conditioning
(against a Gaussian closed form and against rejection from the joint copula), save/load, seeds."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from pmxgen.errors import ModelError
from pmxgen.generative import GaussianCopulaGenerator, load_generator, make_generator


def _panel(n=400, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([0, 0, 0], [[1, 0.7, -0.3], [0.7, 1, 0.2], [-0.3, 0.2, 1]], size=n)
    return pd.DataFrame({
        "WT": np.exp(np.log(70) + 0.25 * z[:, 0]),                    # positive, skewed
        "FRAC": stats.norm.cdf(z[:, 1]) ** 2,                          # in (0, 1)
        "AGE": np.round(45 + 12 * z[:, 2]).clip(18, 90).astype(int),   # integer, ties
        "SEX": np.where(z[:, 1] + 0.3 * rng.standard_normal(n) > 0.2, "M", "F"),
        "RACE": rng.choice(["A", "B", "C"], n, p=[0.6, 0.3, 0.1]),
    })


def test_marginals_reproduce_the_data_quantiles():
    frame = _panel()
    n = len(frame)
    gen = make_generator("gaussian_copula", bounds={"FRAC": (0, 1)}).fit(frame)
    assert gen.status_ == "converged"
    # exact: the quantile function at k/(n+1) is the k-th order statistic
    q = gen.marginal_quantiles(np.arange(1, n + 1) / (n + 1))
    np.testing.assert_allclose(q["WT"], np.sort(frame["WT"]), rtol=1e-12)
    np.testing.assert_allclose(q["FRAC"], np.sort(frame["FRAC"]), rtol=1e-10)
    np.testing.assert_array_equal(q["AGE"], np.sort(frame["AGE"]))
    # a large sample: its quantiles are the data's (Weibull plotting positions, as numpy's method="weibull")
    draws = gen.sample(40000, seed=3)
    for col in ("WT", "FRAC"):
        p = np.linspace(0.05, 0.95, 19)
        got, want = np.quantile(draws[col], p), np.quantile(frame[col], p, method="weibull")
        iqr = np.subtract(*np.quantile(frame[col], [0.75, 0.25]))
        assert np.abs(got - want).max() < 0.03 * iqr, col
        assert draws[col].between(frame[col].min(), frame[col].max()).all()
    assert ((draws["FRAC"] > 0) & (draws["FRAC"] < 1)).all()
    assert (draws["AGE"] == draws["AGE"].round()).all() and draws["AGE"].between(18, 90).all()
    # discrete shares: exact in expectation (distributional transform), so within Monte Carlo error
    for col in ("SEX", "RACE"):
        want = frame[col].value_counts(normalize=True)
        got = draws[col].value_counts(normalize=True).reindex(want.index, fill_value=0)
        assert np.abs(got - want).max() < 4 * math.sqrt(0.25 / 40000), col
    assert set(draws["RACE"]) <= {"A", "B", "C"} and list(draws.columns) == list(frame.columns)


def test_tied_values_come_back_exactly(tmp_path):
    """A positive column with heavy ties (as diabetes' S4): generated values on an order statistic are
    the data value itself (not exp(log(v)) with roundoff), so the tie shares are kept (KS small)."""
    rng = np.random.default_rng(2)
    n = 400
    frame = pd.DataFrame({"S4": rng.choice([2.0, 3.0, 4.0, 4.5, 9.09], n, p=[0.1, 0.4, 0.3, 0.1, 0.1]),
                          "X": rng.gamma(3.0, size=n)})
    gen = make_generator("gaussian_copula").fit(frame)
    draws = gen.sample(20000, seed=0)
    for v in (2.0, 3.0, 4.0, 9.09):
        share = (frame["S4"] == v).mean()
        # interpolation between two tied runs gives a few values in between: at most 1/(n+1) per boundary
        assert abs((draws["S4"] == v).mean() - share) < 4 * math.sqrt(share * (1 - share) / 20000) + 2 / (n + 1), v
    assert stats.ks_2samp(draws["S4"], frame["S4"]).statistic < 0.03
    back = load_generator(gen.save(tmp_path / "g.safetensors"))
    pd.testing.assert_frame_equal(back.sample(50, seed=3), gen.sample(50, seed=3))


def test_normal_score_correlation_equals_the_sample_one():
    frame = _panel()[["WT", "FRAC", "AGE"]]
    n = len(frame)
    gen = GaussianCopulaGenerator().fit(frame)
    scores = stats.norm.ppf(np.column_stack([stats.rankdata(frame[c]) for c in frame]) / (n + 1))
    np.testing.assert_allclose(gen.correlation_.to_numpy(), np.corrcoef(scores.T), atol=1e-9)
    # and the generated rows carry it: their own normal-score correlation is R within sampling error
    draws = gen.sample(20000, seed=1)
    m = len(draws)
    drawn = stats.norm.ppf(np.column_stack([stats.rankdata(draws[c]) for c in frame]) / (m + 1))
    assert np.abs(np.corrcoef(drawn.T) - np.corrcoef(scores.T)).max() < 0.03


def _latent_truth(n, seed, rho=0.6):
    """WT log-normal from z1, HT normal from z2, SEX = 2 where z2 > 0.3."""
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    return pd.DataFrame({"WT": np.exp(4.2 + 0.2 * z[:, 0]), "SEX": 1 + (z[:, 1] > 0.3).astype(int),
                         "HT": 170 + 10 * z[:, 1]})


def _rejection(gen_joint, n, seed, **given):
    """Draws of the unconditional copula kept where the columns equal ``given`` (an independent
    route to the copula's conditional distribution)."""
    draws = gen_joint.sample(n, seed=seed)
    keep = np.ones(len(draws), dtype=bool)
    for k, v in given.items():
        keep &= (draws[k] == v).to_numpy()
    return draws[keep]


def test_conditioning_on_a_discrete_column_is_the_copula_conditional():
    """The truncated-normal conditional sampler agrees with rejection from the joint copula (same
    fitted R and marginals), and with the data's conditional mean to within the copula's known bias."""
    frame = _latent_truth(4000, 5)[["WT", "SEX"]]
    joint = make_generator("gaussian_copula", seed=3).fit(frame)
    cond = make_generator("gaussian_copula", seed=3).fit(frame, conditions=["SEX"])
    pd.testing.assert_frame_equal(joint.correlation_, cond.correlation_)
    for sex in (1, 2):
        draws = cond.sample(20000, conditions={"SEX": sex}, seed=sex)
        assert (draws["SEX"] == sex).all() and list(draws.columns) == ["WT", "SEX"]
        ref = np.log(_rejection(joint, 60000, 10 + sex, SEX=sex)["WT"])
        got = np.log(draws["WT"])
        se = math.sqrt(got.var() / len(got) + ref.var() / len(ref))
        assert abs(got.mean() - ref.mean()) < 4 * se, sex
        assert stats.ks_2samp(got, ref).pvalue > 1e-3
        # and the truth: with the latent (polyserial) correlation the copula is the generating model,
        # E[log WT | SEX=2] = 4.2 + 0.2·ρ·φ(0.3)/(1 − Φ(0.3)), E[log WT | SEX=1] = 4.2 − 0.2·ρ·φ(0.3)/Φ(0.3)
        truth = 4.2 + 0.2 * 0.6 * stats.norm.pdf(0.3) * (1 / stats.norm.sf(0.3) if sex == 2 else -1 / stats.norm.cdf(0.3))
        assert got.mean() == pytest.approx(truth, abs=0.012)
    # a DataFrame of per-row conditions works too
    rows = pd.DataFrame({"SEX": [1, 2] * 50})
    out = cond.sample(100, conditions=rows, seed=0)
    assert (out["SEX"].to_numpy() == rows["SEX"].to_numpy()).all()


def test_latent_correlations_of_discrete_columns():
    """Polyserial (binary with continuous) and polychoric (binary with binary) estimates recover the
    latent correlations of a threshold model; the plain score correlation is attenuated."""
    rng = np.random.default_rng(11)
    cov = [[1, 0.6, 0.4], [0.6, 1, 0.3], [0.4, 0.3, 1]]
    z = rng.multivariate_normal([0, 0, 0], cov, size=5000)
    data = pd.DataFrame({"X": z[:, 0], "A": (z[:, 1] > 0).astype(int), "B": (z[:, 2] > 0.5).astype(int)})
    r = make_generator("gaussian_copula", bounds=None).fit(data).correlation_
    for (i, j), rho in {("X", "A"): 0.6, ("X", "B"): 0.4, ("A", "B"): 0.3}.items():
        assert r.loc[i, j] == pytest.approx(rho, abs=0.05), (i, j)
    plain = make_generator("gaussian_copula", bounds=None, discrete_correlation="scores").fit(data).correlation_
    # the bivariate normal probabilities behind the polychoric estimate, against scipy's
    from pmxgen.generative.copula import _bvn_upper
    for a, b, rho in ((0.3, -0.5, 0.6), (1.2, 0.4, -0.8), (0.0, 0.0, 0.99)):
        ref = stats.multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf([-a, -b])
        assert _bvn_upper(np.array([a]), np.array([b]), rho)[0] == pytest.approx(ref, abs=1e-6)
    assert plain.loc["X", "A"] < r.loc["X", "A"] - 0.05 and plain.loc["A", "B"] < r.loc["A", "B"]


def test_conditioning_on_a_continuous_column_and_on_two_discrete_ones():
    rho = 0.6
    frame = _latent_truth(4000, 6, rho)
    # continuous condition HT = 180 (z2 = 1): for Gaussian scores the conditional is the Gaussian one,
    # E[log WT] = 4.2 + 0.2·ρ·1 and sd 0.2·sqrt(1 − ρ²)
    gen = make_generator("gaussian_copula").fit(frame[["WT", "HT"]], conditions=["HT"])
    logwt = np.log(gen.sample(20000, conditions={"HT": 180.0}, seed=4)["WT"])
    assert logwt.mean() == pytest.approx(4.2 + 0.2 * rho, abs=0.015)
    assert logwt.std() == pytest.approx(0.2 * math.sqrt(1 - rho ** 2), rel=0.06)
    # two discrete conditions (Gibbs sweeps over their truncated scores) against rejection from the joint
    rng = np.random.default_rng(9)
    cov = [[1, 0.6, 0.4], [0.6, 1, 0.3], [0.4, 0.3, 1]]
    z = rng.multivariate_normal([0, 0, 0], cov, size=4000)
    data = pd.DataFrame({"X": z[:, 0], "A": (z[:, 1] > 0).astype(int), "B": (z[:, 2] > 0.5).astype(int)})
    cond = make_generator("gaussian_copula", bounds=None).fit(data, conditions=["A", "B"])
    joint = make_generator("gaussian_copula", bounds=None).fit(data)
    for a, b in ((1, 1), (0, 1), (0, 0)):
        got = cond.sample(20000, conditions={"A": a, "B": b}, seed=5)["X"]
        ref = _rejection(joint, 100000, 6, A=a, B=b)["X"]
        se = math.sqrt(got.var() / len(got) + ref.var() / len(ref))
        assert abs(got.mean() - ref.mean()) < 4 * se, (a, b)


def test_save_load_seeds_and_errors(tmp_path):
    frame = _panel(200)
    gen = make_generator("gaussian_copula", seed=2, bounds={"FRAC": (0, 1)}).fit(frame, conditions=["SEX"])
    path = gen.save(tmp_path / "copula.safetensors")
    back = load_generator(path)
    assert isinstance(back, GaussianCopulaGenerator)
    cond = pd.DataFrame({"SEX": ["F", "M"] * 150})
    pd.testing.assert_frame_equal(back.sample(300, conditions=cond, seed=9), gen.sample(300, conditions=cond, seed=9))
    pd.testing.assert_frame_equal(back.correlation_, gen.correlation_)
    pd.testing.assert_frame_equal(gen.sample(50, conditions={"SEX": "M"}, seed=1),
                                  gen.sample(50, conditions={"SEX": "M"}, seed=1))
    assert not gen.sample(50, conditions={"SEX": "M"}, seed=1).equals(gen.sample(50, conditions={"SEX": "M"}, seed=2))
    # unconditional arrays and tensors
    x = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g2 = make_generator("gaussian_copula").fit(x)
    assert g2.sample(10, seed=0).shape == (10, 2)
    with pytest.raises(ModelError, match="gibbs_sweeps"):
        make_generator("gaussian_copula", gibbs_sweeps=0).fit(x)
    dup = pd.DataFrame({"A": np.arange(10.0) + 1, "B": np.arange(10.0) + 1})
    with pytest.warns(Warning, match="singular"):
        assert make_generator("gaussian_copula", jitter=0).fit(dup).status_ == "failed"
