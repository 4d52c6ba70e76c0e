"""Network weights as population parameters: flatten, assign, and save or load them safely.

A model's ``networks`` (a ``torch.nn.ModuleDict``, see :class:`~pmxgen.models.PopulationModel`)
hold weights that estimators optimise together with the named θ, Ω and σ. Fitted weights
travel in a :class:`~pmxgen.FitResult` as a name → array mapping and are stored in the
`safetensors <https://huggingface.co/docs/safetensors>`_ format: a header of names, shapes and
dtypes followed by raw numbers, which cannot execute code when read (unlike pickle). Each
stored block carries the SHA-256 of its bytes, so a file changed after the fit is refused.
"""
from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np
import torch

from ..errors import ModelError

__all__ = ["weight_tensors", "weights_vector", "assign_weights_vector", "weights_state", "load_weights_state",
           "weights_to_bytes", "weights_from_bytes", "sha256"]


def weight_tensors(model) -> list[torch.nn.Parameter]:
    """The trainable weights of ``model.networks`` in a fixed order (empty without networks)."""
    nets = getattr(model, "networks", None)
    return list(nets.parameters()) if isinstance(nets, torch.nn.Module) else []


def weights_vector(model) -> torch.Tensor:
    """All weights of ``model`` as one detached float64 vector ``[W]``.

    Examples
    --------
    >>> import pmxgen, torch
    >>> model = pmxgen.build_model("1cmt_oral", error="additive")
    >>> model.networks = {"net": torch.nn.Linear(2, 3)}
    >>> weights_vector(model).shape
    torch.Size([9])
    """
    params = weight_tensors(model)
    if not params:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([p.detach().reshape(-1).to(torch.float64).cpu() for p in params])


def assign_weights_vector(model, vector) -> None:
    """Copy a flat vector (numpy or torch, ``[W]``) into ``model``'s weights, in place."""
    params = weight_tensors(model)
    v = torch.as_tensor(np.asarray(vector, dtype=np.float64) if not isinstance(vector, torch.Tensor) else vector)
    total = sum(p.numel() for p in params)
    if v.numel() != total:
        raise ModelError(f"the weight vector has {v.numel()} entries; the model's networks have {total}")
    start = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(v[start:start + n].reshape(p.shape).to(dtype=p.dtype, device=p.device))
            start += n


def weights_state(model) -> dict[str, np.ndarray]:
    """``{name: float64 array}`` of every weight (names as in ``model.networks.state_dict()``)."""
    nets = getattr(model, "networks", None)
    if not isinstance(nets, torch.nn.Module):
        return {}
    return {name: t.detach().cpu().to(torch.float64).numpy().copy() for name, t in nets.state_dict().items()}


def load_weights_state(model, state: Mapping[str, np.ndarray]) -> None:
    """Set ``model``'s weights from :func:`weights_state` output; names and shapes must match exactly."""
    nets = getattr(model, "networks", None)
    expected = nets.state_dict() if isinstance(nets, torch.nn.Module) else {}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelError(f"the stored network weights do not fit this model: missing {missing or 'none'}, "
                         f"unexpected {extra or 'none'}; rebuild the model the fit was made with")
    converted = {}
    for name, ref in expected.items():
        arr = np.asarray(state[name])
        if tuple(arr.shape) != tuple(ref.shape):
            raise ModelError(f"network weight {name} has shape {tuple(arr.shape)} in the stored fit and "
                             f"{tuple(ref.shape)} in the model; rebuild the model the fit was made with")
        converted[name] = torch.as_tensor(arr, dtype=ref.dtype, device=ref.device)
    nets.load_state_dict(converted)


def weights_to_bytes(state: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors serialization of ``state`` (float64 arrays)."""
    from safetensors.numpy import save
    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them shape (1,))
    return save({k: np.require(np.asarray(v, dtype=np.float64), requirements="C") for k, v in state.items()})


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def weights_from_bytes(data: bytes, *, expected_sha256: str | None = None, source: str = "the weights"
                       ) -> dict[str, np.ndarray]:
    """Parse safetensors bytes (never unpickling) after checking their SHA-256 when one is given.

    Examples
    --------
    >>> import numpy as np
    >>> blob = weights_to_bytes({"w": np.arange(3.0)})
    >>> weights_from_bytes(blob, expected_sha256=sha256(blob))["w"].tolist()
    [0.0, 1.0, 2.0]
    >>> weights_from_bytes(blob[:-1] + b"x", expected_sha256=sha256(blob))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pmxgen.errors.ModelError: ... was changed after the fit ...
    """
    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise ModelError(f"{source} do not match the SHA-256 recorded with the fit: the file was changed after the "
                         f"fit (or belongs to another fit); restore it or refit")
    from safetensors.numpy import load
    try:
        loaded = load(data)
    except Exception as exc:     # the parser's own error types differ between versions
        raise ModelError(f"{source} are not a valid safetensors file ({type(exc).__name__}: {exc})") from None
    return {k: np.asarray(v, dtype=np.float64) for k, v in loaded.items()}
