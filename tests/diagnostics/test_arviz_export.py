"""ArviZ export: arviz reads the netCDF file back and summarises the individual parameters."""
import dataclasses

import arviz as az
import numpy as np
import pytest
import torch

from pmxgen.diagnostics import to_inference_data, write_inference_data
from pmxgen.errors import ModelError
from pmxgen.runs import Run, fitted_values


@pytest.fixture(scope="module")
def run(theo_fit):
    fit, model, data = theo_fit
    return Run(fit=fit, model=model, data=data, values=fitted_values(model, fit))


def test_netcdf_round_trip_and_arviz_summary(run, tmp_path):
    path = write_inference_data(run, tmp_path / "run.nc", n_draws=400, n_chains=4, seed=2)
    idata = az.from_netcdf(str(path))
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood", "observed_data",
                                   "constant_data"}
    assert idata.posterior.sizes["chain"] == 4 and idata.posterior.sizes["draw"] == 100
    assert list(idata.posterior["CL"].dims) == ["chain", "draw", "subject"]
    with np.errstate(invalid="ignore"):      # V has no IIV: its draws are constant and its r_hat 0/0
        summary = az.summary(idata, var_names=["KA", "CL", "V"])
    assert summary.shape[0] == 36 and np.isfinite(summary["mean"]).all()
    assert (summary.loc[[f"CL[{i}]" for i in range(1, 13)], "r_hat"] < 1.05).all()   # V has no IIV: r_hat NaN
    assert summary.loc["CL[1]", "mean"] == pytest.approx(run.fit.individual["CL"][0], rel=0.05)
    fit = run.fit
    assert np.allclose(idata.observed_data["DV"].values, fit.observations["DV"].to_numpy())
    assert list(idata.observed_data["ID"].values[:2]) == ["1", "1"]
    assert idata.posterior.attrs["draws"] == "laplace" and idata.posterior.attrs["method"] == "foce"
    assert idata.constant_data["estimate"].sel(parameter="CL").item() == pytest.approx(fit.estimates["CL"])


def test_laplace_draws_match_ebe_and_conditional_covariance(run):
    fit = run.fit
    idata = to_inference_data(run, n_draws=4000, n_chains=4, seed=3, posterior_predictive=False,
                              log_likelihood=False)
    eta = idata.posterior["eta"].values.reshape(-1, 12, 2)
    sd = np.sqrt(np.einsum("nkk->nk", fit.ebe_covariance))
    assert np.abs(eta.mean(0) - fit.ebe).max() < 4 * sd.max() / np.sqrt(4000)
    assert np.allclose(eta.std(0), sd, rtol=0.06)
    cl = idata.posterior["CL"].values.reshape(-1, 12)
    assert np.allclose(cl, fit.estimates["CL"] * np.exp(eta[..., 1]))      # CL_i = θ_CL · exp(η_CL)


def test_ebe_draw_log_likelihood_and_predictive(run):
    fit, model, data = run.fit, run.model, run.data
    idata = to_inference_data(run, draws="ebe", seed=0)
    assert idata.posterior.sizes["chain"] == 1 and idata.posterior.sizes["draw"] == 1
    assert np.allclose(idata.posterior["KA"].values[0, 0], fit.individual["KA"].to_numpy())
    # pointwise log-likelihood sums to the model's per-subject log-likelihood at the EBEs
    total = idata.log_likelihood["DV"].values.sum()
    eta = torch.as_tensor(fit.ebe)
    assert total == pytest.approx(float(model.log_likelihood(eta, run.values, data.batch).sum()), rel=1e-10)
    many = to_inference_data(run, n_draws=800, seed=1, log_likelihood=False)
    mean_pp = many.posterior_predictive["DV"].values.reshape(800, -1).mean(0)
    assert np.corrcoef(mean_pp, fit.observations["IPRED"])[0, 1] > 0.98


def test_estimator_posterior_draws_and_bad_requests(run):
    draws = np.random.default_rng(0).normal(size=(50, 12, 2)) * 0.1 + run.fit.ebe
    with_draws = dataclasses.replace(run, fit=dataclasses.replace(run.fit, posterior_draws=draws))
    idata = to_inference_data(with_draws, posterior_predictive=False)
    assert idata.posterior.attrs["draws"] == "posterior" and idata.posterior.sizes["draw"] == 50
    assert np.allclose(idata.posterior["eta"].values[0], draws)
    with pytest.raises(ModelError, match="no posterior draws"):
        to_inference_data(run, draws="posterior")
    with pytest.raises(ModelError, match="draws must be"):
        to_inference_data(run, draws="mcmc")
