"""Pure-torch reference of the three kernels, operation for operation what the Triton kernels compute.

It is the CPU implementation of the custom ops and the oracle of the kernel tests. Per group of G values x:

    zero = min(x), scale = max(x)/L - min(x)/L  (L = 2^bits - 1; the split division cannot overflow float32)
    code = round(clamp((x - zero) * (1 / scale), 0, L)),  value = fma(code, scale, zero)

round to nearest, ties to even, of the exact product of (x - zero) and the float32 reciprocal (the kernel's FMA with
2^23 rounds it once); the values of a non-finite group get code L. One correctly rounded reciprocal per group and a
multiply per value, not a division per value: divisions and float to int conversions run at a quarter of the GPU's
arithmetic rate. x - zero is one FMA, fma(x, p, -zero * p), with a power of two p per group: 2^100 where the scale is
below 2^-100 (so that its reciprocal stays finite), 1/4 where it is above 2^120 (a group spanning more than float32's
maximum, e.g. -3e38..3e38, whose x - zero would overflow), 1 elsewhere; a power of two changes no rounding. A value
is one FMA too, so code * scale never overflows on its own; where a group's top value fma(L, scale, zero) would
round past float32's maximum, its scale is taken smaller by 2^-20 (one check per group, so no value needs a clamp:
every value lies between zero and a finite top). The sum of the ranks' values is saturated at float32's maximum and
the output at its dtype's: where the inputs and their exact sum are finite, so is every value the pipeline computes.

With rotation each group x is quantized as y = H x / G (H: the +-1 Walsh-Hadamard matrix of the group size, G the
group size; `hadamard`), which spreads an outlier over its group. H is symmetric and H H = G I, so the last dequantize
gives back H y. The transform is linear: the ranks' rotated groups sum to the rotated sum, and the dequantize-sum-
requantize runs unchanged in the rotated domain. Scaling by 1/G first keeps every butterfly's sum within the inputs'
magnitude (no overflow); the dequantize takes the 1/G into each group's scale and zero before its butterflies and
multiplies by G after (the output then saturates at its dtype's maximum).

With spike reserving the group's first argmax and argmin keep their exact values and min/max are taken over the
rest. A group holding any inf or NaN gets scale = zero = NaN and no spikes (their index is G, out of range), so all
of it dequantizes to NaN: a non-finite input never turns into a finite wrong output. A constant group gets scale 0
and reproduces exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .layout import PayloadLayout, code_planes


TINY_SCALE = 2.0**-100
HUGE_SCALE = 2.0**120  # above it L * scale may exceed float32's maximum: x - zero is taken at a quarter
FLOAT32_MAX = torch.finfo(torch.float32).max
SHRINK = 1.0 - 2.0**-20  # a scale whose top value overflows is taken this much smaller: the top then stays finite


@dataclass
class QuantizedGroups:
    """Unpacked per-group quantization state; `hi`/`lo` and their indices are None without spike reserving."""

    codes: torch.Tensor  # int32 [n, G]
    scale: torch.Tensor  # float32 [n]
    zero: torch.Tensor  # float32 [n]
    hi: torch.Tensor | None = None
    lo: torch.Tensor | None = None
    hi_index: torch.Tensor | None = None  # int32 [n]
    lo_index: torch.Tensor | None = None


def _pick(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[row, index[row]] as a masked sum, as the Triton kernel computes it (so -0.0 reads back as 0.0 in both)."""
    hit = torch.arange(x.shape[1], device=x.device)[None, :] == index[:, None]
    return torch.where(hit, x, torch.zeros_like(x)).sum(1)


