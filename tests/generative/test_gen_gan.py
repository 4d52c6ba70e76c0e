"""GAN and WGAN-GP generators: the gradient penalty by hand, 8 Gaussians against the MVN baseline,
early stopping keeps the best held-out MMD, conditions, save/load, seeds, honest failure."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pmxgen.errors import ConvergenceWarning, ModelError
from pmxgen.generative import load_generator, make_generator, mmd2, multiscale_bandwidths, sample_toy
from pmxgen.generative.gan import GANGenerator, WGANGPGenerator, gradient_penalty

F64 = torch.float64
# 8 Gaussians (pmxgen.generative.toy): centres 4·(unit circle)/1.414, sd 0.5/1.414
CENTRES = 4 / 1.414 * torch.tensor([(1, 0), (-1, 0), (0, 1), (0, -1)] + [(a / math.sqrt(2), b / math.sqrt(2))
                                    for a in (1, -1) for b in (1, -1)], dtype=F64)
SD = 0.5 / 1.414


def mode_counts(draws: torch.Tensor) -> torch.Tensor:
    """Draws within 3 sd of each of the 8 centres (the balls do not overlap)."""
    d = torch.cdist(draws, CENTRES)
    near = d.min(1).values < 3 * SD
    return torch.bincount(d.argmin(1)[near], minlength=8)


def toy_scores(gen, n=2000):
    """(MMD² of the generator, MMD² of the MVN baseline) to held-out 8-Gaussian data, and the mode counts."""
    train = sample_toy("8gaussians", 2000, seed=0)
    test = sample_toy("8gaussians", n, seed=1)
    bw = multiscale_bandwidths(test)
    draws = gen.sample(n, seed=3)
    mvn = make_generator("mvn").fit(train).sample(n, seed=3)
    return float(mmd2(draws, test, bw)), float(mmd2(mvn, test, bw)), mode_counts(draws)


def test_gradient_penalty_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(6, 3, dtype=F64, generator=g), torch.randn(6, 3, dtype=F64, generator=g)
    c = torch.randn(6, 2, dtype=F64, generator=g)
    # linear critic on [x, c]: ∇ₓD = w_x everywhere, so the penalty is λ(‖w_x‖ − 1)² whatever ε and c are
    critic = torch.nn.Linear(5, 1).double()
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[2.0, -1.0, 2.0, 7.0, -5.0]]))
    gp = gradient_penalty(critic, real, fake, c, weight=10.0, generator=g)
    assert float(gp.detach()) == pytest.approx(10.0 * (3.0 - 1.0) ** 2, rel=1e-12)
    # and its gradient in the weights is the hand derivative 2λ(‖w_x‖ − 1) w_x/‖w_x‖ (0 for the c part)
    gp.backward()
    hand = 2 * 10.0 * (3.0 - 1.0) * torch.tensor([2.0, -1.0, 2.0, 0.0, 0.0], dtype=F64) / 3.0
    torch.testing.assert_close(critic.weight.grad[0], hand, rtol=1e-12, atol=1e-12)
    # quadratic critic ½‖x‖²: ∇ = x̂ = ε x + (1 − ε) x̃ at the given ε
    eps = torch.linspace(0, 1, 6, dtype=F64)
    x_hat = eps[:, None] * real + (1 - eps[:, None]) * fake
    expected = 2.5 * ((x_hat.norm(dim=1) - 1) ** 2).mean()
    got = gradient_penalty(lambda v: 0.5 * (v ** 2).sum(1), real, fake, weight=2.5, eps=eps)
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("family, params", [
    ("gan", dict(max_epochs=30, batch_size=128, learning_rate=1e-3, patience=30)),
    ("wgan_gp", dict(max_epochs=50, batch_size=128, learning_rate=1e-3, critic_steps=2, patience=50)),
])
def test_eight_gaussians_beat_the_mvn_and_cover_every_mode(family, params):
    """Held-out MMD² well below the MVN's (measured ≈ 0.01 against 0.10) and all 8 modes covered."""
    x = sample_toy("8gaussians", 2000, seed=0)
    gen = make_generator(family, seed=0, **params).fit(x)
    assert gen.status_ in ("converged", "max_iterations") and "held-out MMD²" in gen.message_
    ours, mvn, counts = toy_scores(gen)
    print(family, "MMD²", ours, "MVN", mvn, "modes", counts.tolist(), gen.message_)
    assert ours < 0.3 * mvn, (ours, mvn)
    assert (counts >= 100).all(), counts.tolist()            # 250 expected per mode
    assert counts.sum() >= 0.7 * 2000                          # most draws near a centre (MVN: ≈ 40 %)


