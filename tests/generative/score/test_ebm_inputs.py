"""Bad input to pmxgen.generative.score: clear errors naming the row and column, or the shape, and the fix;
and the fit helper's options (early stopping, mini-batches, L-BFGS refusal, non-finite losses)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pmxgen.errors import DatasetError, EstimationError, ModelError
from pmxgen.generative.score import (
    ContrastiveDivergence,
    DenoisingScoreMatching,
    EnergyNetwork,
    GaussianEnergy,
    NoiseConditionalScoreMatching,
    NoiseConditionalScoreNetwork,
    SlicedScoreMatching,
    annealed_langevin,
    denoising_score_matching,
    explicit_score_matching,
    fit_energy,
    geometric_sigmas,
    mala,
    noise_conditional_score_matching,
    sliced_score_matching,
    ula,
)

F64 = torch.float64


def sample(n=50, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


LOSS_CALLS = {
    "explicit": lambda x: explicit_score_matching(lambda z: -z, x),
    "sliced": lambda x: sliced_score_matching(lambda z: -z, x, generator=0),
    "denoising": lambda x: denoising_score_matching(lambda z: -z, x, 0.1, generator=0),
    "noise_conditional": lambda x: noise_conditional_score_matching(lambda z, s: -z, x, [1.0, 0.1], generator=0),
    "ula": lambda x: ula(lambda z: -z, x, step_size=0.1, n_steps=2, generator=0),
    "mala": lambda x: mala(lambda z: -0.5 * (z ** 2).sum(-1), x, step_size=0.1, n_steps=2, generator=0),
    "annealed": lambda x: annealed_langevin(lambda z, s: -z, x, [1.0, 0.1], n_steps_per_level=2, generator=0),
}


@pytest.mark.parametrize("name", list(LOSS_CALLS))
def test_nan_in_a_batch_names_row_and_column(name):
    x = sample()
    x[17, 2] = float("nan")
    with pytest.raises(DatasetError, match=r"row 17, column 2") as err:
        LOSS_CALLS[name](x)
    assert err.value.row == 17 and err.value.column == "2"
    assert "impute" in str(err.value)


@pytest.mark.parametrize("name", list(LOSS_CALLS))
@pytest.mark.parametrize("shape", [(10,), (2, 5, 3), (0, 3)])
def test_wrong_batch_shapes_are_refused(name, shape):
    with pytest.raises(ModelError, match=r"\[batch, dim\]|empty"):
        LOSS_CALLS[name](torch.zeros(shape, dtype=F64))


def test_integer_batch_is_refused():
    with pytest.raises(ModelError, match="floating"):
        explicit_score_matching(lambda z: -z, torch.zeros(4, 2, dtype=torch.int64))


def test_fit_energy_names_the_row_and_column_of_a_nan():
    x = sample()
    x[4, 1] = float("inf")
    with pytest.raises(DatasetError, match=r"row 4, column 1") as err:
        fit_energy(GaussianEnergy(3), x, max_iter=1)
    assert err.value.row == 4
    frame = pd.DataFrame(sample().numpy(), columns=["WT", "AGE", "CRCL"], index=range(100, 150))
    frame.loc[123, "AGE"] = np.nan
    with pytest.raises(DatasetError, match=r"row 123, column AGE") as err:
        fit_energy(GaussianEnergy(3), frame, max_iter=1)
    assert err.value.column == "AGE" and err.value.row == 123
    with pytest.raises(DatasetError, match="numbers only"):
        fit_energy(GaussianEnergy(2), pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}), max_iter=1)


def test_fit_energy_shape_errors():
    with pytest.raises(ModelError, match="3 columns but the model has dim=2"):
        fit_energy(GaussianEnergy(2), sample(), max_iter=1)
    with pytest.raises(DatasetError, match="2-D"):
        fit_energy(GaussianEnergy(1), np.zeros(5), max_iter=1)
    with pytest.raises(DatasetError, match="empty"):
        fit_energy(GaussianEnergy(3), np.zeros((0, 3)), max_iter=1)


def test_model_and_score_shape_errors():
    x = sample()
    with pytest.raises(ModelError, match="dim=2"):
        GaussianEnergy(2).energy(x)
    with pytest.raises(ModelError, match="dim=2"):
        EnergyNetwork(2).score(x)
    with pytest.raises(ModelError, match="shape of x"):
        explicit_score_matching(lambda z: z[:, :2], x)
    with pytest.raises(ModelError, match="shape of x"):
        ula(lambda z: z.sum(-1), x, step_size=0.1, n_steps=1)
    with pytest.raises(ModelError, match="one value per row"):
        mala(lambda z: -z, x, step_size=0.1, n_steps=1)
    with pytest.raises(ModelError, match="pass sigma"):
        EnergyNetwork(3, noise_conditional=True).energy(x)
    with pytest.raises(ModelError, match="not noise-conditional"):
        EnergyNetwork(3).energy(x, 0.5)
    with pytest.raises(ModelError, match=r"tensor \[batch\]"):
        NoiseConditionalScoreNetwork(3).score(x, torch.ones(7, dtype=F64))
    with pytest.raises(ModelError, match="score\\(x\\) or an energy\\(x\\)"):
        fit_energy(torch.nn.Linear(3, 1, dtype=F64), x, loss="explicit", max_iter=1)
    with pytest.raises(ModelError, match="energy\\(x\\) method"):
        fit_energy(NoiseConditionalScoreNetwork(3), x, loss="cd", max_iter=1)


def test_bad_settings_are_refused():
    x = sample()
    with pytest.raises(ModelError, match="strictly decreasing"):
        noise_conditional_score_matching(lambda z, s: -z, x, [0.1, 1.0])
    with pytest.raises(ModelError, match="sigma_max must be > sigma_min"):
        geometric_sigmas(0.1, 1.0, 3)
    with pytest.raises(ModelError, match="projection"):
        sliced_score_matching(lambda z: -z, x, projection="uniform")
    with pytest.raises(ModelError, match="sigma must be a finite number > 0"):
        DenoisingScoreMatching(sigma=0.0)
    with pytest.raises(ModelError, match="loss must be"):
        fit_energy(GaussianEnergy(3), x, loss="hyvarinen", max_iter=1)
    with pytest.raises(ModelError, match="deterministic"):
        fit_energy(GaussianEnergy(3), x, loss=SlicedScoreMatching(), optimizer="lbfgs", max_iter=1)
    with pytest.raises(ModelError, match="activation"):
        EnergyNetwork(2, activation="relu")
    with pytest.raises(ModelError, match="sampler"):
        ContrastiveDivergence(sampler="gibbs")
    with pytest.raises(ModelError, match="step_size"):
        ula(lambda z: -z, x, step_size=-1.0, n_steps=1)
    with pytest.raises(ModelError, match="seed"):
        ula(lambda z: -z, x, step_size=0.1, n_steps=1, generator="seven")


def test_fit_energy_options():
    x = sample(200, 2)
    # fixed number of steps; same seed, same history
    a = fit_energy(GaussianEnergy(2), x, loss="sliced_vr", max_iter=30, batch_size=32, seed=4)
    b = fit_energy(GaussianEnergy(2), x, loss="sliced_vr", max_iter=30, batch_size=32, seed=4)
    assert a.n_iter == 30 and torch.equal(a.history, b.history) and a.history.dtype == F64
    # early stopping on a deterministic loss that has converged
    model = GaussianEnergy(2)
    fit = fit_energy(model, x, loss="explicit", max_iter=5000, learning_rate=0.05, schedule="constant",
                     patience=20, tol=1e-6)
    assert fit.stopped_early and fit.n_iter < 5000
    assert (model.mean - x.mean(0)).abs().max().item() < 1e-2
    # the noise ladder is taken from the data when not given (largest pairwise distance)
    loss = NoiseConditionalScoreMatching(n_levels=4, sigma_min=0.05)
    fit_energy(EnergyNetwork(2, hidden=(4,), noise_conditional=True), x, loss=loss, max_iter=2)
    assert math.isclose(loss.sigmas[0].item(), torch.cdist(x, x).max().item())
    assert loss.sigmas.shape == (4,) and math.isclose(loss.sigmas[-1].item(), 0.05)


class _Exploding(torch.nn.Module):
    """An energy whose value becomes infinite after one step."""

    def __init__(self):
        super().__init__()
        self.dim = 2
        self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))

    def score(self, x):
        return -x * torch.exp(1e3 * (self.a - 1.0)) * 1e308


def test_non_finite_loss_raises_naming_the_iteration():
    with pytest.raises(EstimationError, match="iteration 1; lower learning_rate"):
        fit_energy(_Exploding(), sample(20, 2), loss="explicit", max_iter=3)
