"""The rewrite rules, declared: the pattern each matches in Inductor's post-grad graph, the guard deciding when (and
over which transport) it applies, and the lowered replacement. `engine.py` applies them; nothing here touches the
graph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch._inductor.pattern_matcher import CallFunction, KeywordArg, PatternExpr

from ..config import FlashCommConfig
from ..lowering import Lowered, lowered_pipeline
from . import guards
from .site import Site

ALL_REDUCE = torch.ops._c10d_functional.all_reduce.default
WAIT_TENSOR = torch.ops._c10d_functional.wait_tensor.default


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: PatternExpr  # rooted at the node whose value the replacement takes over
    guard: Callable[[Site, FlashCommConfig], guards.Decision]
    replacement: Callable[[Site, FlashCommConfig, guards.Decision], Lowered]


def quantized_all_reduce(site: Site, config: FlashCommConfig, decision: guards.Decision) -> Lowered:
    """The two-step pipeline over the transport the guard chose."""
    return lowered_pipeline(site, config, decision.transport)


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
