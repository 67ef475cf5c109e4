"""The rewrite rules, declared: the pattern each matches in Inductor's post-grad graph, the guard deciding when it
applies, and the replacement traced in its place. `engine.py` applies them; nothing here touches the graph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch._inductor.pattern_matcher import CallFunction, KeywordArg, PatternExpr

from ..collective import all_reduce_by_size, two_step_all_reduce
from ..config import FlashCommConfig
from ..symmetric import symm_mem_all_reduce
from . import guards
from .site import Site

ALL_REDUCE = torch.ops._c10d_functional.all_reduce.default
WAIT_TENSOR = torch.ops._c10d_functional.wait_tensor.default

Replacement = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: PatternExpr  # rooted at the node whose value the replacement takes over
    guard: Callable[[Site, FlashCommConfig], guards.Decision]
    replacement: Callable[[Site, FlashCommConfig, guards.Decision], Replacement]  # builds fn(input) -> output


def quantized_all_reduce(site: Site, config: FlashCommConfig, decision: guards.Decision) -> Replacement:
    """The two-step pipeline in place of the all-reduce, or one op choosing between them by the size at run time
    (also where pieces are asked for and the size is symbolic: they are cut when it is known). Over symmetric
    memory the pipeline is one op either way."""
    threshold = decision.runtime_threshold
    if config.transport == "symm_mem":
        return lambda inp: symm_mem_all_reduce(inp, site.group_name, site.world_size, threshold or 0, config)
    if threshold is None and config.chunks > 1 and not site.is_static:
        threshold = 0
    if threshold is None:
        return lambda inp: two_step_all_reduce(inp, site.group_name, site.world_size, config)
    return lambda inp: all_reduce_by_size(inp, site.group_name, site.world_size, threshold, config)


QUANTIZED_ALL_REDUCE = Rule(
    name="quantized_all_reduce",
    pattern=CallFunction(
        WAIT_TENSOR,
        CallFunction(ALL_REDUCE, KeywordArg("inp"), KeywordArg("reduce_op"), KeywordArg("group_name")),
    ),
    guard=guards.quantized_all_reduce,
    replacement=quantized_all_reduce,
)

RULES: tuple[Rule, ...] = (QUANTIZED_ALL_REDUCE,)
