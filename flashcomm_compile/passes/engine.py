"""Applies the declared rules to every all-reduce of a graph and records what it decided for each, and why.

It logs to "flashcomm_compile.passes.engine": one line per compiled graph at INFO, one per all-reduce at DEBUG
(`TORCH_LOGS="+flashcomm_compile"` turns both on with torch's own format).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._inductor.pattern_matcher import is_match

from .. import cost_model
from ..config import FlashCommConfig
from ..kernels.launches import LAUNCH
from ..lowering import Inliner, op_name
from .guards import Decision, keep
from .rules import COLLECTIVES, RULES, Rule
from .site import KINDS, Site


@dataclass
class SiteReport:
    site: Site
    rule: str | None  # the rule that matched, None where none did
    decision: Decision

    @property
    def rewritten(self) -> bool:
        return self.decision.rewrite

    @property
    def reason(self) -> str:
        return self.decision.reason


log = logging.getLogger(__name__)


@dataclass
class GraphRecord:
    """One run of the pass: a report per all-reduce, what is left in the graph, and the graph's code before and after
    (only where asked for: `keep_code`). A graph Inductor's caches served was compiled by an earlier run: its
    record is `from_cache`, with no sites, since the pass did not run on it."""

    before: str | None
    after: str | None
    sites: list[SiteReport] = field(default_factory=list)
    op_counts: Counter = field(default_factory=Counter)  # call_function targets left in the graph, by name
    from_cache: bool = False

    def rewritten(self) -> list[SiteReport]:
        return [s for s in self.sites if s.rewritten]


def apply_rules(graph: torch.fx.Graph, config: FlashCommConfig, rules: tuple[Rule, ...] = RULES) -> list[SiteReport]:
    """Each collective of the graph (all-reduce, reduce-scatter, all-gather), in graph order, rewritten by the first
    rule for its kind that matches and whose guard agrees; those the rewrites insert are not visited. The token of
    one rewritten site is handed to the next, so that sites sharing a symmetric workspace stay in order."""
    reports, token, inliner = [], None, Inliner(graph)
    for node in [n for n in graph.nodes if n.target in COLLECTIVES]:
        report, token = _apply_first_matching(inliner, node, config, rules, token)
        reports.append(report)
    return reports


def _apply_first_matching(inliner: Inliner, node: torch.fx.Node, config: FlashCommConfig, rules,
                          token: torch.fx.Node | None) -> tuple[SiteReport, torch.fx.Node | None]:
    site = Site.of(node, COLLECTIVES[node.target])
    for rule in (r for r in rules if r.collective is node.target):
        for root in list(node.users):
            if not is_match(rule.pattern.match(root)):
                continue
            decision = rule.guard(site, config)
            if decision.rewrite:
                token = _replace(inliner, root, rule.replacement(site, config, decision), site.input_node, token)
            return SiteReport(site, rule.name, decision), token
    unmatched = keep(f"no rule matches (the {site.kind} is not consumed by exactly one wait)")
    return SiteReport(site, None, unmatched), token


def _replace(inliner: Inliner, root: torch.fx.Node, lowered, inp: torch.fx.Node,
             token: torch.fx.Node | None) -> torch.fx.Node | None:
    """The lowered pipeline in place of `root` (the wait of the collective); returns the token after it."""
    out, token = inliner(root, lowered, inp, token)
    collective = root.args[0]
    root.replace_all_uses_with(out)
    inliner.graph.erase_node(root)
    inliner.graph.erase_node(collective)
    return token


def _graph_code(graph: torch.fx.Graph) -> str:
    return graph.python_code("self").src


class FlashCommPass(CustomGraphPass):
    """The post-grad pass. Its uuid hashes the package's sources and cost table, the config and what the rewrite reads
    from its surroundings, so Inductor's FX graph cache stays on yet never reuses a graph compiled by another version,
    config, group size or machine (on a cache hit the pass does not run). Where the symmetric-memory transport may
    be chosen, the uuid is None, which keeps the graph out of the cache."""

    def __init__(self, config: FlashCommConfig, rules: tuple[Rule, ...] = RULES, keep_code: bool = False):
        self.config = config
        self.rules = rules
        self.keep_code = keep_code
        self.records: list[GraphRecord] = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        before = _graph_code(graph) if self.keep_code else None
        sites = apply_rules(graph, self.config, self.rules)
        graph.lint()
        ops = Counter(op_name(n) for n in graph.nodes if n.op == "call_function")
        self.records.append(GraphRecord(before, _graph_code(graph) if self.keep_code else None, sites, ops))
        _log(sites)

    def served_from_cache(self) -> None:
        """Inductor's caches handed back a graph this pass rewrote in an earlier compile: say so, not nothing."""
        self.records.append(GraphRecord(None, None, from_cache=True))
        log.info("flashcomm: graph served from Inductor's cache; its all-reduces are as an earlier compile rewrote "
                 "them (set torch.compiler.config.force_disable_caches to see the pass decide again)")

    def uuid(self) -> bytes | None:
        if self.config.transport != "nccl" and torch.cuda.is_available():
            return None  # symm_mem code holds this process's workspace addresses and rank: never cached
        graphs = cost_model.replayed_in_cuda_graphs(self.config)  # "auto" counts host time only without them
        return get_hash_for_files(_source_files(), extra=repr((self.config, graphs)) + compile_environment())


