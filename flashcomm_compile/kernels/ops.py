"""The kernels as torch custom ops (`torch.ops.flashcomm.*`), so the pass can insert them into Inductor graphs.

Each op runs the Triton kernel on CUDA and the torch reference elsewhere, and has a fake implementation that computes
the payload size from the layout, so it traces with symbolic shapes. Inserted after functionalization, the ops stay
opaque nodes that Inductor calls as extern kernels.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.library import triton_op

from . import reference
from .layout import PayloadLayout, validate_dtype


def _backend(t: torch.Tensor):
    """Triton on CUDA, the torch reference elsewhere."""
    if t.device.type == "cuda":
        from . import triton_kernels

        return triton_kernels
    return reference


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n = n * s
    return n


@triton_op("flashcomm::quantize", mutates_args=())
def quantize(x: torch.Tensor, world_size: int, bits: int, group_size: int, spike_reserve: bool) -> torch.Tensor:
    """x (any shape) -> uint8 [world_size, chunk_bytes]: row r is the payload for rank r."""
    validate_dtype(x.dtype)
    layout = PayloadLayout(x.numel(), world_size, bits, group_size, spike_reserve)
    return _backend(x).quantize(x, layout)


@quantize.register_fake
def _(x, world_size, bits, group_size, spike_reserve):
    validate_dtype(x.dtype)
    layout = PayloadLayout(x.numel(), world_size, bits, group_size, spike_reserve)
    return x.new_empty((world_size, layout.chunk_bytes), dtype=torch.uint8)


@triton_op("flashcomm::dequant_sum_requant", mutates_args=())
def dequant_sum_requant(received: torch.Tensor, numel: int, in_bits: int, out_bits: int, group_size: int,
                        spike_reserve: bool) -> torch.Tensor:
    """uint8 [W, chunk_bytes] (this rank's chunk from every rank) -> uint8 [1, chunk_bytes'] of the requantized sum."""
    layout = PayloadLayout(numel, received.shape[0], in_bits, group_size, spike_reserve)
    _check_payload(received, layout)
    return _backend(received).dequant_sum_requant(received, layout, out_bits)


@dequant_sum_requant.register_fake
def _(received, numel, in_bits, out_bits, group_size, spike_reserve):
    layout = PayloadLayout(numel, received.shape[0], out_bits, group_size, spike_reserve)
    return received.new_empty((1, layout.chunk_bytes), dtype=torch.uint8)


@triton_op("flashcomm::dequantize", mutates_args=())
def dequantize(gathered: torch.Tensor, world_size: int, shape: Sequence[int], dtype: torch.dtype, bits: int,
               group_size: int, spike_reserve: bool) -> torch.Tensor:
    """uint8 [W * chunk_bytes] (every rank's requantized chunk, in rank order) -> tensor of `shape` and `dtype`."""
    validate_dtype(dtype)
    layout = PayloadLayout(_numel(shape), world_size, bits, group_size, spike_reserve)
    gathered = gathered.reshape(world_size, -1)
    _check_payload(gathered, layout)
    return _backend(gathered).dequantize(gathered, layout, dtype, shape)


@dequantize.register_fake
def _(gathered, world_size, shape, dtype, bits, group_size, spike_reserve):
    validate_dtype(dtype)
    return gathered.new_empty(shape, dtype=dtype)


def _check_payload(payload: torch.Tensor, layout: PayloadLayout) -> None:
    if payload.dtype != torch.uint8 or payload.shape[-1] != layout.chunk_bytes:
        raise ValueError(
            f"payload must be uint8 [..., {layout.chunk_bytes}] for {layout}, got {payload.dtype} {list(payload.shape)}"
        )
