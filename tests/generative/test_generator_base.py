"""The Generator interface: typed columns, bounds, conditions, log_prob in data units, save/load, statuses."""
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import pmxgen
from pmxgen.errors import ConvergenceWarning, DatasetError, ModelError
from pmxgen.generative import Generator, TabularSchema, load_generator, make_generator
from pmxgen.generative.generator import GENERATORS


def _panel(n=600, seed=0):
    rng = np.random.default_rng(seed)
    sex = rng.integers(0, 2, n)
    log_wt = np.log(70) + 0.15 * sex + 0.2 * rng.standard_normal(n)
    frac = 1 / (1 + np.exp(-(0.5 * rng.standard_normal(n) + 0.3 * (log_wt - np.log(70)))))
    race = rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2])
    return pd.DataFrame({"WT": np.exp(log_wt), "SEX": sex + 1, "FRAC": frac, "RACE": race,
                         "AGE": rng.integers(18, 80, n)})


def test_mixed_table_respects_bounds_levels_and_integers():
    frame = _panel()
    gen = make_generator("mvn", bounds={"FRAC": (0, 1)}).fit(frame)
    schema = gen.transform_.schema
    assert [c.kind for c in schema.columns] == ["continuous", "binary", "continuous", "categorical", "continuous"]
    assert schema["WT"].lower == 0 and schema["FRAC"].upper == 1 and schema["AGE"].integer
    draws = gen.sample(5000, seed=3)
    assert list(draws.columns) == list(frame.columns)
    assert (draws["WT"] > 0).all() and ((draws["FRAC"] > 0) & (draws["FRAC"] < 1)).all()
    assert set(draws["SEX"]) == {1, 2} and set(draws["RACE"]) <= {"A", "B", "C"}
    assert (draws["AGE"] == draws["AGE"].round()).all()
    # category shares follow the data (Gaussian on one-hot midpoints keeps the argmax shares close)
    share = draws["RACE"].value_counts(normalize=True)
    assert abs(share["A"] - (frame["RACE"] == "A").mean()) < 0.1
    # the SEX effect on weight is kept
    assert draws.groupby("SEX")["WT"].median().diff().iloc[-1] > 3


def test_missing_value_and_bound_violations_name_row_and_column():
    frame = _panel(50)
    frame.loc[7, "FRAC"] = np.nan
    with pytest.raises(DatasetError, match=r"row 7, column FRAC: missing value"):
        make_generator("mvn").fit(frame, source="panel.csv")
    frame = _panel(50)
    frame.loc[3, "FRAC"] = 1.0
    with pytest.raises(DatasetError, match=r"row 3, column FRAC.*bound 1.0.*found 1.0"):
        make_generator("mvn", bounds={"FRAC": (0, 1)}).fit(frame)
    with pytest.raises(DatasetError, match="column 'nope'"):
        make_generator("mvn", bounds={"nope": (0, None)}).fit(frame)


def test_log_prob_is_a_density_in_data_units():
    """Log-normal WT and logit-normal FRAC: the MVN's log_prob equals scipy's density of the
    transformed variables times the Jacobians, with the maximum-likelihood moments."""
    frame = _panel()[["WT", "FRAC"]]
    gen = make_generator("mvn", bounds={"FRAC": (0, 1)}).fit(frame)
    u = np.column_stack([np.log(frame["WT"]), np.log(frame["FRAC"] / (1 - frame["FRAC"]))])
    ref = stats.multivariate_normal(u.mean(0), np.cov(u.T, bias=True))
    expected = ref.logpdf(u) - np.log(frame["WT"]) - np.log(frame["FRAC"] * (1 - frame["FRAC"]))
    got = gen.log_prob(frame).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-7)
    with pytest.raises(ModelError, match="every modelled column is continuous"):
        make_generator("mvn").fit(_panel()[["WT", "SEX"]]).log_prob(_panel()[["WT", "SEX"]])


