"""Latent neural-SDE population models: exact checks against Kalman filters and closed forms.

References: ``latent_sde_helpers.ou_kalman`` (Kalman filter of the OU model, exact transitions or
the Euler chain of the DLGM) and ``ExactOUPosterior`` (the exact smoothing drift s²∂_z log p(y_>t | z)
and p(z0 | y) by backward Gaussian messages), both written independently of pmxgen.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pmxgen
from pmxgen.errors import EstimationError, IntegrationError, ModelError
from pmxgen.estimation.latent_sde_fit import fit_latent_sde
from pmxgen.models.latent_sde import DeepLatentGaussianModel, LatentSDEModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latent_sde_helpers import (ConstantDrift, ExactDrift, ExactEncoder, ExactOUPosterior, dataset,  # noqa: E402
                                ou_kalman)

A, S = 1.0, 0.8
P0_SD = S / math.sqrt(2 * A)          # stationary SD of the OU prior
SUBJECTS = {1: ([0.3, 0.7, 1.0, 1.6, 2.2, 2.5], [0.5, 0.2, 0.4, -0.3, -0.1, 0.2]),
            2: ([0.0, 0.5, 0.5, 1.5], [-0.4, -0.6, -0.5, 0.1]),           # two records at t = 0.5
            3: ([1.0, 2.0, 3.0], [0.9, 0.3, 0.0])}


def ou_model(r: float, cls=LatentSDEModel, **kw) -> LatentSDEModel:
    """The OU prior dz = −A z dt + S dW, z0 stationary, y = z + N(0, r), everything fixed."""
    args = dict(mechanism="ou", network=False, rates={"A1": A}, fix_rates=True, diffusion=S, fix_diffusion=True,
                z0_sd=P0_SD, error={"kind": "additive", "init": {"ADD": r}, "fixed": ("ADD",)}, context_dim=2,
                hidden=16)
    args.update(kw)
    return cls(1, **args)


def test_girsanov_kl_of_a_constant_shift_is_half_c_over_sigma_squared_T():
    c, sigma = 0.7, 0.4
    data = dataset({1: ([0.5, 1.25, 2.0], [0.1, 0.2, 0.3]), 2: ([0.25, 3.0], [0.0, 0.1])})
    for cls, kw in ((LatentSDEModel, {"dt": 0.01}), (DeepLatentGaussianModel, {"max_step": 0.1})):
        model = cls(2, mechanism="ou", network=True, diffusion=sigma, context_dim=3, hidden=8, **kw)
        model.networks["posterior_drift"] = ConstantDrift([c, -c])
        terms = model.elbo(data, n_samples=5, seed=1)
        T = 3.0                                   # t0 = 0 to the last record
        expected = 2 * 0.5 * (c / sigma) ** 2 * T    # two coordinates
        assert torch.allclose(terms.kl_path, torch.full((2,), expected, dtype=torch.float64), rtol=1e-12), cls


def test_ou_elbo_is_below_kalman_and_reaches_it_with_the_exact_posterior():
    r = 0.3
    times, ys = SUBJECTS[1]
    data = dataset({1: (times, ys)})
    exact = ou_kalman(times, ys, A, S, r).sum()
    model = ou_model(r, dt=0.005)
    with torch.no_grad():
        untrained = model.elbo(data, n_samples=200, seed=0)
    assert float(untrained.total) < exact - 3 * untrained.se            # the prior as posterior: far below
    post = ExactOUPosterior(times, ys, A, S, r)
    model.networks["posterior_drift"] = ExactDrift(post)
    model.networks["encoder"] = ExactEncoder(post, P0_SD)
    with torch.no_grad():
        best = model.elbo(data, n_samples=2000, seed=0)
    # measured: -4.2864 +/- 0.030 against -4.2462 (dt = 0.005; -4.2942 at dt = 0.01: Euler bias ~ O(dt))
    assert float(best.total) <= exact + 3 * best.se
    assert abs(float(best.total) - exact) < 3 * best.se + 0.02, (float(best.total), best.se, exact)
    assert float(best.total) > float(untrained.total) + 1.0


def test_fitted_posterior_elbo_stays_below_kalman():
    r = 0.3
    times, ys = SUBJECTS[1]
    data = dataset({1: (times, ys)})
    exact = ou_kalman(times, ys, A, S, r).sum()
    model = ou_model(r, dt=0.05, hidden=32)
    fit = fit_latent_sde(model, data, max_iter=60, n_samples=16, learning_rate=2e-2, elbo_samples=400, seed=3)
    assert fit.status in ("converged", "max_iterations")
    e = fit.elbo
    first = fit.history[0]["elbo"]
    assert e["elbo"] <= exact + 3 * e["se"], (e, exact)
    assert e["elbo"] > first + 0.5          # training moved the ELBO towards log p(y)


def test_particle_filter_one_step_ahead_matches_kalman_per_observation():
    r = 0.3
    data = dataset(SUBJECTS)
    model = ou_model(r, dt=0.01)
    runs = np.stack([model.one_step_ahead_log_likelihood(data, n_particles=3000, seed=s).numpy() for s in range(4)])
    mean = runs.mean(0)
    for i, (times, ys) in enumerate(SUBJECTS.values()):
        exact = ou_kalman(times, ys, A, S, r)
        k = len(times)
        # measured max |error| per observation 0.009 (SD across seeds <= 0.011)
        assert np.max(np.abs(mean[i, :k] - exact)) < 0.025, (mean[i, :k], exact)
        assert abs(mean[i, :k].sum() - exact.sum()) < 0.06
        assert np.isnan(runs[0, i, k:]).all()                 # padding: NaN, never 0


def test_dlgm_is_the_euler_discretisation_of_the_continuous_model():
    data = dataset({1: ([0.25, 0.5, 1.5], [0.3, 0.1, -0.2]), 2: ([0.75, 2.0], [0.5, 0.4])})
    cont = LatentSDEModel(2, mechanism="ou", network=True, context_dim=3, hidden=8, dt=0.25, seed=4)
    disc = DeepLatentGaussianModel(2, mechanism="ou", network=True, context_dim=3, hidden=8, max_step=0.25, seed=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in cont.networks.parameters():          # non-zero networks everywhere
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    disc.networks.load_state_dict(cont.networks.state_dict())
    a, b = cont.elbo(data, n_samples=6, seed=2), disc.elbo(data, n_samples=6, seed=2)
    assert float(a.kl_path.detach().abs().min()) > 1e-3
    assert torch.allclose(a.per_draw, b.per_draw, rtol=1e-10, atol=1e-12)


def test_linear_gaussian_dlgm_elbo_is_below_its_exact_likelihood():
    r = 0.3
    times, ys = SUBJECTS[1]
    data = dataset({1: (times, ys)})
    exact = ou_kalman(times, ys, A, S, r, discrete=True).sum()       # the Euler chain on the knots
    model = ou_model(r, cls=DeepLatentGaussianModel, hidden=32)
    fit = fit_latent_sde(model, data, max_iter=80, n_samples=32, learning_rate=3e-2, elbo_samples=1000, seed=0)
    e = fit.elbo
    assert e["elbo"] <= exact + 3 * e["se"], (e, exact)
    assert e["elbo"] > fit.history[0]["elbo"] + 0.5
    assert exact - e["elbo"] < 1.5                                     # and not absurdly far


def test_same_seed_same_elbo_and_fit():
    data = dataset({1: SUBJECTS[1], 3: SUBJECTS[3]})
    fits = [fit_latent_sde(ou_model(0.3, dt=0.1, fix_rates=False), data, max_iter=6, n_samples=3, elbo_samples=8,
                           seed=5) for _ in range(2)]
    assert [h["elbo"] for h in fits[0].history] == [h["elbo"] for h in fits[1].history]
    assert fits[0].elbo["elbo"] == fits[1].elbo["elbo"]
    other = fit_latent_sde(ou_model(0.3, dt=0.1), data, max_iter=2, n_samples=3, elbo_samples=8, seed=6)
    assert other.history[0]["elbo"] != fits[0].history[0]["elbo"]


def test_fit_result_records_elbo_weights_and_reasons():
    data = dataset({1: SUBJECTS[1], 3: SUBJECTS[3]})
    model = LatentSDEModel(1, mechanism="ou", error="combined", context_dim=2, hidden=8, dt=0.1)
    fit = fit_latent_sde(model, data, max_iter=4, n_samples=2, elbo_samples=8)
    assert fit.status == "max_iterations" and fit.ofv is None and fit.minus2ll is None
    assert "particle filter" in fit.unavailable["ofv"] and "path" in fit.unavailable["ebe"]
    assert fit.elbo["minus2elbo"] == pytest.approx(-2 * fit.elbo["elbo"])
    assert fit.n_network_weights == sum(v.numel() for v in model.networks.state_dict().values())  # with buffers
    assert list(fit.observations.columns[:3]) == ["ID", "TIME", "DV"] and len(fit.observations) == 9
    back = pmxgen.FitResult.from_json(fit.to_json())
    assert back.elbo == fit.elbo and set(back.network_weights) == set(fit.network_weights)
    assert "SIGMA(PROP)" in fit.estimates and not fit.fixed["SIGMA(PROP)"]
    fresh = LatentSDEModel(1, mechanism="ou", error="combined", context_dim=2, hidden=8, dt=0.1).load_fit(back)
    with torch.no_grad():
        a, b = model.elbo(data, n_samples=3, seed=9), fresh.elbo(data, n_samples=3, seed=9)
    assert torch.equal(a.per_draw, b.per_draw)          # the stored fit rebuilds the same model


def test_adjoint_gives_the_same_elbo_and_close_gradients():
    data = dataset({1: ([0.5, 1.0], [0.3, 0.1])})
    grads = []
    for adjoint in (False, True):
        model = LatentSDEModel(1, mechanism="ou", context_dim=2, hidden=8, dt=0.01, seed=1)
        with torch.no_grad():
            model.networks["posterior_drift"].net[-1].weight.fill_(0.2)
        terms = model.elbo(data, n_samples=4, seed=0, adjoint=adjoint)
        terms.total.backward()
        grads.append((float(terms.total.detach()), model.unconstrained.grad.clone(),
                      model.networks["posterior_drift"].net[-1].weight.grad.clone(),
                      model.networks["encoder"].head[-1].weight.grad.clone()))    # through q(z0) and the context
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-12)
    for g0, g1 in zip(grads[0][1:], grads[1][1:]):
        assert torch.allclose(g0, g1, rtol=0.05, atol=1e-3), (g0, g1)


class _NaNDrift(torch.nn.Module):
    def forward(self, t, z, context):
        return torch.full_like(z, float("nan"))


class _Explode(torch.nn.Module):
    def forward(self, z, x):
        return torch.exp(20 * z)


def test_bad_input_gives_clear_errors_and_statuses():
    data = dataset({1: SUBJECTS[1]})
    model = ou_model(0.3, dt=0.1)
    model.networks["posterior_drift"] = _NaNDrift()
    with pytest.raises(IntegrationError, match="not finite"):
        model.elbo(data, n_samples=2)
    fit = fit_latent_sde(model, data, max_iter=5, n_samples=2, elbo_samples=4)
    assert fit.status == "failed" and "not finite" in fit.messages[0]
    blow = LatentSDEModel(1, context_dim=2, hidden=8, dt=0.1, z0_mean=1.0)
    blow.networks["prior_drift"] = _Explode()
    with pytest.raises(IntegrationError, match="subject 1"):
        blow.elbo(data, n_samples=2)
    # a subject without observations: nothing for the encoder
    frame = pd.DataFrame({"ID": [1, 1, 2], "TIME": [0.5, 1.0, 0.0], "DV": [0.1, 0.2, 0.0], "AMT": [0, 0, 10],
                          "EVID": [0, 0, 1], "MDV": [0, 0, 1]})
    with pytest.warns(Warning):
        empty = pmxgen.read_nonmem(frame)
    with pytest.raises(EstimationError, match=r"\[2\] have no observations"):
        fit_latent_sde(ou_model(0.3, dt=0.1), empty, max_iter=2)
    reset = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0.0, 1.0, 2.0], "DV": [0, 0.1, 0.2], "AMT": [10, 0, 0],
                          "EVID": [1, 3, 0], "MDV": [1, 1, 0]})
    with pytest.raises(ModelError, match="reset"):
        ou_model(0.3).elbo(pmxgen.read_nonmem(reset), n_samples=1)
    with pytest.raises(ModelError, match="latent_dim=2"):
        LatentSDEModel(1, mechanism="1cmt")


def _pk_data():
    rows = []
    for i, (amt, ka) in enumerate([(100.0, 1.0), (200.0, 1.5)], start=1):
        rows.append({"ID": i, "TIME": 0.0, "DV": 0.0, "AMT": amt, "EVID": 1, "MDV": 1})
        for t in (0.5, 1.0, 2.0, 4.0, 8.0):
            c = amt / 100 * ka / (ka - 0.2) * (math.exp(-0.2 * t) - math.exp(-ka * t))
            rows.append({"ID": i, "TIME": t, "DV": c * (1 + 0.05 * math.sin(7 * t + i)), "AMT": 0, "EVID": 0, "MDV": 0})
    return pmxgen.read_nonmem(pd.DataFrame(rows))


def test_doses_enter_as_jumps_and_infusions_and_counterfactuals_share_random_numbers():
    data = _pk_data()
    model = LatentSDEModel(2, mechanism="1cmt", rates={"KA": 1.0, "KE": 0.2}, diffusion=0.05, z0_sd=0.01,
                           dose_scale=100.0, error="proportional", context_dim=2, hidden=8, dt=0.02)
    times = np.arange(0.0, 24.01, 0.5)
    arms = model.simulate_regimens(data, ["100 mg once", "100 mg q12h x2", "100 mg iv over 2 h once"],
                                   times=times, n_paths=20, seed=3, include_observed=True)
    once, twice, inf = arms["100 mg once"], arms["100 mg q12h x2"], arms["100 mg iv over 2 h once"]
    before = torch.as_tensor(times) < 12
    assert torch.equal(once.z[:, :, before], twice.z[:, :, before])       # same paths until the second dose
    diff = (twice.z - once.z)[:, :, ~before, 0]                           # depot difference after it
    assert float(diff[:, :, 0].min()) == pytest.approx(1.0, abs=0.05)     # the 100 mg jump (dose_scale 100)
    # an infusion enters gradually: after 1 h of a 2 h infusion of 100 mg, the depot has received 0.5
    deterministic = LatentSDEModel(2, mechanism="1cmt", rates={"KA": 1e-9, "KE": 0.2}, diffusion=1e-9,
                                   fix_rates=True, z0_sd=1e-12, dose_scale=100.0, context_dim=2, hidden=8, dt=0.01)
    p = deterministic.simulate_regimens(data, ["100 mg iv over 2 h once"], times=[1.0, 3.0], n_paths=1,
                                        posterior=False)["100 mg iv over 2 h once"]
    assert p.z[0, 0, :, 0].tolist() == pytest.approx([0.5, 1.0], abs=1e-3)
    assert inf.prediction.shape == once.prediction.shape == (20, 2, len(times))
    obs = arms["observed"]                                                # own doses: 100 and 200 mg
    assert float((obs.z[:, 1, 1:, 0] + obs.z[:, 1, 1:, 1]).mean()) > float((obs.z[:, 0, 1:, 0]
                                                                             + obs.z[:, 0, 1:, 1]).mean())
    post = model.sample_posterior(data, n_paths=4, seed=0)
    assert post.z.shape == (4, 2, 5, 2) and bool(post.mask.all())


def test_fit_on_pk_data_with_minibatches_improves_the_elbo():
    data = _pk_data()
    model = LatentSDEModel(2, mechanism="1cmt", rates={"KA": 1.0, "KE": 0.3}, diffusion=0.05, z0_sd=0.01,
                           dose_scale=100.0, error="proportional", context_dim=2, hidden=8, dt=0.1)
    fit = fit_latent_sde(model, data, max_iter=30, batch_size=1, n_samples=4, learning_rate=3e-2, elbo_samples=16)
    assert fit.status == "max_iterations"
    assert np.mean([h["elbo"] for h in fit.history[-5:]]) > np.mean([h["elbo"] for h in fit.history[:5]])
    assert fit.estimates["KE"] != 0.3


def test_stopping_rule_reports_converged_only_when_met():
    data = dataset({1: SUBJECTS[1]})
    fit = fit_latent_sde(ou_model(0.3, dt=0.1), data, max_iter=600, n_samples=4, learning_rate=2e-2, window=25,
                         min_iter=50, elbo_samples=16, seed=0)
    assert fit.status == "converged" and len(fit.history) < 600, (fit.status, len(fit.history))
    assert "converged at iteration" in fit.messages[0]
    k = len(fit.history)
    new = np.array([h["elbo"] for h in fit.history[-25:]])
    old = np.array([h["elbo"] for h in fit.history[-50:-25]])
    assert k % 25 == 0 and new.mean() - old.mean() < 2 * math.sqrt(new.var(ddof=1) / 25 + old.var(ddof=1) / 25)


def test_record_order_at_a_bolus_time_in_the_filter_and_the_elbo():
    # the first record at t = 1 is before the dose (sees depot 0), the one after it sees the 100 mg jump
    frame = pd.DataFrame({"ID": 1, "TIME": [0.5, 1.0, 1.0, 1.0, 2.0], "DV": [0.0, 0.0, 0.0, 1.0, 0.3679],
                          "AMT": [0, 0, 100, 0, 0], "EVID": [0, 0, 1, 0, 0], "MDV": [0, 0, 1, 0, 0]})
    with pytest.warns(pmxgen.DatasetWarning, match="before the first dose"):
        data = pmxgen.read_nonmem(frame)
    model = LatentSDEModel(2, mechanism="1cmt", rates={"KA": 1.0, "KE": 0.1}, observe=0, diffusion=1e-6,
                           z0_sd=1e-9, dose_scale=100.0, error={"kind": "additive", "init": {"ADD": 0.01}},
                           context_dim=1, hidden=4, dt=0.005)
    at_mean = -0.5 * math.log(2 * math.pi * 0.01)                        # log N(y; y, 0.01)
    lp = model.one_step_ahead_log_likelihood(data, n_particles=8, seed=0)[0]
    assert lp.tolist() == pytest.approx([at_mean] * 4, abs=2e-3)        # depot exp(-(t-1)) = 0.3679 at t = 2
    terms = model.elbo(data, n_samples=2)
    assert float(terms.log_likelihood.detach()) == pytest.approx(4 * at_mean, abs=5e-3)


def test_one_step_ahead_diagnostic_uses_the_particle_filter_of_a_latent_sde():
    """pmxgen.one_step_ahead dispatches to the model's particle filter: per-observation terms whose sum
    is the exact Kalman log p(y) of the OU model within Monte Carlo error."""
    times, ys = SUBJECTS[1]
    data = dataset({1: (times, ys)})
    osa = pmxgen.one_step_ahead(ou_model(0.3), data, n_samples=3000, seed=0)
    assert list(osa.table["TIME"]) == times and osa.table["OSA_LOGLIK"].notna().all()
    exact = ou_kalman(times, ys, A, S, 0.3)
    np.testing.assert_allclose(osa.table["OSA_LOGLIK"].to_numpy(), exact, atol=0.05)
    assert osa.total == pytest.approx(float(exact.sum()), abs=0.1)