def quantize_groups(x: torch.Tensor, bits: int, spike_reserve: bool) -> QuantizedGroups:
    levels = float((1 << bits) - 1)
    nonfinite = (~torch.isfinite(x)).any(1)
    hi = lo = hi_index = lo_index = None
    if spike_reserve:
        no_spike = torch.full_like(nonfinite, x.shape[1], dtype=torch.int64)
        hi_index = torch.where(nonfinite, no_spike, x.argmax(1))
        lo_index = torch.where(nonfinite, no_spike, x.argmin(1))
        column = torch.arange(x.shape[1], device=x.device)[None, :]
        is_spike = (column == hi_index[:, None]) | (column == lo_index[:, None])
        hi, lo = _pick(x, hi_index), _pick(x, lo_index)
        mx = torch.where(is_spike, float("-inf"), x).amax(1)
        mn = torch.where(is_spike, float("inf"), x).amin(1)
        hi_index, lo_index = hi_index.to(torch.int32), lo_index.to(torch.int32)
    else:
        mx, mn = x.amax(1), x.amin(1)
    nan = torch.full_like(mn, float("nan"))
    scale = torch.where(nonfinite, nan, mx / levels - mn / levels)
    zero = torch.where(nonfinite, nan, mn)
    # L * scale may exceed mx - mn by a few units in the last place: at float32's edge the top value would overflow
    top = fma(torch.full_like(scale, levels), scale, zero)
    scale = torch.where(top.isinf(), scale * SHRINK, scale)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    prescale = torch.where(safe < TINY_SCALE, 1 / TINY_SCALE, torch.where(safe > HUGE_SCALE, 0.25, 1.0))
    inverse = 1 / (safe * prescale)
    # the kernel's fma(x, p, -zero * p): exact in float64 but for a far smaller addend, which cannot move the result
    # across a float32 rounding boundary, so the one rounding to float32 is the FMA's
    shifted = (x.double() * prescale.double()[:, None] - (zero * prescale).double()[:, None]).float()
    v = shifted.double() * inverse.double()[:, None]  # exact: two 24-bit significands
    codes = torch.where(v == v, v, torch.full_like(v, levels)).clamp(0.0, levels).round().to(torch.int32)
    return QuantizedGroups(codes, scale, zero, hi, lo, hi_index, lo_index)


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c for float32 tensors, rounded once, as the kernels' FMA: the product is exact in float64 and the sum
    is rounded to odd there (TwoSum's error decides the last bit), which then rounds to float32 correctly."""
    product, addend = a.double() * b.double(), c.double()
    total = product + addend
    back = total - product
    error = (product - (total - back)) + (addend - back)
    bits = total.view(torch.int64)
    # an inexact sum with an even last bit steps one unit towards the exact value, to the odd neighbour
    step = torch.where((error != 0) & ((bits & 1) == 0), torch.where((error > 0) == (total > 0), 1, -1), 0)
    return (bits + step).view(torch.float64).float()


def saturate(values: torch.Tensor, maximum: float = FLOAT32_MAX) -> torch.Tensor:
    """values clamped to +-maximum, NaN kept: a result whose exact value is finite but that rounding pushed past the
    largest finite value comes back as that value, not inf."""
    return torch.where(values.isnan(), values, values.clamp(-maximum, maximum))


def dequantize_groups(q: QuantizedGroups) -> torch.Tensor:
    v = fma(q.codes.to(torch.float32), q.scale[:, None], q.zero[:, None])  # between zero and a finite top
    if q.hi is not None:
        column = torch.arange(v.shape[1], device=v.device)[None, :]
        v = torch.where(column == q.lo_index[:, None], q.lo[:, None], v)
        v = torch.where(column == q.hi_index[:, None], q.hi[:, None], v)
    return v


def _pack_plane(codes: torch.Tensor, width: int) -> torch.Tensor:
    """int32 [n, V] codes of `width` bits -> uint8 [n, V*width/8]; code j at bit (j % (8/width)) * width of its byte."""
    per_byte = 8 // width
    shifts = torch.arange(per_byte, device=codes.device, dtype=torch.int32) * width
    grouped = codes.reshape(codes.shape[0], -1, per_byte)
    return (grouped << shifts).sum(2).to(torch.uint8)


def _unpack_plane(packed: torch.Tensor, width: int) -> torch.Tensor:
    per_byte = 8 // width
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * width
    codes = (packed.to(torch.int32)[:, :, None] >> shifts) & ((1 << width) - 1)
    return codes.reshape(packed.shape[0], -1)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [n, G] codes -> uint8 [n, G*bits/8]: each group's bit planes one after the other (`layout.code_planes`)."""
    return torch.cat([_pack_plane((codes >> shift) & ((1 << width) - 1), width)
                      for width, shift, _ in code_planes(bits)], dim=1)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    size = packed.shape[1] * 8 // bits
    codes = torch.zeros(packed.shape[0], size, dtype=torch.int32, device=packed.device)
    for width, shift, offset in code_planes(bits):
        plane = packed[:, size * offset // 8 : size * (offset + width) // 8]
        codes = codes + (_unpack_plane(plane, width) << shift)
    return codes


def _fields(layout: PayloadLayout) -> list[tuple[str, int, torch.dtype]]:
    """(name, byte offset, dtype) of each per-group metadata array inside one chunk."""
    n = layout.groups_per_chunk
    fields = [("scale", layout.codes_bytes, torch.float32), ("zero", layout.codes_bytes + 4 * n, torch.float32)]
    if layout.spike_reserve:
        base = layout.codes_bytes + 8 * n
        fields += [
            ("hi", base, torch.float32),
            ("lo", base + 4 * n, torch.float32),
            ("hi_index", base + 8 * n, torch.int16),
            ("lo_index", base + 10 * n, torch.int16),
        ]
    return fields


def encode(q: QuantizedGroups, layout: PayloadLayout) -> torch.Tensor:
    """Groups of `chunks` whole chunks -> uint8 [chunks, chunk_bytes]."""
    chunks = q.codes.shape[0] // layout.groups_per_chunk
    out = torch.empty((chunks, layout.chunk_bytes), dtype=torch.uint8, device=q.codes.device)
    out[:, : layout.codes_bytes] = pack_codes(q.codes, layout.bits).reshape(chunks, -1)
    for name, offset, dtype in _fields(layout):
        values = getattr(q, name).to(dtype).reshape(chunks, -1)
        out[:, offset : offset + values.shape[1] * values.element_size()] = values.view(torch.uint8)
    return out


def decode(payload: torch.Tensor, layout: PayloadLayout) -> QuantizedGroups:
    """uint8 [chunks, chunk_bytes] -> the groups it carries (chunk-major)."""
    chunks, n = payload.shape[0], layout.groups_per_chunk
    codes = unpack_codes(payload[:, : layout.codes_bytes].reshape(chunks * n, -1), layout.bits)
    meta = {}
    for name, offset, dtype in _fields(layout):
        width = n * torch.empty((), dtype=dtype).element_size()
        values = payload[:, offset : offset + width].contiguous().view(dtype).reshape(-1)
        meta[name] = values.to(torch.int32) if dtype == torch.int16 else values
    return QuantizedGroups(codes, **meta)


def hadamard(groups: torch.Tensor) -> torch.Tensor:
    """H x / G for each row x of float32 [n, G], as the kernels compute it: x / G, then `butterflies`. Every partial
    sum is an average of at most G inputs: no stage can overflow."""
    return butterflies(groups * (1.0 / groups.shape[1]))


def butterflies(groups: torch.Tensor) -> torch.Tensor:
    """H x for each row x of float32 [n, G]: log2(G) butterfly stages of constant geometry (stage: y[2i] = x[i] +
    x[i + G/2], y[2i + 1] = x[i] - x[i + G/2]), which give the natural (Sylvester) order."""
    n, size = groups.shape
    x = groups
    for _ in range(size.bit_length() - 1):
        top, bottom = x[:, : size // 2], x[:, size // 2 :]
        x = torch.stack([top + bottom, top - bottom], dim=2).reshape(n, size)
    return x


def unrotate(q: QuantizedGroups) -> torch.Tensor:
    """The dequantized groups rotated back, as the kernel computes them: G * H (v / G), the inverse of `hadamard`
    for the dequantized v, whose 1/G goes into each group's scale, zero and spikes (one multiply per group rather
    than per value; exact unless a scaled scale, zero or value is subnormal). The quantization error may push a value
    past float32's maximum: `dequantize` saturates it."""
    size = q.codes.shape[1]
    scaled = dataclasses.replace(q, **{f: getattr(q, f) * (1.0 / size) for f in ("scale", "zero", "hi", "lo")
                                       if getattr(q, f) is not None})
    return butterflies(dequantize_groups(scaled)) * float(size)


def quantize(x: torch.Tensor, layout: PayloadLayout) -> torch.Tensor:
    """Any-shape x -> uint8 [world_size, chunk_bytes], chunk r destined for rank r."""
    flat = x.reshape(-1).to(torch.float32)
    padded = torch.zeros(layout.padded_numel, dtype=torch.float32, device=x.device)
    padded[: flat.numel()] = flat
    groups = padded.reshape(-1, layout.group_size)
    if layout.rotate:
        groups = hadamard(groups)
    return encode(quantize_groups(groups, layout.bits, layout.spike_reserve), layout)


def dequant_sum_requant(received: torch.Tensor, layout: PayloadLayout, out_bits: int) -> torch.Tensor:
    """uint8 [W, chunk_bytes] (chunk r from every rank) -> fp32 sum requantized at out_bits, uint8 [1, chunk_bytes']."""
    total = torch.zeros(layout.groups_per_chunk, layout.group_size, dtype=torch.float32, device=received.device)
    for source in range(received.shape[0]):
        total = total + dequantize_groups(decode(received[source : source + 1], layout))
    total = saturate(total)  # a partial sum past float32's maximum stays infinite (every value is finite) until here
    out_layout = layout.with_bits(out_bits)
    return encode(quantize_groups(total, out_bits, layout.spike_reserve), out_layout)


def dequantize(gathered: torch.Tensor, layout: PayloadLayout, dtype: torch.dtype, shape) -> torch.Tensor:
    """uint8 [W, chunk_bytes] (the requantized chunk of every rank) -> tensor of `dtype` and `shape`, saturated at
    the dtype's largest finite value (an exact sum below 65504 that the quantization error pushed past it comes back
    as 65504 in float16, not inf; the kernel skips this where it cannot change a value: float32 without rotation)."""
    q = decode(gathered, layout)
    values = unrotate(q) if layout.rotate else dequantize_groups(q)
    values = values.reshape(-1)[: layout.numel]
    values = saturate(values, torch.finfo(dtype).max)
    return values.to(dtype).reshape(shape)
