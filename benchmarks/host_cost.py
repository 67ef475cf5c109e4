"""What a symmetric-memory all-reduce costs the host in Inductor's default mode, measurable on ONE GPU.

The issue's host-cost target needs two GPUs; what the host pays, though, is the same on one: the compiled code
launches the same kernels with the same arguments whatever the world size. Here the pipeline runs with W = 1 over a
workspace of this process (a buffer, a signal pad and counters whose addresses go into the table: the barriers then
wait for this rank alone), compiled by Inductor as the pass lowers it. Two versions, timed side by side:

- "3 launches": the pipeline as shipped, the barriers at the end of the quantize and the dequant-sum-requantize;
- "5 launches": the same kernels without their barriers, and a barrier kernel after each (the pipeline before
  the 2026-11-29 three-launch run), taken from a triton_kernels.py of that time (`--baseline`, e.g. revision ba72fe5's);
- "3 launches, rotated": the pipeline as shipped with rotation="hadamard" (its GPU time beside the plain one's is
  what rotation adds to a symm_mem all-reduce, without the NVLink transfers a second GPU would add to both);
- "INT6/INT6" and "INT6/INT6, rotated": the same bytes on the wire as INT4/INT8 in an equal split, its codes stored
  as two bit planes (4 + 2).
- "reduce-scatter" and "all-gather": sequence parallelism's halves alone (two launches each, both ending in a
  barrier), INT4 and INT8 codes as the INT4/INT8 all-reduce's steps; with W = 1 each keeps the input's shape.

Each version is a chain of CHAIN all-reduces (each one's output times 0.5 the next one's input, as
benchmarks/allreduce.py chains them) called back to back without CUDA graphs; "chain alone" is the same chain
without the all-reduces (Inductor's own kernel per link). GPU time per all-reduce in CUDA graphs beside it.

    PYTHONPATH=. python -m benchmarks.host_cost [--baseline .device/baseline/triton_kernels_ba72fe5.py]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from benchmarks.allreduce import CHAIN
from benchmarks.common import compile_every_variant, environment, print_table, write_json
from benchmarks.kernel_bandwidth import load_kernels
from flashcomm_compile.config import FlashCommConfig
from flashcomm_compile.kernels import triton_kernels
from flashcomm_compile.pipeline import SymmetricAllGather, SymmetricPipeline, SymmetricReduceScatter
from flashcomm_compile.kernels.address_table import address_table
from flashcomm_compile.kernels.layout import PayloadLayout
from flashcomm_compile.symmetric import MAX_WORLD_SIZE, SymmetricLayout, workspace_bytes
from flashcomm_compile.timing import back_to_back_us, graph_median_ms

TOKENS = (512, 2048, 8192, 16384)
HIDDEN = 4096
CONFIG = FlashCommConfig(reduce_bits=4, gather_bits=8, group_size=128, transport="symm_mem")
ROTATED = dataclasses.replace(CONFIG, rotation="hadamard")
EQUAL_SPLIT = dataclasses.replace(CONFIG, reduce_bits=6, gather_bits=6)


class LocalWorkspace:
    """A one-rank workspace in this process's memory: the table the kernels read, and what it points to."""

    def __init__(self, nbytes: int, device: torch.device):
        self.buffer = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        self.pad = torch.zeros(MAX_WORLD_SIZE, dtype=torch.int32, device=device)
        self.table = address_table([self.buffer.data_ptr()], [self.pad.data_ptr()], device)

    @classmethod
    def for_all_reduces(cls, numel: int, configs, device: torch.device) -> "LocalWorkspace":
        """Large enough for all-reduces of numel elements under each config (and so for a reduce-scatter or an
        all-gather of as many)."""
        return cls(max(workspace_bytes(PayloadLayout.of(numel, 1, c), c.gather_bits) for c in configs), device)

    @property
    def upper(self) -> int:
        return self.buffer.numel() // 2

    def pipeline(self, config: FlashCommConfig) -> SymmetricPipeline:
        """The all-reduce over this workspace, W = 1."""
        return SymmetricPipeline(config, 1, self.table.data_ptr(), 0, self.upper)


