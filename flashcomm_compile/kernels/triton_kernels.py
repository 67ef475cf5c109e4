"""Triton kernels of the two-step pipeline, specialised (constexpr) per bit width, group size, world size and spike
reserving; the input dtype specialises through the pointer type. Each program handles BLOCK_G whole groups, as a
[BLOCK_G, G] tile (or, in the quantize, as G / 32 tiles of [BLOCK_G, 32]), so a group's min/max is a row reduction and
codes are packed in registers straight into the one payload buffer. The arithmetic gives `reference.py`'s bytes; see
it for the quantization rule. The kernels issue few instructions per value: at a few dozen they are bound by issue,
not by memory (docs/perf-notes.md).

The payload is passed three times (as uint8, float32 and int16 views of the same bytes) so that the metadata can be
stored with typed accesses without pointer casts, which also keeps the kernels runnable under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import reference
from .launches import LAUNCH
from .layout import PayloadLayout


@triton.jit
def _pack(q, BITS: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr):
    """Codes [BLOCK_G, G] -> bytes [BLOCK_G, G * BITS / 8]; code i of a byte at bit i * BITS. Only the low byte of
    each int32 is read, and only its low BITS bits may be set (bits above the byte are dropped). Pairs are split off
    the last axis (register moves) rather than shifted and summed over a 3-D reshape (layout conversions)."""
    if BITS == 8:
        packed = q
    elif BITS == 4:
        even, odd = tl.split(tl.reshape(q, (BLOCK_G, G // 2, 2)))
        packed = even + (odd << 4)  # one shift-add; what it carries past the low byte is dropped
    else:
        first, second = tl.split(tl.reshape(q, (BLOCK_G, G // 4, 2, 2)))
        low, high = tl.split(first + (second << 2))
        packed = low + (high << 4)
    return packed.to(tl.uint8)


@triton.jit
def _unpack(b, BITS: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr):
    """Bytes [BLOCK_G, G * BITS / 8] (int32) -> codes [BLOCK_G, G], the inverse of _pack, by interleaving."""
    if BITS == 8:
        q = b
    elif BITS == 4:
        q = tl.interleave(b & 15, b >> 4)
    else:
        q = tl.interleave(tl.interleave(b & 3, (b >> 4) & 3), tl.interleave((b >> 2) & 3, (b >> 6) & 3))
    return q


TINY_SCALE: tl.constexpr = tl.constexpr(reference.TINY_SCALE)
MAGIC: tl.constexpr = tl.constexpr(8388608.0)  # 2^23: a float in [2^23, 2^24) holds an integer in its mantissa bits
MAGIC_BITS: tl.constexpr = tl.constexpr(0x4B000000)  # the bits of 2^23 as a float32


@triton.jit
def _to_float(q):
    """int32 codes in [0, 2^23) -> float32, exactly, without a conversion instruction."""
    return (q | MAGIC_BITS).to(tl.float32, bitcast=True) - MAGIC


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _min_nan(a, b):
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _is_finite(v):
    return tl.abs(v) < float("inf")


@triton.jit
def _group_params(mx, mn, nonfinite, LEVELS: tl.constexpr):
    """scale and zero as stored, and what each value is multiplied by, per group (row)."""
    # correctly rounded divisions: x / L - y / L may otherwise contract into an FMA, nonzero (even negative) for x == y
    scale = tl.where(nonfinite, float("nan"), tl.math.div_rn(mx, LEVELS) - tl.math.div_rn(mn, LEVELS))
    zero = tl.where(nonfinite, float("nan"), mn)
    safe = tl.where(scale > 0, scale, 1.0)
    prescale = tl.where(safe < TINY_SCALE, 1.0 / TINY_SCALE, 1.0)
    inverse = tl.math.div_rn(1.0, safe * prescale)
    return scale, zero, prescale, inverse


@triton.jit
def _codes(x, zero, prescale, inverse, LEVELS: tl.constexpr, BELOW_ZERO: tl.constexpr):
    """Codes of x [rows, columns] as int32 whose low byte is the code (see _pack): two FMAs and a clamp per value.
    Values below `zero` exist only with BELOW_ZERO (spikes); a NaN (non-finite group) gets code LEVELS."""
    # (x - zero) * prescale, exactly as the reference rounds it: scaling by a power of two commutes with rounding
    shifted = tl.fma(x, prescale[:, None], -(zero * prescale)[:, None])
    # MAGIC + the exact product rounds it to the nearest integer (ties to even); min turns NaN into its other operand
    big = tl.minimum(tl.fma(shifted, inverse[:, None], MAGIC), MAGIC + LEVELS)
    if BELOW_ZERO:
        big = tl.maximum(big, MAGIC)
    return big.to(tl.int32, bitcast=True)


@triton.jit
def _quantize_tile(x, BITS: tl.constexpr, G: tl.constexpr, SPIKE: tl.constexpr, BLOCK_G: tl.constexpr):
    """Whole groups [BLOCK_G, G] -> packed codes and per-group metadata. A NaN-propagating max and min also tell a
    non-finite group (a NaN, or an infinity at an end)."""
    LEVELS: tl.constexpr = (1 << BITS) - 1
    mx = tl.reduce(x, 1, _max_nan)
    mn = tl.reduce(x, 1, _min_nan)
    nonfinite = ~(_is_finite(mx) & _is_finite(mn))
    if SPIKE:
        column = tl.arange(0, G)[None, :]
        finite = tl.where(nonfinite[:, None], 0.0, x)  # a non-finite group keeps no spikes (index G)
        hi_index = tl.where(nonfinite, G, tl.argmax(finite, axis=1))
        lo_index = tl.where(nonfinite, G, tl.argmin(finite, axis=1))
        is_hi = column == hi_index[:, None]
        is_lo = column == lo_index[:, None]
        hi = tl.sum(tl.where(is_hi, x, 0.0), axis=1)
        lo = tl.sum(tl.where(is_lo, x, 0.0), axis=1)
        mx = tl.max(tl.where(is_hi | is_lo, float("-inf"), x), axis=1)
        mn = tl.min(tl.where(is_hi | is_lo, float("inf"), x), axis=1)
    else:
        hi_index = tl.zeros((BLOCK_G,), tl.int32)
        lo_index = hi_index
        hi = mx
        lo = mn
    scale, zero, prescale, inverse = _group_params(mx, mn, nonfinite, LEVELS)
    packed = _pack(_codes(x, zero, prescale, inverse, LEVELS, SPIKE), BITS, G, BLOCK_G)
    return packed, scale, zero, hi, lo, hi_index, lo_index


@triton.jit
def _store_scale_zero(f32, base, group, groups_per_chunk, valid, scale, zero, NB: tl.constexpr):
    """The groups' scales, then zeros, after the chunk's codes (NB bytes a group); returns where they start (bytes)."""
    start = base + groups_per_chunk * NB
    meta = start // 4 + group
    tl.store(f32 + meta, scale, mask=valid)
    tl.store(f32 + meta + groups_per_chunk, zero, mask=valid)
    return start


@triton.jit
def _store_groups(u8, f32, i16, base, group, groups_per_chunk, valid, packed, scale, zero, hi, lo, hi_index,
                  lo_index, BITS: tl.constexpr, G: tl.constexpr, SPIKE: tl.constexpr):
    NB: tl.constexpr = G * BITS // 8
    codes = base[:, None] + group[:, None] * NB + tl.arange(0, NB)[None, :]
    tl.store(u8 + codes, packed, mask=valid[:, None])
    start = _store_scale_zero(f32, base, group, groups_per_chunk, valid, scale, zero, NB)
    if SPIKE:
        meta = start // 4 + group
        tl.store(f32 + meta + 2 * groups_per_chunk, hi, mask=valid)
        tl.store(f32 + meta + 3 * groups_per_chunk, lo, mask=valid)
        index = start // 2 + 8 * groups_per_chunk + group
        tl.store(i16 + index, hi_index.to(tl.int16), mask=valid)
        tl.store(i16 + index + groups_per_chunk, lo_index.to(tl.int16), mask=valid)


@triton.jit
def _load_groups(u8, f32, i16, base, group, groups_per_chunk, valid, BITS: tl.constexpr, G: tl.constexpr,
                 SPIKE: tl.constexpr, BLOCK_G: tl.constexpr):
    NB: tl.constexpr = G * BITS // 8
    codes = base[:, None] + group[:, None] * NB + tl.arange(0, NB)[None, :]
    q = _unpack(tl.load(u8 + codes, mask=valid[:, None], other=0).to(tl.int32), BITS, G, BLOCK_G)
    start = base + groups_per_chunk * NB
    meta = start // 4 + group
    scale = tl.load(f32 + meta, mask=valid, other=0.0)
    zero = tl.load(f32 + meta + groups_per_chunk, mask=valid, other=0.0)
    v = _to_float(q) * scale[:, None] + zero[:, None]
    if SPIKE:
        column = tl.arange(0, G)[None, :]
        hi = tl.load(f32 + meta + 2 * groups_per_chunk, mask=valid, other=0.0)
        lo = tl.load(f32 + meta + 3 * groups_per_chunk, mask=valid, other=0.0)
        index = start // 2 + 8 * groups_per_chunk + group
        hi_index = tl.load(i16 + index, mask=valid, other=0).to(tl.int32)
        lo_index = tl.load(i16 + index + groups_per_chunk, mask=valid, other=0).to(tl.int32)
        v = tl.where(column == lo_index[:, None], lo[:, None], v)
        v = tl.where(column == hi_index[:, None], hi[:, None], v)
    return v


PART: tl.constexpr = tl.constexpr(32)  # values of a group one part holds: 4 threads of 8 values (16-byte loads)


@triton.jit
def _load_part(x, group, part, numel, G: tl.constexpr):
    """Values part * PART .. + PART of each group, as float32 (Triton 3.6 computes bf16 min/max in float32 too)."""
    offsets = group.to(tl.int64)[:, None] * G + part * PART + tl.arange(0, PART)[None, :]
    return tl.load(x + offsets, mask=offsets < numel, other=0.0).to(tl.float32)


@triton.jit
def quantize_kernel(x, u8, f32, i16, numel, total_groups, groups_per_chunk, chunk_bytes, BITS: tl.constexpr,
                    G: tl.constexpr, SPIKE: tl.constexpr, BLOCK_G: tl.constexpr):
    """Spike reserving takes whole groups as one tile (argmax). Otherwise each group is read in parts of 32 values,
    each part as its own [BLOCK_G, 32] tile: 4 threads share a group rather than 16, so the per-group work (the
    reductions' shuffles, three divisions) is repeated on 4 threads, and each thread holds a group's parts side by
    side. Each part is read twice: for min/max, then for its codes."""
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < total_groups
    base = (group // groups_per_chunk).to(tl.int64) * chunk_bytes
    if SPIKE:
        offsets = group.to(tl.int64)[:, None] * G + tl.arange(0, G)[None, :]
        values = tl.load(x + offsets, mask=offsets < numel, other=0.0).to(tl.float32)
        packed, scale, zero, hi, lo, hi_index, lo_index = _quantize_tile(values, BITS, G, SPIKE, BLOCK_G)
        _store_groups(u8, f32, i16, base, group % groups_per_chunk, groups_per_chunk, valid, packed, scale, zero, hi,
                      lo, hi_index, lo_index, BITS, G, SPIKE)
    else:
        LEVELS: tl.constexpr = (1 << BITS) - 1
        PART_BYTES: tl.constexpr = PART * BITS // 8
        mx = tl.full((BLOCK_G,), float("-inf"), tl.float32)
        mn = tl.full((BLOCK_G,), float("inf"), tl.float32)
        for part in tl.static_range(G // PART):
            values = _load_part(x, group, part, numel, G)
            mx = _max_nan(mx, tl.reduce(values, 1, _max_nan))
            mn = _min_nan(mn, tl.reduce(values, 1, _min_nan))
        scale, zero, prescale, inverse = _group_params(mx, mn, ~(_is_finite(mx) & _is_finite(mn)), LEVELS)
        NB: tl.constexpr = G * BITS // 8
        in_chunk = group % groups_per_chunk
        row = base + in_chunk * NB
        for part in tl.static_range(G // PART):
            values = _load_part(x, group, part, numel, G)
            codes = _codes(values, zero, prescale, inverse, LEVELS, False)
            where = row[:, None] + part * PART_BYTES + tl.arange(0, PART_BYTES)[None, :]
            tl.store(u8 + where, _pack(codes, BITS, PART, BLOCK_G), mask=valid[:, None])
        _store_scale_zero(f32, base, in_chunk, groups_per_chunk, valid, scale, zero, NB)


@triton.jit
def dequant_sum_requant_kernel(in_u8, in_f32, in_i16, out_u8, out_f32, out_i16, groups_per_chunk, in_chunk_bytes,
                               WORLD: tl.constexpr, IN_BITS: tl.constexpr, OUT_BITS: tl.constexpr, G: tl.constexpr,
                               SPIKE: tl.constexpr, BLOCK_G: tl.constexpr):
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < groups_per_chunk
    base = tl.zeros((BLOCK_G,), tl.int64)
    total = tl.zeros((BLOCK_G, G), tl.float32)
    for source in tl.static_range(WORLD):
        total += _load_groups(in_u8, in_f32, in_i16, base + source * in_chunk_bytes, group, groups_per_chunk, valid,
                              IN_BITS, G, SPIKE, BLOCK_G)
    packed, scale, zero, hi, lo, hi_index, lo_index = _quantize_tile(total, OUT_BITS, G, SPIKE, BLOCK_G)
    _store_groups(out_u8, out_f32, out_i16, base, group, groups_per_chunk, valid, packed, scale, zero, hi, lo,
                  hi_index, lo_index, OUT_BITS, G, SPIKE)


@triton.jit
def dequantize_kernel(u8, f32, i16, out, numel, total_groups, groups_per_chunk, chunk_bytes, BITS: tl.constexpr,
                      G: tl.constexpr, SPIKE: tl.constexpr, BLOCK_G: tl.constexpr):
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < total_groups
    base = (group // groups_per_chunk).to(tl.int64) * chunk_bytes
    values = _load_groups(u8, f32, i16, base, group % groups_per_chunk, groups_per_chunk, valid, BITS, G, SPIKE,
                          BLOCK_G)
    offsets = group.to(tl.int64)[:, None] * G + tl.arange(0, G)[None, :]
    tl.store(out + offsets, values.to(out.dtype.element_ty), mask=offsets < numel)


@triton.jit
def _peer_chunk(table, rank, offset):
    """Byte pointer `offset` bytes into `rank`'s symmetric buffer; `table` holds the buffers' addresses. The layout
    keeps every field 16-byte aligned, which the compiler is told so that the loads stay vectorised."""
    return tl.multiple_of((tl.load(table + rank) + offset).to(tl.pointer_type(tl.uint8)), 16)


@triton.jit
def dequant_sum_requant_peers_kernel(table, in_offset, out_u8, out_f32, out_i16, groups_per_chunk,
                                     WORLD: tl.constexpr, IN_BITS: tl.constexpr, OUT_BITS: tl.constexpr,
                                     G: tl.constexpr, SPIKE: tl.constexpr, BLOCK_G: tl.constexpr):
    """dequant_sum_requant_kernel reading each source's chunk straight from that rank's buffer (the all-to-all
    folded into the loads); sums in the same source order, so the bytes equal the all-to-all path's."""
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < groups_per_chunk
    base = tl.zeros((BLOCK_G,), tl.int64)
    total = tl.zeros((BLOCK_G, G), tl.float32)
    for source in tl.static_range(WORLD):
        chunk = _peer_chunk(table, source, in_offset)
        total += _load_groups(chunk, chunk.to(tl.pointer_type(tl.float32)), chunk.to(tl.pointer_type(tl.int16)),
                              base, group, groups_per_chunk, valid, IN_BITS, G, SPIKE, BLOCK_G)
    packed, scale, zero, hi, lo, hi_index, lo_index = _quantize_tile(total, OUT_BITS, G, SPIKE, BLOCK_G)
    _store_groups(out_u8, out_f32, out_i16, base, group, groups_per_chunk, valid, packed, scale, zero, hi, lo,
                  hi_index, lo_index, OUT_BITS, G, SPIKE)


@triton.jit
def dequantize_peers_kernel(table, in_offset, out, numel, groups_per_chunk, WORLD: tl.constexpr, BITS: tl.constexpr,
                            G: tl.constexpr, SPIKE: tl.constexpr, BLOCK_G: tl.constexpr):
    """dequantize_kernel reading chunk c straight from rank c's buffer (the all-gather folded into the loads).
    Program p handles block p // W of chunk p % W: consecutive programs read different ranks, so the local chunk's
    loads (HBM) and the peers' (NVLink) run side by side rather than one after the other."""
    source = tl.program_id(0) % WORLD
    group = tl.program_id(0) // WORLD * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < groups_per_chunk
    chunk = _peer_chunk(table, source, in_offset)
    values = _load_groups(chunk, chunk.to(tl.pointer_type(tl.float32)), chunk.to(tl.pointer_type(tl.int16)),
                          tl.zeros((BLOCK_G,), tl.int64), group, groups_per_chunk, valid, BITS, G, SPIKE, BLOCK_G)
    offsets = (source * groups_per_chunk + group).to(tl.int64)[:, None] * G + tl.arange(0, G)[None, :]
    tl.store(out + offsets, values.to(out.dtype.element_ty), mask=valid[:, None] & (offsets < numel))


def _views(payload: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    flat = payload.reshape(-1)
    return flat, flat.view(torch.float32), flat.view(torch.int16)


def quantize(x: torch.Tensor, layout: PayloadLayout, out: torch.Tensor | None = None) -> torch.Tensor:
    """The payload [W, chunk_bytes]; or written into `out`, uint8 [W, stride >= chunk_bytes], chunk c at row c."""
    if out is None:
        out = torch.empty((layout.world_size, layout.chunk_bytes), dtype=torch.uint8, device=x.device)
    total_groups = layout.world_size * layout.groups_per_chunk
    launch = LAUNCH["quantize"]
    block = launch.block_groups(layout.group_size)
    wrap_triton(quantize_kernel)[(triton.cdiv(total_groups, block),)](
        x.contiguous(), *_views(out), x.numel(), total_groups, layout.groups_per_chunk, out.stride(0),
        BITS=layout.bits, G=layout.group_size, SPIKE=layout.spike_reserve, BLOCK_G=block, num_warps=launch.warps)
    return out


def dequant_sum_requant(received: torch.Tensor, layout: PayloadLayout, out_bits: int) -> torch.Tensor:
    out_layout = layout.with_bits(out_bits)
    out = torch.empty((1, out_layout.chunk_bytes), dtype=torch.uint8, device=received.device)
    launch = LAUNCH["dequant_sum_requant"]
    block = launch.block_groups(layout.group_size)
    wrap_triton(dequant_sum_requant_kernel)[(triton.cdiv(layout.groups_per_chunk, block),)](
        *_views(received.contiguous()), *_views(out), layout.groups_per_chunk, layout.chunk_bytes,
        WORLD=received.shape[0], IN_BITS=layout.bits, OUT_BITS=out_bits, G=layout.group_size,
        SPIKE=layout.spike_reserve, BLOCK_G=block, num_warps=launch.warps)
    return out


def dequantize(gathered: torch.Tensor, layout: PayloadLayout, dtype: torch.dtype, shape) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=gathered.device)
    total_groups = layout.world_size * layout.groups_per_chunk
    launch = LAUNCH["dequantize"]
    block = launch.block_groups(layout.group_size)
    wrap_triton(dequantize_kernel)[(triton.cdiv(total_groups, block),)](
        *_views(gathered.contiguous()), out, layout.numel, total_groups, layout.groups_per_chunk,
        layout.chunk_bytes, BITS=layout.bits, G=layout.group_size, SPIKE=layout.spike_reserve, BLOCK_G=block,
        num_warps=launch.warps)
    return out


def dequant_sum_requant_peers(table: torch.Tensor, offset: int, layout: PayloadLayout, out_bits: int,
                              out: torch.Tensor) -> torch.Tensor:
    """dequant_sum_requant of the chunks that every rank holds `offset` bytes into its symmetric buffer (`table`:
    the int64 addresses of the ranks' buffers; every address + offset 16-byte aligned), written into `out`."""
    launch = LAUNCH["dequant_sum_requant_peers"]
    block = launch.block_groups(layout.group_size)
    dequant_sum_requant_peers_kernel[(triton.cdiv(layout.groups_per_chunk, block),)](
        table, offset, *_views(out), layout.groups_per_chunk, WORLD=layout.world_size,
        IN_BITS=layout.bits, OUT_BITS=out_bits, G=layout.group_size, SPIKE=layout.spike_reserve, BLOCK_G=block,
        num_warps=launch.warps)
    return out


def dequantize_peers(table: torch.Tensor, offset: int, layout: PayloadLayout, dtype: torch.dtype,
                     shape) -> torch.Tensor:
    """dequantize of the chunks that every rank holds `offset` bytes into its symmetric buffer (aligned as above)."""
    out = torch.empty(shape, dtype=dtype, device=table.device)
    launch = LAUNCH["dequantize_peers"]
    block = launch.block_groups(layout.group_size)
    dequantize_peers_kernel[(triton.cdiv(layout.groups_per_chunk, block) * layout.world_size,)](
        table, offset, out, layout.numel, layout.groups_per_chunk, WORLD=layout.world_size, BITS=layout.bits,
        G=layout.group_size, SPIKE=layout.spike_reserve, BLOCK_G=block, num_warps=launch.warps)
    return out
