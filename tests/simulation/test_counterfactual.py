"""Individual counterfactuals (own EBE, Laplace and estimator posterior draws) and ``pmxgen simulate``."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import pmxgen
from pmxgen.cli import main
from pmxgen.errors import ModelError
from pmxgen.simulation import individual_draws, simulate_individuals


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    data = pmxgen.datasets.load("theophylline")
    model = pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL"))
    fit = pmxgen.fit(model, data, method="foce", covariance="sandwich", cpu_threads=1)
    folder = tmp_path_factory.mktemp("run")
    pmxgen.report.write_fit(fit, folder)
    return pmxgen.load_run(fit), folder


def test_own_regimen_with_the_ebe_reproduces_ipred(fitted):
    run, _ = fitted
    res = simulate_individuals(run, ["320 mg q12h x4 ss"], seed=0)
    obs = run.fit.observations
    at = res.at_observations
    assert list(at["ROW"]) == list(obs["ROW"]) and list(at["subject"]) == list(obs["ID"])
    diff = np.abs(at["value"].to_numpy() - obs["IPRED"].to_numpy())
    assert diff.max() <= 1e-10 * max(1.0, obs["IPRED"].abs().max())
    # the observed arm's profile on its grid agrees with the records at the same times
    prof = res.profiles[res.profiles["regimen"] == "observed"]
    assert set(prof["subject"]) == set(run.data.ids) and res.meta["eta_source"] == "ebe"
    # counterfactual: each subject's own CL gives AUC_ss over τ = Dose / CL_i
    cl = run.fit.individual.set_index("ID")["CL"]
    e = res.exposures[(res.exposures.regimen == "320 mg q12h x4 ss") & (res.exposures.window == "first")]
    np.testing.assert_allclose(e["auc"].to_numpy(), 320 / cl.loc[e["subject"]].to_numpy(), rtol=1e-8)


def test_laplace_draws_carry_individual_uncertainty(fitted):
    run, _ = fitted
    eta, how = individual_draws(run, 4000, seed=1)
    assert how == "laplace" and eta.shape == (4000, 12, 2)
    ebe, cov = np.asarray(run.fit.ebe), np.asarray(run.fit.ebe_covariance)
    mean = eta.mean(0).numpy()
    se = np.sqrt(np.diagonal(cov, axis1=1, axis2=2) / 4000)
    assert np.all(np.abs(mean - ebe) < 4.5 * se)
    emp = np.einsum("sni,snj->nij", eta.numpy() - mean, eta.numpy() - mean) / 3999
    np.testing.assert_allclose(emp, cov, rtol=0.15, atol=0.1 * np.abs(cov).max())
    # the same draws serve every regimen: per-draw AUC ratios are exact dose ratios
    res = simulate_individuals(run, ["320 mg q12h x1 ss", "160 mg q12h x1 ss"], draws=30, seed=1,
                               include_observed=False, targets=["auc>=100"])
    e = res.exposures[res.exposures.window == "first"].set_index(["regimen", "replicate", "subject"])["auc"]
    np.testing.assert_allclose(e.loc["320 mg q12h x1 ss"] / e.loc["160 mg q12h x1 ss"], 2.0, rtol=1e-12)
    spread = e.loc["320 mg q12h x1 ss"].groupby(level="subject").std()
    assert (spread > 0).all()                       # predictions carry individual uncertainty
    again = simulate_individuals(run, ["320 mg q12h x1 ss", "160 mg q12h x1 ss"], draws=30, seed=1,
                                 include_observed=False, targets=["auc>=100"])
    pd.testing.assert_frame_equal(res.exposures, again.exposures)
    assert res.pta()["interval"].iloc[0] == "replicates"


def test_estimator_posterior_draws_are_used_when_present(fitted):
    run, _ = fitted
    rng = np.random.default_rng(0)
    draws = np.asarray(run.fit.ebe)[None] + 0.1 * rng.standard_normal((7, 12, 2))
    with_draws = replace(run, fit=replace(run.fit, posterior_draws=draws))
    eta, how = individual_draws(with_draws, 5)
    assert how == "posterior" and np.array_equal(eta.numpy(), draws[:5])
    res = simulate_individuals(with_draws, "320 mg q12h x2", draws=5, include_observed=False)
    sub = res.subjects.sort_values(["replicate", "subject"])
    np.testing.assert_array_equal(sub["ETA(CL)"].to_numpy().reshape(5, 12), draws[:5, :, 1])
    with pytest.raises(ModelError, match="made no posterior draws"):
        individual_draws(run, 5, posterior="posterior")
    with pytest.raises(pmxgen.simulation.RegimenError, match="has 7 posterior draws"):
        individual_draws(with_draws, 8)


def test_cli_population_and_individual(fitted, tmp_path, capsys):
    _, folder = fitted
    out = tmp_path / "sim"
    rc = main(["simulate", str(folder), "--regimen", "320 mg q12h x6", "--regimen", "1 g iv over 1 h q24h x2",
               "--n", "200", "--seed", "4", "--target", "cmin[last]>=2", "--threshold", "4", "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Probability of target attainment" in text and "1000 mg iv over 1 h q24h x2" not in text
    assert "1 g iv over 1 h q24h x2" in text
    for name in ("profiles.csv", "exposures.csv", "summary.csv", "pta.csv", "summary.png", "meta.json"):
        assert (out / name).is_file(), name
    assert (out / "simulation.nc").is_file() or (out / "simulation.json").is_file()
    exp = pd.read_csv(out / "exposures.csv")
    assert len(exp) == 200 * 2 * 2 and exp["subject"].max() == 200
    assert main(["simulate", str(folder), "--individual", "--draws", "3", "--regimen", "320 mg q12h x2",
                 "--output", str(tmp_path / "ind")]) == 0
    at = pd.read_csv(tmp_path / "ind" / "at_observations.csv")
    assert len(at) == 3 * 132


@pytest.mark.parametrize("argv, message", [
    (["--regimen", "500 mgg q12h"], "unknown amount unit 'mgg'"),
    (["--regimen", "500 mg q12h", "--target", "auc is big"], "METRIC[WINDOW] OP VALUE"),
    ([], "give at least one --regimen"),
])
def test_cli_bad_input_exits_2_with_a_message(fitted, capsys, argv, message):
    _, folder = fitted
    assert main(["simulate", str(folder), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pmxgen: error:") and message in err


def test_cli_missing_results_folder(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "nothing"), "--regimen", "100 mg once"]) == 2
    assert "does not exist" in capsys.readouterr().err
