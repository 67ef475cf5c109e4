"""All-reduce latency on the GPUs of one node: NCCL, symmetric-memory two-shot, and the flashcomm variants as the
compiled code the pass emits (CUDA graphs), for messages of tokens x hidden bf16, with the relative error of each.

    PYTHONPATH=. python -m benchmarks.allreduce [--world-size 2] [--links default,p2p-disabled] [--quick]

Each link mode runs in fresh processes (NCCL reads NCCL_P2P_DISABLE at start-up). Prints a table per mode and writes
benchmarks/results/allreduce_<link>_<card>_w<W>.json; `benchmarks/plot_allreduce.py` draws them.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from benchmarks.common import environment, print_table, write_json
from flashcomm_compile.launch import run_ranks
from flashcomm_compile.timing import median_ms

HIDDENS = (4096, 8192)
TOKENS = (2, 8, 32, 128, 512, 2048, 8192, 16384)
MAX_BYTES = 256 * 2**20
FLASHCOMM_VARIANTS = {
    "INT8/INT8": dict(reduce_bits=8, gather_bits=8),
    "INT4/INT8": dict(reduce_bits=4, gather_bits=8),
    "INT4/INT4": dict(reduce_bits=4, gather_bits=4),
    "INT2+spike/INT4": dict(reduce_bits=2, gather_bits=4, spike_reserve=True, group_size=32),
}


def _sizes(quick: bool) -> list[tuple[int, int]]:
    tokens = (8, 512, 8192) if quick else TOKENS
    return [(t, h) for h in HIDDENS for t in tokens if t * h * 2 <= MAX_BYTES]


def _compiled_all_reduce(backend, group_name: str):
    def all_reduce(x):
        return funcol.all_reduce(x, "sum", group_name)

    if backend is None:
        return torch.compile(all_reduce, mode="reduce-overhead", dynamic=True)
    return torch.compile(all_reduce, backend=backend, dynamic=True)


def _symm_mem_two_shot(group_name: str, like: torch.Tensor):
    import torch.distributed._symmetric_memory as symm_mem

    buffer = symm_mem.empty(like.shape, dtype=like.dtype, device=like.device)
    symm_mem.rendezvous(buffer, group_name)
    buffer.copy_(like)
    return lambda: torch.ops.symm_mem.two_shot_all_reduce_(buffer, "sum", group_name)


def _rank_main(rank: int, world: int, quick: bool) -> list[dict]:
    import flashcomm_compile

    device = torch.device("cuda", rank)
    group_name = dist.group.WORLD.group_name
    variants = {"nccl": _compiled_all_reduce(None, group_name)}
    for name, config in FLASHCOMM_VARIANTS.items():
        backend = flashcomm_compile.backend(mode="always", inductor_mode="reduce-overhead", **config)
        variants[name] = _compiled_all_reduce(backend, group_name)
    rows = []
    gen = torch.Generator(device).manual_seed(rank)
    for tokens, hidden in _sizes(quick):
        x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16, generator=gen)
        exact = x.float()
        dist.all_reduce(exact)
        row = dict(tokens=tokens, hidden=hidden, MB=x.nbytes / 1e6)
        for name, fn in variants.items():
            out = fn(x).float()  # a copy: CUDA graphs reuse the output buffer on the next replay
            row[f"{name} err"] = ((out - exact).norm() / exact.norm()).item()
            row[f"{name} us"] = median_ms(lambda: fn(x), device, warmup=5, iters=30) * 1e3
        try:
            row["symm_mem two-shot us"] = median_ms(_symm_mem_two_shot(group_name, x), device, 5, 30) * 1e3
        except Exception as e:  # noqa: BLE001 - reported in the table, the reference is optional
            row["symm_mem two-shot us"] = None
            row["symm_mem error"] = f"{type(e).__name__}: {e}"[:200]
        rows.append(row)
        if rank == 0:
            print(f"  {tokens} x {hidden}: " + ", ".join(
                f"{k.removesuffix(' us')} {v:.0f}" for k, v in row.items() if k.endswith(" us") and v), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--links", default="default,p2p-disabled")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for link in args.links.split(","):
        os.environ["NCCL_P2P_DISABLE"] = "1" if link == "p2p-disabled" else "0"
        print(f"link {link}:", flush=True)
        rows = run_ranks(args.world_size, _rank_main, args.quick, backend="nccl")[0]
        env = environment()
        columns = ["tokens", "hidden", "MB", "nccl us", "symm_mem two-shot us"]
        columns += [f"{n} us" for n in FLASHCOMM_VARIANTS] + [f"{n} err" for n in FLASHCOMM_VARIANTS]
        print(f"\nall-reduce, {env['card']} x{args.world_size}, link {link}, torch {env['torch']}, "
              f"NCCL {env['nccl']}, {env['date']}")
        print_table(rows, columns)
        card = env["card"].replace(" ", "_")
        write_json(f"allreduce_{link}_{card}_w{args.world_size}.json",
                   dict(environment=env, world_size=args.world_size, rows=rows))


if __name__ == "__main__":
    main()
