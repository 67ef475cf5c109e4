"""A Llama-style decoder (attention + SwiGLU MLP) and the two ways TP users split it across ranks.

`shard_with_funcol` slices the weights by hand and all-reduces the row-parallel outputs in forward hooks, as
gpt-fast does; the group may be a ProcessGroup, a DeviceMesh (with a dim) or a list of ranks. `shard_with_dtensor`
uses DTensor's `parallelize_module` with ColwiseParallel / RowwiseParallel. Both leave one all-reduce after every
attention output projection and every MLP down projection: 2 per layer. `shard_with_dtensor(...,
sequence_parallel=True)` leaves a reduce-scatter and an all-gather in place of each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LlamaShape:
    dim: int = 256
    n_heads: int = 8
    ffn_dim: int = 512
    n_layers: int = 2

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class Attention(nn.Module):
    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.head_dim = shape.head_dim
        self.wq = nn.Linear(shape.dim, shape.dim, bias=False)
        self.wk = nn.Linear(shape.dim, shape.dim, bias=False)
        self.wv = nn.Linear(shape.dim, shape.dim, bias=False)
        self.wo = nn.Linear(shape.dim, shape.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        # heads are counted from the (possibly sharded) projection, so the same code runs on every TP split
        q, k, v = (w(x).view(b, s, -1, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, s, -1))


class SwiGLU(nn.Module):
    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.w1 = nn.Linear(shape.dim, shape.ffn_dim, bias=False)
        self.w3 = nn.Linear(shape.dim, shape.ffn_dim, bias=False)
        self.w2 = nn.Linear(shape.ffn_dim, shape.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.attention_norm = nn.RMSNorm(shape.dim)
        self.attention = Attention(shape)
        self.ffn_norm = nn.RMSNorm(shape.dim)
        self.feed_forward = SwiGLU(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    """Hidden states in, hidden states out (no embedding or head: the all-reduces are what matters here)."""

    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.shape = shape
        self.layers = nn.ModuleList(Block(shape) for _ in range(shape.n_layers))
        self.norm = nn.RMSNorm(shape.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def build(shape: LlamaShape, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> Llama:
    """The same weights on every rank (same seed), scaled so activations stay O(1) through the layers."""
    torch.manual_seed(seed)
    model = Llama(shape)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    return model.to(device=device, dtype=dtype)


COLWISE = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
ROWWISE = ("attention.wo", "feed_forward.w2")


def shard_with_funcol(model: Llama, rank: int, world_size: int, group) -> Llama:
    """Keep this rank's slice of each weight and all-reduce row-parallel outputs with funcol in forward hooks.

    The hook handles are kept in `model.all_reduce_hooks`: removing them leaves the same computation without
    communication, which benchmarks use to measure the share of time spent communicating."""
    import torch.distributed._functional_collectives as funcol

    for layer in model.layers:
        for name in COLWISE + ROWWISE:
            linear = layer.get_submodule(name)
            dim = 0 if name in COLWISE else 1
            shard = linear.weight.detach().chunk(world_size, dim=dim)[rank].contiguous()
            linear.weight = nn.Parameter(shard, requires_grad=linear.weight.requires_grad)
    model.all_reduce_hooks = [
        layer.get_submodule(name).register_forward_hook(
            lambda _module, _inputs, output: funcol.all_reduce(output, "sum", group))
        for layer in model.layers for name in ROWWISE]
    return model


def shard_with_dtensor(model: Llama, mesh, sequence_parallel: bool = False) -> Llama:
    """DTensor's plans. With `sequence_parallel` (Megatron-style, as torchtitan plans a Llama) the norms run on each
    rank's slice of the sequence (`SequenceParallel`), column-parallel inputs are all-gathered from those slices and
    row-parallel outputs reduce-scattered back to them: a reduce-scatter and an all-gather in place of each
    all-reduce. The model then takes and returns each rank's slice of the sequence (dim 1)."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel, SequenceParallel,
                                                   parallelize_module)

    sliced = dict(input_layouts=Shard(1)) if sequence_parallel else {}
    for layer in model.layers:
        plan = {name: ColwiseParallel(**sliced) for name in COLWISE}
        plan.update({name: RowwiseParallel(output_layouts=Shard(1)) if sequence_parallel else RowwiseParallel()
                     for name in ROWWISE})
        if sequence_parallel:
            plan.update(attention_norm=SequenceParallel(), ffn_norm=SequenceParallel())
        parallelize_module(layer, mesh, plan)
    return model
