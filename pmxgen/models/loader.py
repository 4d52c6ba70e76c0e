"""Load a user's model from a Python file (for ``pmxgen fit DATA --model model.py``)."""
from __future__ import annotations

import runpy
import traceback
from pathlib import Path

from ..errors import ModelError
from .base import PopulationModel

__all__ = ["load_model_file"]


def load_model_file(path: str | Path, data=None) -> PopulationModel:
    """The model a Python file defines.

    The file defines either a variable ``model`` (a :class:`PopulationModel`) or a function
    ``build(data)`` returning one (to use the data, e.g. for initial estimates).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> src = 'import pmxgen\\nmodel = pmxgen.build_model("1cmt_oral", error="additive")\\n'
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "m.py"; _ = f.write_text(src)
    >>> load_model_file(f).parameter_set.names[:3]
    ('KA', 'CL', 'V')
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        namespace = runpy.run_path(str(path))
    except ModelError as exc:
        raise ModelError(f"model file {path}{_where(exc, path)}: {exc}") from exc
    except Exception as exc:
        raise ModelError(f"model file {path} failed to run{_where(exc, path)}: {type(exc).__name__}: {exc}") from exc
    if "build" in namespace and callable(namespace["build"]):
        try:
            model = namespace["build"](data)
        except ModelError as exc:
            raise ModelError(f"model file {path}: build(data){_where(exc, path)}: {exc}") from exc
        except Exception as exc:
            raise ModelError(f"model file {path}: build(data) failed{_where(exc, path)}: {type(exc).__name__}: "
                             f"{exc}") from exc
    elif "model" in namespace:
        model = namespace["model"]
    else:
        raise ModelError(f"model file {path} must define `model = NLMEModel(...)` or a function `build(data)` "
                         f"returning the model")
    if not isinstance(model, PopulationModel):
        raise ModelError(f"model file {path}: the model is a {type(model).__name__}, not a pmxgen PopulationModel")
    model.recipe = {"file": str(path.resolve())}
    return model


def _where(exc: BaseException, path: Path) -> str:
    """`` at line N (`code`)`` for the deepest frame of ``exc`` in the user's file ``path``, or ''."""
    target = str(path.resolve())
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if str(Path(f.filename).resolve()) == target]
    if not frames and isinstance(exc, SyntaxError) and exc.lineno:
        return f" at line {exc.lineno} ({(exc.text or '').strip()!r})"
    if not frames:
        return ""
    frame = frames[-1]
    return f" at line {frame.lineno} ({(frame.line or '').strip()!r})"
