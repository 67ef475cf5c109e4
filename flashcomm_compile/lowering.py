"""How a rewritten collective becomes nodes of Inductor's post-grad graph.

The transport's pipeline (`pipeline.py`) is traced on the site's fake values (functionalized, with Inductor's
decompositions), once per distinct pipeline and values in a graph, and copied in place of each collective. Its Triton
kernels become `triton_kernel_wrapper_functional` nodes, which Inductor turns into user-defined Triton kernels that
its generated code launches itself; on CPUs the torch reference's stages are three custom ops
(`kernels/reference_ops.py`); the collectives are Inductor's own. Everything the compile knows (config, layout,
launch grid, workspace address) is baked in: nothing is built per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.utils._pytree as pytree
from torch._guards import detect_fake_mode
from torch._inductor.decomposition import select_decomp_table
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table, triton_kernel_wrapper_functional
from torch._dispatch.python import enable_python_dispatcher
from torch.fx.experimental.proxy_tensor import make_fx

from .config import FlashCommConfig
from .passes.site import Site
from .pipeline import (NcclAllGather, NcclPipeline, NcclReduceScatter, SymmetricAllGather, SymmetricPipeline,
                       SymmetricReduceScatter)

# A symbolic size on symmetric memory gets a workspace for at least this many bytes of input (or its current size,
# if larger); the compiled code is guarded on fitting it, a larger size compiles again with a larger workspace.
SYMMETRIC_CAPACITY_BYTES = 256 << 20

# fn(x, after) -> (the collective's result, token): `after` and the token order the symmetric-memory kernels of
# successive sites.
# Hashable and equal by value (frozen dataclasses): sites whose pipeline and values are alike share one trace.
Lowered = Callable[[torch.Tensor, "torch.Tensor | None"], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass(frozen=True)
class Untokened:
    """A pipeline that needs no ordering token (NCCL orders its own collectives) in the `Lowered` convention."""

    pipeline: NcclPipeline | NcclReduceScatter | NcclAllGather

    def __call__(self, x: torch.Tensor, after: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.pipeline(x), after


NCCL_PIPELINES = {"all-reduce": NcclPipeline, "reduce-scatter": NcclReduceScatter, "all-gather": NcclAllGather}
SYMMETRIC_PIPELINES = {"all-reduce": SymmetricPipeline, "reduce-scatter": SymmetricReduceScatter,
                       "all-gather": SymmetricAllGather}


def lowered_pipeline(site: Site, config: FlashCommConfig, transport: str) -> Lowered:
    """The pipeline of the site's kind that replaces it. On a CPU predicting for a GPU (inspect), symm_mem is traced
    as the NCCL transport, which sends the same bytes."""
    config = config.with_transport(transport)
    if transport == "symm_mem" and site.value.device.type == "cuda":
        return SYMMETRIC_PIPELINES[site.kind].over(site.group_name, site.value.device, _capacity(site),
                                                   site.world_size, config)
    return Untokened(NCCL_PIPELINES[site.kind](config, site.group_name, site.world_size))


def _capacity(site: Site) -> int:
    """Elements the symmetric workspace must hold for this site."""
    if site.is_static:
        return site.numel
    capacity = max(SYMMETRIC_CAPACITY_BYTES // site.value.element_size(), 1 << (site.hint_numel - 1).bit_length())
    site.specialize(site.numel <= capacity)
    return capacity


class Inliner:
    """Inserts lowered pipelines into one graph, tracing each distinct one once: the sites of a model mostly share
    their pipeline, shape and dtype, and a trace (functionalization, decompositions, and for each Triton kernel an
    analysis of its TTIR) cost about 0.25 s a site on a GPU (docs/perf-notes.md). A copy gets fresh fake values, so
    that no two nodes of the graph share one (Inductor's reinplacing groups nodes by their values' storage)."""

    def __init__(self, graph: torch.fx.Graph):
        self.graph = graph
        self._traced: dict[tuple, torch.fx.Graph] = {}

    def __call__(self, before: torch.fx.Node, lowered: Lowered, x: torch.fx.Node,
                 after: torch.fx.Node | None) -> tuple[torch.fx.Node, torch.fx.Node | None]:
        """lowered(x, after) inserted before `before`: the nodes of its output and token."""
        args = [x] if after is None else [x, after]
        key = (lowered, *map(_signature, args))
        if key not in self._traced:
            fn = (lambda v: lowered(v, None)) if after is None else lowered
            self._traced[key] = _trace(fn, args)
        traced = self._traced[key]
        placeholders = [n for n in traced.nodes if n.op == "placeholder"]
        start = before.prev
        with self.graph.inserting_before(before):
            out, token = self.graph.graph_copy(traced, dict(zip(placeholders, args)))
        _refresh_values(_between(start, before))
        return out, (after if token is None else token)


def _signature(node: torch.fx.Node) -> tuple:
    """What a trace depends on in a value: sizes and strides (symbolic ones by their expression), dtype, device."""
    value = node.meta["val"]
    return (tuple(map(str, value.shape)), tuple(map(str, value.stride())), str(value.storage_offset()), value.dtype,
            value.device)


def _trace(fn: Callable, args: Sequence[torch.fx.Node]) -> torch.fx.Graph:
    values = [a.meta["val"] for a in args]
    with detect_fake_mode(values), enable_python_dispatcher():
        return make_fx(torch.func.functionalize(fn), select_decomp_table(), tracing_mode="real")(*values).graph


def _between(start: torch.fx.Node, end: torch.fx.Node) -> list[torch.fx.Node]:
    nodes, node = [], start.next
    while node is not end:
        nodes.append(node)
        node = node.next
    return nodes


def _refresh_values(nodes: Sequence[torch.fx.Node]) -> None:
    """Each call's fake value computed anew from its arguments' (in graph order)."""
    fake_mode = detect_fake_mode([a.meta["val"] for n in nodes for a in n.all_input_nodes if "val" in a.meta])
    with fake_mode, enable_python_dispatcher():
        for node in nodes:
            if node.op == "call_function":
                args, kwargs = pytree.tree_map_only(torch.fx.Node, lambda a: a.meta["val"], (node.args, node.kwargs))
                node.meta["val"] = node.target(*args, **kwargs)


def op_name(node: torch.fx.Node) -> str:
    """A call's name as records count it; a Triton kernel by its function's name."""
    if node.target is triton_kernel_wrapper_functional:
        return f"triton.{kernel_side_table.get_kernel(node.kwargs['kernel_idx']).fn.__name__}"
    return str(node.target)
