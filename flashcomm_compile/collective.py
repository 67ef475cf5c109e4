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

    Every rank dequantizes the same gathered bytes, so every rank gets a bitwise-identical result. With
    `config.chunks` > 1 and a size known here, x is cut into pieces, each summed by its own pipeline, issued stage by
    stage over all pieces: collectives run on their own stream, so a piece's all-to-all overlaps the next piece's
    quantize, its all-gather the next piece's reduction, and so on.
    """
    bounds = piece_bounds(x.numel(), config.chunks, world_size * config.group_size)
    pieces = [x] if len(bounds) == 1 else [x.reshape(-1)[start:end] for start, end in bounds]
    received = [_quantize_and_send(p, group_name, world_size, config) for p in pieces]
    gathered = [_reduce_and_gather(r, p, group_name, world_size, config) for r, p in zip(received, pieces)]
    outputs = [_dequantize(g, p, world_size, config) for g, p in zip(gathered, pieces)]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs).view(x.shape)


def piece_bounds(numel, chunks: int, alignment: int) -> list[tuple]:
    """[start, end) of up to `chunks` pieces of whole `alignment`-element blocks (only the last piece pads); one
    piece for a symbolic size, whose pieces cannot be fixed at trace time."""
    if chunks == 1 or not isinstance(numel, int):
        return [(0, numel)]
    size = -(-numel // chunks)
    size = -(-size // alignment) * alignment
    return [(start, min(start + size, numel)) for start in range(0, numel, size)]


def _quantize_and_send(x: torch.Tensor, group_name: str, world_size: int, config: FlashCommConfig) -> torch.Tensor:
    """Step 1 of the reduce-scatter: the payloads, all-to-all started (not waited for)."""
    splits = [1] * world_size
    payload = torch.ops.flashcomm.quantize(x, world_size, config.reduce_bits, config.group_size, config.spike_reserve)
    return _c10d.all_to_all_single(payload, splits, splits, group_name)


def _reduce_and_gather(received: torch.Tensor, x: torch.Tensor, group_name: str, world_size: int,
                       config: FlashCommConfig) -> torch.Tensor:
    """Step 2: this rank's chunk summed and requantized, all-gather started (not waited for)."""
    reduced = torch.ops.flashcomm.dequant_sum_requant(_c10d.wait_tensor(received), x.numel(), config.reduce_bits,
                                                      config.gather_bits, config.group_size, config.spike_reserve)
    return _c10d.all_gather_into_tensor(reduced.reshape(-1), world_size, group_name)


def _dequantize(gathered: torch.Tensor, x: torch.Tensor, world_size: int, config: FlashCommConfig) -> torch.Tensor:
    return torch.ops.flashcomm.dequantize(_c10d.wait_tensor(gathered), world_size, x.shape, x.dtype,
                                          config.gather_bits, config.group_size, config.spike_reserve)


@torch.library.custom_op("flashcomm::all_reduce_by_size", mutates_args=())
def _all_reduce_by_size(x: torch.Tensor, group_name: str, world_size: int, threshold_bytes: int, reduce_bits: int,
                        gather_bits: int, group_size: int, spike_reserve: bool, chunks: int) -> torch.Tensor:
    if x.numel() * x.element_size() >= threshold_bytes:
        config = FlashCommConfig(reduce_bits=reduce_bits, gather_bits=gather_bits, group_size=group_size,
                                 spike_reserve=spike_reserve, mode="always", chunks=chunks)
        return two_step_all_reduce(x, group_name, world_size, config)
    return nccl_all_reduce(x, group_name)


def nccl_all_reduce(x: torch.Tensor, group_name: str) -> torch.Tensor:
    """The plain all-reduce, below a run-time threshold."""
    return _c10d.wait_tensor(_c10d.all_reduce(x, "sum", group_name))


@_all_reduce_by_size.register_fake
def _(x, group_name, world_size, threshold_bytes, reduce_bits, gather_bits, group_size, spike_reserve, chunks):
    return torch.empty_like(x)


def all_reduce_by_size(x: torch.Tensor, group_name: str, world_size: int, threshold_bytes: int,
                       config: FlashCommConfig) -> torch.Tensor:
    """The all-reduce of a symbolic size: the two-step pipeline from `threshold_bytes`, NCCL's below, chosen when the
    size is known (and cut into pieces then, when `config.chunks` > 1). Every rank holds the same size, so every rank
    takes the same branch; no recompilation."""
    return torch.ops.flashcomm.all_reduce_by_size(x, group_name, world_size, threshold_bytes, config.reduce_bits,
                                                  config.gather_bits, config.group_size, config.spike_reserve,
                                                  config.chunks)
