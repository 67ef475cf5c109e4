"""The `flashcomm` torch.compile backend: Inductor, with the flashcomm pass on its post-grad graphs.

Reached by name (`torch.compile(m, backend="flashcomm", options={...})`, through the `torch_dynamo_backends` entry
point) or as an object (`torch.compile(m, backend=flashcomm_compile.backend(reduce_bits=4))`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config
from torch._inductor import list_mode_options
from torch._inductor.compile_fx import compile_fx, compile_fx_inner

from .config import FlashCommConfig
from .kernels.analysis import analysed_once
from .passes.engine import ComposedPass, FlashCommPass, GraphRecord

INDUCTOR_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class FlashCommBackend:
    """A configured backend. `records` lists what the pass did to each graph it compiled, and each graph Inductor's
    caches served instead (`from_cache`, no sites); with `keep_code` they hold the graph's code before and after the
    pass too. A `post_grad_custom_post_pass` the user
    set in Inductor's config runs first, then flashcomm's."""

    def __init__(self, config: FlashCommConfig | None = None, *, inductor_mode: str | None = None,
                 keep_code: bool = False, **options: Any):
        if config is not None and options:
            raise ValueError("pass either a FlashCommConfig or options, not both")
        if inductor_mode is not None and inductor_mode not in INDUCTOR_MODES:
            raise ValueError(f"inductor_mode must be one of {list(INDUCTOR_MODES)}, got {inductor_mode!r}")
        self.config = config if config is not None else FlashCommConfig.from_options(options)
        self.inductor_mode = inductor_mode
        self.graph_pass = FlashCommPass(self.config, keep_code=keep_code)
        self._user_pass = None

    @property
    def records(self) -> list[GraphRecord]:
        return self.graph_pass.records

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]):
        # The pass must be in the config from the start: AOTAutograd's cache keys on the config at this point, and
        # would otherwise hand back a graph compiled earlier without the pass (in this process or from disk).
        self._user_pass = inductor_config.post_grad_custom_post_pass
        both = self.graph_pass if self._user_pass is None else ComposedPass(self._user_pass, self.graph_pass)
        patches = {**(list_mode_options(self.inductor_mode) if self.inductor_mode else {}),
                   "post_grad_custom_post_pass": both}
        hits, records = _cache_hits(), len(self.records)
        with analysed_once():
            compiled = compile_fx(gm, example_inputs, inner_compile=self._inner_compile, config_patches=patches)
        if len(self.records) == records and _cache_hits() > hits:
            self.graph_pass.served_from_cache()
        return compiled

    def _inner_compile(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any):
        # Chosen per graph: compile_fx re-applies its patches to the lazily compiled backward graph too.
        if kwargs.get("is_backward", False) and not self.config.backward:
            with inductor_config.patch(post_grad_custom_post_pass=self._user_pass):
                return compile_fx_inner(gm, example_inputs, **kwargs)
        return compile_fx_inner(gm, example_inputs, **kwargs)

    def __repr__(self) -> str:
        return f"FlashCommBackend({self.config.describe()}, inductor_mode={self.inductor_mode!r})"


def _cache_hits() -> int:
    """Graphs AOTAutograd's or Inductor's FX graph cache served in this process so far (on a hit no pass runs)."""
    return counters["aot_autograd"]["autograd_cache_hit"] + counters["inductor"]["fxgraph_cache_hit"]


def backend(**options: Any) -> FlashCommBackend:
    """A backend object for `torch.compile(model, backend=...)`; options are FlashCommConfig fields."""
    inductor_mode = options.pop("inductor_mode", None)
    return FlashCommBackend(inductor_mode=inductor_mode, **options)


def flashcomm(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], mode: str | None = None,
              options: dict[str, Any] | None = None):
    """The backend registered by name: torch.compile passes its `mode` and `options` here. torch.compile refuses
    `mode` together with `options`, so Inductor's mode may come as options["inductor_mode"]."""
    options = dict(options or {})
    inductor_mode = options.pop("inductor_mode", None)
    if mode is not None and inductor_mode is not None and mode != inductor_mode:
        raise ValueError(f"mode={mode!r} and options['inductor_mode']={inductor_mode!r} disagree")
    return FlashCommBackend(inductor_mode=inductor_mode or mode, **options)(gm, example_inputs)


def register_by_name() -> None:
    """Make backend="flashcomm" work when the package runs from a source tree without its entry point installed."""
    from torch._dynamo.backends.registry import list_backends, register_backend

    if "flashcomm" not in list_backends(exclude_tags=()):
        register_backend(compiler_fn=flashcomm, name="flashcomm")
