"""How much work each kernel launch does, kept apart from the Triton code: the pass's cache key reads it on machines
without Triton, and the benchmarks tune it in place.

FLASHCOMM_LAUNCH="quantize=8192x4,dequantize=8192x4" overrides the defaults at import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """How much one program does: `elements` input values (whole groups) with `warps` warps. Fixed per kernel, not
    autotuned per size (per-size tuning re-tuned on every new shape); `benchmarks/kernel_bandwidth.py --sweep`
    measures the candidates."""

    elements: int
    warps: int

    def block_groups(self, group_size: int, group_per_thread: bool = False) -> int:
        """Groups per program: `elements` worth, or with one group per thread (kernels that need whole groups in
        registers, groups up to GROUP_PER_THREAD_MAX) one per thread of the program."""
        return 32 * self.warps if group_per_thread else max(1, self.elements // group_size)


GROUP_PER_THREAD_MAX = 128  # larger groups would not fit one thread's registers


LAUNCH = {"quantize": Launch(4096, 4), "dequant_sum_requant": Launch(4096, 4), "dequantize": Launch(8192, 4),
          "dequant_sum_requant_peers": Launch(2048, 4), "dequantize_peers": Launch(2048, 4)}


def parse_launch(spec: str) -> dict[str, Launch]:
    """"quantize=4096x8,dequantize=2048x4" -> {kernel: Launch}, as FLASHCOMM_LAUNCH overrides LAUNCH for tuning."""
    launches = {}
    for item in filter(None, spec.split(",")):
        name, _, size = item.partition("=")
        elements, _, warps = size.partition("x")
        if name not in LAUNCH or not (elements.isdigit() and warps.isdigit()):
            raise ValueError(f"FLASHCOMM_LAUNCH item {item!r}: expected KERNEL=ELEMENTSxWARPS, "
                             f"KERNEL in {list(LAUNCH)}")
        launches[name] = Launch(int(elements), int(warps))
    return launches


LAUNCH.update(parse_launch(os.environ.get("FLASHCOMM_LAUNCH", "")))
