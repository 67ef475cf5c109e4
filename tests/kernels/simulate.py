"""The two-step pipeline for W simulated ranks in one process, through one kernel implementation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flashcomm_compile.kernels.layout import PayloadLayout


@dataclass
class SimulatedAllReduce:
    sent: list[torch.Tensor]  # each rank's first-step payload, uint8 [W, chunk_bytes]
    gathered: torch.Tensor  # the all-gathered second-step payload, uint8 [W, chunk_bytes']
    outputs: list[torch.Tensor]  # each rank's dequantized result


def simulate(impl, inputs: list[torch.Tensor], reduce_bits: int, gather_bits: int, group_size: int,
             spike_reserve: bool) -> tuple[SimulatedAllReduce, PayloadLayout]:
    world = len(inputs)
    x0 = inputs[0]
    layout = PayloadLayout(x0.numel(), world, reduce_bits, group_size, spike_reserve)
    sent = [impl.quantize(x, layout) for x in inputs]
    reduced = [impl.dequant_sum_requant(torch.stack([p[rank] for p in sent]), layout, gather_bits)
               for rank in range(world)]
    gathered = torch.cat(reduced)
    out_layout = layout.with_bits(gather_bits)
    outputs = [impl.dequantize(gathered.clone(), out_layout, x0.dtype, x0.shape) for _ in range(world)]
    return SimulatedAllReduce(sent, gathered, outputs), layout
