"""Parameter recovery: FOCE-I on data simulated with known truth.

Two checks: (1) a calibration study, replicate data sets simulated here, where the 95 %
confidence intervals (sandwich SEs) must cover the truth for >= 90 % of the parameters; (2) the
bundled simulated data sets (``datasets/*/truth.json``), where every estimate must lie within
3.5 SE of the truth and the coverage is reported: 32 of 37 intervals (86.5 %) cover the truth.
Of the five misses, three follow the particular sample: sim_1cmt_oral_wt's realised η variances
are 0.118 (KA) and 0.078 (CL) against true 0.16 and 0.09, and the estimates (0.110, 0.072)
follow the sample (SAEM, exact likelihood: 0.111, 0.073); sim_2cmt_iv_infusion's realised mean
η_V2 of −0.023 accounts for half of V2's z = −2.27. One is FOCE-I's approximation: on sim_1cmt_oral_1000 CL is
3.09 (z = +3.0) where SAEM gives 3.051 (z = +1.7; realised mean η_CL +0.0165, i.e. 3.05). One
is marginal: sim_mm_oral's SIGMA(ADD), z = 2.06. Profile-likelihood intervals do no better on
these samples (``benchmarks/coverage.py``: 4 misses among the 25 closed-form parameters that can
be fixed alone, against 4 of 28 Wald misses).
"""
import numpy as np
import pytest

import pmxgen
from pmxgen.models import build_model

from simulated_models import Z95, model_for as _model_for, true_values as _true_values, z_scores as _z_scores


def test_confidence_intervals_cover_the_truth_in_replicate_studies():
    theta = {"KA": 1.2, "CL": 4.0, "V": 35.0}
    omega = {"KA": 0.16, "CL": 0.09, "V": 0.04}
    truth = {**theta, **{f"OMEGA({k})": v for k, v in omega.items()}, "SIGMA(ADD)": 0.05 ** 2,
             "SIGMA(PROP)": 0.12 ** 2}
    design = pmxgen.design_frame(50, doses=[{"time": 0, "amt": 200}], obs_times=[0.5, 1, 2, 4, 8, 12, 24],
                                 obs_cmt=2)
    covered, total = 0, 0
    for rep in range(10):
        sim = pmxgen.simulate_dataset("1cmt_oral", design, theta=theta, omega=omega,
                                      error={"additive": 0.05, "proportional": 0.12}, seed=1000 + rep)
        model = build_model("1cmt_oral", sim.dataset, error="combined", iiv=("KA", "CL", "V"))
        fit = pmxgen.fit(model, sim.dataset, method="focei")
        assert fit.status == "converged" and fit.covariance_status == "ok"
        for name, z in _z_scores(fit, truth).items():
            covered += abs(z) <= Z95
            total += 1
    assert total == 80
    assert covered / total >= 0.90, f"coverage {covered}/{total}"


#: Every bundled simulated set; sim_mm_oral is the Michaelis-Menten ODE model (about 2 min).
BUNDLED = ("sim_1cmt_oral_wt", "sim_2cmt_iv_infusion", "sim_1cmt_oral_1000", "sim_mm_oral")


@pytest.fixture(scope="module")
def bundled_fits():
    fits = {}
    for name in BUNDLED:
        data = pmxgen.datasets.load(name)
        fits[name] = pmxgen.fit(_model_for(name, data), data, method="focei")
    return fits


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_simulated_sets_are_recovered(bundled_fits, name):
    fit = bundled_fits[name]
    assert fit.status == "converged" and fit.covariance_status == "ok"
    truth = _true_values(pmxgen.datasets.truth(name))
    assert set(fit.estimated_names) == set(truth)
    z = _z_scores(fit, truth)
    assert all(abs(v) < 3.5 for v in z.values()), z


def test_bundled_sets_coverage(bundled_fits):
    z = [v for name, fit in bundled_fits.items()
         for v in _z_scores(fit, _true_values(pmxgen.datasets.truth(name))).values()]
    coverage = np.mean(np.abs(z) <= Z95)
    # Measured 32/37 = 86.5 % (see the module docstring for what the five misses are).
    assert len(z) == 37 and coverage >= 0.85
