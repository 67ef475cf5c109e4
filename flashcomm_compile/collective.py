"""The two-step all-reduce called eagerly: the pipeline the pass inserts, for code outside torch.compile."""

from __future__ import annotations

import torch

from .config import FlashCommConfig
from .pipeline import NcclPipeline


def two_step_all_reduce(x: torch.Tensor, group_name: str, world_size: int, config: FlashCommConfig) -> torch.Tensor:
    """Sum of x over the group: quantize -> all-to-all -> dequantize-sum-requantize -> all-gather -> dequantize.

    Every rank dequantizes the same gathered bytes, so every rank gets a bitwise-identical result."""
    return NcclPipeline(config, group_name, world_size)(x)
