"""All-reduce latency on the GPUs of one node: NCCL, symmetric-memory two-shot, and the flashcomm variants (and
"auto") as the compiled code the pass emits, for messages of tokens x hidden bf16, with the relative error of each;
and where the time of one flashcomm all-reduce goes, stage by stage, at the largest sizes.

GPU time per all-reduce: 10 back-to-back calls captured in one CUDA graph, median of 20 replays, slowest rank
(`timing.graph_median_ms`). Where capture fails the row says so and falls back to timing single calls.

    PYTHONPATH=. python -m benchmarks.allreduce [--world-size 2] [--links default,p2p-disabled] [--quick]
    PYTHONPATH=. python -m benchmarks.allreduce --symm-sweep   # launches of the peer-load kernels, 134 MB

Each link mode runs in fresh processes (NCCL reads NCCL_P2P_DISABLE at start-up). Prints a table per mode and writes
benchmarks/results/allreduce_<link>_<card>_w<W>.json; `benchmarks/plot_allreduce.py` draws them.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from benchmarks.common import SYMM_MEM_LINKS, compile_every_variant, environment, print_table, use_link, write_json
from benchmarks.kernel_bandwidth import each_launch, fastest
from flashcomm_compile.config import FlashCommConfig
from flashcomm_compile.kernels import triton_kernels
from flashcomm_compile.kernels.launches import LAUNCH
from flashcomm_compile.kernels.layout import PayloadLayout
from flashcomm_compile.launch import run_ranks
from flashcomm_compile.symmetric import SymmetricLayout, symmetric_all_reduce, workspace
from flashcomm_compile.timing import graph_median_ms, median_ms

HIDDENS = (4096, 8192)
TOKENS = (2, 8, 32, 128, 512, 2048, 8192, 16384)
MAX_BYTES = 256 * 2**20
FLASHCOMM_VARIANTS = {
    "INT8/INT8": dict(reduce_bits=8, gather_bits=8),
    "INT4/INT8": dict(reduce_bits=4, gather_bits=8),
    "INT4/INT4": dict(reduce_bits=4, gather_bits=4),
    "INT2+spike/INT4": dict(reduce_bits=2, gather_bits=4, spike_reserve=True, group_size=32),
    # the default config (INT4/INT8 g128) where the cost model predicts a gain; timed in this script's CUDA graphs
    "auto": dict(mode="auto", cuda_graphs=True),
    "INT4/INT8 x4 pieces": dict(reduce_bits=4, gather_bits=8, chunks=4),  # symbolic size: cut at run time
    "INT4/INT8 symm_mem": dict(reduce_bits=4, gather_bits=8, transport="symm_mem"),
    "INT4/INT4 symm_mem": dict(reduce_bits=4, gather_bits=4, transport="symm_mem"),
}
BREAKDOWN_SIZES = ((8192, 4096), (16384, 4096))
BREAKDOWN_CONFIG = dict(reduce_bits=4, gather_bits=8, group_size=128, spike_reserve=False)


def _sizes(quick: bool) -> list[tuple[int, int]]:
    tokens = (8, 512, 8192) if quick else TOKENS
    return [(t, h) for h in HIDDENS for t in tokens if t * h * 2 <= MAX_BYTES]


def _compiled_all_reduce(backend, group_name: str):
    def all_reduce(x):
        return funcol.all_reduce(x, "sum", group_name)

    return torch.compile(all_reduce, backend=backend or "inductor", dynamic=True)


def _symm_mem_two_shot(group_name: str, like: torch.Tensor):
    import torch.distributed._symmetric_memory as symm_mem

    buffer = symm_mem.empty(like.shape, dtype=like.dtype, device=like.device)
    symm_mem.rendezvous(buffer, group_name)
    buffer.copy_(like)
    return lambda: torch.ops.symm_mem.two_shot_all_reduce_(buffer, "sum", group_name)


def _gpu_us(fn, device: torch.device, row: dict) -> float:
    """Per-call GPU time in us (CUDA graph); single calls where capture fails, noted in the row."""
    try:
        return graph_median_ms(fn, device) * 1e3
    except Exception as e:  # noqa: BLE001 - recorded beside the number it affects
        torch.cuda.synchronize(device)
        row.setdefault("timing fallback", []).append(f"{type(e).__name__}: {e}"[:160])
        return median_ms(fn, device, warmup=5, iters=30) * 1e3


def _symm_mem_stages(x: torch.Tensor, group_name: str, world: int) -> dict:
    """The stages of the symmetric-memory pipeline for x, as calls to time alone."""
    cfg = BREAKDOWN_CONFIG
    layout = SymmetricLayout(PayloadLayout(x.numel(), world, cfg["reduce_bits"], cfg["group_size"],
                                           cfg["spike_reserve"]), cfg["gather_bits"])
    ws = workspace(group_name, x.device, layout.total_bytes)
    payload, reduced = layout.payload_in(ws.buffer), layout.reduced_in(ws.buffer)
    offset = ws.handle.rank * layout.stride
    config = FlashCommConfig(**cfg, transport="symm_mem")
    return {
        "symm quantize": lambda: triton_kernels.quantize(x, layout.payload, out=payload),
        "symm barrier": lambda: ws.handle.barrier(channel=0),
        "symm dequant-sum-requant (peer loads)": lambda: triton_kernels.dequant_sum_requant_peers(
            ws.table, offset, layout.payload, cfg["gather_bits"], reduced),
        "symm dequantize (peer loads)": lambda: triton_kernels.dequantize_peers(
            ws.table, layout.reduced_offset, layout.reduced, x.dtype, x.shape),
        "symm whole (eager)": lambda: symmetric_all_reduce(x, group_name, world, config),
    }


def _symm_mem_sweep(group_name: str, world: int, device: torch.device) -> list[dict]:
    """Every candidate launch of the two peer-load kernels at the largest breakdown size, each timed alone."""
    tokens, hidden = BREAKDOWN_SIZES[-1]
    x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
    stages = _symm_mem_stages(x, group_name, world)
    stages["symm quantize"]()
    rows = []
    for kernel, stage in (("dequant_sum_requant_peers", "symm dequant-sum-requant (peer loads)"),
                          ("dequantize_peers", "symm dequantize (peer loads)")):
        for row in each_launch(kernel):
            row["ms"] = _gpu_us(stages[stage], device, row) / 1e3
            rows.append(row)
    return rows


def _stage_breakdown(group_name: str, world: int, device: torch.device, link: str) -> list[dict]:
    """GPU time of each stage of one INT4/INT8 all-reduce, each stage timed alone (eager ops, CUDA graph); the
    symmetric-memory pipeline's too in the default link mode."""
    c10d, flashcomm = torch.ops._c10d_functional, torch.ops.flashcomm
    cfg = BREAKDOWN_CONFIG
    bits, gbits, g, spike = cfg["reduce_bits"], cfg["gather_bits"], cfg["group_size"], cfg["spike_reserve"]
    splits = [1] * world
    rows = []
    for tokens, hidden in BREAKDOWN_SIZES:
        x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
        payload = flashcomm.quantize(x, world, bits, g, spike)
        received = c10d.wait_tensor(c10d.all_to_all_single(payload, splits, splits, group_name))
        reduced = flashcomm.dequant_sum_requant(received, x.numel(), bits, gbits, g, spike)
        gathered = c10d.wait_tensor(c10d.all_gather_into_tensor(reduced.reshape(-1), world, group_name))
        stages = {
            "quantize": lambda: flashcomm.quantize(x, world, bits, g, spike),
            "all-to-all": lambda: c10d.wait_tensor(c10d.all_to_all_single(payload, splits, splits, group_name)),
            "dequant-sum-requant": lambda: flashcomm.dequant_sum_requant(received, x.numel(), bits, gbits, g, spike),
            "all-gather": lambda: c10d.wait_tensor(c10d.all_gather_into_tensor(reduced.reshape(-1), world, group_name)),
            "dequantize": lambda: flashcomm.dequantize(gathered, world, x.shape, x.dtype, gbits, g, spike),
            "nccl all-reduce (eager)": lambda: c10d.wait_tensor(c10d.all_reduce(x, "sum", group_name)),
        }
        row = dict(tokens=tokens, hidden=hidden, MB=x.nbytes / 1e6, payload_MB=payload.nbytes / 1e6,
                   gathered_MB=gathered.nbytes / 1e6)
        for name, fn in stages.items():
            row[f"{name} us"] = _gpu_us(fn, device, row)
        row["sum of stages us"] = sum(row[f"{n} us"] for n in list(stages)[:5])
        if link in SYMM_MEM_LINKS:
            try:
                for name, fn in _symm_mem_stages(x, group_name, world).items():
                    row[f"{name} us"] = _gpu_us(fn, device, row)
            except Exception as e:  # noqa: BLE001 - reported beside the NCCL pipeline's stages
                row["errors"] = [f"symm_mem stages: {type(e).__name__}: {e}"[:300]]
        rows.append(row)
    return rows


