"""The main demo: a Llama-style TP model on 2 ranks, compiled with Inductor and with the flashcomm backend.

Prints the rewrite of one all-reduce, how many all-reduces were rewritten, the error against the exact all-reduce
and the time per step of both. gloo on the CPU (float32), NCCL where 2 GPUs exist (bfloat16).

    python -m flashcomm_compile.demo [--world-size 2] [--layers 4] [--tokens 512]
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from .config import ROTATIONS, FlashCommConfig
from .examples.llama import LlamaShape, build, shard_with_funcol
from .kernels import reference
from .kernels.bounds import pipeline_error_bound
from .launch import default_backend, rank_device, run_ranks
from .pipeline import simulate
from .timing import median_ms

LINE = 150  # characters of a graph line shown

# the lines of a rewritten all-reduce worth showing: its Triton kernels (GPU) and its collectives; on CPUs the
# kernels are the torch reference's custom ops
OPS_OF_A_REWRITE = ("triton_kernel_wrapper_functional", "torch.ops.flashcomm.", "_c10d_functional.")


def _rank_main(rank: int, world: int, args: argparse.Namespace) -> dict:
    import flashcomm_compile
    from torch._inductor import config as inductor_config

    device = rank_device(rank)
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    shape = LlamaShape(dim=args.dim, n_heads=args.dim // 64, ffn_dim=args.ffn_dim, n_layers=args.layers)
    model = shard_with_funcol(build(shape, dtype=dtype, device=device), rank, world, dist.group.WORLD)
    x = torch.randn(1, args.tokens, shape.dim, generator=torch.Generator().manual_seed(0)).to(device, dtype)

    backend = flashcomm_compile.backend(reduce_bits=args.reduce_bits, gather_bits=args.gather_bits, mode="always",
                                        rotation=args.rotation, keep_code=True)
    exact_model = torch.compile(model)
    flash_model = torch.compile(model, backend=backend)
    # The demo shows what the pass did, so it must run: no FX-graph-cache hit from an earlier run.
    with torch.no_grad(), inductor_config.patch(fx_graph_cache=False):
        exact, out = exact_model(x), flash_model(x)
        exact_ms = median_ms(lambda: exact_model(x), device)
        flash_ms = median_ms(lambda: flash_model(x), device)
    record = backend.records[0]
    return dict(
        device=torch.cuda.get_device_name(device) if on_gpu else "cpu", backend=dist.get_backend(), dtype=str(dtype),
        config=backend.config.describe(), variant=backend.config.variant,
        all_reduce_bytes=x.numel() * x.element_size(),
        sites=len(record.sites), rewritten=len(record.rewritten()),
        transports=sorted({s.decision.transport for s in record.rewritten()}),
        rewrite=[line.strip() for line in record.after.splitlines() if any(op in line for op in OPS_OF_A_REWRITE)],
        max_error=(out.float() - exact.float()).abs().max().item(),
        relative_error=((out.float() - exact.float()).norm() / exact.float().norm()).item(),
        exact_ms=exact_ms, flash_ms=flash_ms, out=out.cpu(),
    )


def format_error(args: argparse.Namespace, world: int) -> tuple[float, float]:
    """The chosen format on one all-reduce of the demo's size, Gaussian data on every rank, simulated here with the
    reference kernels: (relative error, relative L2 norm of the analytic bound)."""
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(args.tokens, args.dim, generator=gen) for _ in range(world)]
    run, layout = simulate(reference, inputs, args.reduce_bits, args.gather_bits, 128, False,
                           args.rotation == "hadamard")
    exact = torch.stack([x.double() for x in inputs]).sum(0)
    bound = pipeline_error_bound(run.sent, run.gathered, layout, args.gather_bits, torch.float32, run.outputs[0])
    return (((run.outputs[0].double() - exact).norm() / exact.norm()).item(),
            (bound.double().norm() / exact.norm()).item())


def _cut(line: str) -> str:
    return line if len(line) <= LINE else line[:LINE - 3] + "..."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=None, help="hidden size (default 512 on CPU, 4096 on GPU)")
    parser.add_argument("--ffn-dim", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None, help="prompt length (default 256 on CPU, 4096 on GPU)")
    parser.add_argument("--reduce-bits", type=int, default=4)
    parser.add_argument("--gather-bits", type=int, default=8)
    parser.add_argument("--rotation", choices=ROTATIONS, default=FlashCommConfig.rotation)
    args = parser.parse_args(argv)
    backend = default_backend(args.world_size)
    gpu = backend == "nccl"
    args.dim = args.dim or (4096 if gpu else 512)
    args.ffn_dim = args.ffn_dim or (14336 if gpu else 1024)
    args.tokens = args.tokens or (4096 if gpu else 256)

    ranks = run_ranks(args.world_size, _rank_main, args, backend=backend)
    r = ranks[0]
    identical = all(torch.equal(r["out"], other["out"]) for other in ranks[1:])
    print(f"flashcomm demo: Llama-style TP model, {args.layers} layers, dim {args.dim}, {args.tokens} tokens, "
          f"{args.world_size} ranks on {r['backend']} ({r['device']}), {r['dtype']}")
    print(f"config: {r['config']}; each all-reduce carries {r['all_reduce_bytes'] / 2**20:.2f} MiB")
    print("\nthe first all-reduce after the pass (its kernels and collectives):")
    for line in r["rewrite"][:7]:
        print(f"    {_cut(line)}")
    print(f"\nall-reduces rewritten: {r['rewritten']} of {r['sites']}, transport {', '.join(r['transports'])}")
    print(f"error vs exact all-reduce: max |diff| {r['max_error']:.4g}, relative {r['relative_error']:.4g}; "
          f"ranks bitwise identical: {identical}")
    error, bound = format_error(args, args.world_size)
    print(f"  ({r['variant']} on one all-reduce of Gaussian data: relative error "
          f"{error:.4g}, analytic bound {bound:.4g}; the model's error compounds over its {r['sites']} all-reduces)")
    print(f"time per step (median): exact all-reduce {r['exact_ms']:.2f} ms, flashcomm {r['flash_ms']:.2f} ms "
          f"({r['exact_ms'] / r['flash_ms']:.2f}x)")
    if not gpu:
        print("(on the CPU the kernels run as their torch reference and gloo has no fast link: the speed-up is a "
              "GPU matter, see benchmarks/)")


if __name__ == "__main__":
    main()
