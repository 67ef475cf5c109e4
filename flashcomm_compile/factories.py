"""The MODULE:FACTORY contract that `inspect` and `accuracy` share: FACTORY() returns (model, example_inputs), and is
called once the process group exists (a fake one for inspect, real ranks for accuracy)."""

from __future__ import annotations

import importlib
from typing import Callable


class FactoryError(ValueError):
    """A MODULE:FACTORY that cannot be loaded, or that made something else than (model, example_inputs)."""


def load_factory(target: str) -> Callable:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise FactoryError(f"expected MODULE:FACTORY, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise FactoryError(f"cannot import module {module_name!r}: {type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise FactoryError(f"{module_name!r} has no callable {attr!r}")
    return factory


def model_and_inputs(made, target: str) -> tuple:
    if not (isinstance(made, (tuple, list)) and len(made) == 2 and callable(made[0])
            and isinstance(made[1], (tuple, list))):
        raise FactoryError(f"factory {target} returned {type(made).__name__} {str(made)[:80]!r}; expected "
                           "(model, example_inputs): a callable and a tuple of its inputs")
    return made


def first_line(e: Exception) -> str:
    """An exception's message in one line, for errors that must not print a traceback."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
