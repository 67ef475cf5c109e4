"""Factories for `flashcomm-compile accuracy` and `evaluate`: each returns (model, example_inputs) on the ranks'
process group, or fails as a user's factory may."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

from flashcomm_compile.examples.llama import LlamaShape, build, shard_with_funcol

SHAPE = LlamaShape(dim=256, n_heads=4, ffn_dim=512, n_layers=2)
VOCAB = 1000


class LlamaWithHead(nn.Module):
    """The funcol TP Llama example and a replicated vocabulary head: logits out, 4 all-reduces."""

    vocab_size = VOCAB

    def __init__(self):
        super().__init__()
        self.llama = shard_with_funcol(build(SHAPE), dist.get_rank(), dist.get_world_size(), dist.group.WORLD)
        torch.manual_seed(1)
        self.head = nn.Linear(SHAPE.dim, VOCAB, bias=False)

    def forward(self, x):
        return self.head(self.llama(x))


def llama_with_head():
    torch.manual_seed(2)
    return LlamaWithHead(), (torch.randn(1, 32, SHAPE.dim),)


class OneAllReduce(nn.Module):
    def forward(self, x):
        return funcol.all_reduce(x, "sum", dist.group.WORLD)


def one_all_reduce():
    """Each rank's own input, so the sum is a real reduction (and outliers of the rank's making)."""
    torch.manual_seed(10 + dist.get_rank())
    x = torch.randn(16, 512)
    x[:, 7] *= 30
    return OneAllReduce(), (x,)


def fails_on_rank_1():
    if dist.get_rank() == 1:
        raise ValueError("no weights for this rank")
    return OneAllReduce(), (torch.randn(4, 256),)


def no_all_reduce():
    return nn.Linear(8, 8), (torch.randn(2, 8),)


class Shard(nn.Module):
    """Returns a rank's own shard beside the reduced sum: outputs that differ across ranks."""

    def forward(self, x):
        return funcol.all_reduce(x, "sum", dist.group.WORLD) + x * dist.get_rank()


def sharded_output():
    return Shard(), (torch.randn(4, 256),)
