"""Where every byte of a quantized payload lives, shared by the Triton kernels, the torch reference and the tests.

A tensor of `numel` elements is split into `world_size` chunks of `chunk_numel` elements (a multiple of the group
size; the tail of the last chunk is zero padding that never reaches an output). Each chunk becomes one contiguous
uint8 buffer, so each communication step is a single collective:

    [ packed codes | scale f32 x G | zero f32 x G | (spike) hi f32 x G | lo f32 x G | hi index i16 x G | lo index i16 x G ]

where G is the number of groups per chunk. A group's b-bit codes are stored as bit planes of the widths the kernels
pack in registers (8, 4, 2 and 1 bits, the set bits of b, widest first): code = sum of plane_w << shift_w, the
widest plane holding the code's top bits. 6 bits are a 4-bit plane (bits 2-5, G / 2 bytes) then a 2-bit plane
(bits 0-1, G / 4 bytes); 2, 4 and 8 bits are one plane. Within a plane, code j of a byte sits at bit
(j % (8 / w)) * w. Every group size is a multiple of 8, so every plane fills whole bytes. Scales and zeros are float32
whatever the input dtype: they keep the range of bf16 and fp16 inputs and of their fp32 sums, and every offset stays
4-byte aligned.
Sizes may be SymInts: the same arithmetic serves fake tensors under torch.compile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..config import SUPPORTED_BITS, SUPPORTED_GROUP_SIZES

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_WORLD_SIZE = 64
META_BYTES_PER_GROUP = 8  # scale + zero, float32 each
SPIKE_BYTES_PER_GROUP = 12  # hi + lo (float32) and their indices (int16)


def code_planes(bits: int) -> tuple[tuple[int, int, int], ...]:
    """(width, shift, byte offset per group value) of each bit plane of `bits`-bit codes, widest first: a group of G
    values has plane w's G * w / 8 bytes at G * offset / 8 bytes into its codes.
    7 -> (4, 3, 0), (2, 1, 4), (1, 0, 6)."""
    planes, offset = [], 0
    for width in (8, 4, 2, 1):
        if bits & width:
            planes.append((width, bits & (width - 1), offset))
            offset += width
    return tuple(planes)


def validate(world_size: int, bits: int, group_size: int) -> None:
    """Raise ValueError naming the parameter the kernels do not support."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or not 1 <= world_size <= MAX_WORLD_SIZE:
        raise ValueError(f"world_size must be an int in [1, {MAX_WORLD_SIZE}], got {world_size!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {list(SUPPORTED_BITS)}, got {bits!r}")
    if isinstance(group_size, bool) or group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {list(SUPPORTED_GROUP_SIZES)}, got {group_size!r}")


def validate_dtype(dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in SUPPORTED_DTYPES]}, got {dtype}")


@dataclass(frozen=True)
class PayloadLayout:
    numel: int
    world_size: int
    bits: int
    group_size: int
    spike_reserve: bool
    rotate: bool = False  # the groups are quantized after a Hadamard transform (the bytes are laid out alike)

    def __post_init__(self) -> None:
        validate(self.world_size, self.bits, self.group_size)

    @property
    def chunk_numel(self) -> int:
        span = self.world_size * self.group_size
        return (self.numel + span - 1) // span * self.group_size

    @property
    def padded_numel(self) -> int:
        return self.chunk_numel * self.world_size

    @property
    def groups_per_chunk(self) -> int:
        return self.chunk_numel // self.group_size

    @property
    def code_bytes_per_group(self) -> int:
        return self.group_size * self.bits // 8

    @property
    def codes_bytes(self) -> int:
        return self.groups_per_chunk * self.code_bytes_per_group

    @property
    def meta_bytes_per_group(self) -> int:
        return META_BYTES_PER_GROUP + (SPIKE_BYTES_PER_GROUP if self.spike_reserve else 0)

    @property
    def chunk_bytes(self) -> int:
        return self.codes_bytes + self.groups_per_chunk * self.meta_bytes_per_group

    @classmethod
    def of(cls, numel, world_size: int, config) -> "PayloadLayout":
        """The first step's layout for `config` (a FlashCommConfig)."""
        return cls(numel, world_size, config.reduce_bits, config.group_size, config.spike_reserve,
                   config.rotation == "hadamard")

    def with_bits(self, bits: int) -> "PayloadLayout":
        return dataclasses.replace(self, bits=bits)
