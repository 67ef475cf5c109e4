"""Prefill latency (time to first token) of Llama-shaped TP models with random weights, compiled as real TP clients
ship prefill: `torch.compile(model, fullgraph=True, dynamic=True)`, Inductor's default mode, batch 1, prompts of
512-16384 tokens. Inductor against the flashcomm backend with the default options ("default options": mode auto,
transport auto) and with mode "always" (transport auto: symmetric memory on NVLink, NCCL with P2P disabled), and the
same model with its all-reduces removed, which measures the share of time spent communicating and the Amdahl bound on
any speed-up from faster communication.

    PYTHONPATH=. python -m benchmarks.ttft [--world-size 2] [--link default|p2p-disabled] [--models 8b,70b]
                                           [--inductor-mode default|reduce-overhead] [--batches]

--inductor-mode reduce-overhead runs every variant under CUDA graphs, which takes launch overhead out of the times;
--batches times batches 1-16 of prompts 512-2048 instead of batch 1.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.distributed as dist

from benchmarks.common import compile_every_variant, environment, print_table, use_link, write_json
from flashcomm_compile.examples.llama import LlamaShape, build, shard_with_funcol
from flashcomm_compile.launch import run_ranks
from flashcomm_compile.timing import median_ms

MODELS = {
    "8b": ("llama3-8b, 8 of 32 layers", LlamaShape(dim=4096, n_heads=32, ffn_dim=14336, n_layers=8)),
    "70b": ("llama3-70b, 4 of 80 layers", LlamaShape(dim=8192, n_heads=64, ffn_dim=28672, n_layers=4)),
}
CLIENT = [(1, 512), (1, 2048), (1, 8192), (1, 16384)]
BATCHES = [(1, 512), (4, 1024), (8, 1024), (16, 2048)]


def _time_each_input(label: str, fn, inputs, shapes, name: str, rank: int, device: torch.device,
                     times: dict) -> None:
    for (b, s), x in zip(shapes, inputs):
        times.setdefault((label, b, s), []).append(median_ms(lambda: fn(x), device, warmup=3, iters=7))
        if rank == 0:
            print(f"  {name} {b}x{s} {label}: {times[label, b, s][-1]:.2f} ms", flush=True)


def _decisions(compiled) -> list[str]:
    """What the pass decided in each graph it compiled for a variant (a symbolic size compiles once per side of a
    threshold): "rewritten N of M (transport)", the reason it kept them, or that the cache served the graph."""
    out = []
    for record in compiled.flashcomm_backend.records:
        if record.from_cache:
            out.append("from Inductor's cache")
            continue
        done = record.rewritten()
        kept = {s.reason for s in record.sites if not s.rewritten}
        transports = ",".join(sorted({s.decision.transport for s in done}))
        out.append(f"rewritten {len(done)} of {len(record.sites)} ({transports})" if done else "; ".join(kept))
    return out


def _rank_main(rank: int, world: int, models: list[str], inductor_mode: str, shapes: list,
               repeat: int) -> list[dict]:
    import flashcomm_compile

    compile_every_variant()
    device = torch.device("cuda", rank)
    rows = []
    compiled = dict(mode=inductor_mode, dynamic=True, fullgraph=True)
    for name, shape in (MODELS[key] for key in models):
        torch._dynamo.reset()
        model = shard_with_funcol(build(shape, dtype=torch.bfloat16, device=device), rank, world, dist.group.WORLD)
        variants = {
            "inductor": torch.compile(model, **compiled),
            "default options": flashcomm_compile.compile(model, inductor_mode=inductor_mode, dynamic=True,
                                                         fullgraph=True),
            "always": flashcomm_compile.compile(model, mode="always", inductor_mode=inductor_mode, dynamic=True,
                                                fullgraph=True),
        }
        inputs = [torch.randn(b, s, shape.dim, device=device, dtype=torch.bfloat16) for b, s in shapes]
        times = {}
        with torch.no_grad():
            for _ in range(repeat):  # repeats interleave the variants, so that drift and order hit them alike
                for label, fn in list(variants.items()):
                    try:
                        _time_each_input(label, fn, inputs, shapes, name, rank, device, times)
                    except Exception as e:  # noqa: BLE001 - one broken variant is reported, the others still timed
                        print(f"  rank {rank}: {label} failed: {type(e).__name__}: {e}"[:400], flush=True)
                        del variants[label]
            decisions = {label: _decisions(fn) for label, fn in variants.items() if label != "inductor"}
            for hook in model.all_reduce_hooks:
                hook.remove()
            silent = torch.compile(model, **compiled)
            _time_each_input("no-comm", silent, inputs, shapes, name, rank, device, times)
        times = {key: statistics.median(samples) for key, samples in times.items()}
        if rank == 0:
            print(f"  decisions per compiled graph: {decisions}", flush=True)
        for b, s in shapes:
            base, comp = times["inductor", b, s], times["no-comm", b, s]
            row = {"model": name, "batch x prompt": f"{b}x{s}"}
            row.update({f"{label} ms": times[label, b, s] for label in [*variants, "no-comm"]})
            row.update({f"{label} speed-up": base / times[label, b, s] for label in variants if label != "inductor"})
            rows.append({**row, "comm share": 1 - comp / base, "amdahl bound": base / comp})
        rows[-1]["decisions"] = decisions
        del model, variants, silent
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--link", default="default", choices=["default", "p2p-disabled"])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--inductor-mode", default="default", choices=["default", "reduce-overhead"])
    parser.add_argument("--batches", action="store_true", help=f"time {BATCHES} instead of {CLIENT}")
    parser.add_argument("--repeat", type=int, default=1, help="median of this many interleaved timings")
    args = parser.parse_args()
    models = args.models.split(",")
    unknown = set(models) - set(MODELS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; known {list(MODELS)}")
    use_link(args.link)
    shapes = BATCHES if args.batches else CLIENT
    rows = run_ranks(args.world_size, _rank_main, models, args.inductor_mode, shapes, args.repeat,
                     backend="nccl")[0]
    env = environment()
    print(f"\nprefill latency, {env['card']} x{args.world_size}, link {args.link}, Inductor mode {args.inductor_mode}, "
          f"fullgraph, dynamic, flashcomm default options (INT4/INT8 g128), torch {env['torch']}, NCCL {env['nccl']}, "
          f"{env['date']}")
    print_table(rows, [c for c in rows[0] if c != "decisions"])
    card = env["card"].replace(" ", "_")
    mode = "" if args.inductor_mode == "default" else f"_{args.inductor_mode}"
    batches = "_batches" if args.batches else ""
    write_json(f"ttft_{args.link}_{card}_w{args.world_size}{mode}{batches}.json",
               dict(environment=env, compile="fullgraph=True, dynamic=True", inductor_mode=args.inductor_mode,
                    rows=rows))


if __name__ == "__main__":
    main()