def five_launches(baseline, workspace: LocalWorkspace):
    """The pipeline before the 2026-11-29 three-launch run: the current kernels without their barriers, a barrier
    kernel after each."""
    table_address = workspace.table.data_ptr()

    def all_reduce(x, after):
        layout = SymmetricLayout(PayloadLayout.of(x.numel(), 1, CONFIG), CONFIG.gather_bits, workspace.upper)
        token = torch.empty(1, dtype=torch.int32, device=x.device)
        triton_kernels.quantize_symm(x, table_address, 0, layout.stride, layout.payload, after, token, barrier=False)
        baseline.barrier(table_address, 0, 1, token)
        triton_kernels.dequant_sum_requant_peers(table_address, 0, layout.reduced_offset, 0, layout.payload,
                                                 CONFIG.gather_bits, token, barrier=False)
        baseline.barrier(table_address, 0, 1, token)
        return triton_kernels.dequantize_peers(table_address, layout.reduced_offset, layout.reduced, x.dtype,
                                               x.shape, token), token

    return all_reduce


def chained(all_reduce):
    """CHAIN all-reduces, each one's output times 0.5 the next one's input; None: the chain alone."""

    def chain(x):
        token = x
        for _ in range(CHAIN):
            if all_reduce is not None:
                x, token = all_reduce(x, token)
            x = x * 0.5
        return x

    return torch.compile(chain, dynamic=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", help="a triton_kernels.py with barrier_kernel (e.g. ba72fe5's): 5 launches")
    args = parser.parse_args()
    compile_every_variant()
    device = torch.device("cuda", 0)
    workspace = LocalWorkspace.for_all_reduces(max(TOKENS) * HIDDEN, (CONFIG, EQUAL_SPLIT), device)
    variants = {"chain alone": chained(None), "3 launches": chained(workspace.pipeline(CONFIG))}
    if args.baseline:
        variants["5 launches"] = chained(five_launches(load_kernels(args.baseline), workspace))
    variants["3 launches, rotated"] = chained(workspace.pipeline(ROTATED))
    variants["INT6/INT6"] = chained(workspace.pipeline(EQUAL_SPLIT))
    variants["INT6/INT6, rotated"] = chained(workspace.pipeline(dataclasses.replace(EQUAL_SPLIT,
                                                                                     rotation="hadamard")))
    variants["reduce-scatter"] = chained(SymmetricReduceScatter(CONFIG, 1, workspace.table.data_ptr(), 0))
    variants["all-gather"] = chained(SymmetricAllGather(CONFIG, 1, workspace.table.data_ptr(), 0))
    rows = []
    for tokens in TOKENS:
        x = torch.randn(tokens, HIDDEN, device=device, dtype=torch.bfloat16)
        torch._dynamo.mark_static(x, 1)
        outputs = {name: fn(x) for name, fn in variants.items()}
        row = dict(tokens=tokens, MB=x.nbytes / 1e6)
        if "5 launches" in outputs:
            row["same_bytes"] = torch.equal(outputs["3 launches"], outputs["5 launches"])
        for name, fn in variants.items():
            row[f"{name} no-graphs us"] = back_to_back_us(lambda fn=fn: fn(x), device) / CHAIN
            row[f"{name} gpu us"] = graph_median_ms(lambda fn=fn: fn(x), device) * 1e3 / CHAIN
        rows.append(row)
        print(f"  {tokens} tokens: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k.endswith(" us")),
              flush=True)
    env = environment()
    print(f"symm_mem collectives with W = 1 on one {env['card']}, INT4/INT8 g128, per collective of a chain of "
          f"{CHAIN}, torch {env['torch']}, Triton {env['triton']}, {env['date']}")
    print_table(rows, list(rows[0]))
    write_json(f"host_cost_{env['card'].replace(' ', '_')}_w1_{env['date'][:10]}.json",
               dict(environment=env, chain=CHAIN, config=str(CONFIG), rows=rows))


if __name__ == "__main__":
    main()
