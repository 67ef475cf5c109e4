"""How a rewritten all-reduce becomes nodes of Inductor's post-grad graph.

The transport's pipeline (`pipeline.py`) is traced on the site's fake values (functionalized, with Inductor's
decompositions) and inlined in place of the all-reduce. Its Triton kernels become `triton_kernel_wrapper_functional`
nodes, which Inductor turns into user-defined Triton kernels that its generated code launches itself; on CPUs the
torch reference's stages are three custom ops (`kernels/reference_ops.py`); the collectives are Inductor's own. Everything the
compile knows (config, layout, launch grid, workspace address) is baked in: nothing is built per call.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch._guards import detect_fake_mode
from torch._inductor.decomposition import select_decomp_table
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table, triton_kernel_wrapper_functional
from torch._dispatch.python import enable_python_dispatcher
from torch.fx.experimental.proxy_tensor import make_fx

from . import symmetric
from .config import FlashCommConfig
from .passes.site import Site
from .pipeline import NcclPipeline

# A symbolic size on symmetric memory gets a workspace for at least this many bytes of input (or its current size,
# if larger); the compiled code is guarded on fitting it, a larger size compiles again with a larger workspace.
SYMMETRIC_CAPACITY_BYTES = 256 << 20

# fn(x, after) -> (sum of x, token): `after` and the token order the symmetric-memory kernels of successive sites
Lowered = Callable[[torch.Tensor, "torch.Tensor | None"], "tuple[torch.Tensor, torch.Tensor | None]"]


def lowered_pipeline(site: Site, config: FlashCommConfig, transport: str) -> Lowered:
    """The pipeline that replaces the site. On a CPU predicting for a GPU (inspect), symm_mem is traced as the NCCL
    transport, which sends the same bytes."""
    config = config.with_transport(transport)
    if transport == "symm_mem" and site.value.device.type == "cuda":
        return symmetric.pipeline(site.group_name, site.value.device, _capacity(site), site.world_size, config)
    nccl = NcclPipeline(config, site.group_name, site.world_size)
    return lambda x, after: (nccl(x), after)


def _capacity(site: Site) -> int:
    """Elements the symmetric workspace must hold for this site."""
    if site.is_static:
        return site.numel
    capacity = max(SYMMETRIC_CAPACITY_BYTES // site.value.element_size(), 1 << (site.hint_numel - 1).bit_length())
    site.specialize(site.numel <= capacity)
    return capacity


def inline(graph: torch.fx.Graph, before: torch.fx.Node, fn: Callable, args: Sequence[torch.fx.Node]) -> tuple:
    """fn traced on the nodes' fake values and inserted before `before`; the nodes (or None) of its outputs."""
    values = [a.meta["val"] for a in args]
    with detect_fake_mode(values), enable_python_dispatcher():
        traced = make_fx(torch.func.functionalize(fn), select_decomp_table(), tracing_mode="real")(*values)
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    with graph.inserting_before(before):
        return tuple(graph.graph_copy(traced.graph, dict(zip(placeholders, args))))


def op_name(node: torch.fx.Node) -> str:
    """A call's name as records count it; a Triton kernel by its function's name."""
    if node.target is triton_kernel_wrapper_functional:
        return f"triton.{kernel_side_table.get_kernel(node.kwargs['kernel_idx']).fn.__name__}"
    return str(node.target)
