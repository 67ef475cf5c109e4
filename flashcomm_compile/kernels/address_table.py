"""What the symmetric-memory kernels read of a workspace, one int64 tensor: every rank's buffer address, every rank's
signal pad address, then this rank's barrier counters. It lies beside the kernels that read it
(`triton_kernels._table`, `_barrier_when_last`); `symmetric.py` allocates the workspace and builds its table here.
"""

from __future__ import annotations

import torch

# The barriers' program counters (triton_kernels._barrier_when_last), after the addresses in the table: for each of
# the two kernels that end in a barrier, BARRIER_LANES sub-counters and one over them, COUNTER_STRIDE int64 slots
# (256 bytes) apart. Every program counting on one address cost 1.25 ns a program (serialised atomics: +40 us for
# the 134 MB all-reduce's 32768 programs, W = 1 on an H200); spread over 64 they no longer queue behind each other.
BARRIER_LANES = 64
COUNTER_STRIDE = 32
BARRIER_COUNTER_SLOTS = 2 * (BARRIER_LANES + 1) * COUNTER_STRIDE


def address_table(buffers: list[int], signal_pads: list[int], device) -> torch.Tensor:
    """The table of a workspace whose ranks' buffers and signal pads lie at these addresses; its counters start at
    zero, and each barrier leaves them so for the next launch."""
    counters = [0] * BARRIER_COUNTER_SLOTS
    return torch.tensor(list(buffers) + list(signal_pads) + counters, dtype=torch.int64, device=device)
