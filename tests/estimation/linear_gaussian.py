"""A structural model that makes an NLME model linear-Gaussian (for exact reference likelihoods)."""
import torch

from pmxgen.structural.base import StructuralModel


class LinearInTime(StructuralModel):
    """f = A + B·t (ignores doses): with additive η on A and B the model is linear-Gaussian."""

    compartments = ("central",)
    parameters = ("A", "B")
    name = "linear_in_time"

    def predict(self, params, batch):
        p = self.check_parameters(params, batch)
        f = p["A"][:, None] + p["B"][:, None] * batch.obs.time
        return torch.where(batch.obs.mask, f, torch.zeros_like(f))
