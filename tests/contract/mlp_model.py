"""A model with network weights for the contract tests: one-compartment oral, CL = θ_CL · exp(MLP(WT)) · exp(η_CL).

The MLP's last layer starts at zero, so the network term starts at exp(0) = 1 and the
mechanistic model dominates at first. Used as a model file (``pmxgen fit ... --model
tests/contract/mlp_model.py``) and imported by the tests.
"""
import torch

import pmxgen
from pmxgen.models import NLMEModel, Theta


def covariate_network(seed: int = 7) -> torch.nn.Module:
    """WT (scaled) → log-CL shift, 1-4-1 tanh, last layer zero."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(4, 1, generator=gen, dtype=torch.float64))
        net[0].bias.copy_(0.1 * torch.randn(4, generator=gen, dtype=torch.float64))
        net[2].weight.zero_()
        net[2].bias.zero_()
    return net


def build(data=None) -> NLMEModel:
    net = covariate_network()

    def individual(theta, eta, cov):
        wt = (cov["WT"] - 70.0) / 10.0
        shift = net(wt[:, None])[:, 0]
        return {"KA": theta["KA"] * torch.exp(eta["KA"]),
                "CL": theta["CL"] * torch.exp(shift + eta["CL"]),
                "V": theta["V"]}

    return NLMEModel(pmxgen.get_model("1cmt_oral"),
                     theta=[Theta("KA", 1.5, lower=0), Theta("CL", 2.8, lower=0), Theta("V", 32.0, lower=0)],
                     omega={"KA": 0.4, "CL": 0.1}, error={"kind": "additive", "init": {"ADD": 0.5}},
                     individual=individual, networks={"cl_wt": net}, name="1cmt_oral with an MLP of WT on CL")
