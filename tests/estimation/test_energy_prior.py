"""EnergyPriorModel (energy-based η prior, quadrature normaliser) and the EnergyEM estimator."""
import warnings

import numpy as np
import pytest
import torch

import pmxgen
from pmxgen.errors import EstimationError, ModelError
from pmxgen.estimation import EnergyEM, FitResult
from pmxgen.generative.score import EnergyNetwork
from pmxgen.models import EnergyPriorModel, NLMEModel, capabilities
from pmxgen.models.weights import load_weights_state

TRUE_MODES = (float(np.log(1.5 / 2.74)), float(np.log(5.0 / 2.74)))   # η of the two groups around θ_CL = 2.74


def _base(iiv=("CL",)):
    return NLMEModel(pmxgen.get_model("1cmt_oral"), theta={"KA": (0, 1.2), "CL": (0, 2.74), "V": (0, 25.0)},
                     omega={n: 0.3 for n in iiv}, error={"kind": "additive", "init": {"ADD": 0.05}})


@pytest.fixture(scope="module")
def bimodal():
    """80 subjects, half with CL 1.5 and half with CL 5 (within-group ω² = 0.01), rich sampling."""
    n = 80
    design = pmxgen.design_frame(n, doses=[{"time": 0, "amt": 100}],
                                 obs_times=[0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24], covariates={"GRP": np.arange(n) % 2})

    def individual(theta, eta, cov):
        cl = torch.where(cov["GRP"] > 0.5, torch.tensor(5.0, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64))
        one = torch.ones_like(cl)
        return {"KA": theta["KA"] * one, "CL": cl * torch.exp(eta["CL"]), "V": theta["V"] * one}

    return pmxgen.simulate_dataset("1cmt_oral", design, theta={"KA": 1.5, "CL": 1.0, "V": 30.0}, omega={"CL": 0.01},
                                   error={"additive": 0.1}, individual=individual, seed=3).dataset


