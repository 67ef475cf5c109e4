"""The analytic error bound of the two-step pipeline, computed from the payloads actually sent.

For a group with stored scale s, every non-spike value is reproduced within s/2 (spike values exactly), plus a
float32 slack of a few units in the last place of the group's magnitude for the rounding of the scale, of x - zero
and of code * scale + zero (computed in float64). Saturation only moves a value towards a finite exact result. The whole pipeline is then bounded by
the sum over ranks of the first step's bounds, the float32 summation, the second step's bound and the final cast.
"""

from __future__ import annotations

import torch

from .layout import PayloadLayout
from .reference import QuantizedGroups, decode, dequantize_groups

FLOAT32_SLACK = 8 * torch.finfo(torch.float32).eps


def group_error_bound(q: QuantizedGroups, bits: int) -> torch.Tensor:
    """Per-element bound [n, G] on |x - dequantized x| for the groups `q` encodes."""
    levels = (1 << bits) - 1
    scale = q.scale.double()  # float64: a group spanning float32's range has a magnitude beyond it
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


def pipeline_error_bound(sent: list[torch.Tensor], gathered: torch.Tensor, layout: PayloadLayout,
                         gather_bits: int, dtype: torch.dtype, output: torch.Tensor) -> torch.Tensor:
    """Bound on |output - exact sum| per element (flat, numel long).

    sent: each rank's first-step payload, uint8 [W, chunk_bytes]; gathered: the all-gathered second-step payload,
    uint8 [W, chunk_bytes']; output: the dequantized result, whose rounding to `dtype` is the last term.
    """
    step1 = sum(payload_error_bound(p, layout) for p in sent)
    magnitude = sum(dequantize_groups(decode(p, layout)).double().abs().reshape(-1) for p in sent)
    summation = len(sent) * torch.finfo(torch.float32).eps * magnitude
    step2 = payload_error_bound(gathered, layout.with_bits(gather_bits))
    n = layout.numel
    finfo = torch.finfo(dtype)
    cast = output.reshape(-1).double().abs() * finfo.eps + finfo.tiny
    return (step1 + summation + step2)[:n] * (1 + finfo.eps) + cast
