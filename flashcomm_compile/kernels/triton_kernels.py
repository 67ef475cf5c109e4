"""Triton kernels of the two-step pipeline, specialised (constexpr) per bit width, group size, world size and spike
reserving; the input dtype specialises through the pointer type. Each program handles BLOCK_G whole groups, as a
[BLOCK_G, G] tile (in the plain quantize as G / 32 tiles of [BLOCK_G, 32]; where a kernel needs a whole group at once,
for rotation or spikes, one group per thread: `_runs`), so a group's min/max is a row reduction and codes are packed
in registers straight into the one payload buffer, as bit planes of 8, 4, 2 and 1 bits (`layout.code_planes`). The
arithmetic gives `reference.py`'s bytes; see it for the quantization rule. The kernels issue few instructions per
value: at a few dozen they are bound by issue, not by memory (docs/perf-notes.md).

Each payload is one uint8 tensor; the kernels take its float32 and int16 views by pointer casts (`_views`), so the
compiled graph sees one buffer per payload. The symmetric-memory kernels reach the workspace through its address
table, passed as an integer the compile knew, and order themselves by a token they write (`_mark`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import address_table, reference
from .launches import GROUP_PER_THREAD_MAX, LAUNCH
from .layout import PayloadLayout


@triton.jit
def _pack(q, BITS: tl.constexpr, V: tl.constexpr, BLOCK_G: tl.constexpr):
    """Codes [BLOCK_G, V] of one plane -> bytes [BLOCK_G, V * BITS / 8] (BITS in 8, 4, 2, 1); code i of a byte at
    bit i * BITS. Only the low byte of each int32 is read, and only its low BITS bits may be set (bits above the byte
    are dropped). Pairs are split off the last axis (register moves) rather than shifted and summed over a 3-D reshape
    (layout conversions)."""
    if BITS == 8:
        packed = q
    elif BITS == 4:
        even, odd = tl.split(tl.reshape(q, (BLOCK_G, V // 2, 2)))
        packed = even + (odd << 4)  # one shift-add; what it carries past the low byte is dropped
    elif BITS == 2:
        first, second = tl.split(tl.reshape(q, (BLOCK_G, V // 4, 2, 2)))
        low, high = tl.split(first + (second << 2))
        packed = low + (high << 4)
    else:
        first, second = tl.split(tl.reshape(q, (BLOCK_G, V // 8, 2, 2, 2)))
        low, high = tl.split(first + (second << 1))
        low, high = tl.split(low + (high << 2))
        packed = low + (high << 4)
    return packed.to(tl.uint8)


@triton.jit
def _unpack(b, BITS: tl.constexpr):
    """Bytes [BLOCK_G, V * BITS / 8] (int32) of one plane -> codes [BLOCK_G, V], the inverse of _pack, by
    interleaving."""
    if BITS == 8:
        q = b
    elif BITS == 4:
        q = tl.interleave(b & 15, b >> 4)
    elif BITS == 2:
        q = tl.interleave(tl.interleave(b & 3, (b >> 4) & 3), tl.interleave((b >> 2) & 3, (b >> 6) & 3))
    else:
        even = tl.interleave(tl.interleave(b & 1, (b >> 4) & 1), tl.interleave((b >> 2) & 1, (b >> 6) & 1))
        odd = tl.interleave(tl.interleave((b >> 1) & 1, (b >> 5) & 1), tl.interleave((b >> 3) & 1, b >> 7))
        q = tl.interleave(even, odd)
    return q


@triton.jit
def _store_codes(u8, row, q, valid, BITS: tl.constexpr, G: tl.constexpr, FIRST: tl.constexpr, V: tl.constexpr,
                 BLOCK_G: tl.constexpr):
    """Codes q [BLOCK_G, V], values FIRST .. FIRST + V of groups whose codes start at byte `row`, into their bit
    planes (layout.code_planes)."""
    _store_plane(u8, row, q, valid, 8, BITS, G, FIRST, V, BLOCK_G)
    _store_plane(u8, row, q, valid, 4, BITS, G, FIRST, V, BLOCK_G)
    _store_plane(u8, row, q, valid, 2, BITS, G, FIRST, V, BLOCK_G)
    _store_plane(u8, row, q, valid, 1, BITS, G, FIRST, V, BLOCK_G)


@triton.jit
def _store_plane(u8, row, q, valid, W: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr, FIRST: tl.constexpr,
                 V: tl.constexpr, BLOCK_G: tl.constexpr):
    """Plane W of the codes, if BITS has one: bits SHIFT .. SHIFT + W of each code, after the wider planes."""
    if (BITS & W) != 0:
        SHIFT: tl.constexpr = BITS & (W - 1)
        WIDER: tl.constexpr = BITS - (BITS & (2 * W - 1))  # bits of the planes before this one
        plane = q >> SHIFT
        if WIDER != 0:  # the top plane has no code bits above it to clear
            plane = plane & ((1 << W) - 1)
        where = row[:, None] + (G * WIDER // 8 + FIRST * W // 8) + tl.arange(0, V * W // 8)[None, :]
        tl.store(u8 + where, _pack(plane, W, V, BLOCK_G), mask=valid[:, None])


@triton.jit
def _load_codes(u8, row, valid, BITS: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr,
                PER_THREAD: tl.constexpr):
    """The codes [BLOCK_G, G] (int32) of the groups whose codes start at byte `row`, from their bit planes;
    PER_THREAD: one group per thread (see _runs)."""
    q = tl.zeros((BLOCK_G, G), tl.int32)
    q = _load_plane(q, u8, row, valid, 8, BITS, G, BLOCK_G, PER_THREAD)
    q = _load_plane(q, u8, row, valid, 4, BITS, G, BLOCK_G, PER_THREAD)
    q = _load_plane(q, u8, row, valid, 2, BITS, G, BLOCK_G, PER_THREAD)
    return _load_plane(q, u8, row, valid, 1, BITS, G, BLOCK_G, PER_THREAD)


@triton.jit
def _load_plane(q, u8, row, valid, W: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr,
                PER_THREAD: tl.constexpr):
    """q with plane W of the codes (if BITS has one) added in at its place."""
    if (BITS & W) != 0:
        NB: tl.constexpr = G * W // 8
        WIDER: tl.constexpr = BITS - (BITS & (2 * W - 1))  # bits of the planes before this one, as _store_plane
        start = row + G * WIDER // 8
        if PER_THREAD:
            VEC: tl.constexpr = 16 if NB > 16 else NB
            packed = tl.reshape(tl.load(u8 + _runs(start, NB, VEC), mask=valid[:, None, None], other=0),
                                (BLOCK_G, NB))
        else:
            packed = tl.load(u8 + start[:, None] + tl.arange(0, NB)[None, :], mask=valid[:, None], other=0)
        q = q | (_unpack(packed.to(tl.int32), W) << (BITS & (W - 1)))  # at SHIFT, as _store_plane
    return q


TINY_SCALE: tl.constexpr = tl.constexpr(reference.TINY_SCALE)
HUGE_SCALE: tl.constexpr = tl.constexpr(reference.HUGE_SCALE)
FLOAT32_MAX: tl.constexpr = tl.constexpr(reference.FLOAT32_MAX)
SHRINK: tl.constexpr = tl.constexpr(reference.SHRINK)
FLOAT16_MAX: tl.constexpr = tl.constexpr(torch.finfo(torch.float16).max)
BFLOAT16_MAX: tl.constexpr = tl.constexpr(torch.finfo(torch.bfloat16).max)
BARRIER_LANES: tl.constexpr = tl.constexpr(address_table.BARRIER_LANES)
COUNTER_STRIDE: tl.constexpr = tl.constexpr(address_table.COUNTER_STRIDE)
ADDRESS_SPLIT: tl.constexpr = tl.constexpr(24)  # bits of a workspace address in its low part (`_table`)
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
def _saturate(v, MAXIMUM: tl.constexpr):
    """v clamped to +-MAXIMUM, NaN kept, as reference.saturate."""
    return _min_nan(_max_nan(v, -MAXIMUM), MAXIMUM)


@triton.jit
def _hadamard(x, G: tl.constexpr, BLOCK_G: tl.constexpr):
    """H x / G for each row of x [BLOCK_G, G], as reference.hadamard: x / G, then _butterflies."""
    return _butterflies(x * (1.0 / G), G, BLOCK_G)


@triton.jit
def _butterflies(x, G: tl.constexpr, BLOCK_G: tl.constexpr):
    """H x for each row of x [BLOCK_G, G], as reference.butterflies: log2(G) constant-geometry stages (y[2i] = x[i] +
    x[i + G/2], y[2i + 1] = x[i] - x[i + G/2])."""
    for stage in tl.static_range(10):
        if (2 << stage) <= G:
            halves = tl.permute(tl.reshape(x, (BLOCK_G, 2, G // 2)), (0, 2, 1))
            top, bottom = tl.split(halves)
            x = tl.reshape(tl.join(top + bottom, top - bottom), (BLOCK_G, G))
    return x


@triton.jit
def _is_finite(v):
    return tl.abs(v) < float("inf")


@triton.jit
def _runs(start, WIDTH: tl.constexpr, VEC: tl.constexpr):
    """Offsets [rows, WIDTH / VEC, VEC] of WIDTH elements from each row's `start`, as runs of VEC (16 bytes). Triton
    gives a tile of that shape one row per thread (with 32 x warps rows: launches.Launch.block_groups), each run one
    vector access: a whole group in one thread's registers, so that rotation, min/max and argmax need no data from
    other threads (a [rows, WIDTH] tile spreads a group over threads, and each butterfly stage then moves it through
    shared memory)."""
    return start[:, None, None] + (tl.arange(0, WIDTH // VEC) * VEC)[None, :, None] + tl.arange(0, VEC)[None, None, :]


@triton.jit
def _load_whole_groups(x, group, numel, G: tl.constexpr, BLOCK_G: tl.constexpr, PER_THREAD: tl.constexpr):
    """Groups `group` of x as float32 [BLOCK_G, G]; PER_THREAD: one group per thread (see _runs)."""
    start = group.to(tl.int64) * G
    if PER_THREAD:
        VEC: tl.constexpr = 128 // x.dtype.element_ty.primitive_bitwidth
        offsets = _runs(start, G, VEC)
        values = tl.reshape(tl.load(x + offsets, mask=offsets < numel, other=0.0), (BLOCK_G, G))
    else:
        offsets = start[:, None] + tl.arange(0, G)[None, :]
        values = tl.load(x + offsets, mask=offsets < numel, other=0.0)
    return values.to(tl.float32)


@triton.jit
def _group_params(mx, mn, nonfinite, LEVELS: tl.constexpr):
    """scale and zero as stored, and what each value is multiplied by, per group (row)."""
    # correctly rounded divisions: x / L - y / L may otherwise contract into an FMA, nonzero (even negative) for x == y
    scale = tl.where(nonfinite, float("nan"), tl.math.div_rn(mx, LEVELS) - tl.math.div_rn(mn, LEVELS))
    zero = tl.where(nonfinite, float("nan"), mn)
    top = tl.fma(tl.full(scale.shape, LEVELS, tl.float32), scale, zero)  # finite once shrunk: no value overflows
    scale = tl.where(tl.abs(top) == float("inf"), scale * SHRINK, scale)
    safe = tl.where(scale > 0, scale, 1.0)
    prescale = tl.where(safe < TINY_SCALE, 1.0 / TINY_SCALE, tl.where(safe > HUGE_SCALE, 0.25, 1.0))
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
    """Whole groups [BLOCK_G, G] -> codes and per-group metadata. A NaN-propagating max and min also tell a
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
    codes = _codes(x, zero, prescale, inverse, LEVELS, SPIKE)
    return codes, scale, zero, hi, lo, hi_index, lo_index