def _log(sites: list[SiteReport]) -> None:
    rewritten = [s for s in sites if s.rewritten]
    transports = Counter(s.decision.transport for s in rewritten)
    kept = Counter(s.reason for s in sites if not s.rewritten)
    kinds = [kind for kind in KINDS if any(s.site.kind == kind for s in sites)] or ["all-reduce"]
    counts = ", ".join(f"{sum(s.site.kind == k for s in rewritten)} of {sum(s.site.kind == k for s in sites)} {k}s"
                       for k in kinds)
    log.info("flashcomm: rewrote %s%s%s", counts, "".join(f", {n} over {t}" for t, n in sorted(transports.items())),
             "; kept: " + ", ".join(f"{reason} x{n}" for reason, n in kept.items()) if kept else "")
    for s in sites:
        log.debug("flashcomm: %s %s %s: %s: %s%s", s.site.node.name, list(s.site.shape),
                  str(s.site.dtype).removeprefix("torch."), "rewritten" if s.rewritten else "kept", s.reason,
                  f" ({s.decision.transport}: {s.decision.transport_reason})" if s.rewritten else "")


class ComposedPass(CustomGraphPass):
    """A user's own post-grad pass, then flashcomm's, as one `post_grad_custom_post_pass` (torch 2.11 takes one):
    flashcomm sees the graph as the user's pass left it. Cacheable only if both are."""

    def __init__(self, *passes: CustomGraphPass):
        self.passes = passes

    def __call__(self, graph: torch.fx.Graph) -> None:
        for graph_pass in self.passes:
            graph_pass(graph)

    def uuid(self) -> bytes | None:
        ids = [p.uuid() if isinstance(p, CustomGraphPass) else None for p in self.passes]
        return None if any(i is None for i in ids) else repr(ids).encode()


def compile_environment() -> str:
    """What a rewrite depends on beyond the graph and the config. A graph names its process group ("0"), not the
    group's size, which the replacement bakes in (all-to-all splits); the cost model reads the GPU and link mode;
    the compiled code bakes in the kernels' launches (as FLASHCOMM_LAUNCH or a tuning run set them)."""
    groups = []
    if dist.is_available() and dist.is_initialized():
        groups = sorted((name, pg.size()) for pg, name in dist.distributed_c10d._world.pg_names.items())
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    launch = sorted(LAUNCH.items())
    return repr((groups, card, cost_model.link_mode(), cost_model.assumed_hardware(), launch))


def _source_files() -> tuple[str, ...]:
    package = Path(__file__).resolve().parent.parent
    sources = (p for p in sorted(package.rglob("*.py")) if "__pycache__" not in p.parts)
    return (*map(str, sources), str(cost_model.TABLE_PATH))
