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

_c10d = torch.ops._c10d_functional
ALL_REDUCE = _c10d.all_reduce.default
REDUCE_SCATTER = _c10d.reduce_scatter_tensor.default
ALL_GATHER = _c10d.all_gather_into_tensor.default
WAIT_TENSOR = _c10d.wait_tensor.default
COLLECTIVES = {ALL_REDUCE: "all-reduce", REDUCE_SCATTER: "reduce-scatter", ALL_GATHER: "all-gather"}


@dataclass(frozen=True)
class Rule:
    name: str
    collective: torch._ops.OpOverload  # the collective it rewrites (a site of its kind)
    pattern: PatternExpr  # rooted at the node whose value the replacement takes over
    guard: Callable[[Site, FlashCommConfig], guards.Decision]
    replacement: Callable[[Site, FlashCommConfig, guards.Decision], Lowered]


def quantized(site: Site, config: FlashCommConfig, decision: guards.Decision) -> Lowered:
    """The site's kind of quantized pipeline (the two-step all-reduce, or one of its halves) over the transport the
    guard chose."""
    return lowered_pipeline(site, config, decision.transport)


def _waited(collective, *args: str) -> PatternExpr:
    return CallFunction(WAIT_TENSOR, CallFunction(collective, *map(KeywordArg, args)))


QUANTIZED_ALL_REDUCE = Rule(
    name="quantized_all_reduce",
    collective=ALL_REDUCE,
    pattern=_waited(ALL_REDUCE, "inp", "reduce_op", "group_name"),
    guard=guards.quantized_all_reduce,
    replacement=quantized,
)

QUANTIZED_REDUCE_SCATTER = Rule(
    name="quantized_reduce_scatter",
    collective=REDUCE_SCATTER,
    pattern=_waited(REDUCE_SCATTER, "inp", "reduce_op", "group_size", "group_name"),
    guard=guards.quantized_half,
    replacement=quantized,
)

QUANTIZED_ALL_GATHER = Rule(
    name="quantized_all_gather",
    collective=ALL_GATHER,
    pattern=_waited(ALL_GATHER, "inp", "group_size", "group_name"),
    guard=guards.quantized_half,
    replacement=quantized,
)

RULES: tuple[Rule, ...] = (QUANTIZED_ALL_REDUCE, QUANTIZED_REDUCE_SCATTER, QUANTIZED_ALL_GATHER)