@triton.jit
def _store_scale_zero(f32, base, group, groups_per_chunk, valid, scale, zero, NB: tl.constexpr):
    """The groups' scales, then zeros, after the chunk's codes (NB bytes a group); returns where they start (bytes)."""
    start = base + groups_per_chunk * NB
    meta = start // 4 + group
    tl.store(f32 + meta, scale, mask=valid)
    tl.store(f32 + meta + groups_per_chunk, zero, mask=valid)
    return start


@triton.jit
def _store_groups(u8, f32, i16, base, group, groups_per_chunk, valid, codes, scale, zero, hi, lo, hi_index,
                  lo_index, BITS: tl.constexpr, G: tl.constexpr, SPIKE: tl.constexpr, BLOCK_G: tl.constexpr):
    NB: tl.constexpr = G * BITS // 8
    _store_codes(u8, base + group * NB, codes, valid, BITS, G, 0, G, BLOCK_G)
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
                 SPIKE: tl.constexpr, BLOCK_G: tl.constexpr, PER_THREAD: tl.constexpr = False,
                 TIMES: tl.constexpr = 1.0):
    """Dequantized groups [BLOCK_G, G], times TIMES (a power of two, taken into each group's scale, zero and spikes);
    PER_THREAD: one group per thread (see _runs)."""
    NB: tl.constexpr = G * BITS // 8
    q = _load_codes(u8, base + group * NB, valid, BITS, G, BLOCK_G, PER_THREAD)
    start = base + groups_per_chunk * NB
    meta = start // 4 + group
    scale = tl.load(f32 + meta, mask=valid, other=0.0) * TIMES
    zero = tl.load(f32 + meta + groups_per_chunk, mask=valid, other=0.0) * TIMES
    v = tl.fma(_to_float(q), scale[:, None], zero[:, None])  # between zero and a finite top: see _group_params
    if SPIKE:
        column = tl.arange(0, G)[None, :]
        hi = tl.load(f32 + meta + 2 * groups_per_chunk, mask=valid, other=0.0) * TIMES
        lo = tl.load(f32 + meta + 3 * groups_per_chunk, mask=valid, other=0.0) * TIMES
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
def _views(payload):
    """The float32 and int16 views of a byte pointer: the metadata is stored with typed accesses."""
    return payload, payload.to(tl.pointer_type(tl.float32)), payload.to(tl.pointer_type(tl.int16))


