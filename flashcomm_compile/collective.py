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


@torch.library.custom_op("flashcomm::all_reduce_by_size", mutates_args=())
def _all_reduce_by_size(x: torch.Tensor, group_name: str, world_size: int, threshold_bytes: int, reduce_bits: int,
                        gather_bits: int, group_size: int, spike_reserve: bool) -> torch.Tensor:
    if x.numel() * x.element_size() >= threshold_bytes:
        config = FlashCommConfig(reduce_bits=reduce_bits, gather_bits=gather_bits, group_size=group_size,
                                 spike_reserve=spike_reserve, mode="always")
        return two_step_all_reduce(x, group_name, world_size, config)
    return _c10d.wait_tensor(_c10d.all_reduce(x, "sum", group_name))


@_all_reduce_by_size.register_fake
def _(x, group_name, world_size, threshold_bytes, reduce_bits, gather_bits, group_size, spike_reserve):
    return torch.empty_like(x)


def all_reduce_by_size(x: torch.Tensor, group_name: str, world_size: int, threshold_bytes: int,
                       config: FlashCommConfig) -> torch.Tensor:
    """The all-reduce of a symbolic size: the two-step pipeline from `threshold_bytes`, NCCL's below, chosen when the
    size is known. Every rank holds the same size, so every rank takes the same branch; no recompilation."""
    return torch.ops.flashcomm.all_reduce_by_size(x, group_name, world_size, threshold_bytes, config.reduce_bits,
                                                  config.gather_bits, config.group_size, config.spike_reserve)
