"""The torch reference's three stages as opaque custom ops: what the pass inserts on CPUs.

Traced in as ordinary ops, the reference's arithmetic (per-group parameters, the FMA emulated in float64, the bit
planes) cost Inductor about 8 s of C++ code generation per rewritten all-reduce (docs/perf-notes.md); as custom ops
Inductor only schedules three calls, which run the reference eagerly: the same bytes, compiled in a fraction of the
time. GPUs run the Triton kernels, which Inductor launches itself (no op behind the dispatcher). Same interface as
`reference` and `triton_kernels`: `pipeline.kernels_for` picks one of the three.
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import reference
from .layout import PayloadLayout


@torch.library.custom_op("flashcomm::reference_quantize", mutates_args=())
def _quantize(x: torch.Tensor, world_size: int, bits: int, group_size: int, spike_reserve: bool,
              rotate: bool) -> torch.Tensor:
    return reference.quantize(x, PayloadLayout(x.numel(), world_size, bits, group_size, spike_reserve, rotate))


@_quantize.register_fake
def _(x, world_size, bits, group_size, spike_reserve, rotate):
    layout = PayloadLayout(x.numel(), world_size, bits, group_size, spike_reserve, rotate)
    return x.new_empty((world_size, layout.chunk_bytes), dtype=torch.uint8)


@torch.library.custom_op("flashcomm::reference_dequant_sum_requant", mutates_args=())
def _dequant_sum_requant(received: torch.Tensor, numel: int, bits: int, group_size: int, spike_reserve: bool,
                         rotate: bool, out_bits: int) -> torch.Tensor:
    layout = PayloadLayout(numel, received.shape[0], bits, group_size, spike_reserve, rotate)
    return reference.dequant_sum_requant(received, layout, out_bits)


@_dequant_sum_requant.register_fake
def _(received, numel, bits, group_size, spike_reserve, rotate, out_bits):
    layout = PayloadLayout(numel, received.shape[0], out_bits, group_size, spike_reserve, rotate)
    return received.new_empty((1, layout.chunk_bytes))


@torch.library.custom_op("flashcomm::reference_dequantize", mutates_args=())
def _dequantize(gathered: torch.Tensor, numel: int, bits: int, group_size: int, spike_reserve: bool, rotate: bool,
                dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    layout = PayloadLayout(numel, gathered.shape[0], bits, group_size, spike_reserve, rotate)
    return reference.dequantize(gathered, layout, dtype, shape)


@_dequantize.register_fake
def _(gathered, numel, bits, group_size, spike_reserve, rotate, dtype, shape):
    return gathered.new_empty(shape, dtype=dtype)


def quantize(x: torch.Tensor, layout: PayloadLayout) -> torch.Tensor:
    return _quantize(x, layout.world_size, layout.bits, layout.group_size, layout.spike_reserve, layout.rotate)


def dequant_sum_requant(received: torch.Tensor, layout: PayloadLayout, out_bits: int) -> torch.Tensor:
    return _dequant_sum_requant(received, layout.numel, layout.bits, layout.group_size, layout.spike_reserve,
                                layout.rotate, out_bits)


def dequantize(gathered: torch.Tensor, layout: PayloadLayout, dtype: torch.dtype, shape) -> torch.Tensor:
    return _dequantize(gathered, layout.numel, layout.bits, layout.group_size, layout.spike_reserve, layout.rotate,
                       dtype, list(shape))