def test_conditional_gaussian_is_exact():
    """Conditioning on a column of a joint Gaussian: generated conditional mean and variance match
    the closed form E[x|c] = μx + Σxc/Σcc (c − μc), Var = Σxx − Σxc²/Σcc."""
    g = torch.Generator().manual_seed(1)
    joint = torch.randn(4000, 2, dtype=torch.float64, generator=g) @ torch.tensor([[1.0, 0.6], [0.0, 0.8]],
                                                                                   dtype=torch.float64)
    frame = pd.DataFrame(joint.numpy(), columns=["X", "C"])
    gen = make_generator("mvn", bounds=None).fit(frame, conditions=["C"])
    draws = gen.sample(20000, conditions={"C": 1.5}, seed=0)
    assert (draws["C"] == 1.5).all()
    m, cov = joint.mean(0).numpy(), np.cov(joint.numpy().T, bias=True)
    mean = m[0] + cov[0, 1] / cov[1, 1] * (1.5 - m[1])
    var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    assert abs(draws["X"].mean() - mean) < 4 * math.sqrt(var / 20000)
    assert abs(draws["X"].var() / var - 1) < 0.05
    lp = gen.log_prob(pd.DataFrame({"X": [0.3], "C": [1.5]}))
    assert float(lp[0]) == pytest.approx(stats.norm(mean, math.sqrt(var)).logpdf(0.3), rel=1e-8)
    with pytest.raises(ModelError, match="conditional on"):
        gen.sample(10)


def test_save_load_round_trip_and_unsafe_files_refused(tmp_path):
    frame = _panel(300)
    gen = make_generator("mvn", seed=4).fit(frame)
    path = gen.save(tmp_path / "vpop.safetensors")
    back = load_generator(path)
    pd.testing.assert_frame_equal(back.sample(200, seed=9), gen.sample(200, seed=9))
    assert back.get_params() == {**gen.get_params(), "device": None}
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ModelError, match="not a generator file"):
        load_generator(evil)
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="without a pmxgen generator header"):
        load_generator(tmp_path / "other.safetensors")


def test_same_seed_same_draws_and_chunks_bounded():
    frame = _panel(200)
    gen = make_generator("mvn").fit(frame)
    pd.testing.assert_frame_equal(gen.sample(100, seed=5), gen.sample(100, seed=5))
    assert not gen.sample(100, seed=5).equals(gen.sample(100, seed=6))
    sizes = [len(chunk) for chunk in gen.sample_chunks(2500, chunk_size=1000, seed=1)]
    assert sizes == [1000, 1000, 500]


class _DiagonalGaussian(Generator):
    """A Gaussian with learnt mean and log-sd, trained by the default minibatch trainer."""

    name = "test_diagonal_gaussian"
    tractable_log_prob = True

    def _build(self, dim, cond_dim):
        module = torch.nn.Module()
        module.loc = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        module.log_sd = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        return module

    def _log_prob(self, x, c):
        sd = self.network.log_sd.exp()
        return (-0.5 * ((x - self.network.loc) / sd) ** 2 - self.network.log_sd - 0.5 * math.log(2 * math.pi)).sum(1)

    def _loss(self, x, c):
        return -self._log_prob(x, c).mean()

    def _sample(self, n, c, generator):
        z = torch.randn(n, self.transform_.dim, generator=generator, dtype=torch.float64)
        return self.network.loc + z * self.network.log_sd.exp()


def test_default_trainer_statuses_are_earned():
    x = torch.randn(400, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3 + 5
    fitted = _DiagonalGaussian(max_epochs=400, learning_rate=0.05, patience=10).fit(x)
    assert fitted.status_ == "converged" and "did not improve" in fitted.message_
    assert float(fitted.log_prob(x).mean()) == pytest.approx(
        float(torch.distributions.Normal(x.mean(0), x.std(0)).log_prob(x).sum(1).mean()), abs=0.02)
    short = _DiagonalGaussian(max_epochs=2, learning_rate=0.05).fit(x)
    assert short.status_ == "max_iterations"
    broken = _DiagonalGaussian(max_epochs=5, learning_rate=1e300)
    with pytest.warns(ConvergenceWarning, match="loss became"):
        broken.fit(x)
    assert broken.status_ == "failed"
    with pytest.raises(ModelError, match="failed to train"):
        broken.sample(3)


def test_registry_and_hyperparameters():
    assert "mvn" in pmxgen.generative.generator_names()
    assert "test_diagonal_gaussian" not in GENERATORS
    gen = make_generator("mvn", seed=3)
    assert gen.get_params()["seed"] == 3 and "jitter" in gen.get_params()
    with pytest.raises(ModelError, match="no hyperparameter"):
        gen.set_params(nope=1)
    with pytest.raises(ModelError, match="unknown generator 'nope'"):
        make_generator("nope")
    with pytest.raises(ModelError, match="invalid learning_rate"):
        make_generator("mvn", learning_rate=-1).fit(_panel(20))


def test_schema_json_round_trip():
    schema = TabularSchema.infer(_panel(40))
    assert TabularSchema.from_json(schema.to_json()) == schema
