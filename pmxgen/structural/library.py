"""Built-in structural models by name (for the CLI and for model files)."""
from __future__ import annotations

from typing import Callable

import torch

from .base import StructuralModel
from .closed_form import (OneCompartmentIV, OneCompartmentOral, ThreeCompartmentIV, ThreeCompartmentOral,
                          TwoCompartmentIV, TwoCompartmentOral)
from .ode import ODEModel, indirect_response_rhs, michaelis_menten_oral_rhs, michaelis_menten_rhs

__all__ = ["MODELS", "get_model"]


def _mm_iv() -> ODEModel:
    return ODEModel(michaelis_menten_rhs, ("central",), ("VM", "KM", "V"), scale={1: "V"}, name="1cmt_iv_mm")


def _mm_oral() -> ODEModel:
    return ODEModel(michaelis_menten_oral_rhs, ("depot", "central"), ("KA", "VM", "KM", "V"), default_dose_cmt=1,
                    default_obs_cmt=2, scale={2: "V"}, name="1cmt_oral_mm")


def _indirect_response() -> ODEModel:
    return ODEModel(indirect_response_rhs, ("central", "response"), ("CL", "V", "KIN", "KOUT", "IMAX", "IC50"),
                    default_dose_cmt=1, default_obs_cmt=2, scale={1: "V"},
                    initial=lambda p: torch.stack([torch.zeros_like(p["KIN"]), p["KIN"] / p["KOUT"]], dim=-1),
                    name="idr_inhibit_kin")


#: Name → factory of every built-in structural model.
MODELS: dict[str, Callable[[], StructuralModel]] = {
    "1cmt_iv": OneCompartmentIV,
    "1cmt_oral": OneCompartmentOral,
    "2cmt_iv": TwoCompartmentIV,
    "2cmt_oral": TwoCompartmentOral,
    "3cmt_iv": ThreeCompartmentIV,
    "3cmt_oral": ThreeCompartmentOral,
    "1cmt_iv_mm": _mm_iv,
    "1cmt_oral_mm": _mm_oral,
    "idr_inhibit_kin": _indirect_response,
}


def get_model(name: str) -> StructuralModel:
    """A new instance of the built-in model ``name`` (see :data:`MODELS`).

    Examples
    --------
    >>> get_model("1cmt_oral").parameter_names
    ('KA', 'CL', 'V')
    """
    try:
        return MODELS[name]()
    except KeyError:
        raise KeyError(f"unknown model {name!r}; built-in models are {', '.join(MODELS)}") from None
