"""Factories for `flashcomm-compile inspect`: each returns (model, example_inputs) on the current process group."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

from flashcomm_compile.examples.llama import LlamaShape, build, shard_with_funcol

SHAPE = LlamaShape(dim=256, n_heads=4, ffn_dim=512, n_layers=2)


class MixedTP(nn.Module):
    """A funcol TP Llama (4 eligible all-reduces of 64 KiB) followed by three the pass must keep."""

    def __init__(self):
        super().__init__()
        world = dist.get_world_size()
        self.llama = shard_with_funcol(build(SHAPE), dist.get_rank(), world, dist.group.WORLD)

    def forward(self, x):
        y = self.llama(x)
        peak = funcol.all_reduce(y, "max", dist.group.WORLD)
        count = funcol.all_reduce((y > 0).sum().reshape(1), "sum", dist.group.WORLD)
        small = funcol.all_reduce(y[:, :1, :8], "sum", dist.group.WORLD)
        return y + peak, count, small


def mixed():
    return MixedTP(), (torch.randn(1, 64, SHAPE.dim),)


def raises():
    raise RuntimeError("no weights here")


def untraceable():
    def f(x):
        return torch.compiler.disable(lambda: (_ for _ in ()).throw(ValueError("boom")))()

    return f, (torch.randn(2),)


not_callable = 3


def not_a_pair():
    return 7
