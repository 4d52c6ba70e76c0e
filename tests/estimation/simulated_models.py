"""The models fitted to the bundled simulated data sets (shared by the FOCE-I and EM recovery tests)."""
import numpy as np
import torch

import pmxgen
from pmxgen.models import NLMEModel, OmegaBlock, build_model

Z95 = 1.959963984540054


def true_values(truth: dict) -> dict:
    """Parameter name → true value (Ω and σ as variances) from a data set's truth.json."""
    values = dict(truth["theta"])
    om = truth.get("omega_matrix") or {"names": list(truth["omega"]),
                                       "matrix": np.diag(list(truth["omega"].values())).tolist()}
    names = om["names"]
    for i, a in enumerate(names):
        for j in range(i + 1):
            b = names[j]
            if i == j:
                values[f"OMEGA({a})"] = om["matrix"][i][i]
            elif om["matrix"][i][j] != 0:
                values[f"OMEGA({a},{b})"] = om["matrix"][i][j]
    for key, name in (("additive", "SIGMA(ADD)"), ("proportional", "SIGMA(PROP)")):
        if key in truth["error"]:
            values[name] = truth["error"][key] ** 2
    return values


def z_scores(fit, truth_values: dict) -> dict:
    return {name: (fit.estimates[name] - truth_values[name]) / fit.se[name] for name in fit.estimated_names}


def wt_model() -> NLMEModel:
    def individual(theta, eta, cov):
        return {"KA": theta["KA"] * torch.exp(eta["KA"]),
                "CL": theta["CL"] * (cov["WT"] / 70) ** theta["WT_ON_CL"] * torch.exp(eta["CL"]),
                "V": theta["V"] * torch.exp(eta["V"])}

    return NLMEModel(pmxgen.get_model("1cmt_oral"),
                     theta={"KA": (0, 1.0), "CL": (0, 3.0), "V": (0, 30.0), "WT_ON_CL": 0.5},
                     omega={"KA": 0.1, "CL": 0.1, "V": 0.1},
                     error={"kind": "combined", "init": {"ADD": 0.01, "PROP": 0.02}},
                     individual=individual)


def model_for(name: str, data):
    """The model of bundled simulated set ``name`` (the structure that generated it)."""
    if name == "sim_1cmt_oral_wt":
        return wt_model()
    if name == "sim_1cmt_oral_1000":
        base = build_model("1cmt_oral", data, error="combined")
        return NLMEModel(base.structural, theta=list(base.parameter_set.theta), error=base.error,
                         omega=[OmegaBlock(["KA"], [0.1]), OmegaBlock(["CL", "V"], [[0.1, 0.0], [0.0, 0.1]])])
    if name == "sim_mm_oral":
        return build_model("1cmt_oral_mm", data, error="combined", iiv=("KA", "VM", "V"))
    return build_model("2cmt_iv", data, error="combined", iiv=("CL", "V1", "Q", "V2"))


class BreakingModel(NLMEModel):
    """Its likelihood becomes NaN after 50 evaluations, as an ODE solver that blows up mid-run."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def log_likelihood(self, eta, values, batch):
        ll = super().log_likelihood(eta, values, batch)
        self.calls += 1
        return ll if self.calls < 50 else torch.full_like(ll, float("nan"))