@triton.jit
def _quantize(x, payload, numel, total_groups, groups_per_chunk, chunk_bytes, BITS: tl.constexpr, G: tl.constexpr,
              SPIKE: tl.constexpr, ROTATE: tl.constexpr, BLOCK_G: tl.constexpr, PER_THREAD: tl.constexpr):
    """Spike reserving (argmax) and rotation take whole groups as one tile. Otherwise each group is read in parts of
    32 values, each part as its own [BLOCK_G, 32] tile: 4 threads share a group rather than 16, so the per-group work
    (the reductions' shuffles, three divisions) is repeated on 4 threads, and each thread holds a group's parts side
    by side. Each part is read twice: for min/max, then for its codes."""
    u8, f32, i16 = _views(payload)
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < total_groups
    base = (group // groups_per_chunk).to(tl.int64) * chunk_bytes
    if SPIKE or ROTATE:
        values = _load_whole_groups(x, group, numel, G, BLOCK_G, PER_THREAD)
        if ROTATE:
            values = _hadamard(values, G, BLOCK_G)
        codes, scale, zero, hi, lo, hi_index, lo_index = _quantize_tile(values, BITS, G, SPIKE, BLOCK_G)
        _store_groups(u8, f32, i16, base, group % groups_per_chunk, groups_per_chunk, valid, codes, scale, zero, hi,
                      lo, hi_index, lo_index, BITS, G, SPIKE, BLOCK_G)
    else:
        LEVELS: tl.constexpr = (1 << BITS) - 1
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
            _store_codes(u8, row, codes, valid, BITS, G, part * PART, PART, BLOCK_G)
        _store_scale_zero(f32, base, in_chunk, groups_per_chunk, valid, scale, zero, NB)


@triton.jit
def _dequant_sum_requant(sources, in_offset, out, groups_per_chunk, in_chunk_bytes, LOCAL: tl.constexpr,
                         WORLD: tl.constexpr, IN_BITS: tl.constexpr, OUT_BITS: tl.constexpr, G: tl.constexpr,
                         SPIKE: tl.constexpr, BLOCK_G: tl.constexpr):
    """Sum of the WORLD chunks, requantized into `out`: chunk s at `sources` + s * in_chunk_bytes (LOCAL: the
    all-to-all's output) or `in_offset` bytes into rank s's symmetric buffer (`sources`: the address table). Sums in
    source order, so both give the same bytes."""
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < groups_per_chunk
    base = tl.zeros((BLOCK_G,), tl.int64)
    total = tl.zeros((BLOCK_G, G), tl.float32)
    for source in tl.static_range(WORLD):
        if LOCAL:
            chunk = sources + source * in_chunk_bytes
        else:
            chunk = _peer_chunk(sources, source, in_offset)
        u8, f32, i16 = _views(chunk)
        values = _load_groups(u8, f32, i16, base, group, groups_per_chunk, valid, IN_BITS, G, SPIKE, BLOCK_G)
        total = total + values
    total = _saturate(total, FLOAT32_MAX)
    codes, scale, zero, hi, lo, hi_index, lo_index = _quantize_tile(total, OUT_BITS, G, SPIKE, BLOCK_G)
    out_u8, out_f32, out_i16 = _views(out)
    _store_groups(out_u8, out_f32, out_i16, base, group, groups_per_chunk, valid, codes, scale, zero, hi, lo,
                  hi_index, lo_index, OUT_BITS, G, SPIKE, BLOCK_G)


@triton.jit
def _table(table_high, table_low):
    """The int64 address table of a symmetric workspace (row 0: every rank's buffer, row 1: its signal pad), from
    its address: the compiled code passes it as constants, no tensor to look up per call. The address comes in two
    parts (bits 24 and up, bits 0-23), each within int32: Inductor (torch 2.11) fails on larger integer arguments
    under dynamic shapes."""
    return ((tl.cast(table_high, tl.int64) << ADDRESS_SPLIT) + table_low).to(tl.pointer_type(tl.int64))


@triton.jit
def _peer_chunk(table, rank, offset):
    """Byte pointer `offset` bytes into `rank`'s symmetric buffer. The layout keeps every field 16-byte aligned,
    which the compiler is told so that the loads stay vectorised."""
    return tl.multiple_of((tl.load(table + rank) + offset).to(tl.pointer_type(tl.uint8)), 16)


@triton.jit
def _mark(token):
    """Write the token: the compiled graph orders the symmetric-memory kernels, which exchange data through memory
    it cannot see, by the token each writes and the next one reads."""
    if tl.program_id(0) == 0:
        tl.store(token, 0)


@triton.jit
def quantize_kernel(x, payload, numel, total_groups, groups_per_chunk, chunk_bytes, BITS: tl.constexpr,
                    G: tl.constexpr, SPIKE: tl.constexpr, ROTATE: tl.constexpr, BLOCK_G: tl.constexpr,
                    PER_THREAD: tl.constexpr):
    _quantize(x, payload, numel, total_groups, groups_per_chunk, chunk_bytes, BITS, G, SPIKE, ROTATE, BLOCK_G,
              PER_THREAD)


@triton.jit(do_not_specialize=["rank"])  # one binary for every rank: see _barrier_when_last
def quantize_symm_kernel(x, table_high, table_low, rank, after, token, numel, total_groups, groups_per_chunk,
                         stride16, BITS: tl.constexpr, G: tl.constexpr, SPIKE: tl.constexpr, ROTATE: tl.constexpr,
                         BLOCK_G: tl.constexpr, PER_THREAD: tl.constexpr, WORLD: tl.constexpr,
                         BARRIER: tl.constexpr):
    """quantize_kernel writing into this rank's symmetric buffer, chunk c at c * 16 * stride16 bytes (in 16-byte
    units, so that the compiler knows every chunk aligned whatever sizes it was given: without that hint the rotated
    kernel took 255 registers and spilled), then (BARRIER) the first barrier: the kernel ends once every rank's
    chunks are written. `after` (not read) is the token of the all-reduce before it on this workspace: the graph
    orders this kernel after that one's last."""
    table = _table(table_high, table_low)
    _quantize(x, _peer_chunk(table, rank, 0), numel, total_groups, groups_per_chunk, stride16 * 16, BITS, G, SPIKE,
              ROTATE, BLOCK_G, PER_THREAD)
    _mark(token)
    if BARRIER:
        _barrier_when_last(table, 0, rank, WORLD)


@triton.jit
def dequant_sum_requant_kernel(received, out, groups_per_chunk, in_chunk_bytes, WORLD: tl.constexpr,
                               IN_BITS: tl.constexpr, OUT_BITS: tl.constexpr, G: tl.constexpr, SPIKE: tl.constexpr,
                               BLOCK_G: tl.constexpr):
    _dequant_sum_requant(received, 0, out, groups_per_chunk, in_chunk_bytes, True, WORLD, IN_BITS, OUT_BITS, G, SPIKE,
                         BLOCK_G)


@triton.jit(do_not_specialize=["rank"])  # one binary for every rank: see _barrier_when_last
def dequant_sum_requant_peers_kernel(table_high, table_low, in_offset, out_offset, rank, token, groups_per_chunk,
                                     WORLD: tl.constexpr, IN_BITS: tl.constexpr, OUT_BITS: tl.constexpr,
                                     G: tl.constexpr, SPIKE: tl.constexpr, BLOCK_G: tl.constexpr,
                                     BARRIER: tl.constexpr):
    """dequant_sum_requant_kernel reading each source's chunk straight from that rank's buffer (the all-to-all
    folded into the loads), writing `out_offset` bytes into this rank's, then (BARRIER) the second barrier."""
    table = _table(table_high, table_low)
    _dequant_sum_requant(table, in_offset, _peer_chunk(table, rank, out_offset), groups_per_chunk, 0, False, WORLD,
                         IN_BITS, OUT_BITS, G, SPIKE, BLOCK_G)
    _mark(token)
    if BARRIER:
        _barrier_when_last(table, 1, rank, WORLD)


@triton.jit
def _dequantized(payload, group, groups_per_chunk, valid, BITS: tl.constexpr, G: tl.constexpr, SPIKE: tl.constexpr,
                 ROTATE: tl.constexpr, BLOCK_G: tl.constexpr, PER_THREAD: tl.constexpr):
    """Groups `group` of the chunk at `payload` as float32 [BLOCK_G, G] (rotated back), not yet saturated."""
    u8, f32, i16 = _views(payload)
    TIMES: tl.constexpr = 1.0 / G if ROTATE else 1.0  # rotated: G * H (v / G), the 1/G per group (reference.unrotate)
    values = _load_groups(u8, f32, i16, tl.zeros((BLOCK_G,), tl.int64), group, groups_per_chunk, valid, BITS, G,
                          SPIKE, BLOCK_G, PER_THREAD, TIMES)
    if ROTATE:
        values = _butterflies(values, G, BLOCK_G) * G
    return values


@triton.jit
def _dequantize_groups(payload, out, numel, source, group, groups_per_chunk, valid, BITS: tl.constexpr,
                       G: tl.constexpr, SPIKE: tl.constexpr, ROTATE: tl.constexpr, BLOCK_G: tl.constexpr,
                       PER_THREAD: tl.constexpr):
    """Groups `group` of chunk `source` (at `payload`) into their place in `out` (rotated back)."""
    values = _dequantized(payload, group, groups_per_chunk, valid, BITS, G, SPIKE, ROTATE, BLOCK_G, PER_THREAD)
    start = (source * groups_per_chunk + group).to(tl.int64) * G
    if out.dtype.element_ty == tl.float16:  # saturated at the output dtype's maximum, as reference.dequantize
        values = _saturate(values, FLOAT16_MAX)
    elif out.dtype.element_ty == tl.bfloat16:
        values = _saturate(values, BFLOAT16_MAX)
    elif ROTATE:  # without rotation a float32 value lies between zero and a finite top already
        values = _saturate(values, FLOAT32_MAX)
    offsets = start[:, None] + tl.arange(0, G)[None, :]
    tl.store(out + offsets, values.to(out.dtype.element_ty), mask=valid[:, None] & (offsets < numel))


@triton.jit
def dequantize_kernel(payload, out, numel, groups_per_chunk, chunk_bytes, WORLD: tl.constexpr, BITS: tl.constexpr,
                      G: tl.constexpr, SPIKE: tl.constexpr, ROTATE: tl.constexpr, BLOCK_G: tl.constexpr,
                      PER_THREAD: tl.constexpr):
    """Program p handles block p // W of chunk p % W, as dequantize_peers_kernel does."""
    source = tl.program_id(0) % WORLD
    group = tl.program_id(0) // WORLD * BLOCK_G + tl.arange(0, BLOCK_G)
    _dequantize_groups(payload + source.to(tl.int64) * chunk_bytes, out, numel, source, group, groups_per_chunk,
                       group < groups_per_chunk, BITS, G, SPIKE, ROTATE, BLOCK_G, PER_THREAD)


@triton.jit(do_not_specialize=["rank"])  # one binary for every rank: see _barrier_when_last
def dequantize_peers_kernel(table_high, table_low, in_offset, out, rank, token, numel, groups_per_chunk,
                            WORLD: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr, SPIKE: tl.constexpr,
                            ROTATE: tl.constexpr, BLOCK_G: tl.constexpr, PER_THREAD: tl.constexpr,
                            BARRIER: tl.constexpr):
    """dequantize_kernel reading chunk c straight from rank c's buffer (the all-gather folded into the loads), then
    (BARRIER: the all-gather's, whose chunks lie where the next collective writes first) a barrier.
    Program p handles block p // W of chunk p % W: consecutive programs read different ranks, so the local chunk's
    loads (HBM) and the peers' (NVLink) run side by side rather than one after the other."""
    table = _table(table_high, table_low)
    source = tl.program_id(0) % WORLD
    group = tl.program_id(0) // WORLD * BLOCK_G + tl.arange(0, BLOCK_G)
    _dequantize_groups(_peer_chunk(table, source, in_offset), out, numel, source, group, groups_per_chunk,
                       group < groups_per_chunk, BITS, G, SPIKE, ROTATE, BLOCK_G, PER_THREAD)
    _mark(token)
    if BARRIER:
        _barrier_when_last(table, 1, rank, WORLD)


@triton.jit
def _peer_copy(table, source, in_offset, group, groups_per_chunk, valid, BITS: tl.constexpr, G: tl.constexpr,
               SPIKE: tl.constexpr, ROTATE: tl.constexpr, BLOCK_G: tl.constexpr, PER_THREAD: tl.constexpr):
    """Groups `group` of rank `source`'s chunk, dequantized as a float32 dequantize is (saturated where rotated)."""
    values = _dequantized(_peer_chunk(table, source, in_offset), group, groups_per_chunk, valid, BITS, G, SPIKE,
                          ROTATE, BLOCK_G, PER_THREAD)
    if ROTATE:
        values = _saturate(values, FLOAT32_MAX)
    return values


@triton.jit(do_not_specialize=["rank"])  # one binary for every rank: see _barrier_when_last
def dequant_sum_peers_kernel(table_high, table_low, in_offset, out, rank, token, width, groups_per_chunk,
                             WORLD: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr, SPIKE: tl.constexpr,
                             ROTATE: tl.constexpr, BLOCK_G: tl.constexpr, PER_THREAD: tl.constexpr,
                             BARRIER: tl.constexpr):
    """The reduce-scatter's second kernel: the chunk every rank holds `in_offset` bytes into its buffer, each
    dequantized into float32 (saturated as a float32 dequantize is) and summed in rank order, the first `width`
    values into `out` in its dtype; then (BARRIER) a barrier: the chunks lie where the next collective writes
    first."""
    table = _table(table_high, table_low)
    group = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    valid = group < groups_per_chunk
    total = _peer_copy(table, 0, in_offset, group, groups_per_chunk, valid, BITS, G, SPIKE, ROTATE, BLOCK_G,
                       PER_THREAD)
    for source in tl.static_range(1, WORLD):
        total = total + _peer_copy(table, source, in_offset, group, groups_per_chunk, valid, BITS, G, SPIKE, ROTATE,
                                   BLOCK_G, PER_THREAD)
    offsets = group.to(tl.int64)[:, None] * G + tl.arange(0, G)[None, :]
    tl.store(out + offsets, total.to(out.dtype.element_ty), mask=valid[:, None] & (offsets < width))
    _mark(token)
    if BARRIER:
        _barrier_when_last(table, 1, rank, WORLD)


@triton.jit
def _barrier(table, rank, WORLD: tl.constexpr):
    """Every rank of the workspace's group waits here for every other, as torch's symmetric-memory barrier does: for
    each peer p, this rank's flag in p's signal pad is set once it is clear (release, system scope: the writes this
    thread has seen become visible to p), then each peer's flag in this rank's pad is awaited and cleared (acquire).
    Scalar atomics, so one thread does it all; no inline assembly, which torch's analysis of what a kernel writes
    cannot read (it would take every argument for written, and the compiled graph would copy the inputs)."""
    own = tl.load(table + WORLD + rank).to(tl.pointer_type(tl.int32))
    for peer in tl.static_range(WORLD):
        pad = tl.load(table + WORLD + peer).to(tl.pointer_type(tl.int32))
        while tl.atomic_cas(pad + rank, 0, 1, sem="release", scope="sys") != 0:
            pass
    for peer in tl.static_range(WORLD):
        while tl.atomic_cas(own + peer, 1, 0, sem="acquire", scope="sys") != 1:
            pass


@triton.jit
def _barrier_when_last(table, kernel, rank, WORLD: tl.constexpr):
    """The barrier at the end of a kernel, run by its last program to finish, one launch fewer than a barrier
    kernel. Each program counts itself in once all its threads have stored (bar.sync, then an atomic add with
    release semantics at GPU scope, as cooperative groups' grid sync does): program p on sub-counter p % LANES, the
    program completing a sub-counter on the counter over them (one counter for all programs queued their atomics:
    address_table.py). Only a completing program acquires (an acquire by every program would invalidate L1 under its
    neighbours), with the exchange that resets its counter for the next launch; so the last one has seen every
    program's writes, and its barrier publishes them all to the peers. `kernel` picks this kernel's counters. The
    kernel ends when every rank has reached the same point: the next kernel may read the peers' writes.

    A kernel that waits for another kernel must not need the host meanwhile: loading a new binary may wait for the
    GPU to go idle. Every rank therefore runs the same binary (`rank` is not specialised: Triton would give rank 1 its
    own), which matters where ranks share a GPU, as the tests' simulated ranks do."""
    counters = table + 2 * WORLD + kernel * (BARRIER_LANES + 1) * COUNTER_STRIDE
    programs = tl.num_programs(0)
    lane = tl.program_id(0) % BARRIER_LANES
    lane_programs = (programs - 1 - lane) // BARRIER_LANES + 1
    sub = (counters + lane * COUNTER_STRIDE).to(tl.pointer_type(tl.int32))
    top = (counters + BARRIER_LANES * COUNTER_STRIDE).to(tl.pointer_type(tl.int32))
    tl.debug_barrier()
    if tl.atomic_add(sub, 1, sem="release", scope="gpu") == lane_programs - 1:
        tl.atomic_xchg(sub, 0, sem="acquire", scope="gpu")
        if tl.atomic_add(top, 1, sem="acq_rel", scope="gpu") == tl.minimum(programs, BARRIER_LANES) - 1:
            tl.store(top, 0)
            _barrier(table, rank, WORLD)


def _address(table_address: int) -> tuple[int, int]:
    """The two parts `_table` reassembles."""
    split = ADDRESS_SPLIT.value
    return table_address >> split, table_address & ((1 << split) - 1)


def _launch(name: str, layout: PayloadLayout) -> tuple[int, int, bool]:
    """Groups per program, warps, and whether each thread holds whole groups (the kernels' PER_THREAD) of kernel
    `name`: one group per thread where it takes whole groups in registers (see _runs): the quantize with rotation or
    spikes, the dequantizes with rotation, groups up to GROUP_PER_THREAD_MAX values; the dequant-sum-requantize never
    (its tile is the same with or without rotation), nor the reduce-scatter's dequant-sum (a running sum beside
    each dequantized group would not fit one thread's registers)."""
    launch = LAUNCH[name]
    whole = (layout.rotate or layout.spike_reserve) if name == "quantize" else (
        layout.rotate and name.startswith("dequantize"))
    per_thread = whole and layout.group_size <= GROUP_PER_THREAD_MAX
    return launch.block_groups(layout.group_size, per_thread), launch.num_warps(per_thread), per_thread


def quantize(x: torch.Tensor, layout: PayloadLayout) -> torch.Tensor:
    """The payload [W, chunk_bytes], chunk c for rank c."""
    out = torch.empty((layout.world_size, layout.chunk_bytes), dtype=torch.uint8, device=x.device)
    total_groups = layout.world_size * layout.groups_per_chunk
    block, warps, per_thread = _launch("quantize", layout)
    wrap_triton(quantize_kernel)[(triton.cdiv(total_groups, block),)](
        x.contiguous(), out, x.numel(), total_groups, layout.groups_per_chunk, layout.chunk_bytes, BITS=layout.bits,
        G=layout.group_size, SPIKE=layout.spike_reserve, ROTATE=layout.rotate, BLOCK_G=block, PER_THREAD=per_thread,
        num_warps=warps)
    return out


def dequant_sum_requant(received: torch.Tensor, layout: PayloadLayout, out_bits: int) -> torch.Tensor:
    out = torch.empty((1, layout.with_bits(out_bits).chunk_bytes), dtype=torch.uint8, device=received.device)
    block, warps, _ = _launch("dequant_sum_requant", layout)
    wrap_triton(dequant_sum_requant_kernel)[(triton.cdiv(layout.groups_per_chunk, block),)](
        received.contiguous(), out, layout.groups_per_chunk, layout.chunk_bytes, WORLD=layout.world_size,
        IN_BITS=layout.bits, OUT_BITS=out_bits, G=layout.group_size, SPIKE=layout.spike_reserve, BLOCK_G=block,
        num_warps=warps)
    return out


def dequantize(gathered: torch.Tensor, layout: PayloadLayout, dtype: torch.dtype, shape) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=gathered.device)
    block, warps, per_thread = _launch("dequantize", layout)
    wrap_triton(dequantize_kernel)[(triton.cdiv(layout.groups_per_chunk, block) * layout.world_size,)](
        gathered.contiguous(), out, layout.numel, layout.groups_per_chunk, layout.chunk_bytes,
        WORLD=layout.world_size, BITS=layout.bits, G=layout.group_size, SPIKE=layout.spike_reserve,
        ROTATE=layout.rotate, BLOCK_G=block, PER_THREAD=per_thread, num_warps=warps)
    return out