def _quiet_fit(estimator, model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimator.fit(model, data)


# --------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("k", [1, 2])
def test_log_prior_is_normalised(k):
    net = EnergyNetwork(k, hidden=(16, 16), quadratic=0.5, seed=11)
    with torch.no_grad():                       # a rough, non-Gaussian energy
        for p in net.parameters():
            p.mul_(3.0)
    model = EnergyPriorModel(_base(("KA", "CL")[:k]), net)
    # an independent rule: the trapezoid on a fine uniform grid of the box
    m = 4001 if k == 1 else 801
    z = torch.linspace(-3, 3, m, dtype=torch.float64)
    grid = z[:, None] if k == 1 else torch.stack(torch.meshgrid(z, z, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        dens = model.log_prior(grid, None, None).exp().reshape((m,) * k)
    total = dens
    for _ in range(k):
        total = torch.trapezoid(total, z, dim=0)
    assert abs(float(total) - 1.0) < 1e-3               # the trapezoid's own error is ~1e-4 here (K = 2)
    finer = EnergyPriorModel(model.base, net, quadrature_nodes=4 * model.quadrature_nodes)
    with torch.no_grad():
        assert abs(float(model.log_normalizer() - finer.log_normalizer())) < 1e-8
    # outside the box: no mass
    with torch.no_grad():
        assert float(model.log_prior(torch.full((1, k), 3.5, dtype=torch.float64), None, None)) == -np.inf


def test_sample_eta_matches_the_density():
    net = EnergyNetwork(2, hidden=(16, 16), quadratic=0.5, seed=5)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    model = EnergyPriorModel(_base(("KA", "CL")), net)
    data = pmxgen.datasets.load("theophylline")
    batch = data.batch.repeat(400)                       # 4800 draws
    draws = model.sample_eta(None, batch, torch.Generator().manual_seed(0))
    assert draws.shape == (4800, 2) and draws.dtype == torch.float64
    mean, cov = model.prior_moments()
    sd = cov.diagonal().sqrt()
    se = sd / np.sqrt(4800) * 3                          # MCMC draws from a stationary start: allow some correlation
    assert torch.all((draws.mean(0) - mean).abs() < 4 * se), (draws.mean(0), mean)
    assert torch.all((draws.std(0) / sd - 1).abs() < 0.08), (draws.std(0), sd)
    again = model.sample_eta(None, batch, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_model_contract_and_refusals():
    model = EnergyPriorModel(_base())
    assert model.eta_distribution == "energy"
    assert model.parameter_set.names == ("KA", "V", "SIGMA(ADD)")    # θ_CL fixed, no Ω
    assert {"gaussian_residual", "individual_parameters", "energy_random_effects"} <= capabilities(model)
    assert "gaussian_random_effects" not in capabilities(model)
    assert list(model.networks) == ["energy"]
    with pytest.raises(ModelError, match="1 or 2 random effects"):
        EnergyPriorModel(_base(("KA", "CL", "V")))
    data = pmxgen.datasets.load("theophylline")
    for method in ("focei", "saem"):
        with pytest.raises(ModelError, match="gaussian random effects"):
            pmxgen.fit(model, data, method=method)
    # EnergyEM refuses a Gaussian model and says how to wrap it
    with pytest.raises(ModelError, match="ENERGYEM needs a model with energy random effects.*EnergyPriorModel"):
        pmxgen.fit(_base(), data, method="energy_em")
    with pytest.raises(EstimationError, match="'prior' kernel"):
        EnergyEM(kernels={"prior": 1, "mala": 1}).fit(model, data)
    with pytest.raises(EstimationError, match="energy_loss"):
        EnergyEM(energy_loss="nce").fit(model, data)


# ----------------------------------------------------------------------------------- the estimator
def test_same_seed_same_numbers_and_weights_round_trip():
    data = pmxgen.datasets.load("theophylline")
    model = EnergyPriorModel(pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("CL",)),
                             quadrature_nodes=128)
    before = {k: v.clone() for k, v in model.networks.state_dict().items()}
    opts = dict(n_explore=6, n_smooth=6, energy_steps=3, importance_samples=50, posterior_draws=20,
                posterior_burn_in=5, seed=4)
    a = _quiet_fit(EnergyEM(**opts), model, data)
    b = _quiet_fit(EnergyEM(**opts), model, data)
    assert a.estimates == b.estimates and a.minus2ll == b.minus2ll
    assert all(np.array_equal(a.network_weights[k], b.network_weights[k]) for k in a.network_weights)
    assert a.status in ("converged", "max_iterations") and np.isfinite(a.minus2ll)
    assert a.n_network_weights == sum(p.numel() for p in model.networks.parameters())
    assert not all(np.array_equal(a.network_weights[k], before[k].numpy()) for k in before)   # fitted
    assert all(torch.equal(before[k], v) for k, v in model.networks.state_dict().items())      # model left as it was
    again = FitResult.from_json(a.to_json())
    assert all(np.array_equal(again.network_weights[k], v) for k, v in a.network_weights.items())
    c = _quiet_fit(EnergyEM(**{**opts, "seed": 5}), model, data)
    assert c.minus2ll != a.minus2ll


def test_energy_prior_finds_two_subpopulations(bimodal):
    data = bimodal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gauss = pmxgen.fit(_base(), data, method="focei", covariance=None, importance_samples=500)
    model = EnergyPriorModel(_base())
    fit = _quiet_fit(EnergyEM(n_explore=40, n_smooth=40, n_chains=2, importance_samples=500, posterior_draws=100,
                              seed=1), model, data)
    assert fit.status == "converged", fit.messages
    assert abs(fit.estimates["V"] - 30) < 1.5 and abs(fit.estimates["KA"] - 1.5) < 0.15
    # the fitted prior density on the η_CL axis has two local maxima, near the groups' values
    load_weights_state(model, fit.network_weights)
    x, _ = model.quadrature()
    with torch.no_grad():
        lp = model.log_prior(x, None, None).numpy()
    xs = x[:, 0].numpy()
    peaks = [i for i in range(1, len(lp) - 1) if lp[i] > lp[i - 1] and lp[i] > lp[i + 1] and lp[i] > np.log(0.2)]
    assert len(peaks) == 2, [(xs[i], np.exp(lp[i])) for i in peaks]
    for i, truth in zip(peaks, TRUE_MODES):
        assert abs(xs[i] - truth) < 0.1, (xs[i], truth)
    ratio = np.exp(lp[peaks[0]] - lp[peaks[1]])
    assert 0.5 < ratio < 2.0                               # two equal groups: comparable peak heights
    # EBEs are bimodal, each group around its own mode
    group = data.to_frame().groupby("ID")["GRP"].first().to_numpy()
    for g, truth in zip((0, 1), TRUE_MODES):
        assert abs(fit.ebe[group == g, 0].mean() - truth) < 0.05
    # the Gaussian Ω cannot fit this: a clearly lower importance-sampling −2LL with the energy prior
    g2ll, e2ll = gauss.importance_sampling["minus2ll"], fit.minus2ll
    assert e2ll < g2ll - 100, (e2ll, g2ll)
    assert fit.importance_sampling["se"] < 2 and gauss.importance_sampling["se"] < 2
    # the diagnostics say it too: the Gaussian model's NPD are far from normal (a mixture of two
    # groups seen through one Gaussian), the energy model's are not; the report carries both
    diag_energy = pmxgen.diagnostics.diagnose(fit, n_simulations=100, seed=1, model=model, data=data)
    diag_gauss = pmxgen.diagnostics.diagnose(gauss, n_simulations=100, seed=1, model=_base(), data=data)
    assert diag_energy.npde_tests("npd")["global_p"] > 0.01 and diag_gauss.npde_tests("npd")["global_p"] < 1e-6
    # the report's η histogram draws the fitted (bimodal) prior, not a normal curve
    (hist_fig,) = diag_energy.figures()["Random effects"]
    (line,) = hist_fig.axes[0].get_lines()[:1]
    assert line.get_label() == "model prior"
    grid, dens = line.get_xdata(), line.get_ydata()
    inner = [i for i in range(1, len(dens) - 1) if dens[i] > dens[i - 1] and dens[i] > dens[i + 1] and dens[i] > 0.2]
    assert len(inner) == 2 and abs(grid[inner[0]] - TRUE_MODES[0]) < 0.1 and abs(grid[inner[1]] - TRUE_MODES[1]) < 0.1
    print(f"-2LL energy {e2ll:.1f} (SE {fit.importance_sampling['se']:.2f}), Gaussian {g2ll:.1f}; modes "
          f"{xs[peaks[0]]:.3f}, {xs[peaks[1]]:.3f} (truth {TRUE_MODES[0]:.3f}, {TRUE_MODES[1]:.3f}); peak ratio {ratio:.2f}")
