"""The analytic error bound of the two-step pipeline, computed from the payloads actually sent.

For a group with stored scale s, every non-spike value is reproduced within s/2 (spike values exactly), plus a
float32 slack of a few units in the last place of the group's magnitude for the rounding of the scale, of x - zero
and of code * scale + zero. Saturation only moves a value towards a finite exact result. The whole pipeline is then
bounded by the sum over ranks of the first step's bounds, the float32 summation, the second step's bound and the
final cast.

With rotation these bounds hold in the rotated domain, for y = H x / G (`reference.hadamard`). The last dequantize
returns H y, whose rows are +-1: an error e in the rotated group becomes H e, so each value of the group is off by
at most sum_j |e_j| (the per-element bound, loose by about sqrt(G) on random errors), and the group's L2 error is
sqrt(G) ||e||_2 exactly (H / sqrt(G) is orthonormal; `group_l2_error_bound`). The transforms' own float32 rounding
adds log2(G) units in the last place of the group's largest value per transform; scaling by 1/G loses at most
half the smallest subnormal per value in the quantize, and (code + 1) / 2 of them in the last dequantize, which
scales each group's scale and zero (`reference.unrotate`).
"""

from __future__ import annotations

import math

import torch

from .layout import PayloadLayout
from .reference import QuantizedGroups, decode, dequantize_groups

FLOAT32_SLACK = 8 * torch.finfo(torch.float32).eps
EPS = torch.finfo(torch.float32).eps
SUBNORMAL = 2.0**-149  # the smallest float32 subnormal


def group_error_bound(q: QuantizedGroups, bits: int) -> torch.Tensor:
    """Per-element bound [n, G] on |x - dequantized x| for the groups `q` encodes (float64)."""
    levels = (1 << bits) - 1
    scale = q.scale.double()  # a group spanning float32's range has a magnitude beyond it
    magnitude = q.zero.double().abs() + levels * scale
    per_group = scale / 2 + FLOAT32_SLACK * magnitude
    bound = per_group[:, None].expand(-1, q.codes.shape[1]).clone()
    if q.hi is not None:
        column = torch.arange(bound.shape[1], device=bound.device)[None, :]
        spike = (column == q.hi_index[:, None]) | (column == q.lo_index[:, None])
        bound = torch.where(spike, torch.zeros_like(bound), bound)
    return bound


def payload_error_bound(payload: torch.Tensor, layout: PayloadLayout) -> torch.Tensor:
    """Flat per-element bound [padded_numel] for a uint8 [W, chunk_bytes] payload."""
    return group_error_bound(decode(payload, layout), layout.bits).reshape(-1)


def _values(payload: torch.Tensor, layout: PayloadLayout) -> torch.Tensor:
    """The dequantized values a payload carries, flat [padded_numel], as float64."""
    return dequantize_groups(decode(payload, layout)).double().reshape(-1)


def _quantized_domain_bound(sent, gathered, layout: PayloadLayout, gather_bits: int) -> torch.Tensor:
    """Per element [padded_numel]: how far the all-gathered values lie from the sum of the values the ranks
    quantized (rotated values where the layout rotates)."""
    step1 = sum(payload_error_bound(p, layout) for p in sent)
    summation = len(sent) * EPS * sum(_values(p, layout).abs() for p in sent)
    step2 = payload_error_bound(gathered, layout.with_bits(gather_bits))
    return step1 + summation + step2


def _per_group(flat: torch.Tensor, group_size: int) -> torch.Tensor:
    return flat.reshape(-1, group_size)