def _variants(link: str) -> dict[str, dict]:
    return {name: config for name, config in FLASHCOMM_VARIANTS.items()
            if config.get("transport") != "symm_mem" or link in SYMM_MEM_LINKS}


def _rank_main(rank: int, world: int, quick: bool, link: str, only: list[str] | None, repeat: int) -> dict:
    import flashcomm_compile

    compile_every_variant()
    device = torch.device("cuda", rank)
    group_name = dist.group.WORLD.group_name
    variants = {"nccl": _compiled_all_reduce(None, group_name)}
    for name, config in _variants(link).items():
        backend = flashcomm_compile.backend(**{"mode": "always", **config})
        variants[name] = _compiled_all_reduce(backend, group_name)
    if only:
        variants = {name: fn for name, fn in variants.items() if name in only}
    rows = []
    gen = torch.Generator(device).manual_seed(rank)
    for tokens, hidden in _sizes(quick):
        x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16, generator=gen)
        exact = x.float()
        dist.all_reduce(exact)
        row = dict(tokens=tokens, hidden=hidden, MB=x.nbytes / 1e6)
        samples = {name: [] for name in variants}
        for _ in range(repeat):  # repeats interleave the variants, so that drift hits them alike
            for name, fn in variants.items():
                try:
                    out = fn(x).float()  # a copy: CUDA graphs reuse the output buffer on the next replay
                    row[f"{name} err"] = ((out - exact).norm() / exact.norm()).item()
                    samples[name].append(_gpu_us(lambda: fn(x), device, row))
                except Exception as e:  # noqa: BLE001 - one broken variant is reported, the others still measured
                    row.setdefault("errors", []).append(f"{name}: {type(e).__name__}: {e}"[:300])
        for name, times in samples.items():
            row[f"{name} us"] = statistics.median(times) if times else None
        if not only:
            try:
                row["symm_mem two-shot us"] = _gpu_us(_symm_mem_two_shot(group_name, x), device, row)
            except Exception as e:  # noqa: BLE001 - reported in the table, the reference is optional
                row["symm_mem two-shot us"] = None
                row["symm_mem error"] = f"{type(e).__name__}: {e}"[:200]
        rows.append(row)
        if rank == 0:
            print(f"  {tokens} x {hidden}: " + ", ".join(
                f"{k.removesuffix(' us')} {v:.0f}" for k, v in row.items() if k.endswith(" us") and v), flush=True)
        torch.cuda.empty_cache()
    return dict(rows=rows, breakdown=[] if only else _stage_breakdown(group_name, world, device, link))


