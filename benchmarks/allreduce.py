"""All-reduce latency on the GPUs of one node: the baselines (NCCL called eagerly, NCCL as Inductor compiles it,
symmetric-memory two-shot) and the flashcomm variants (and "auto") as the code the pass emits, for messages of tokens
x hidden bf16, with the relative error of each; and where the time of one flashcomm all-reduce goes, stage by stage.

GPU time per all-reduce: 10 back-to-back calls captured in one CUDA graph, median of 20 replays, slowest rank
(`timing.graph_median_ms`). Where capture fails the row says so and falls back to timing single calls. Compiled with
dynamic=True and the hidden size static, as in a model (weights fix it): the kernels' size arguments are then provably
multiples of 16, which Triton's loads and stores need to stay vectorised.
"no graphs": a chain of CHAIN all-reduces (each one's output the next one's input) compiled as one graph, called 20
times back to back without CUDA graphs (`timing.back_to_back_us`), time per all-reduce: as Inductor's default mode
runs a model, the graph's own call overhead shared by its all-reduces. Where it exceeds the GPU time, the host is the
bottleneck.

    PYTHONPATH=. python -m benchmarks.allreduce [--world-size 2] [--links default,p2p-disabled] [--quick]
    PYTHONPATH=. python -m benchmarks.allreduce --symm-sweep   # launches of the peer-load kernels, 134 MB

Each link mode runs in fresh processes (NCCL reads NCCL_P2P_DISABLE at start-up). Prints a table per mode and writes
benchmarks/results/allreduce_<link>_<card>_w<W>.json; `benchmarks/plot_allreduce.py` draws them. With $OUT set, the
code Inductor generated for each variant is written there too (code_<variant>.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from benchmarks.common import SYMM_MEM_LINKS, compile_every_variant, environment, print_table, use_link, write_json
from benchmarks.kernel_bandwidth import each_launch, fastest
from flashcomm_compile.config import FlashCommConfig
from flashcomm_compile.kernels.launches import LAUNCH
from flashcomm_compile.launch import run_ranks
from flashcomm_compile.pipeline import NcclPipeline, SymmetricPipeline
from flashcomm_compile.timing import back_to_back_us, graph_median_ms, median_ms

HIDDENS = (4096, 8192)
TOKENS = (2, 8, 32, 128, 512, 2048, 8192, 16384)
MAX_BYTES = 256 * 2**20
FLASHCOMM_VARIANTS = {
    "INT8/INT8": dict(reduce_bits=8, gather_bits=8, transport="nccl"),
    "INT4/INT8": dict(reduce_bits=4, gather_bits=8, transport="nccl"),
    "INT4/INT4": dict(reduce_bits=4, gather_bits=4, transport="nccl"),
    "INT2+spike/INT4": dict(reduce_bits=2, gather_bits=4, spike_reserve=True, group_size=32, transport="nccl"),
    # INT4/INT8 g128, transport auto, where the cost model predicts a gain in CUDA graphs (as timed here); the
    # "default options" variant (no options at all) is what a default-mode user gets, host time counted
    "auto": dict(mode="auto", cuda_graphs=True),
    "INT8/INT8 symm_mem": dict(reduce_bits=8, gather_bits=8, transport="symm_mem"),
    "INT4/INT8 symm_mem": dict(reduce_bits=4, gather_bits=8, transport="symm_mem"),
    "INT4/INT4 symm_mem": dict(reduce_bits=4, gather_bits=4, transport="symm_mem"),
    "INT4/INT8 hadamard symm_mem": dict(reduce_bits=4, gather_bits=8, rotation="hadamard", transport="symm_mem"),
    # the bit-plane splits, whose cost-model lines are predicted until this benchmark times them on two GPUs
    "INT6/INT6": dict(reduce_bits=6, gather_bits=6, transport="nccl"),
    "INT5/INT5": dict(reduce_bits=5, gather_bits=5, transport="nccl"),
    "INT6/INT6 symm_mem": dict(reduce_bits=6, gather_bits=6, transport="symm_mem"),
    "INT5/INT5 symm_mem": dict(reduce_bits=5, gather_bits=5, transport="symm_mem"),
    "INT5/INT6 symm_mem": dict(reduce_bits=5, gather_bits=6, transport="symm_mem"),
    "INT6/INT6 hadamard symm_mem": dict(reduce_bits=6, gather_bits=6, rotation="hadamard", transport="symm_mem"),
}
# also timed without CUDA graphs (host cost)
NO_GRAPHS = ("nccl eager", "nccl", "symm_mem two-shot", "INT4/INT8", "INT4/INT8 symm_mem", "default options")
CHAIN = 8
BREAKDOWN_SIZES = ((8192, 4096), (16384, 4096))
BREAKDOWN_CONFIG = FlashCommConfig(reduce_bits=4, gather_bits=8, group_size=128)


def _sizes(quick: bool) -> list[tuple[int, int]]:
    if quick:
        return [(t, 4096) for t in (8, 512, 2048, 8192, 16384)]
    return [(t, h) for h in HIDDENS for t in TOKENS if t * h * 2 <= MAX_BYTES]


def _compiled_all_reduce(backend, group_name: str):
    def all_reduce(x):
        return funcol.all_reduce(x, "sum", group_name)

    return torch.compile(all_reduce, backend=backend or "inductor", dynamic=True)


def _compiled_chain(backend, group_name: str):
    def chain(x):
        for _ in range(CHAIN):
            x = funcol.all_reduce(x, "sum", group_name) * 0.5
        return x

    return torch.compile(chain, backend=backend or "inductor", dynamic=True)


def _eager_nccl(like: torch.Tensor, calls: int = 1):
    """NCCL's in-place all-reduce called eagerly, on a buffer of x's size (a user's best exact eager call)."""
    buffer = like.clone()

    def run():
        for _ in range(calls):
            dist.all_reduce(buffer)

    return run


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


def _stages(x: torch.Tensor, group_name: str, world: int, link: str) -> dict:
    """Each stage of one INT4/INT8 all-reduce as a call to time alone, from the pipelines the pass lowers: the NCCL
    transport's, and in the default link mode the symmetric-memory one's."""
    nccl = NcclPipeline(BREAKDOWN_CONFIG, group_name, world)
    payload = nccl.quantize(x)
    received = nccl.all_to_all(payload)
    reduced = nccl.reduce(received, x.numel())
    gathered = nccl.all_gather(reduced)
    nccl.dequantize(gathered, x)
    stages = {
        "quantize": lambda: nccl.quantize(x),
        "all-to-all": lambda: torch.ops._c10d_functional.wait_tensor(nccl.all_to_all(payload)),
        "dequant-sum-requant": lambda: nccl.reduce(received, x.numel()),
        "all-gather": lambda: torch.ops._c10d_functional.wait_tensor(nccl.all_gather(reduced)),
        "dequantize": lambda: nccl.dequantize(gathered, x),
    }
    if link in SYMM_MEM_LINKS:
        symm = SymmetricPipeline.over(group_name, x.device, x.numel(), world,
                                      BREAKDOWN_CONFIG.with_transport("symm_mem"))
        token = torch.empty(1, dtype=torch.int32, device=x.device)
        stages.update({
            "symm quantize (+ barrier)": lambda: symm.quantize(x, token, token),
            "symm dequant-sum-requant (peer loads, + barrier)": lambda: symm.reduce(x.numel(), token),
            "symm dequantize (peer loads)": lambda: symm.dequantize(x, token),
            "symm whole (eager)": lambda: symm(x),
        })
    return stages


def _symm_mem_sweep(group_name: str, world: int, device: torch.device) -> list[dict]:
    """Every candidate launch of the two peer-load kernels at the largest breakdown size, each timed alone."""
    tokens, hidden = BREAKDOWN_SIZES[-1]
    x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
    stages = _stages(x, group_name, world, "default")
    stages["symm quantize (+ barrier)"]()
    rows = []
    for kernel, stage in (("dequant_sum_requant_peers", "symm dequant-sum-requant (peer loads, + barrier)"),
                          ("dequantize_peers", "symm dequantize (peer loads)")):
        for row in each_launch(kernel):
            row["ms"] = _gpu_us(stages[stage], device, row) / 1e3
            rows.append(row)
    return rows


def _stage_breakdown(group_name: str, world: int, device: torch.device, link: str) -> list[dict]:
    """GPU time of each stage of one INT4/INT8 all-reduce, each stage timed alone (eager, CUDA graph)."""
    rows = []
    for tokens, hidden in BREAKDOWN_SIZES:
        x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
        row = dict(tokens=tokens, hidden=hidden, MB=x.nbytes / 1e6)
        try:
            stages = _stages(x, group_name, world, link)
            stages["nccl all-reduce (eager)"] = _eager_nccl(x)
            for name, fn in stages.items():
                row[f"{name} us"] = _gpu_us(fn, device, row)
            row["sum of stages us"] = sum(row[f"{n} us"] for n in list(stages)[:5])
        except Exception as e:  # noqa: BLE001 - reported beside the stages that were timed
            row["errors"] = [f"stages: {type(e).__name__}: {e}"[:300]]
        rows.append(row)
    return rows


def _first_call_writing_code(name: str, fn, x: torch.Tensor, rank: int) -> None:
    """fn's first call (its compile), on every rank; rank 0 writes the code Inductor generated under $OUT."""
    from torch._inductor.utils import run_and_get_code

    _, code = run_and_get_code(fn, x)
    if rank != 0:
        return
    slug = "".join(c if c.isalnum() else "_" for c in name)
    Path(os.environ["OUT"], f"code_{slug}.py").write_text("\n\n# ----\n\n".join(code))


QUICK_VARIANTS = ("INT4/INT8", "auto", "INT8/INT8 symm_mem", "INT4/INT8 symm_mem", "INT4/INT4 symm_mem",
                  "INT4/INT8 hadamard symm_mem")


def _variants(link: str, quick: bool) -> dict[str, dict]:
    return {name: config for name, config in FLASHCOMM_VARIANTS.items()
            if (config.get("transport") != "symm_mem" or link in SYMM_MEM_LINKS)
            and (not quick or name in QUICK_VARIANTS)}


def _rank_main(rank: int, world: int, quick: bool, link: str, only: list[str] | None, repeat: int) -> dict:
    import flashcomm_compile

    compile_every_variant()
    device = torch.device("cuda", rank)
    group_name = dist.group.WORLD.group_name
    variants = {"nccl": _compiled_all_reduce(None, group_name)}
    for name, config in _variants(link, quick).items():
        backend = flashcomm_compile.backend(**{"mode": "always", **config})
        variants[name] = _compiled_all_reduce(backend, group_name)
    variants["default options"] = _compiled_all_reduce(flashcomm_compile.backend(), group_name)
    chains = {name: _compiled_chain(None if name == "nccl" else flashcomm_compile.backend(
        **({} if name == "default options" else {"mode": "always", **FLASHCOMM_VARIANTS[name]})), group_name)
        for name in NO_GRAPHS if name in variants}
    if only:
        variants = {name: fn for name, fn in variants.items() if name in only}
        chains = {name: fn for name, fn in chains.items() if name in only}
    rows = []
    gen = torch.Generator(device).manual_seed(rank)
    for size, (tokens, hidden) in enumerate(_sizes(quick)):
        x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16, generator=gen)
        torch._dynamo.mark_static(x, 1)  # the hidden size is a model's constant; the number of tokens varies
        exact = x.float()
        dist.all_reduce(exact)
        row = dict(tokens=tokens, hidden=hidden, MB=x.nbytes / 1e6)
        calls = {name: (lambda fn=fn: fn(x)) for name, fn in variants.items()}
        if not only:
            calls["nccl eager"] = _eager_nccl(x)
            try:
                calls["symm_mem two-shot"] = _symm_mem_two_shot(group_name, x)
            except Exception as e:  # noqa: BLE001 - reported in the table, the reference is optional
                row.setdefault("errors", []).append(f"symm_mem two-shot: {type(e).__name__}: {e}"[:200])
        samples = {name: [] for name in calls}
        for _ in range(repeat):  # repeats interleave the variants, so that drift hits them alike
            for name, call in calls.items():
                try:
                    if name in variants:
                        if size == 0 and not samples[name] and os.environ.get("OUT"):
                            _first_call_writing_code(name, variants[name], x, rank)
                        out = variants[name](x).float()  # a copy: CUDA graphs reuse the output buffer
                        row[f"{name} err"] = ((out - exact).norm() / exact.norm()).item()
                    samples[name].append(_gpu_us(call, device, row))
                except Exception as e:  # noqa: BLE001 - one broken variant is reported, the others still measured
                    row.setdefault("errors", []).append(f"{name}: {type(e).__name__}: {e}"[:300])
        for name, times in samples.items():
            row[f"{name} us"] = statistics.median(times) if times else None
        chained = {name: (lambda fn=fn: fn(x)) for name, fn in chains.items()}
        if not only:
            chained["nccl eager"] = _eager_nccl(x, CHAIN)
            if "symm_mem two-shot" in calls:
                chained["symm_mem two-shot"] = lambda two_shot=calls["symm_mem two-shot"]: [
                    two_shot() for _ in range(CHAIN)]
        for name, call in chained.items():
            try:
                row[f"{name} no-graphs us"] = back_to_back_us(call, device) / CHAIN
            except Exception as e:  # noqa: BLE001 - reported beside the numbers that were timed
                row.setdefault("errors", []).append(f"{name} no graphs: {type(e).__name__}: {e}"[:300])
        rows.append(row)
        if rank == 0:
            print(f"  {tokens} x {hidden}: " + ", ".join(
                f"{k.removesuffix(' us')} {v:.0f}" for k, v in row.items() if k.endswith(" us") and v), flush=True)
        del calls, chained
        torch.cuda.empty_cache()
    return dict(rows=rows, breakdown=[] if only else _stage_breakdown(group_name, world, device, link))


