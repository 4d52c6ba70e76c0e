"""One interface for every generator of virtual populations: fit, sample, log_prob, save, load.

A :class:`Generator` models the rows of a table (covariates, individual parameters, whole
profiles): ``fit(data, conditions=None)`` learns their joint distribution (or the conditional
one given the ``conditions`` columns), ``sample(n, conditions=None, seed=None)`` draws new rows,
``log_prob(x)`` gives their log density in the data's own units where the family has one, and
``save``/``load`` keep a fitted generator in one safetensors file (tensors and a JSON header;
nothing is unpickled).

The data side is shared (:mod:`.tabular`): typed columns, bounds, discrete columns, missing
values refused, a seeded held-out split. A family only provides its mathematics on the
standardised encoding:

- ``_build(dim, cond_dim) -> torch.nn.Module`` — its parameters and buffers (all that ``save`` keeps);
- ``_loss(x, c) -> scalar`` — the training loss of a minibatch (the default trainer minimises it
  with Adam, evaluates it on the held-out split each epoch, stops early and keeps the best state);
- ``_sample(n, c, generator) -> [n, dim]``;
- ``_log_prob(x, c) -> [n]`` where ``tractable_log_prob`` is true;
- or ``_train(...)`` instead of ``_loss`` for families trained otherwise (closed forms, GANs).

Families register themselves with :func:`register_generator`; :func:`make_generator` and the
command line (``pmxgen generate --model NAME``) read that registry.

Examples
--------
>>> import torch
>>> from pmxgen.generative import make_generator
>>> x = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 + 1
>>> gen = make_generator("mvn").fit(x)
>>> gen.status_
'converged'
>>> draws = gen.sample(4000, seed=1)
>>> draws.shape
torch.Size([4000, 2])
>>> bool((draws.mean(0) - x.mean(0)).abs().max() < 0.15)
True
"""
from __future__ import annotations

import inspect
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ConvergenceWarning, DatasetError, ModelError
from .tabular import TabularSchema, TabularTransform, as_frame

__all__ = ["Generator", "register_generator", "make_generator", "generator_names", "generator_class",
           "load_generator", "GENERATORS"]

#: name → Generator subclass (filled by :func:`register_generator`).
GENERATORS: dict[str, type["Generator"]] = {}

_FAMILY_MODULES = ("baselines", "copula", "ddpm", "score_sde", "flow_matching", "ebm", "gan", "bsde", "vae",
                  "zuko_flows", "residual_flow", "cnf")


def register_generator(cls: type["Generator"]) -> type["Generator"]:
    """Class decorator: make a :class:`Generator` subclass available by its ``name``."""
    if not cls.name or not cls.name.replace("_", "").isalnum():
        raise ModelError(f"{cls.__name__}.name must be a non-empty identifier (found {cls.name!r})")
    if cls.name in GENERATORS and GENERATORS[cls.name] is not cls:
        raise ModelError(f"a generator named {cls.name!r} is already registered ({GENERATORS[cls.name].__name__})")
    GENERATORS[cls.name] = cls
    return cls


def _load_families() -> None:
    import importlib
    for module in _FAMILY_MODULES:
        importlib.import_module(f"pmxgen.generative.{module}")


def generator_names() -> list[str]:
    """Names of the registered generators, sorted."""
    _load_families()
    return sorted(GENERATORS)


def generator_class(name: str) -> type["Generator"]:
    """The registered class called ``name`` (a :class:`ModelError` lists the names otherwise)."""
    _load_families()
    if name not in GENERATORS:
        raise ModelError(f"unknown generator {name!r}; choose one of {sorted(GENERATORS)}")
    return GENERATORS[name]


def make_generator(name: str, **params) -> "Generator":
    """A new, unfitted generator of the registered family ``name`` with hyperparameters ``params``."""
    return generator_class(name)(**params)


def load_generator(path: str | Path) -> "Generator":
    """Load a generator saved with :meth:`Generator.save` (any family)."""
    return Generator.load(path)


