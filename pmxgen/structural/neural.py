"""Neural-ODE structural models: right-hand sides that hold small networks next to mechanistic terms.

A :class:`NeuralODEModel` is an :class:`~pmxgen.structural.ODEModel` whose right-hand side
also receives the model's networks (a ``torch.nn.ModuleDict``)::

    rhs(t, A, p, nets) -> dA/dt          # A [B, n_cmt], p {name: [B]}, t [B]

so it may mix mechanistic terms and network terms, e.g. pmxNODE's
``dA/dt = NN_c(A) + DOSE·NN_t(t)`` or mechanistic elimination plus a neural absorption rate.
Dosing (bolus, infusion, ADDL, SS, lag, F, resets) is ODEModel's event engine, unchanged;
all subjects are integrated in one batched solve per event interval, on the batch's device.

**Networks are population parameters.** ``model.networks`` holds them;
``NLMEModel(neural_model, ...)`` picks them up (merged with its own ``networks=``), so FO,
FOCE, FOCE-I, Laplace (L-BFGS with θ) and variational EM (Adam) fit them, with
``weight_decay=`` as a Gaussian prior. :func:`mlp` builds float64 MLPs whose last layer
starts at zero: the network term starts at exactly 0 and the mechanistic part dominates.

**Random effects on networks** enter through individual parameters that the right-hand
side reads from ``p``:

* on an output: ``exp(η)·NN(x)`` (a parameter ``S_i = exp(η_S)`` multiplying the output);
* on an input: ``NN(x·exp(η))`` or ``NN(x + η)`` (e.g. an individual time scale);
* on selected weights: call the layers yourself and perturb the chosen weight per subject,
  e.g. for the last layer ``w`` of ``net = mlp((1, 8, 1))``: ``hidden = net[:-1](x)`` then
  ``out = (hidden * (w_row * (1 + p["ETA_W"])[:, None])).sum(-1) + bias`` (a per-subject copy
  of the weights, batched; see :func:`pmxnode_example1` for outputs and inputs).

**Gradients.** ``gradient="backprop"`` (default) differentiates through pmxgen's batched
Dormand–Prince solver (:mod:`.dopri5`); it supports the higher derivatives that FOCE,
FOCE-I and Laplace take through the predictions. ``gradient="adjoint"`` solves with
``torchdiffeq.odeint_adjoint`` (``adjoint_params`` = the networks' weights and every
parameter tensor the right-hand side reads), which gives first derivatives in memory
independent of the number of solver steps; it suits first-order fitting (VEM, Adam) of long
or stiff-free large systems. A second derivative through the adjoint raises
:class:`~pmxgen.errors.ModelError` (never a silently wrong one). Backprop is the default because
it is faster for the small systems of pharmacometrics: on a one-compartment neural ODE with a
1-16-1 tanh network on the pmxNODE data (20 subjects, 6 observations each;
``benchmarks/bench_neural_ode.py``, one thread), predictions plus gradient took 0.033 CPU
seconds by backprop and 0.156 by the adjoint (4.7 × slower).

A network returning NaN or inf, or a solver failure, raises
:class:`~pmxgen.errors.IntegrationError` naming the cause (estimators then penalise a trial
point, or stop with an :class:`~pmxgen.errors.EstimationError` at the initial estimates).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torchdiffeq import odeint_adjoint

from ..errors import IntegrationError, ModelError
from .ode import _ADAPTIVE, ODEModel

__all__ = ["mlp", "NeuralODEModel", "NeuralRHS", "GRADIENTS", "pmxnode_example1", "linear_neural_elimination",
           "neural_absorption"]

#: ``rhs(t, A [B, n_cmt], p {name: [B]}, nets ModuleDict) -> dA/dt [B, n_cmt]``.
NeuralRHS = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor], torch.nn.ModuleDict], torch.Tensor]
#: Ways to differentiate through the solver.
GRADIENTS = ("backprop", "adjoint")

_ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "softplus": torch.nn.Softplus,
                "elu": torch.nn.ELU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "sigmoid": torch.nn.Sigmoid}


def mlp(sizes: Sequence[int], *, activation: str = "tanh", zero_last: bool = True, seed: int = 0,
        bias: bool = True, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
        ) -> torch.nn.Sequential:
    """A multilayer perceptron ``sizes[0] → … → sizes[-1]`` (float64), reproducible from ``seed``.

    Hidden layers are initialised as PyTorch's ``Linear`` (uniform in ±1/√fan_in) from a
    generator seeded with ``seed``; with ``zero_last`` the last layer's weights and bias are 0,
    so the network outputs exactly 0 at first (the mechanistic part of a model dominates)
    while its gradient with respect to the last layer is not zero.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first; at least two.
    activation : str
        ``tanh`` (default), ``relu``, ``softplus``, ``elu``, ``gelu``, ``silu`` or ``sigmoid``,
        between layers (none after the last).
    zero_last : bool
        Start the last layer at zero.
    seed : int
        Seed of the initial weights.
    bias : bool
        Layers with biases.

    Examples
    --------
    >>> import torch
    >>> net = mlp((1, 8, 1), seed=3)
    >>> x = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None]
    >>> net(x).abs().max().item(), sum(p.numel() for p in net.parameters()), next(net.parameters()).dtype
    (0.0, 25, torch.float64)
    >>> bool(torch.equal(mlp((1, 8, 1), seed=3)[0].weight, net[0].weight))
    True
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ModelError(f"mlp sizes must be at least two positive widths (found {sizes})")
    if activation not in _ACTIVATIONS:
        raise ModelError(f"unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}")
    gen = torch.Generator().manual_seed(int(seed))
    layers: list[torch.nn.Module] = []
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layer = torch.nn.Linear(fan_in, fan_out, bias=bias, dtype=dtype)
        last = k == len(sizes) - 2
        with torch.no_grad():
            if last and zero_last:
                layer.weight.zero_()
                if bias:
                    layer.bias.zero_()
            else:
                bound = fan_in ** -0.5
                layer.weight.copy_((torch.rand(fan_out, fan_in, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
                if bias:
                    layer.bias.copy_((torch.rand(fan_out, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
        layers.append(layer)
        if not last:
            layers.append(_ACTIVATIONS[activation]())
    net = torch.nn.Sequential(*layers)
    return net.to(device) if device is not None else net


class _AdjointSolve(torch.autograd.Function):
    """``solve(y, tensors) -> y(1)`` by the adjoint method, as one autograd node with first derivatives only.

    The solve runs on detached leaf copies of ``y`` and of every tensor the right-hand side
    reads, so that the adjoint gives each one's partial derivative (the tensors may depend on
    each other upstream, e.g. an interval's start and length both on a lag time: passed to
    ``odeint_adjoint`` as they are, such a shared path would be counted twice); autograd then
    chains the partial derivatives back through their own graphs. The backward refuses to build
    a graph, i.e. a second derivative, with a clear error instead of a silently wrong one.
    """

    @staticmethod
    def forward(ctx, solve, n_weights, y, *tensors):
        # the last n_weights tensors are network weights: leaves already, used by solve as they are
        cut = len(tensors) - n_weights
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in (y, *tensors[:cut])]
        with torch.enable_grad():
            out = solve(leaves[0], leaves[1:])
        ctx.out, ctx.leaves = out, leaves + list(tensors[cut:])
        return out.detach()

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise ModelError("gradient='adjoint' gives first derivatives only, and a second derivative through "
                             "the ODE solver was asked for (FO/FOCE/FOCE-I/Laplace linearise the predictions in η): "
                             "use gradient='backprop' for these estimators, or fit with VEM")
        wanted = [leaf for leaf in ctx.leaves if leaf.requires_grad]
        # retain_graph: the outer graph may be differentiated again (retain_graph=True there)
        found = iter(torch.autograd.grad(ctx.out, wanted, grad, allow_unused=True, retain_graph=True) if wanted else ())
        grads = [next(found) if leaf.requires_grad else None for leaf in ctx.leaves]
        return (None, None, *grads)


class NeuralODEModel(ODEModel):
    """An ODE structural model whose right-hand side may hold ``torch.nn.Module`` networks.

    Parameters
    ----------
    rhs : callable
        ``rhs(t, A, p, nets) -> dA/dt`` for a batch (see :data:`NeuralRHS`): ``nets`` is
        :attr:`networks`, so the networks used are the ones estimators fit.
    compartments, parameter_names
        As :class:`ODEModel` (parameters the right-hand side reads from ``p``, e.g. an η-scaled
        network output or covariates such as DOSE passed through ``individual``).
    networks : torch.nn.Module or dict of them
        The networks (held as a float64 ``ModuleDict``, moved to the batch's device when used).
    gradient : str
        ``"backprop"`` (default, faster for small systems, supports higher derivatives) or
        ``"adjoint"`` (``torchdiffeq.odeint_adjoint``; first derivatives only). See the module docs.
    **options
        Any :class:`ODEModel` keyword (``scale``, ``method``, ``rtol``, ``atol``, ``max_steps``,
        ``default_dose_cmt``, ``default_obs_cmt``, ``initial``, ``name``, ...).

    Examples
    --------
    Linear elimination written as a network ``dA/dt = W·A`` with ``W = -CL/V`` reproduces the
    closed-form one-compartment model:

    >>> import torch, pandas as pd, pmxgen
    >>> ds = pmxgen.read_nonmem(pd.DataFrame({"ID": [1, 1, 1], "TIME": [0.0, 1.0, 4.0], "AMT": [100.0, 0, 0],
    ...                                       "DV": [float("nan"), 1.0, 1.0]}))
    >>> net = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    >>> _ = torch.nn.init.constant_(net.weight, -0.2)
    >>> model = NeuralODEModel(lambda t, a, p, nets: nets["k"](a), ("central",), ("V",), networks={"k": net},
    ...                        scale={1: "V"})
    >>> neural = model.predict({"V": torch.tensor(10.0)}, ds.batch)
    >>> exact = pmxgen.get_model("1cmt_iv").predict({"CL": torch.tensor(2.0), "V": torch.tensor(10.0)}, ds.batch)
    >>> bool(torch.allclose(neural, exact, rtol=1e-7))
    True
    """

    def __init__(self, rhs: NeuralRHS, compartments: tuple[str, ...], parameter_names: tuple[str, ...], *,
                 networks: torch.nn.Module | Mapping[str, torch.nn.Module] | None = None,
                 gradient: str = "backprop", name: str = "neural_ode", **options) -> None:
        if gradient not in GRADIENTS:
            raise ModelError(f"gradient must be one of {', '.join(GRADIENTS)} (found {gradient!r})")
        if not callable(rhs):
            raise ModelError(f"rhs must be a callable rhs(t, A, p, nets) (found {type(rhs).__name__})")
        super().__init__(self._call_rhs, compartments, parameter_names, name=name, **options)
        self.neural_rhs = rhs
        self.gradient = gradient
        if networks is None:
            networks = {}
        if isinstance(networks, torch.nn.Module) and not isinstance(networks, torch.nn.ModuleDict):
            networks = {"network": networks}
        try:
            self.networks = torch.nn.ModuleDict(dict(networks)).to(torch.float64)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"networks must be a torch.nn.Module or a dict name -> torch.nn.Module ({exc})") from None

    def _call_rhs(self, t, a, p):
        return self.neural_rhs(t, a, p, self.networks)

    def predict(self, params, batch):
        """Predictions ``[N, J]`` (see :meth:`ODEModel.predict`); networks move to the batch's device."""
        first = next(self.networks.parameters(), None)
        if first is not None and first.device != batch.device:
            self.networks.to(batch.device)
        return super().predict(params, batch)

    # ------------------------------------------------------------------ solve
    def _advance(self, y, t0, delta, infusion, p):
        try:
            if self.gradient == "adjoint" and torch.is_grad_enabled() and bool((delta > 0).any()):
                return self._advance_adjoint(y, t0, delta, infusion, p)
            return super()._advance(y, t0, delta, infusion, p)
        except IntegrationError as exc:
            raise IntegrationError(self._diagnose(y, t0, p, exc)) from exc
        except ArithmeticError as exc:     # e.g. the step-size selection dividing by a zero step (an infinite rhs)
            raise IntegrationError(self._diagnose(y, t0, p, IntegrationError(
                f"{self.name}: the {self.method} solver failed ({type(exc).__name__}: {exc})"))) from exc

    def _advance_adjoint(self, y, t0, delta, infusion, p):
        names = list(p)
        nets = list(self.networks.parameters())
        method = self.method
        options = ({"max_num_steps": self.max_steps} if method in _ADAPTIVE else {"step_size": 1.0 / self.fixed_steps})
        grid = torch.tensor([0.0, 1.0], dtype=y.dtype, device=y.device)

        def solve(y0, tensors):
            t0_, delta_, infusion_ = tensors[:3]
            p_ = dict(zip(names, tensors[3:3 + len(names)]))
            d = delta_.unsqueeze(-1)

            def field(s, state):
                return d * (self.rhs(t0_ + s * delta_, state, p_) + infusion_)

            adjoint_params = tuple(t for t in (*tensors, *nets) if t.requires_grad)   # all independent leaves
            return odeint_adjoint(field, y0, grid, rtol=self.rtol, atol=self.atol, method=method, options=options,
                                  adjoint_params=adjoint_params)[-1]

        try:
            out = _AdjointSolve.apply(solve, len(nets), y, t0, delta, infusion, *(p[k] for k in names), *nets)
        except (AssertionError, RuntimeError) as exc:
            raise IntegrationError(f"{self.name}: the adjoint {method} solver failed ({exc}); check the parameters, "
                                   f"loosen rtol/atol, or raise max_steps") from exc
        if not bool(torch.isfinite(out).all()):
            raise IntegrationError(f"{self.name}: the solution became non-finite")
        return out

    def _diagnose(self, y, t0, p, exc) -> str:
        """The failure's message, naming a non-finite right-hand side (e.g. a network's NaN) when there is one."""
        with torch.no_grad():
            try:
                f = self.rhs(t0, y, p)
            except Exception:          # the message below is about exc; a second failure adds nothing
                f = None
        if f is not None and not bool(torch.isfinite(f).all()):
            bad = torch.nonzero(~torch.isfinite(f).all(-1)).flatten().tolist()
            return (f"{self.name}: the right-hand side returned a non-finite value (NaN or inf) at the start of an "
                    f"interval for batch rows {bad[:5]} (t = {float(t0[bad[0]]):g}): a network output or "
                    f"a parameter is not finite. Check the network weights and inputs (scale them), and the "
                    f"individual parameters ({exc})")
        return (f"{exc}. With networks in the right-hand side, a network returning NaN/inf or a very steep one "
                f"also causes this: check the network weights and inputs")


# ----------------------------------------------------------------------- example models
def pmxnode_example1(hidden: int = 5, *, activation: str = "tanh", seed: int = 0, amount_scale: float = 10.0,
                     time_scale: float = 24.0, **options) -> NeuralODEModel:
    """pmxNODE's example 1: ``dA/dt = S_C·NN_c(A) + DOSE·NN_t(t·S_T)``, ``Cc = A/V`` (IV bolus into A).

    ``NN_c`` (1-``hidden``-1) and ``NN_t`` (1-``hidden``-1) start at zero. Parameters: ``V``,
    ``DOSE`` (the covariate, passed through ``individual``), ``S_C`` (scales ``NN_c``'s output:
    put an η on it) and ``S_T`` (scales ``NN_t``'s time input: an η on an input). Inputs are
    divided by ``amount_scale`` and ``time_scale`` so the networks see values of order 1.

    Examples
    --------
    >>> model = pmxnode_example1(seed=1)
    >>> model.parameter_names, sorted(model.networks)
    (('V', 'DOSE', 'S_C', 'S_T'), ['nn_c', 'nn_t'])
    """
    nets = {"nn_c": mlp((1, hidden, 1), activation=activation, seed=seed),
            "nn_t": mlp((1, hidden, 1), activation=activation, seed=seed + 1)}

    def rhs(t, a, p, nn):
        d_c = p["S_C"].unsqueeze(-1) * nn["nn_c"](a / amount_scale)
        d_t = p["DOSE"].unsqueeze(-1) * nn["nn_t"]((t * p["S_T"] / time_scale).unsqueeze(-1))
        return d_c + d_t

    options.setdefault("scale", {1: "V"})
    return NeuralODEModel(rhs, ("central",), ("V", "DOSE", "S_C", "S_T"), networks=nets,
                          name=options.pop("name", "pmxnode_example1"), **options)


def linear_neural_elimination(hidden: int = 8, *, activation: str = "tanh", seed: int = 0,
                              concentration_scale: float = 1.0, **options) -> NeuralODEModel:
    """One compartment, linear elimination plus a neural term: ``dA/dt = -CL/V·A + V·S_N·NN(C/c_s)``, ``C = A/V``.

    Parameters ``CL``, ``V``, ``S_N`` (scales the network's output; an η on it is an η on an
    output). With the zero-initialised network it is exactly the linear model at first.

    Examples
    --------
    >>> linear_neural_elimination().parameter_names
    ('CL', 'V', 'S_N')
    """
    net = mlp((1, hidden, 1), activation=activation, seed=seed)

    def rhs(t, a, p, nn):
        v = p["V"].unsqueeze(-1)
        c = a / v
        return -p["CL"].unsqueeze(-1) * c + v * p["S_N"].unsqueeze(-1) * nn["nn"](c / concentration_scale)

    options.setdefault("scale", {1: "V"})
    return NeuralODEModel(rhs, ("central",), ("CL", "V", "S_N"), networks={"nn": net},
                          name=options.pop("name", "1cmt_iv_linear_plus_nn"), **options)


def neural_absorption(hidden: int = 8, *, activation: str = "tanh", seed: int = 0, time_scale: float = 24.0,
                      **options) -> NeuralODEModel:
    """Mechanistic elimination with a neural absorption rate: depot (CMT 1) → central (CMT 2).

    ``r = A_depot·(KA + NN(t/t_s))`` enters the central compartment, which is
    eliminated linearly (``CL/V``); observed ``A_central/V``. Parameters ``KA``, ``CL``, ``V``.

    Examples
    --------
    >>> import torch, pandas as pd, pmxgen
    >>> ds = pmxgen.read_nonmem(pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 2.0], "AMT": [100.0, 0],
    ...                                       "DV": [float("nan"), 1.0], "CMT": [1, 2]}))
    >>> p = {"KA": torch.tensor(1.0), "CL": torch.tensor(2.0), "V": torch.tensor(10.0)}
    >>> neural = neural_absorption().predict(p, ds.batch)            # network 0: the 1cmt oral model
    >>> bool(torch.allclose(neural, pmxgen.get_model("1cmt_oral").predict(p, ds.batch), rtol=1e-7))
    True
    """
    net = mlp((1, hidden, 1), activation=activation, seed=seed)

    def rhs(t, a, p, nn):
        rate = p["KA"] + nn["nn_a"]((t / time_scale).unsqueeze(-1))[:, 0]
        absorbed = rate * a[:, 0]
        return torch.stack([-absorbed, absorbed - p["CL"] / p["V"] * a[:, 1]], dim=-1)

    options.setdefault("scale", {2: "V"})
    options.setdefault("default_obs_cmt", 2)
    return NeuralODEModel(rhs, ("depot", "central"), ("KA", "CL", "V"), networks={"nn_a": net},
                          name=options.pop("name", "1cmt_oral_neural_absorption"), **options)