def test_early_stopping_keeps_the_state_with_the_best_held_out_mmd():
    x = sample_toy("8gaussians", 600, seed=4)
    gen = GANGenerator(hidden=32, max_epochs=60, batch_size=100, learning_rate=3e-3, patience=4, seed=2).fit(x)
    assert gen.status_ == "converged" and "did not improve for 4 evaluations" in gen.message_
    scores = [h["validation"] for h in gen.history_]
    assert len(scores) < 60 and int(np.argmin(scores)) == len(scores) - 5
    encoded = gen.transform_.encode(pd.DataFrame(x.numpy(), columns=list(gen.transform_.modelled)))
    x_train, _, x_val, _ = gen._split(encoded, None)
    again = gen._heldout_mmd(x_val, None, multiscale_bandwidths(x_train, factors=gen.eval_bandwidth_factors))
    assert again == pytest.approx(min(scores), rel=1e-10, abs=1e-14)


def _two_groups(n=800, seed=0):
    rng = np.random.default_rng(seed)
    sex = rng.integers(0, 2, n)
    x = 3.0 * sex - 1.5 + 0.5 * rng.standard_normal(n)
    return pd.DataFrame({"SEX": sex, "X": x, "Y": 0.8 * x + 0.3 * rng.standard_normal(n)})


@pytest.mark.parametrize("cls", [GANGenerator, WGANGPGenerator])
def test_conditional_save_load_and_seeds(cls, tmp_path):
    frame = _two_groups()
    gen = cls(hidden=32, max_epochs=15, batch_size=100, learning_rate=2e-3, critic_steps=1, seed=1,
              bounds=None).fit(frame, conditions=["SEX"])
    one, zero = gen.sample(400, conditions={"SEX": 1}, seed=5), gen.sample(400, conditions={"SEX": 0}, seed=5)
    assert (one["SEX"] == 1).all() and (zero["SEX"] == 0).all() and list(one.columns) == ["SEX", "X", "Y"]
    assert one["X"].mean() - zero["X"].mean() > 1.5                      # 3.0 in the data
    back = load_generator(gen.save(tmp_path / "g.safetensors"))
    assert type(back) is cls and back.get_params() == {**gen.get_params(), "device": None}
    pd.testing.assert_frame_equal(back.sample(50, conditions={"SEX": 1}, seed=7),
                                  gen.sample(50, conditions={"SEX": 1}, seed=7))
    assert not gen.sample(50, conditions={"SEX": 1}, seed=8).equals(gen.sample(50, conditions={"SEX": 1}, seed=7))
    again = cls(hidden=32, max_epochs=15, batch_size=100, learning_rate=2e-3, critic_steps=1, seed=1,
                bounds=None).fit(frame, conditions=["SEX"])
    pd.testing.assert_frame_equal(again.sample(50, conditions={"SEX": 0}, seed=5), gen.sample(50, conditions={"SEX": 0}, seed=5))
    with pytest.raises(ModelError, match="no tractable log density"):
        gen.log_prob(frame)


def test_failure_is_reported_not_hidden():
    x = sample_toy("8gaussians", 300, seed=0)
    broken = WGANGPGenerator(hidden=8, max_epochs=5, batch_size=100, learning_rate=1e300)
    with pytest.warns(ConvergenceWarning, match="non-finite"):
        broken.fit(x)
    assert broken.status_ == "failed"
    with pytest.raises(ModelError, match="failed to train"):
        broken.sample(3)
    with pytest.raises(ModelError, match="invalid critic_steps"):
        WGANGPGenerator(critic_steps=0).fit(x)