def quantize_symm(x: torch.Tensor, table_address: int, rank: int, stride: int, layout: PayloadLayout,
                  after: torch.Tensor, token: torch.Tensor, barrier: bool = True, world: int | None = None) -> None:
    """quantize into this rank's symmetric buffer (`table_address`: the workspace's address table), chunk c at
    c * stride bytes, once `after` is written, then wait for every rank of the `world` (the layout's chunks unless
    given) to have done so (without `barrier`: for ranks simulated one after another, under Triton's interpreter);
    writes `token`."""
    total_groups = layout.world_size * layout.groups_per_chunk
    block, warps, per_thread = _launch("quantize", layout)
    wrap_triton(quantize_symm_kernel)[(triton.cdiv(total_groups, block),)](
        x.contiguous(), *_address(table_address), rank, after, token, x.numel(), total_groups,
        layout.groups_per_chunk, stride // 16, BITS=layout.bits, G=layout.group_size, SPIKE=layout.spike_reserve,
        ROTATE=layout.rotate, BLOCK_G=block, PER_THREAD=per_thread, WORLD=world or layout.world_size,
        BARRIER=barrier, num_warps=warps)


def dequant_sum_requant_peers(table_address: int, in_offset: int, out_offset: int, rank: int, layout: PayloadLayout,
                              out_bits: int, token: torch.Tensor, barrier: bool = True) -> None:
    """dequant_sum_requant of the chunks every rank holds `in_offset` bytes into its symmetric buffer, written
    `out_offset` bytes into this rank's (every address + offset 16-byte aligned), then wait for every rank to have
    done so (see quantize_symm); writes `token`."""
    block, warps, _ = _launch("dequant_sum_requant_peers", layout)
    wrap_triton(dequant_sum_requant_peers_kernel)[(triton.cdiv(layout.groups_per_chunk, block),)](
        *_address(table_address), in_offset, out_offset, rank, token, layout.groups_per_chunk, WORLD=layout.world_size,
        IN_BITS=layout.bits, OUT_BITS=out_bits, G=layout.group_size, SPIKE=layout.spike_reserve, BLOCK_G=block,
        BARRIER=barrier, num_warps=warps)


