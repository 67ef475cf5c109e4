"""The user-facing configuration of the flashcomm rewrite, validated at construction.

Every entry point (backend by name, backend object, decorator, inspect) builds one of these, so a bad value is
reported once, with the name of the field. The backend object, the decorator and inspect report it before anything
is traced; by name, torch.compile hands the options to the backend only at the first call, which raises the
ValueError wrapped in torch's BackendCompilerFailed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .error_model import split_for_budget

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)
DEFAULT_REDUCE_BITS, DEFAULT_GATHER_BITS = 4, 8
MAX_CHUNKS = 64
SUPPORTED_GROUP_SIZES = (32, 64, 128, 256, 512, 1024)
REWRITE_MODES = ("auto", "always", "never")
TRANSPORTS = ("auto", "nccl", "symm_mem")
ROTATIONS = ("none", "hadamard")


@dataclass(frozen=True)
class FlashCommConfig:
    """How all-reduces are compressed.

    reduce_bits: bit width of the payload sent in the reduce-scatter (all-to-all) step.
    gather_bits: bit width of the requantized sum sent in the all-gather step (its error is not averaged away).
    group_size: consecutive elements sharing one scale and zero.
    spike_reserve: keep each group's largest and smallest value exactly (Flash Communication v2), for 2- and 3-bit
        codes.
        With rotation, the extremes of the rotated group.
    rotation: "hadamard" quantizes each group after a Walsh-Hadamard transform (normalized by the group size), which
        spreads an outlier over its group; the sum is taken in the rotated domain and the last dequantize rotates
        back. Same bytes on the wire. "none" quantizes the values as they are. Not the default: where a group's
        values share a large mean, the mean gathers in one rotated coefficient and stretches the group's range, and
        rotation errs more than plain codes (README, "Which bits").
    mode: "auto" rewrites where the size decision says it pays, "always" every eligible all-reduce, "never" none.
    min_bytes: in "auto" on hardware the cost table does not know, all-reduces smaller than this many bytes keep the
        plain collective. 16 MiB, above the break-evens measured on H100 and H200 (docs/results.md).
    backward: also rewrite all-reduces in backward graphs (off: training gradients stay exact).
    chunks: cut each rewritten all-reduce of a static size into up to this many pieces whose pipelines overlap (a
        piece's all-to-all runs while the next piece is quantized, ...), as the paper pipelines; 1 runs one
        pipeline. Measured slower than one pipeline so far (docs/results.md); pieces cost a final copy.
    transport: how the quantized bytes travel. "nccl": an all-to-all and an all-gather between the kernels.
        "symm_mem": the kernels read their peers' buffers in symmetric memory (NVLink / P2P CUDA GPUs), no NCCL
        call (`symmetric.py`); one pipeline, so chunks must be 1. "auto": symm_mem where the group's GPUs map each
        other's memory and NCCL is not told to avoid peer-to-peer, nccl elsewhere (`passes/guards.py`).
    max_error: an error budget, the relative RMS error one all-reduce may add: the bits are then the split with the
        fewest wire bits predicted to err at most this much (`error_model.py`; reduce_bits and gather_bits are set
        by it, and a budget no split meets is an error). None: the bits as given.
    cuda_graphs: whether the compiled code is replayed in CUDA graphs, which hide the host time of the launches a
        rewritten all-reduce adds and "auto" otherwise counts (`cost_model.HOST_US`). None: as Inductor compiles
        it (mode="reduce-overhead" turns them on); True where the caller captures the compiled code in its own
        graph, as the all-reduce benchmark does.
    """

    reduce_bits: int = DEFAULT_REDUCE_BITS
    gather_bits: int = DEFAULT_GATHER_BITS
    group_size: int = 128
    spike_reserve: bool = False
    rotation: str = "none"
    mode: str = "auto"
    min_bytes: int = 16 << 20
    backward: bool = False
    chunks: int = 1
    transport: str = "auto"
    cuda_graphs: bool | None = None
    max_error: float | None = None

    def __post_init__(self) -> None:
        for name in ("reduce_bits", "gather_bits"):
            _check_choice(name, getattr(self, name), SUPPORTED_BITS)
        _check_choice("group_size", self.group_size, SUPPORTED_GROUP_SIZES)
        if self.max_error is not None:
            self._take_bits_from_budget()
        _check_choice("mode", self.mode, REWRITE_MODES)
        _check_choice("rotation", self.rotation, ROTATIONS)
        for name in ("spike_reserve", "backward"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.cuda_graphs is not None and not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be None or a bool, got {self.cuda_graphs!r}")
        if isinstance(self.min_bytes, bool) or not isinstance(self.min_bytes, int) or self.min_bytes < 0:
            raise ValueError(f"min_bytes must be a non-negative int, got {self.min_bytes!r}")
        if isinstance(self.chunks, bool) or not isinstance(self.chunks, int) or not 1 <= self.chunks <= MAX_CHUNKS:
            raise ValueError(f"chunks must be an int in [1, {MAX_CHUNKS}], got {self.chunks!r}")
        _check_choice("transport", self.transport, TRANSPORTS)
        if self.transport == "symm_mem" and self.chunks != 1:
            raise ValueError(f"chunks must be 1 with transport 'symm_mem', got {self.chunks}")

    def _take_bits_from_budget(self) -> None:
        budget = self.max_error
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < math.inf:
            raise ValueError(f"max_error must be a positive number (relative RMS error), got {budget!r}")
        reduce_bits, gather_bits = split_for_budget(float(budget), self.group_size)
        given = (self.reduce_bits, self.gather_bits)
        if given not in ((DEFAULT_REDUCE_BITS, DEFAULT_GATHER_BITS), (reduce_bits, gather_bits)):
            raise ValueError(f"max_error chooses reduce_bits and gather_bits (INT{reduce_bits}/INT{gather_bits} for "
                             f"{budget!r}); got reduce_bits={given[0]}, gather_bits={given[1]} beside it")
        object.__setattr__(self, "reduce_bits", reduce_bits)
        object.__setattr__(self, "gather_bits", gather_bits)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None, **overrides: Any) -> "FlashCommConfig":
        """Build from an options dict (as `torch.compile(options=...)` passes it); unknown keys are errors."""
        merged = {**(options or {}), **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown flashcomm option(s) {unknown}; known: {sorted(known)}")
        return cls(**merged)

    @property
    def variant(self) -> str:
        """The quantization and transport, as the benchmarks and the cost table name it: "INT2+spike/INT4 g32",
        "INT4/INT8 g128 symm_mem", "INT4/INT8 g128 hadamard" (transport "auto" is named once chosen:
        `with_transport`)."""
        spike = "+spike" if self.spike_reserve else ""
        rotation = " hadamard" if self.rotation == "hadamard" else ""
        transport = " symm_mem" if self.transport == "symm_mem" else ""
        return f"INT{self.reduce_bits}{spike}/INT{self.gather_bits} g{self.group_size}{rotation}{transport}"

    def with_transport(self, transport: str) -> "FlashCommConfig":
        return dataclasses.replace(self, transport=transport)

    def describe(self) -> str:
        pieces = f" x{self.chunks} pieces" if self.chunks > 1 else ""
        transport = " transport=auto" if self.transport == "auto" else ""
        return f"{self.variant}{pieces} mode={self.mode}{transport}"


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    """`value` is one of `choices` and of their type: 4.0 equals 4 but is not an int of the kernels' specialisation."""
    if isinstance(value, bool) or value not in choices or type(value) is not type(choices[0]):
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
