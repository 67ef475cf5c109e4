"""What the pass knows about one collective in a post-grad graph (an all-reduce, or sequence parallelism's
reduce-scatter or all-gather), read from its node."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.fx.experimental.symbolic_shapes import statically_known_true


KINDS = ("all-reduce", "reduce-scatter", "all-gather")


@dataclass(frozen=True)
class Site:
    """One collective: `all_reduce(inp, reduce_op, group_name)`, `reduce_scatter_tensor(inp, reduce_op, group_size,
    group_name)` or `all_gather_into_tensor(inp, group_size, group_name)`; sizes may be SymInts under dynamic
    shapes. Sizes and bytes are the input's."""

    node: torch.fx.Node  # the collective's node
    input_node: torch.fx.Node
    reduce_op: str | None  # None for an all-gather
    group_name: str
    world_size: int | None  # None when the group is unknown to this process
    kind: str = "all-reduce"  # of KINDS

    @classmethod
    def of(cls, node: torch.fx.Node, kind: str) -> "Site":
        if kind == "all-reduce":
            inp, reduce_op, group_name = node.args[:3]
        elif kind == "reduce-scatter":
            inp, reduce_op, _, group_name = node.args[:4]
        else:
            (inp, _, group_name), reduce_op = node.args[:3], None
        return cls(node, inp, reduce_op, group_name, world_size_of(group_name), kind)

    @property
    def value(self) -> torch.Tensor:
        return self.input_node.meta["val"]

    @property
    def dtype(self) -> torch.dtype:
        return self.value.dtype

    @property
    def shape(self) -> tuple:
        return tuple(self.value.shape)

    @property
    def numel(self):
        return self.value.numel()

    @property
    def nbytes(self):
        return self.numel * self.value.element_size()

    @property
    def is_static(self) -> bool:
        return isinstance(self.numel, int)

    def proves(self, condition) -> bool:
        """True only if `condition` holds for every size the graph admits; installs no guard."""
        return statically_known_true(condition)

    def specialize(self, condition) -> bool:
        """Whether `condition` holds for the current sizes, guarding the compiled code on it (Dynamo recompiles
        where it changes)."""
        return bool(condition)

    @property
    def hint_numel(self) -> int:
        """The element count of the sizes being compiled for."""
        return self.numel if self.is_static else int(self.numel.node.hint)


def world_size_of(group_name: str) -> int | None:
    try:
        return dist.distributed_c10d._resolve_process_group(group_name).size()
    except Exception:  # noqa: BLE001 - an unknown group only means the rule cannot apply
        return None
