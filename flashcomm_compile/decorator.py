"""`@flashcomm_compile.compile(...)`: torch.compile with the flashcomm backend, as a decorator on a forward.

It takes the FlashCommConfig fields and torch.compile's own `dynamic`, `fullgraph` and `mode`. `mode` takes either
vocabulary, since they do not overlap: torch.compile's ("default", "reduce-overhead", "max-autotune", ...) selects
Inductor's mode, flashcomm's ("auto", "always", "never") selects the rewrite mode. To set both, pass the rewrite
mode as `mode` and Inductor's as `inductor_mode`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .config import REWRITE_MODES
from .dynamo_backend import INDUCTOR_MODES, FlashCommBackend


def compile(fn: Callable | None = None, *, mode: str | None = None, inductor_mode: str | None = None,
            dynamic: bool | None = None, fullgraph: bool = False, **config: Any):
    """Compile `fn` (a function or a module's forward) with the flashcomm backend; usable with or without ()."""
    if mode in REWRITE_MODES:
        config["mode"] = mode
    elif mode in INDUCTOR_MODES:
        if inductor_mode is not None:
            raise ValueError(f"mode={mode!r} is an Inductor mode and inductor_mode={inductor_mode!r} is given too; "
                             f"pass the rewrite mode ({list(REWRITE_MODES)}) as mode")
        inductor_mode = mode
    elif mode is not None:
        raise ValueError(f"mode must be one of {list(INDUCTOR_MODES)} (torch.compile) or {list(REWRITE_MODES)} "
                         f"(flashcomm), got {mode!r}")
    backend = FlashCommBackend(inductor_mode=inductor_mode, **config)

    def decorate(target: Callable) -> Callable:
        compiled = torch.compile(target, backend=backend, dynamic=dynamic, fullgraph=fullgraph)
        compiled.flashcomm_backend = backend
        return compiled

    return decorate if fn is None else decorate(fn)
