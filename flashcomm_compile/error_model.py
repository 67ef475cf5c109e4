"""The predicted error of a split, and the split an error budget buys (`FlashCommConfig.max_error`).

Asymmetric min/max codes of b bits over a group of G values err uniformly within half a step, step = range / (2^b - 1),
so by range / (2^b - 1) / sqrt(12) RMS. For activations that look Gaussian to a group (outlier-free, or rotated:
`rotation="hadamard"` spreads an outlier over its group) the range of a group is about E[range of G standard normals]
times their RMS. Each rank's first-step error is relative to its own input; W independent inputs and their errors
both grow by sqrt(W) in the sum, so the first step weighs on the sum like one quantization whatever W, and the second
step quantizes the sum once more:

    relative RMS error of the all-reduce = k(G) * sqrt((2^r - 1)^-2 + (2^g - 1)^-2),  k(G) = E[range_G] / sqrt(12)

k(128) = 1.50, k(32) = 1.18. On Gaussian data (2 ranks) the simulated pipeline errs 0.100 at INT4/INT8 g128 (model
0.100), 0.034 at INT6/INT6 (0.034), 0.0083 at INT8/INT8 (0.0083) (tests/test_error_model.py checks every split).
Real activations rotated err less (all-MiniLM-L6-v2: 0.52-0.62 of the model across the splits of docs/results.md);
without rotation, activations with outlier channels can err more (MiniLM up to 2.3x at INT8/INT8), and rotated groups
whose values share a large mean err more too (README, "Which bits"): the model is the budget's for activations that
look Gaussian to their groups. Spike reserving is not modelled (it only narrows the ranges).

Wire bits per value: each step's code bits plus its group's float32 scale and zero (64 bits per group).
"""

from __future__ import annotations

import functools
import math

BIT_WIDTHS = range(2, 9)


@functools.cache
def expected_range(group_size: int) -> float:
    """E[max - min] of `group_size` standard normal values: 2 E[max], by the trapezoid rule on [-12, 12]."""
    steps = 24000
    width = 24.0 / steps
    total = 0.0
    for i in range(steps + 1):
        x = -12.0 + i * width
        density = math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        below = 0.5 * math.erfc(-x / math.sqrt(2))
        term = x * group_size * density * below ** (group_size - 1)
        total += term * (0.5 if i in (0, steps) else 1.0)
    return 2 * total * width


def step_error(bits: int, group_size: int) -> float:
    """Relative RMS error of one quantization step of Gaussian-like values (a reduce-scatter or an all-gather)."""
    return expected_range(group_size) / math.sqrt(12) / ((1 << bits) - 1)


def step_wire_bits(bits: int, group_size: int) -> float:
    """Bits on the wire per value of one step: its code, and its group's float32 scale and zero."""
    return bits + 64 / group_size


def predicted_error(reduce_bits: int, gather_bits: int, group_size: int) -> float:
    """Relative RMS error of one all-reduce of Gaussian-like activations (see the module docstring)."""
    return math.hypot(step_error(reduce_bits, group_size), step_error(gather_bits, group_size))


def wire_bits(reduce_bits: int, gather_bits: int, group_size: int) -> float:
    """Bits on the wire per value of the all-reduce, both steps (their codes, scales and zeros)."""
    return step_wire_bits(reduce_bits, group_size) + step_wire_bits(gather_bits, group_size)


def split_for_budget(max_error: float, group_size: int) -> tuple[int, int]:
    """The (reduce_bits, gather_bits) with the fewest wire bits whose predicted error is at most `max_error` (the
    less erring of equals); ValueError naming the most accurate split where none is."""
    fitting = [(wire_bits(r, g, group_size), predicted_error(r, g, group_size), (r, g))
               for r in BIT_WIDTHS for g in BIT_WIDTHS if predicted_error(r, g, group_size) <= max_error]
    if not fitting:
        best = predicted_error(8, 8, group_size)
        raise ValueError(f"max_error {max_error!r} is below what any split reaches at group_size {group_size}: "
                         f"INT8/INT8 is predicted to err {best:.4g} (a smaller group_size errs less)")
    return min(fitting)[2]
