"""The known-truth model of the diagnostics tests (imported by tests, conftest and the calibration script)."""
import torch

#: The model that generates the simulated studies (the design of sim_1cmt_oral_wt: 100 subjects,
#: 100 mg oral, 11 samples 0.25-24 h): 1cmt_oral, IIV on KA, CL, V, combined error; Ω and σ as variances.
TRUTH = {"KA": 1.2, "CL": 4.0, "V": 35.0, "OMEGA(KA)": 0.16, "OMEGA(CL)": 0.09, "OMEGA(V)": 0.04,
         "SIGMA(ADD)": 0.03 ** 2, "SIGMA(PROP)": 0.12 ** 2}


def values_of(model, values: dict):
    """PopulationValues of ``model`` from a dict of natural-scale values by parameter name."""
    ps = model.parameter_set
    return ps.unpack(torch.tensor([float(values[n]) for n in ps.names], dtype=torch.float64))
