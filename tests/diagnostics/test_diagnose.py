"""diagnose(): one seeded set of replicates shared by NPDE and the VPCs, residuals from the FitResult."""
import numpy as np
import pytest

import pmxgen
from pmxgen.diagnostics import Diagnostics, compute_npde, compute_vpc, diagnose
from pmxgen.runs import Run, fitted_values


@pytest.fixture(scope="module")
def diag(theo_fit):
    fit, model, data = theo_fit
    return diagnose(fit, n_simulations=150, seed=7, stratify="WT")


def test_diagnostics_gather_fit_residuals_npde_and_vpcs(diag, theo_fit):
    fit, model, data = theo_fit
    assert isinstance(diag, Diagnostics) and diag.n_simulations == 150 and diag.simulated.shape == (150, 12, 11)
    obs = diag.observations
    assert len(obs) == fit.n_observations == 132
    assert np.array_equal(obs["CWRES"].to_numpy(), fit.observations["CWRES"].to_numpy())
    assert np.array_equal(obs["IWRES"].to_numpy(), fit.observations["IWRES"].to_numpy())
    # the NPDE column is NPDEResult.npde of each (subject, sample), in data-row order
    first = obs.iloc[:11]
    assert np.allclose(first["NPDE"].to_numpy(), diag.npde.npde[0], equal_nan=True)
    assert np.isfinite(obs[["NPDE", "NPD", "PDE", "PD"]].to_numpy()).all()
    assert diag.vpc is not None and diag.pcvpc is not None and diag.pcvpc.pred_corrected
    strata = diag.vpc.table["stratum"]
    assert set(strata) == set(diag.pcvpc.table["stratum"]) and strata.nunique() == 2
    assert diag.shrinkage == pytest.approx(fit.shrinkage)


def test_same_simulations_as_the_low_level_functions(diag, theo_fit):
    fit, model, data = theo_fit
    values = fitted_values(model, fit)
    npde = compute_npde(model, values, data, n_simulations=150, seed=7)
    assert np.array_equal(npde.npde, diag.npde.npde, equal_nan=True)
    vpc = compute_vpc(model, values, data, n_simulations=150, seed=7, stratify="WT")
    assert vpc.table.equals(diag.vpc.table)


def test_parameter_table_has_shrinkage_and_tables_are_complete(diag, theo_fit):
    fit = theo_fit[0]
    table = diag.parameter_table()
    assert list(table.columns) == ["parameter", "estimate", "cv_percent", "se", "rse_percent", "ci_lower", "ci_upper", "fixed",
                                   "shrinkage_percent"]
    by_name = table.set_index("parameter")["shrinkage_percent"]
    assert by_name["OMEGA(CL)"] == pytest.approx(100 * fit.shrinkage["CL"])
    assert by_name["SIGMA(ADD)"] == pytest.approx(100 * fit.shrinkage["EPS"])
    assert np.isnan(by_name["CL"])
    assert set(diag.tables()) == {"parameters", "data_summary", "checklist", "npde_tests", "shrinkage", "residuals",
                                  "vpc", "pcvpc"}
    summary = diag.data_summary()
    assert (summary["subjects"], summary["observations"], summary["dose records"], summary["BLQ observations"]) == \
        (12, 132, 12, 0)
    text = diag.summary()
    assert "NPDE n=132" in text and "VPC: observed percentiles inside" in text


def test_options_and_determinism(theo_fit, tmp_path):
    fit, model, data = theo_fit
    run = Run(fit=fit, model=model, data=data, values=fitted_values(model, fit))
    only_pc = diagnose(run, n_simulations=60, seed=1, pred_corr=True, bins=[0, 1, 5, 30])
    assert only_pc.vpc is None and len(only_pc.pcvpc.table) == 3
    only_vpc = diagnose(run, n_simulations=60, seed=1, pred_corr=False)
    assert only_vpc.pcvpc is None
    assert np.array_equal(only_pc.simulated, only_vpc.simulated)
    pmxgen.report.write_fit(fit, tmp_path)
    from_folder = diagnose(tmp_path, n_simulations=60, seed=1, pred_corr=False)
    assert np.array_equal(from_folder.npde.npde, only_vpc.npde.npde, equal_nan=True)


def test_figures_cover_every_section(diag):
    figures = diag.figures(per_page=5)
    assert list(figures) == ["Goodness of fit", "Residuals and NPDE", "Random effects", "Random effects vs covariates",
                             "Visual predictive check", "Prediction-corrected VPC", "Individual fits", "Convergence"]
    assert len(figures["Individual fits"]) == 3          # 12 subjects, 5 a page
    assert [ax.get_title() for ax in figures["Visual predictive check"][0].axes] == \
        [f"VPC: {s}" for s in sorted(diag.vpc.table["stratum"].unique())]
