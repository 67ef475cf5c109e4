"""How much work each kernel launch does, kept apart from the Triton code: the pass's cache key reads it on machines
without Triton, and the benchmarks tune it in place.

FLASHCOMM_LAUNCH="quantize=8192x4x2,dequantize=8192x4" overrides the defaults at import (`parse_launch`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """How much one program does: `elements` input values (whole groups) with `warps` warps; or, in a kernel that
    holds one whole group per thread (see block_groups), one group on each thread of `per_thread_warps` warps. Fixed
    per kernel, not autotuned per size (per-size tuning re-tuned on every new shape);
    `benchmarks/kernel_bandwidth.py --sweep` measures the candidates.

    The one-group-per-thread kernels hold a group in registers, and ptxas's allocation there depends on the warps:
    at 4 warps the INT8 g128 quantize took 254 registers (8 warps per SM), at 2 warps 167 (12), 44.4 against 35.6 us
    at 64 MB; the rotated dequantize took 167 at 1 or 4 warps but 254 at 2, and at 1 warp its tile goes out through
    shared memory without a barrier across warps: 32.9 us against 37.2 at 4 (1x H200, 2026-11-29, docs/results.md)."""

    elements: int
    warps: int
    per_thread_warps: int = 4

    def block_groups(self, group_size: int, group_per_thread: bool = False) -> int:
        """Groups per program: `elements` worth, or with one group per thread (kernels that need whole groups in
        registers, groups up to GROUP_PER_THREAD_MAX) one per thread of the program."""
        return 32 * self.per_thread_warps if group_per_thread else max(1, self.elements // group_size)

    def num_warps(self, group_per_thread: bool = False) -> int:
        return self.per_thread_warps if group_per_thread else self.warps


GROUP_PER_THREAD_MAX = 128  # larger groups would not fit one thread's registers


LAUNCH = {"quantize": Launch(4096, 4, 2), "dequant_sum_requant": Launch(4096, 4),
          "dequantize": Launch(8192, 4, 1), "dequant_sum_requant_peers": Launch(2048, 4),
          "dequantize_peers": Launch(2048, 4, 1), "dequant_sum_peers": Launch(2048, 4)}


def parse_launch(spec: str) -> dict[str, Launch]:
    """"quantize=4096x8x2,dequantize=2048x4" -> {kernel: Launch}, as FLASHCOMM_LAUNCH overrides LAUNCH for tuning:
    elements x warps [x warps of the one-group-per-thread launch, else the kernel's default]."""
    launches = {}
    for item in filter(None, spec.split(",")):
        name, _, size = item.partition("=")
        numbers = size.split("x")
        if name not in LAUNCH or len(numbers) not in (2, 3) or not all(n.isdigit() for n in numbers):
            raise ValueError(f"FLASHCOMM_LAUNCH item {item!r}: expected KERNEL=ELEMENTSxWARPS[xPER_THREAD_WARPS], "
                             f"KERNEL in {list(LAUNCH)}")
        elements, warps, *per_thread = map(int, numbers)
        launches[name] = Launch(elements, warps, *(per_thread or [LAUNCH[name].per_thread_warps]))
    return launches


LAUNCH.update(parse_launch(os.environ.get("FLASHCOMM_LAUNCH", "")))