def dequantize_peers(table_address: int, offset: int, layout: PayloadLayout, dtype: torch.dtype, shape,
                     token: torch.Tensor, rank: int = 0, barrier: bool = False) -> torch.Tensor:
    """dequantize of the chunks every rank holds `offset` bytes into its symmetric buffer, then (`barrier`, as this
    `rank`) wait for every rank to have done so; writes `token`."""
    out = torch.empty(shape, dtype=dtype, device=token.device)
    block, warps, per_thread = _launch("dequantize_peers", layout)
    wrap_triton(dequantize_peers_kernel)[(triton.cdiv(layout.groups_per_chunk, block) * layout.world_size,)](
        *_address(table_address), offset, out, rank, token, layout.numel, layout.groups_per_chunk,
        WORLD=layout.world_size, BITS=layout.bits, G=layout.group_size, SPIKE=layout.spike_reserve,
        ROTATE=layout.rotate, BLOCK_G=block, PER_THREAD=per_thread, BARRIER=barrier, num_warps=warps)
    return out


def dequant_sum_peers(table_address: int, offset: int, rank: int, layout: PayloadLayout, dtype: torch.dtype, shape,
                      token: torch.Tensor, barrier: bool = True) -> torch.Tensor:
    """The reduce-scatter's sum: the chunk every rank holds `offset` bytes into its symmetric buffer, dequantized
    and summed into a tensor of `shape` (its first values; `dtype`), then wait for every rank to have done so (see
    quantize_symm); writes `token`."""
    out = torch.empty(shape, dtype=dtype, device=token.device)
    block, warps, per_thread = _launch("dequant_sum_peers", layout)
    wrap_triton(dequant_sum_peers_kernel)[(triton.cdiv(layout.groups_per_chunk, block),)](
        *_address(table_address), offset, out, rank, token, out.numel(), layout.groups_per_chunk,
        WORLD=layout.world_size, BITS=layout.bits, G=layout.group_size, SPIKE=layout.spike_reserve,
        ROTATE=layout.rotate, BLOCK_G=block, PER_THREAD=per_thread, BARRIER=barrier, num_warps=warps)
    return out