def _sweep_main(rank: int, world: int) -> list[dict]:
    return _symm_mem_sweep(dist.group.WORLD.group_name, world, torch.device("cuda", rank))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--links", default="default,p2p-disabled")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--symm-sweep", action="store_true", help="only time the peer-load kernels' launches")
    parser.add_argument("--only", help="comma-separated variants to time (e.g. nccl,auto); no stage breakdown")
    parser.add_argument("--repeat", type=int, default=1, help="median of this many interleaved timings")
    args = parser.parse_args()
    if args.symm_sweep:
        rows = run_ranks(args.world_size, _sweep_main, backend="nccl")[0]
        print_table(rows, ["kernel", "elements", "warps", "ms"])
        print(f"FLASHCOMM_LAUNCH={fastest(rows)}")
        write_json(f"symm_sweep_{environment()['card'].replace(' ', '_')}_w{args.world_size}.json", dict(rows=rows))
        return
    for link in args.links.split(","):
        use_link(link)
        print(f"link {link}:", flush=True)
        only = args.only.split(",") if args.only else None
        result = run_ranks(args.world_size, _rank_main, args.quick, link, only, args.repeat, backend="nccl")[0]
        env = environment()
        names = [n for n in ["nccl", "symm_mem two-shot", *_variants(link)] if not only or n in only]
        columns = ["tokens", "hidden", "MB"] + [f"{n} us" for n in names] + [f"{n} err" for n in names if n != "nccl"]
        print(f"\nall-reduce, GPU time per call (CUDA graph), {env['card']} x{args.world_size}, link {link}, "
              f"torch {env['torch']}, NCCL {env['nccl']}, {env['date']}")
        print_table(result["rows"], columns)
        fallbacks = {f for row in result["rows"] + result["breakdown"] for f in row.get("timing fallback", [])}
        print("timing fallbacks:", sorted(fallbacks) or "none")
        print("errors:", sorted({e for row in result["rows"] + result["breakdown"] for e in row.get("errors", [])})
              or "none")
        if result["breakdown"]:
            print("stages of one INT4/INT8 g128 all-reduce, each timed alone:")
            print_table(result["breakdown"], list(result["breakdown"][0]))
        card = env["card"].replace(" ", "_")
        subset = "_" + "-".join(only) if only else ""
        write_json(f"allreduce{subset}_{link}_{card}_w{args.world_size}.json",
                   dict(environment=env, world_size=args.world_size, repeat=args.repeat,
                        timing=f"cuda-graph, 10 calls x 20 replays, median of {args.repeat} interleaved",
                        launch={k: vars(v) for k, v in LAUNCH.items()}, **result))


if __name__ == "__main__":
    main()