def _rotation_bounds(sent, gathered, layout: PayloadLayout, gather_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(e [groups, G], inverse [groups]): the bound on each rotated value's error, the transforms' rounding on every
    rank included, and the rounding of the inverse transform per original value."""
    size, stages = layout.group_size, int(math.log2(layout.group_size))
    e = _per_group(_quantized_domain_bound(sent, gathered, layout, gather_bits), size)
    for payload in sent:  # this rank's largest input is at most sum_j |y_j| (x = H y), y within its bound
        y = _per_group(_values(payload, layout).abs() + payload_error_bound(payload, layout), size)
        largest = y.sum(1) * (1 + 4 * stages * EPS)
        e = e + (stages * EPS * largest + size * SUBNORMAL)[:, None]
    final = _per_group(_values(gathered, layout.with_bits(gather_bits)).abs(), size).amax(1)
    inverse = size * (stages * EPS * final + (size + (1 << gather_bits)) * SUBNORMAL)
    return e, inverse


def _cast(output: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    finfo = torch.finfo(dtype)
    return output.reshape(-1).double().abs() * finfo.eps + finfo.tiny


def pipeline_error_bound(sent: list[torch.Tensor], gathered: torch.Tensor, layout: PayloadLayout,
                         gather_bits: int, dtype: torch.dtype, output: torch.Tensor) -> torch.Tensor:
    """Bound on |output - exact sum| per element (flat, numel long, float64).

    sent: each rank's first-step payload, uint8 [W, chunk_bytes]; gathered: the all-gathered second-step payload,
    uint8 [W, chunk_bytes']; output: the dequantized result, whose rounding to `dtype` is the last term.
    """
    n, finfo = layout.numel, torch.finfo(dtype)
    if layout.rotate:
        e, inverse = _rotation_bounds(sent, gathered, layout, gather_bits)
        values = (e.sum(1) + inverse)[:, None].expand(-1, layout.group_size).reshape(-1)
    else:
        values = _quantized_domain_bound(sent, gathered, layout, gather_bits)
    return values[:n] * (1 + finfo.eps) + _cast(output, dtype)


def group_l2_error_bound(sent: list[torch.Tensor], gathered: torch.Tensor, layout: PayloadLayout,
                         gather_bits: int, dtype: torch.dtype, output: torch.Tensor) -> torch.Tensor:
    """Bound on the L2 norm of (output - exact sum) per group [groups] (float64; the padding counts as zeros)."""
    size, finfo = layout.group_size, torch.finfo(dtype)
    cast = torch.zeros(layout.padded_numel, dtype=torch.float64)
    cast[: layout.numel] = _cast(output, dtype)
    cast = _per_group(cast, size).norm(dim=1)
    if not layout.rotate:
        per_element = _per_group(_quantized_domain_bound(sent, gathered, layout, gather_bits), size)
        return per_element.norm(dim=1) * (1 + finfo.eps) + cast
    e, inverse = _rotation_bounds(sent, gathered, layout, gather_bits)
    return math.sqrt(size) * (e.norm(dim=1) + inverse) * (1 + finfo.eps) + cast


def reduce_scatter_error_bound(received: torch.Tensor, layout: PayloadLayout, dtype: torch.dtype,
                               output: torch.Tensor) -> torch.Tensor:
    """Bound on |output - exact sum| per element of one rank's chunk of a quantized reduce-scatter (flat, float64).

    received: this chunk as every rank quantized it, uint8 [W, chunk_bytes]; layout: one chunk's (world size 1,
    numel the chunk's); output: the chunk as the reduce-scatter returned it. Plain codes only."""
    if layout.rotate:
        raise ValueError("the per-element bound of rotated codes is the pipeline's (pipeline_error_bound)")
    rows = [received[r : r + 1] for r in range(received.shape[0])]
    step = sum(payload_error_bound(row, layout) for row in rows)
    summation = len(rows) * EPS * sum(_values(row, layout).abs() for row in rows)
    return (step + summation)[: layout.numel] * (1 + torch.finfo(dtype).eps) + _cast(output, dtype)


def all_gather_error_bound(sent: torch.Tensor, layout: PayloadLayout, dtype: torch.dtype,
                           output: torch.Tensor) -> torch.Tensor:
    """Bound on |output - input| per element of one rank's chunk of a quantized all-gather (flat, float64): sent, the
    chunk's payload uint8 [1, chunk_bytes]; layout: one chunk's; output: the chunk as every rank dequantized it."""
    if layout.rotate:
        raise ValueError("the per-element bound of rotated codes is the pipeline's (pipeline_error_bound)")
    return payload_error_bound(sent, layout)[: layout.numel] * (1 + torch.finfo(dtype).eps) + _cast(output, dtype)