def _sweep_main(rank: int, world: int) -> list[dict]:
    return _symm_mem_sweep(dist.group.WORLD.group_name, world, torch.device("cuda", rank))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--links", default="default,p2p-disabled")
    parser.add_argument("--quick", action="store_true", help=f"4096-wide messages only, variants {QUICK_VARIANTS}")
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
        names = [n for n in ["nccl eager", "nccl", "symm_mem two-shot", *_variants(link, args.quick), "default options"]
                 if not only or n in only]
        columns = ["tokens", "hidden", "MB"] + [f"{n} us" for n in names]
        no_graphs = ["tokens", "hidden", "MB"] + [f"{n} no-graphs us" for n in names if n in NO_GRAPHS]
        errors = ["tokens", "hidden"] + [f"{n} err" for n in names if n not in ("nccl", "nccl eager",
                                                                               "symm_mem two-shot")]
        print(f"\nall-reduce, GPU time per call (CUDA graph), {env['card']} x{args.world_size}, link {link}, "
              f"torch {env['torch']}, NCCL {env['nccl']}, {env['date']}")
        print_table(result["rows"], columns)
        print(f"WITHOUT CUDA graphs: a graph of {CHAIN} chained all-reduces called 20 times back to back, us per "
              "all-reduce:")
        print_table(result["rows"], no_graphs)
        print("relative error:")
        print_table(result["rows"], errors)
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
