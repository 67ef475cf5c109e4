"""Triton kernels of the two-step pipeline, specialised (constexpr) per bit width, group size, world size and spike
reserving; the input dtype specialises through the pointer type. The arithmetic mirrors `reference.py` operation for
operation; see it for the quantization rule and `layout.py` for the payload bytes.

Each program handles BLOCK_G whole groups as a [BLOCK_G, NW, PW] tile: PW = 32 / bits codes fill one int32 word and
NW words make a group. Loads are contiguous along the last two axes, a word is packed or unpacked inside one thread
by a shift-and-sum over the last axis, and codes are stored as whole words (the little-endian bytes of a word are
exactly the payload's byte layout). The payload is passed as uint8-free typed views (int32, float32, int16) of the
same bytes, so no pointer casts are needed and the kernels also run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .layout import PayloadLayout

# (elements per program, warps) tried by the autotuner; the interpreter (CPU tests) takes the first only.
# Every size is at least twice the largest group, so a program always holds whole groups.
_TUNING = [(2048, 4), (4096, 4), (4096, 8), (8192, 8), (16384, 16)]


def _configs():
    chosen = _TUNING[:1] if os.environ.get("TRITON_INTERPRET") == "1" else _TUNING
    return [triton.Config({"ELEMENTS": e}, num_warps=w) for e, w in chosen]


@triton.jit
def _max3(x):
    return tl.max(tl.max(x, axis=2), axis=1)


@triton.jit
def _min3(x):
    return tl.min(tl.min(x, axis=2), axis=1)


@triton.jit
def _column(G: tl.constexpr, PW: tl.constexpr):
    """The index inside its group of every element of a [1, NW, PW] tile."""
    return (tl.arange(0, G // PW)[:, None] * PW + tl.arange(0, PW)[None, :])[None, :, :]


@triton.jit
def _quantize_tile(x, BITS: tl.constexpr, G: tl.constexpr, SPIKE: tl.constexpr, BLOCK_G: tl.constexpr):
    LEVELS: tl.constexpr = (1 << BITS) - 1
    PW: tl.constexpr = 32 // BITS
    column = _column(G, PW)
    nonfinite = _max3(((x != x) | (tl.abs(x) == float("inf"))).to(tl.int32)) > 0
    if SPIKE:
        hi_index = _min3(tl.where(x == _max3(x)[:, None, None], column, G))
        lo_index = _min3(tl.where(x == _min3(x)[:, None, None], column, G))
        hi_index = tl.where(nonfinite, G, hi_index)
        lo_index = tl.where(nonfinite, G, lo_index)
        is_hi = column == hi_index[:, None, None]
        is_lo = column == lo_index[:, None, None]
        hi = tl.sum(tl.sum(tl.where(is_hi, x, 0.0), axis=2), axis=1)
        lo = tl.sum(tl.sum(tl.where(is_lo, x, 0.0), axis=2), axis=1)
        mx = _max3(tl.where(is_hi | is_lo, float("-inf"), x))
        mn = _min3(tl.where(is_hi | is_lo, float("inf"), x))
    else:
        hi_index = tl.zeros((BLOCK_G,), tl.int32)
        lo_index = hi_index
        mx = _max3(x)
        mn = _min3(x)
        hi = mx
        lo = mn
    scale = tl.where(nonfinite, float("nan"), mx / LEVELS - mn / LEVELS)
    zero = tl.where(nonfinite, float("nan"), mn)
    safe = tl.where(scale > 0, scale, 1.0)
    v = tl.floor((x - zero[:, None, None]) / safe[:, None, None] + 0.5)
    v = tl.where(v == v, v, 0.0)
    q = tl.minimum(tl.maximum(v, 0.0), LEVELS).to(tl.int32)
    words = tl.sum(q << (tl.arange(0, PW) * BITS)[None, None, :], axis=2)
    return words, scale, zero, hi, lo, hi_index, lo_index


@triton.jit
def _store_groups(i32, f32, i16, base, group, groups_per_chunk, valid, words, scale, zero, hi, lo, hi_index,
                  lo_index, BITS: tl.constexpr, G: tl.constexpr, SPIKE: tl.constexpr):
    """Store whole groups into a chunk starting at byte `base` (a multiple of 4)."""
    NW: tl.constexpr = G * BITS // 32
    codes = (base // 4 + group * NW)[:, None] + tl.arange(0, NW)[None, :]
    tl.store(i32 + codes, words, mask=valid[:, None])
    start = base + groups_per_chunk * NW * 4
    meta = start // 4 + group
    tl.store(f32 + meta, scale, mask=valid)
    tl.store(f32 + meta + groups_per_chunk, zero, mask=valid)
    if SPIKE:
        tl.store(f32 + meta + 2 * groups_per_chunk, hi, mask=valid)
        tl.store(f32 + meta + 3 * groups_per_chunk, lo, mask=valid)
        index = start // 2 + 8 * groups_per_chunk + group
        tl.store(i16 + index, hi_index.to(tl.int16), mask=valid)
        tl.store(i16 + index + groups_per_chunk, lo_index.to(tl.int16), mask=valid)


@triton.jit
def _load_groups(i32, f32, i16, base, group, groups_per_chunk, valid, BITS: tl.constexpr, G: tl.constexpr,
                 SPIKE: tl.constexpr):
    """Dequantize whole groups of a chunk starting at byte `base` into a float32 [BLOCK_G, NW, PW] tile."""
    PW: tl.constexpr = 32 // BITS
    NW: tl.constexpr = G // PW
    codes = (base // 4 + group * NW)[:, None] + tl.arange(0, NW)[None, :]
    words = tl.load(i32 + codes, mask=valid[:, None], other=0)
    q = (words[:, :, None] >> (tl.arange(0, PW) * BITS)[None, None, :]) & ((1 << BITS) - 1)
    start = base + groups_per_chunk * NW * 4
    meta = start // 4 + group
    scale = tl.load(f32 + meta, mask=valid, other=0.0)
    zero = tl.load(f32 + meta + groups_per_chunk, mask=valid, other=0.0)
    v = q.to(tl.float32) * scale[:, None, None] + zero[:, None, None]
    if SPIKE:
        column = _column(G, PW)
        hi = tl.load(f32 + meta + 2 * groups_per_chunk, mask=valid, other=0.0)
        lo = tl.load(f32 + meta + 3 * groups_per_chunk, mask=valid, other=0.0)
        index = start // 2 + 8 * groups_per_chunk + group
        hi_index = tl.load(i16 + index, mask=valid, other=0).to(tl.int32)
        lo_index = tl.load(i16 + index + groups_per_chunk, mask=valid, other=0).to(tl.int32)
        v = tl.where(column == lo_index[:, None, None], lo[:, None, None], v)
        v = tl.where(column == hi_index[:, None, None], hi[:, None, None], v)
    return v


@triton.jit
def _element_offsets(group, G: tl.constexpr, PW: tl.constexpr):
    return group.to(tl.int64)[:, None, None] * G + _column(G, PW)


@triton.autotune(configs=_configs(), key=["total_groups", "BITS", "G", "SPIKE"])
@triton.jit
def quantize_kernel(x, i32, f32, i16, numel, total_groups, groups_per_chunk, chunk_bytes, BITS: tl.constexpr,
                    G: tl.constexpr, SPIKE: tl.constexpr, ELEMENTS: tl.constexpr):
    BLOCK_G: tl.constexpr = ELEMENTS // G
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < total_groups
    offsets = _element_offsets(group, G, 32 // BITS)
    values = tl.load(x + offsets, mask=offsets < numel, other=0.0).to(tl.float32)
    words, scale, zero, hi, lo, hi_index, lo_index = _quantize_tile(values, BITS, G, SPIKE, BLOCK_G)
    base = (group // groups_per_chunk).to(tl.int64) * chunk_bytes
    _store_groups(i32, f32, i16, base, group % groups_per_chunk, groups_per_chunk, valid, words, scale, zero, hi, lo,
                  hi_index, lo_index, BITS, G, SPIKE)


@triton.autotune(configs=_configs(), key=["groups_per_chunk", "WORLD", "IN_BITS", "OUT_BITS", "G", "SPIKE"])
@triton.jit
def dequant_sum_requant_kernel(in_i32, in_f32, in_i16, out_i32, out_f32, out_i16, groups_per_chunk, in_chunk_bytes,
                               WORLD: tl.constexpr, IN_BITS: tl.constexpr, OUT_BITS: tl.constexpr, G: tl.constexpr,
                               SPIKE: tl.constexpr, ELEMENTS: tl.constexpr):
    BLOCK_G: tl.constexpr = ELEMENTS // G
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < groups_per_chunk
    base = tl.zeros((BLOCK_G,), tl.int64)
    total = _load_groups(in_i32, in_f32, in_i16, base, group, groups_per_chunk, valid, IN_BITS, G, SPIKE)
    for source in tl.static_range(1, WORLD):
        total += _load_groups(in_i32, in_f32, in_i16, base + source * in_chunk_bytes, group, groups_per_chunk,
                              valid, IN_BITS, G, SPIKE)
    if IN_BITS != OUT_BITS:  # the tile's word shape follows the bit width
        total = tl.reshape(total, (BLOCK_G, G // (32 // OUT_BITS), 32 // OUT_BITS))
    words, scale, zero, hi, lo, hi_index, lo_index = _quantize_tile(total, OUT_BITS, G, SPIKE, BLOCK_G)
    _store_groups(out_i32, out_f32, out_i16, base, group, groups_per_chunk, valid, words, scale, zero, hi, lo,
                  hi_index, lo_index, OUT_BITS, G, SPIKE)


@triton.autotune(configs=_configs(), key=["total_groups", "BITS", "G", "SPIKE"])
@triton.jit
def dequantize_kernel(i32, f32, i16, out, numel, total_groups, groups_per_chunk, chunk_bytes, BITS: tl.constexpr,
                      G: tl.constexpr, SPIKE: tl.constexpr, ELEMENTS: tl.constexpr):
    BLOCK_G: tl.constexpr = ELEMENTS // G
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < total_groups
    base = (group // groups_per_chunk).to(tl.int64) * chunk_bytes
    values = _load_groups(i32, f32, i16, base, group % groups_per_chunk, groups_per_chunk, valid, BITS, G, SPIKE)
    offsets = _element_offsets(group, G, 32 // BITS)
    tl.store(out + offsets, values.to(out.dtype.element_ty), mask=offsets < numel)


def _grid(groups: int):
    return lambda meta: (triton.cdiv(groups, meta["ELEMENTS"] // meta["G"]),)


def _views(payload: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    flat = payload.reshape(-1)
    return flat.view(torch.int32), flat.view(torch.float32), flat.view(torch.int16)


def quantize(x: torch.Tensor, layout: PayloadLayout) -> torch.Tensor:
    out = torch.empty((layout.world_size, layout.chunk_bytes), dtype=torch.uint8, device=x.device)
    total_groups = layout.world_size * layout.groups_per_chunk
    wrap_triton(quantize_kernel)[_grid(total_groups)](
        x.contiguous(), *_views(out), x.numel(), total_groups, layout.groups_per_chunk, layout.chunk_bytes,
        BITS=layout.bits, G=layout.group_size, SPIKE=layout.spike_reserve)
    return out


def dequant_sum_requant(received: torch.Tensor, layout: PayloadLayout, out_bits: int) -> torch.Tensor:
    out_layout = layout.with_bits(out_bits)
    out = torch.empty((1, out_layout.chunk_bytes), dtype=torch.uint8, device=received.device)
    wrap_triton(dequant_sum_requant_kernel)[_grid(layout.groups_per_chunk)](
        *_views(received.contiguous()), *_views(out), layout.groups_per_chunk, layout.chunk_bytes,
        WORLD=received.shape[0], IN_BITS=layout.bits, OUT_BITS=out_bits, G=layout.group_size,
        SPIKE=layout.spike_reserve)
    return out


def dequantize(gathered: torch.Tensor, layout: PayloadLayout, dtype: torch.dtype, shape) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=gathered.device)
    total_groups = layout.world_size * layout.groups_per_chunk
    wrap_triton(dequantize_kernel)[_grid(total_groups)](
        *_views(gathered.contiguous()), out, layout.numel, total_groups, layout.groups_per_chunk,
        layout.chunk_bytes, BITS=layout.bits, G=layout.group_size, SPIKE=layout.spike_reserve)
    return out
