"""Deep generative components of pmxgen.

:mod:`pmxgen.generative.flows`: normalizing flows with a batch of independent flows (one per
subject), used as flexible per-subject distributions such as variational posteriors of η.

:mod:`pmxgen.generative.generator`: one interface for generators of virtual populations
(``fit``/``sample``/``log_prob``/``save``/``load``) over mixed tabular data
(:mod:`pmxgen.generative.tabular`), a registry (:func:`make_generator`), the multivariate normal
baseline (:mod:`pmxgen.generative.baselines`), 2-D toy densities (:mod:`pmxgen.generative.toy`)
and kernel two-sample statistics (:mod:`pmxgen.generative.kernels`). Families, one module each:
Gaussian copula (``copula``), RealNVP and spline flows (``zuko_flows``), residual flows
(``residual_flow``), FFJORD CNF (``cnf``), DDPM (``ddpm``), VP/VE score SDEs (``score_sde``), flow
matching with independent or OT coupling (``flow_matching``), energy-based model with annealed
Langevin (``ebm``), GAN and WGAN-GP (``gan``), BSDE generator (``bsde``), tabular VAE (``vae``).
Sample-based evaluation in :mod:`pmxgen.generative.metrics` and :mod:`pmxgen.generative.two_sample`,
comparison of families in :mod:`pmxgen.generative.comparison`, virtual populations end to end in
:mod:`pmxgen.generative.vpop`.

:mod:`pmxgen.generative.score`: score matching (explicit, sliced, denoising, noise-conditional),
energy-based models (Gaussian energy, energy and score networks) fitted by score matching,
contrastive divergence or noise-contrastive estimation, and Langevin samplers (ULA, MALA,
annealed Langevin).

Examples
--------
>>> import torch
>>> from pmxgen.generative import build_flow
>>> flow = build_flow("affine+planar*2", dim=3, batch_shape=(4,))
>>> flow.dim, flow.batch_shape
(3, (4,))
>>> from pmxgen.generative import GaussianEnergy, fit_energy
>>> x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> model = GaussianEnergy(2)
>>> _ = fit_energy(model, x, loss="explicit", optimizer="lbfgs", max_iter=50)
>>> bool(torch.allclose(model.mean, x.mean(0)))
True
"""
from .flows import (
    FLOW_TYPES,
    AffineCouplingFlow,
    AffineFlow,
    ComposedFlow,
    Flow,
    FlowDistribution,
    PlanarFlow,
    RadialFlow,
    build_flow,
)
from .generator import (
    GENERATORS,
    Generator,
    generator_class,
    generator_names,
    load_generator,
    make_generator,
    register_generator,
)
from .copula import GaussianCopulaGenerator
from .ddpm import DDPMGenerator
from .ebm import EnergyBasedGenerator
from .flow_matching import FlowMatchingGenerator
from .score_sde import ScoreSDEGenerator
from .kernels import median_bandwidth, mmd2, multiscale_bandwidths
from .metrics import (TableEncoding, correlation_error, encode_tables, energy_distance, evaluate, heldout_nll,
                      precision_recall, sliced_wasserstein, wasserstein2)
from .two_sample import TestResult, classifier_two_sample_test, marginal_tests, mmd_test
from .comparison import GeneratorComparison, baseline_check, compare_generators
from .tabular import ColumnSpec, TabularSchema, TabularTransform
from .vpop import GeneratedPopulation, generate_population, read_covariates
from .toy import TOY_DENSITIES, sample_toy, toy_entropy, toy_log_prob
from .zuko_flows import RealNVPGenerator, SplineFlowGenerator
from .residual_flow import ResidualFlowGenerator
from .cnf import CNFGenerator
from .gan import GANGenerator, WGANGPGenerator, gradient_penalty
from .bsde import BSDEGenerator
from .vae import TabularVAEGenerator
from .score import (
    ContrastiveDivergence,
    DenoisingScoreMatching,
    EnergyFit,
    EnergyNetwork,
    ExplicitScoreMatching,
    GaussianEnergy,
    Loss,
    NoiseConditionalScoreMatching,
    NoiseConditionalScoreNetwork,
    NoiseContrastiveEstimation,
    SlicedScoreMatching,
    annealed_langevin,
    denoising_score_matching,
    explicit_score_matching,
    fit_energy,
    geometric_sigmas,
    mala,
    noise_conditional_score_matching,
    score_from_energy,
    sliced_score_matching,
    ula,
)

__all__ = ["Flow", "AffineFlow", "PlanarFlow", "RadialFlow", "AffineCouplingFlow", "ComposedFlow", "build_flow",
           "FLOW_TYPES", "FlowDistribution",
           # score matching, energy-based models, Langevin sampling (pmxgen.generative.score)
           "explicit_score_matching", "sliced_score_matching", "denoising_score_matching",
           "noise_conditional_score_matching", "score_from_energy", "geometric_sigmas", "Loss",
           "ExplicitScoreMatching", "SlicedScoreMatching", "DenoisingScoreMatching", "NoiseConditionalScoreMatching",
           "ContrastiveDivergence", "NoiseContrastiveEstimation", "GaussianEnergy", "EnergyNetwork",
           "NoiseConditionalScoreNetwork", "fit_energy", "EnergyFit", "ula", "mala", "annealed_langevin",
           # generators of virtual populations
           "Generator", "GENERATORS", "register_generator", "make_generator", "generator_names", "generator_class",
           "load_generator", "ColumnSpec", "TabularSchema", "TabularTransform", "mmd2", "median_bandwidth",
           "multiscale_bandwidths", "TOY_DENSITIES", "sample_toy", "toy_log_prob", "toy_entropy"]

# sample-based evaluation and comparison of generators (pmxgen.generative.metrics, .two_sample, .comparison)
__all__ += ["TableEncoding", "encode_tables", "energy_distance", "sliced_wasserstein", "wasserstein2",
            "correlation_error", "precision_recall", "heldout_nll", "evaluate", "TestResult", "mmd_test",
            "classifier_two_sample_test", "marginal_tests", "compare_generators", "GeneratorComparison",
            "baseline_check"]

# Gaussian copula baseline and virtual populations end to end (pmxgen.generative.copula, .vpop)
__all__ += ["GaussianCopulaGenerator", "generate_population", "read_covariates", "GeneratedPopulation"]

# diffusion, score SDE, flow matching, EBM generators
__all__ += ["DDPMGenerator", "ScoreSDEGenerator", "FlowMatchingGenerator", "EnergyBasedGenerator"]

# GAN, WGAN-GP, BSDE generator and tabular VAE (pmxgen.generative.gan, .bsde, .vae)
__all__ += ["GANGenerator", "WGANGPGenerator", "gradient_penalty", "BSDEGenerator", "TabularVAEGenerator"]

# normalizing flows and continuous normalizing flows as generators (.zuko_flows, .residual_flow, .cnf)
__all__ += ["RealNVPGenerator", "SplineFlowGenerator", "ResidualFlowGenerator", "CNFGenerator"]
