r"""Score matching, energy-based models and Langevin sampling for tabular data.

One module per responsibility:

* :mod:`.losses` — score-matching losses of a score s(x) = ∇ log p(x) (or of an energy, s = −∇E):
  explicit (Hyvärinen 2005), sliced and SSM-VR (Song et al. 2019), denoising (Vincent 2011) and
  noise-conditional over a geometric noise ladder (Song & Ermon 2019);
* :mod:`.contrastive` — contrastive divergence (Hinton 2002; persistent: Tieleman 2008) with
  Langevin negatives, and noise-contrastive estimation (Gutmann & Hyvärinen 2010);
* :mod:`.energy` — models: :class:`GaussianEnergy`, :class:`EnergyNetwork` (MLP energy, optionally
  noise-conditional), :class:`NoiseConditionalScoreNetwork`;
* :mod:`.fit` — :func:`fit_energy` (Adam or L-BFGS, seeded, optional early stopping);
* :mod:`.langevin` — samplers on tensors ``[B, D]``: :func:`ula`, :func:`mala`,
  :func:`annealed_langevin`.

Everything is batched, float64 by default, runs on the device of its inputs and takes a seed or
a ``torch.Generator``.

Examples
--------
Fit a noise-conditional energy network to a two-cluster data set and sample it by annealed
Langevin dynamics:

>>> import torch
>>> from pmxgen.generative.score import (EnergyNetwork, NoiseConditionalScoreMatching, annealed_langevin,
...                                      fit_energy, geometric_sigmas)
>>> g = torch.Generator().manual_seed(0)
>>> centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
>>> data = centres[torch.arange(400) % 2] + 0.3 * torch.randn(400, 2, generator=g, dtype=torch.float64)
>>> sigmas = geometric_sigmas(4.0, 0.1, 6)
>>> net = EnergyNetwork(2, hidden=(32, 32), noise_conditional=True, seed=0)
>>> fit = fit_energy(net, data, loss=NoiseConditionalScoreMatching(sigmas), max_iter=200, seed=0)
>>> x = annealed_langevin(net.score, torch.zeros(500, 2, dtype=torch.float64), sigmas, step_scale=0.05,
...                       n_steps_per_level=20, generator=1)
>>> tuple(x.shape)
(500, 2)
"""
from .contrastive import SAMPLERS, ContrastiveDivergence, NoiseContrastiveEstimation
from .energy import ACTIVATIONS, EnergyNetwork, GaussianEnergy, NoiseConditionalScoreNetwork
from .fit import LOSSES, OPTIMIZERS, SCHEDULES, EnergyFit, fit_energy
from .langevin import MALAResult, annealed_langevin, mala, ula
from .losses import (
    PROJECTIONS,
    DenoisingScoreMatching,
    ExplicitScoreMatching,
    Loss,
    NoiseConditionalScoreMatching,
    SlicedScoreMatching,
    denoising_score_matching,
    explicit_score_matching,
    geometric_sigmas,
    noise_conditional_score_matching,
    score_from_energy,
    sliced_score_matching,
)

__all__ = [
    "explicit_score_matching", "sliced_score_matching", "denoising_score_matching",
    "noise_conditional_score_matching", "score_from_energy", "geometric_sigmas", "Loss", "ExplicitScoreMatching",
    "SlicedScoreMatching", "DenoisingScoreMatching", "NoiseConditionalScoreMatching", "PROJECTIONS",
    "ContrastiveDivergence", "NoiseContrastiveEstimation", "SAMPLERS",
    "GaussianEnergy", "EnergyNetwork", "NoiseConditionalScoreNetwork", "ACTIVATIONS",
    "fit_energy", "EnergyFit", "LOSSES", "OPTIMIZERS", "SCHEDULES",
    "ula", "mala", "annealed_langevin", "MALAResult",
]
