"""Energy-based generator (noise-conditional EBM + annealed Langevin): sample-based accuracy and the contract."""
import numpy as np
import pandas as pd
import pytest
import torch

from pmxgen.errors import ModelError
from pmxgen.generative import load_generator, make_generator, mmd2, multiscale_bandwidths
from pmxgen.generative.score import EnergyNetwork

F64 = torch.float64
CENTRES = torch.tensor([[3.0, 0.0], [-3.0, 0.0]], dtype=F64)


def _two_clusters(n, seed):
    g = torch.Generator().manual_seed(seed)
    return CENTRES[torch.arange(n) % 2] + 0.5 * torch.randn(n, 2, dtype=F64, generator=g)


@pytest.mark.parametrize("parametrisation", ["energy", "score"])
def test_ebm_samples_match_two_clusters_by_mmd(parametrisation):
    """Annealed Langevin samples of the fitted EBM: MMD² to fresh data far below the multivariate normal
    baseline's (which puts mass between the clusters), both modes populated, cluster spread right."""
    train, test = _two_clusters(1000, 0), _two_clusters(1000, 1)
    gen = make_generator("ebm", parametrisation=parametrisation, hidden=[64, 64], max_epochs=100, batch_size=100,
                         learning_rate=1e-2 if parametrisation == "score" else 3e-3, validation_fraction=0,
                         n_levels=8, n_steps_per_level=30, seed=0).fit(train)
    draws = gen.sample(1000, seed=1)
    scales = multiscale_bandwidths(test)
    model = float(mmd2(draws, test, scales))
    mvn = float(mmd2(make_generator("mvn").fit(train).sample(1000, seed=1), test, scales))
    same = float(mmd2(_two_clusters(1000, 2), test, scales))
    print(f"{parametrisation}: MMD² EBM {model:.4f}, MVN {mvn:.4f}, same density {same:.4f}")
    assert model < 0.25 * mvn
    right = float((draws[:, 0] > 0).double().mean())
    assert 0.3 < right < 0.7
    assert float((draws[:, 0].abs() - 3).abs().median()) < 0.5  # half-normal median of the truth: 0.34


def test_energy_wrapper_gives_the_score_of_the_wrapped_network():
    """The generator's score is −∇ₓ of the wrapped EnergyNetwork's energy (conditions are inputs, not noised)."""
    frame = pd.DataFrame({"X": np.linspace(-1, 1, 60), "Y": np.sin(np.linspace(0, 3, 60)),
                          "G": np.arange(60) % 2})
    gen = make_generator("ebm", hidden=[8], max_epochs=2, n_levels=3, seed=0).fit(frame, conditions=["G"])
    assert isinstance(gen.network.model, EnergyNetwork)
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    c = torch.ones(5, 1, dtype=F64)
    sigma = torch.full((5,), 0.3, dtype=F64)
    full = gen.network.model.score(torch.cat([x, c], 1), sigma)
    assert torch.allclose(gen.score(x, sigma, c), full[:, :2])
    assert gen.energy(x, 0.3, c).shape == (5,)


def test_save_load_seed_and_conditional_sampling(tmp_path):
    rng = np.random.default_rng(0)
    sex = rng.integers(1, 3, 600)
    frame = pd.DataFrame({"SEX": sex, "WT": np.exp(np.log(65) + 0.25 * (sex - 1) + 0.1 * rng.standard_normal(600)),
                          "AGE": 40 + 10 * rng.standard_normal(600)})
    gen = make_generator("ebm", parametrisation="score", hidden=[32, 32], max_epochs=60, batch_size=100,
                         learning_rate=1e-2, validation_fraction=0, n_levels=6, n_steps_per_level=20,
                         seed=2, bounds=None).fit(frame, conditions=["SEX"])
    a = gen.sample(400, conditions={"SEX": 2}, seed=3)
    pd.testing.assert_frame_equal(a, gen.sample(400, conditions={"SEX": 2}, seed=3))
    assert not a.equals(gen.sample(400, conditions={"SEX": 2}, seed=4))
    back = load_generator(gen.save(tmp_path / "ebm.safetensors"))
    assert torch.equal(back.network.sigmas, gen.network.sigmas)
    pd.testing.assert_frame_equal(back.sample(400, conditions={"SEX": 2}, seed=3), a)
    women = gen.sample(400, conditions={"SEX": 1}, seed=3)
    assert 1.1 < a["WT"].median() / women["WT"].median() < 1.5  # truth exp(0.25) = 1.28
    with pytest.raises(ModelError, match="no tractable log density"):
        gen.log_prob(frame)
    with pytest.raises(ModelError, match="parametrisation must be"):
        make_generator("ebm", parametrisation="flow").fit(frame)