class Generator:
    """Base class of generators (see the module docstring for the contract).

    Parameters (shared by every family, keyword only)
    ----------
    max_epochs : int
        Passes over the training split.
    batch_size : int
        Minibatch size.
    learning_rate : float
        Adam step size.
    validation_fraction : float
        Share of the rows held out (seeded) for early stopping; 0 turns early stopping off.
    patience : int
        Epochs without improvement of the held-out loss before stopping ("converged").
    seed : int
        Seeds the split, the initial weights and training noise.
    device : str or torch.device, optional
        Where the tensors live (default CPU).
    bounds : "auto", dict or None
        Column bounds (see :meth:`TabularSchema.infer`).
    categorical : list of str, optional
        Columns to treat as categorical.
    progress : bool
        Print one progress line per epoch to stderr.
    """

    #: Registry name.
    name: ClassVar[str] = ""
    #: Whether :meth:`log_prob` is available.
    tractable_log_prob: ClassVar[bool] = False
    #: Whether the held-out loss needs gradients (e.g. score-matching losses).
    validation_needs_grad: ClassVar[bool] = False

    def __init__(self, *, max_epochs: int = 200, batch_size: int = 256, learning_rate: float = 1e-3,
                 validation_fraction: float = 0.1, patience: int = 20, seed: int = 0, device=None,
                 bounds: Mapping | str | None = "auto", categorical: Sequence[str] | None = None,
                 progress: bool = False) -> None:
        self.max_epochs, self.batch_size, self.learning_rate = max_epochs, batch_size, learning_rate
        self.validation_fraction, self.patience, self.seed = validation_fraction, patience, seed
        self.device, self.bounds, self.categorical, self.progress = device, bounds, categorical, progress
        self.network: torch.nn.Module | None = None
        self.transform_: TabularTransform | None = None

    # -- hyperparameters ------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            for p in inspect.signature(vars(klass)["__init__"]).parameters.values():
                if p.kind is p.KEYWORD_ONLY and p.name not in names:
                    names.append(p.name)
            if klass is Generator:
                break
        return names

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters by name (the keywords of ``__init__``)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "Generator":
        """Change hyperparameters; unknown names raise :class:`ModelError`."""
        known = self._param_names()
        for name, value in params.items():
            if name not in known:
                raise ModelError(f"{type(self).__name__} has no hyperparameter {name!r}; known: {known}")
            setattr(self, name, value)
        return self

    def _validate(self) -> None:
        checks = [("max_epochs", self.max_epochs >= 1), ("batch_size", self.batch_size >= 1),
                  ("learning_rate", self.learning_rate > 0), ("patience", self.patience >= 1),
                  ("validation_fraction", 0 <= self.validation_fraction < 1)]
        for name, ok in checks:
            if not ok:
                raise ModelError(f"{type(self).__name__}: invalid {name}={getattr(self, name)!r}")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else torch.device("cpu")

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, data, conditions: Sequence[str] | None = None, *, source: str = "<data>") -> "Generator":
        """Learn the distribution of ``data`` (DataFrame, array or tensor ``[n, d]``).

        ``conditions`` names columns to condition on (generation then needs their values).
        Sets ``status_`` ("converged": stopped by the held-out criterion or a closed form;
        "max_iterations": the epoch limit ``max_epochs`` came first; "failed": the loss became non-finite — the best
        finite state is kept and a :class:`ConvergenceWarning` says so), ``message_``,
        ``history_`` (per epoch: train and held-out loss), ``fit_time_`` (s).
        """
        self._validate()
        frame, self._fitted_on_frame = as_frame(data, source=source)
        if len(frame) < 2:
            raise DatasetError(f"a generator needs at least 2 rows (found {len(frame)})", source=source)
        bounds = self.bounds if self._fitted_on_frame else None
        schema = TabularSchema.infer(frame, bounds=bounds, categorical=self.categorical, source=source)
        self.transform_ = TabularTransform.fit(schema, frame, conditions, source=source)
        device = self.torch_device
        x = self.transform_.encode(frame, device=device)
        c = self.transform_.encode_conditions(frame[list(conditions)] if conditions else None, device=device)
        x_train, c_train, x_val, c_val = self._split(x, c)
        self._generator = torch.Generator(device=device).manual_seed(self.seed)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            self.network = self._build(self.transform_.dim, self.transform_.cond_dim).to(device=device,
                                                                                        dtype=torch.float64)
        start = time.perf_counter()
        self.status_, self.message_, self.history_ = self._train(x_train, c_train, x_val, c_val)
        self.fit_time_ = time.perf_counter() - start
        if self.status_ == "failed":
            warnings.warn(f"{type(self).__name__}: {self.message_}", ConvergenceWarning, stacklevel=2)
        return self

    def _split(self, x, c):
        n = x.shape[0]
        n_val = int(round(self.validation_fraction * n))
        if self.validation_fraction > 0:
            n_val = min(max(n_val, 1), n - 1)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).to(x.device)
        val, train = order[:n_val], order[n_val:]
        pick = (lambda t, idx: None if t is None else t[idx])
        return x[train], pick(c, train), (x[val] if n_val else None), (pick(c, val) if n_val else None)

    def _train(self, x, c, x_val, c_val) -> tuple[str, str, list[dict]]:
        """Default trainer: Adam on ``_loss`` over shuffled minibatches with dequantised discrete columns,
        early stopping on the held-out loss, best state restored."""
        return train_minibatches(self, self.network.parameters(), self._loss, x, c, x_val, c_val)

    # -- family hooks ---------------------------------------------------------------------------
    def _build(self, dim: int, cond_dim: int) -> torch.nn.Module:
        raise NotImplementedError

    def _loss(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} trains with its own _train")

    def _sample(self, n: int, c: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _log_prob(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    # -- use ------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.network is None or self.transform_ is None:
            raise ModelError(f"{type(self).__name__} is not fitted; call fit(data) first")
        if getattr(self, "status_", None) == "failed":
            raise ModelError(f"{type(self).__name__} failed to train ({self.message_}); refit with other "
                             f"hyperparameters (a smaller learning_rate, for example)")

    def sample(self, n: int, conditions=None, *, seed: int | None = None, chunk_size: int | None = None):
        """``n`` new rows: a DataFrame if fitted on one, else a float64 tensor ``[n, d]``.

        ``conditions``: a dict of one value per condition column, or a DataFrame of ``n`` rows.
        ``chunk_size`` bounds the memory of one step (see :meth:`sample_chunks`).
        """
        chunks = list(self.sample_chunks(n, conditions=conditions, seed=seed, chunk_size=chunk_size or n))
        if self._fitted_on_frame:
            return pd.concat(chunks, ignore_index=True)
        return torch.cat(chunks)

    def sample_chunks(self, n: int, *, conditions=None, seed: int | None = None,
                      chunk_size: int = 100_000) -> Iterator:
        """Yield ``n`` rows in chunks of at most ``chunk_size`` (memory bounded by one chunk).

        Chunk k uses the seed ``(seed, k)``, so a run is reproducible for a given chunk size.
        """
        self._check_fitted()
        if n < 1 or chunk_size < 1:
            raise ModelError(f"n and chunk_size must be >= 1 (found n={n}, chunk_size={chunk_size})")
        seed = self.seed if seed is None else seed
        device = self.torch_device
        frame_conditions = conditions
        for k, start in enumerate(range(0, n, chunk_size)):
            m = min(chunk_size, n - start)
            part = frame_conditions
            if isinstance(conditions, pd.DataFrame):
                if len(conditions) != n:
                    raise ModelError(f"conditions has {len(conditions)} rows; give one per sample ({n})")
                part = conditions.iloc[start:start + m]
            c = self.transform_.encode_conditions(part, m, device=device)
            gen = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + k)
            with torch.no_grad():
                z = self._sample(m, c, gen)
            if not torch.isfinite(z).all():
                raise ModelError(f"{type(self).__name__} generated non-finite values; the fit is unusable "
                                 f"(status {self.status_!r})")
            yield self._output(z, part)

    def _output(self, z: torch.Tensor, conditions):
        frame = self.transform_.decode(z)
        if not self._fitted_on_frame:
            return torch.tensor(frame.to_numpy(dtype=np.float64))
        if self.transform_.conditions:
            given = (pd.DataFrame({k: [v] * len(frame) for k, v in conditions.items()})
                     if isinstance(conditions, Mapping) else conditions.reset_index(drop=True))
            frame = pd.concat([given[list(self.transform_.conditions)].reset_index(drop=True), frame], axis=1)
            frame = frame[list(self.transform_.schema.names)]
        return frame

    def log_prob(self, data, conditions=None) -> torch.Tensor:
        """Log density of rows in the data's own units (float64 ``[n]``), for tractable families.

        Needs every modelled column continuous (condition on discrete columns otherwise).
        """
        self._check_fitted()
        if not self.tractable_log_prob:
            raise ModelError(f"{type(self).__name__} has no tractable log density; compare it by sample-based "
                             f"metrics (pmxgen.generative.metrics)")
        x, c, logdet = self._encode_rows(data, conditions)
        with torch.no_grad():
            return self._log_prob(x, c) + logdet

    def _encode_rows(self, data, conditions=None):
        """Rows in data units → ``(x, c, log|d encode/d data|)`` on the generator's device (for densities)."""
        frame, _ = as_frame(data)
        if not self._fitted_on_frame:
            frame.columns = list(self.transform_.modelled)
        logdet = self.transform_.log_abs_det_jacobian(frame).to(self.torch_device)
        x = self.transform_.encode(frame, device=self.torch_device)
        if conditions is None and self.transform_.conditions:
            conditions = frame[list(self.transform_.conditions)]
        c = self.transform_.encode_conditions(conditions, len(frame), device=self.torch_device)
        return x, c, logdet

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted generator to one safetensors file (weights + JSON header); returns the path."""
        from safetensors.torch import save_file
        self._check_fitted()
        params = {k: v for k, v in self.get_params().items() if k != "device"}
        header = {"family": self.name, "params": params, "transform": self.transform_.to_json(),
                  "fitted_on_frame": self._fitted_on_frame, "status": self.status_, "message": self.message_,
                  "fit_time": self.fit_time_, "history": self.history_}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        path = Path(path)
        save_file(tensors, str(path), metadata={"pmxgen_generator": json.dumps(header, default=_json_default)})
        return path

    @classmethod
    def load(cls, path: str | Path, *, device=None) -> "Generator":
        """Read a file written by :meth:`save` (checked; a file of another kind is refused)."""
        from safetensors import SafetensorError
        from safetensors.torch import safe_open
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path}: not a generator file written by Generator.save ({exc})") from None
        if "pmxgen_generator" not in meta:
            raise ModelError(f"{path}: a safetensors file without a pmxgen generator header")
        header = json.loads(meta["pmxgen_generator"])
        klass = generator_class(header["family"])
        if cls is not Generator and not issubclass(klass, cls):
            raise ModelError(f"{path} holds a {klass.__name__}, not a {cls.__name__}")
        self = klass(**header["params"], device=device)
        self.transform_ = TabularTransform.from_json(header["transform"])
        self._fitted_on_frame = header["fitted_on_frame"]
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.network = self._build(self.transform_.dim, self.transform_.cond_dim)
        self.network.load_state_dict(tensors)
        self.network.to(device=self.torch_device, dtype=torch.float64)
        self.status_, self.message_ = header["status"], header["message"]
        self.fit_time_, self.history_ = header["fit_time"], header["history"]
        return self

    def __repr__(self) -> str:
        state = getattr(self, "status_", "unfitted")
        return f"{type(self).__name__}({self.name}, {state})"


def _json_default(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a generator file")


def train_minibatches(gen: Generator, parameters, loss_fn: Callable, x, c, x_val, c_val, *,
                      optimizer: torch.optim.Optimizer | None = None) -> tuple[str, str, list[dict]]:
    """Adam (or ``optimizer``) on ``loss_fn(x_batch, c_batch)`` with early stopping; returns (status, message, history).

    Every epoch draws a new shuffle and new dequantisation noise from the generator's seeded
    ``torch.Generator``. The held-out loss (noise-free midpoints) decides early stopping; the
    state with the best held-out loss (the last state without a held-out split) is restored.
    """
    params = list(parameters)
    opt = optimizer or torch.optim.Adam(params, lr=gen.learning_rate)
    rng = gen._generator
    n = x.shape[0]
    best, best_state, bad_epochs, history = math.inf, None, 0, []
    for epoch in range(gen.max_epochs):
        order = torch.randperm(n, generator=rng, device=rng.device).to(x.device)
        total = 0.0
        for start in range(0, n, gen.batch_size):
            idx = order[start:start + gen.batch_size]
            xb = gen.transform_.dequantize(x[idx], rng)
            loss = loss_fn(xb, None if c is None else c[idx])
            if not torch.isfinite(loss):
                if best_state is not None:
                    gen.network.load_state_dict(best_state)
                return "failed", f"the training loss became {float(loss.detach())} at epoch {epoch + 1}", history
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        record = {"epoch": epoch + 1, "train": total / n}
        if x_val is not None:
            with torch.set_grad_enabled(gen.validation_needs_grad):
                record["validation"] = float(loss_fn(x_val, c_val))
        history.append(record)
        if gen.progress:
            print(f"\r{gen.name}: epoch {epoch + 1}/{gen.max_epochs} train {record['train']:.4f}"
                  + (f" held-out {record['validation']:.4f}" if x_val is not None else ""),
                  end="", file=sys.stderr, flush=True)
        score = record.get("validation", record["train"])
        if not math.isfinite(score):
            continue
        if best_state is None or score < best - 1e-9 * max(1.0, abs(best)):
            best, bad_epochs = score, 0
            best_state = {k: v.detach().clone() for k, v in gen.network.state_dict().items()}
        else:
            bad_epochs += 1
        if x_val is not None and bad_epochs >= gen.patience:
            gen.network.load_state_dict(best_state)
            _end_progress(gen)
            return "converged", (f"held-out loss did not improve for {gen.patience} epochs; best "
                                 f"{best:.6g} kept (epoch {epoch + 1 - bad_epochs})"), history
    if best_state is not None and x_val is not None:
        gen.network.load_state_dict(best_state)
    _end_progress(gen)
    return "max_iterations", f"stopped at max_epochs={gen.max_epochs}; best held-out loss {best:.6g} kept", history


def _end_progress(gen: Generator) -> None:
    if gen.progress:
        print(file=sys.stderr)
