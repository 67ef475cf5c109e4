"""The Flash Communication two-step all-reduce written with functional collectives and the flashcomm ops.

The same function is the pass's replacement (traced into the post-grad graph with fake tensors) and an eager API.
"""

from __future__ import annotations

import torch

from .config import FlashCommConfig
from .kernels import ops  # noqa: F401  (registers torch.ops.flashcomm)

_c10d = torch.ops._c10d_functional


def two_step_all_reduce(x: torch.Tensor, group_name: str, world_size: int, config: FlashCommConfig) -> torch.Tensor:
    """Sum of x over the group: quantize -> all-to-all -> dequantize-sum-requantize -> all-gather -> dequantize.

    Every rank dequantizes the same gathered bytes, so every rank gets a bitwise-identical result.
    """
    flashcomm = torch.ops.flashcomm
    splits = [1] * world_size
    payload = flashcomm.quantize(x, world_size, config.reduce_bits, config.group_size, config.spike_reserve)
    received = _c10d.wait_tensor(_c10d.all_to_all_single(payload, splits, splits, group_name))
    reduced = flashcomm.dequant_sum_requant(received, x.numel(), config.reduce_bits, config.gather_bits,
                                            config.group_size, config.spike_reserve)
    gathered = _c10d.wait_tensor(_c10d.all_gather_into_tensor(reduced.reshape(-1), world_size, group_name))
    return flashcomm.dequantize(gathered, world_size, x.shape, x.dtype, config.gather_bits, config.group_size,
                                config.spike_reserve)
