"""Cold compile time with the flashcomm pass against Inductor's alone: the first call (compile + one run) of a TP
model, each measurement in fresh processes with empty Inductor and Triton caches.

CPU: the ranks are gloo processes (`--world`), the slowest rank's first call counts. GPU (`--fake`): one process on
a fake process group of `--world` ranks, where the collectives return at once, so a large model's compile is timed
on one card.

    python -m benchmarks.compile_time                                  # CPU, the 2-layer example and one all-reduce
    python -m benchmarks.compile_time --fake --models llama3-8b-32l    # one GPU, a Llama-3-8B-shaped model
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import tempfile
import time

import torch
import torch.distributed as dist

from benchmarks.common import environment, print_table, write_json
from flashcomm_compile.examples import llama
from flashcomm_compile.launch import rank_device, run_ranks

MODELS = {
    # name: (Llama shape or None for one all-reduce, tokens)
    "llama-2l": (llama.LlamaShape(dim=1024, n_heads=8, ffn_dim=2816, n_layers=2), 256),
    "one-all-reduce": (None, 1 << 19),  # 2 MB of float32
    "llama3-8b-32l": (llama.LlamaShape(dim=4096, n_heads=32, ffn_dim=14336, n_layers=32), 2048),
}
VARIANTS = {
    "inductor": None,
    "flashcomm always": dict(mode="always", transport="nccl"),
    "flashcomm default": {},
}


def _model(name: str, rank: int, world: int, device: torch.device):
    shape, tokens = MODELS[name]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if shape is None:
        import torch.distributed._functional_collectives as funcol

        return (lambda t: funcol.all_reduce(t * 2, "sum", dist.group.WORLD) + 1), torch.randn(
            tokens, device=device, dtype=dtype)
    with torch.device(device):
        model = llama.shard_with_funcol(llama.build(shape, dtype=dtype, device=device), rank, world,
                                        dist.group.WORLD)
    return model, torch.randn(1, tokens, shape.dim, device=device, dtype=dtype)


def _first_call(rank: int, world: int, model: str, variant: str, dynamic: bool) -> float:
    """Seconds of the first call of the compiled model on this rank (caches off)."""
    import flashcomm_compile

    torch._inductor.config.force_disable_caches = True
    fake = dist.get_backend() == "fake"
    device = torch.device("cuda") if fake else rank_device(rank)
    fn, x = _model(model, rank, world, device)
    options = VARIANTS[variant]
    backend = "inductor" if options is None else flashcomm_compile.backend(**options)
    compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=dynamic)
    with torch.no_grad():
        if not fake:
            dist.barrier()
        start = time.perf_counter()
        compiled(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def _on_fake_group(world: int, *args) -> float:
    from flashcomm_compile.inspection import fake_process_group

    with fake_process_group(world):
        return _first_call(0, world, *args)


def measure(model: str, variant: str, dynamic: bool, world: int, fake: bool) -> float:
    """One cold first call in fresh processes (empty caches): the slowest rank's seconds."""
    with tempfile.TemporaryDirectory() as cache:
        os.environ.update(TORCHINDUCTOR_CACHE_DIR=f"{cache}/inductor", TRITON_CACHE_DIR=f"{cache}/triton")
        if fake:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                return pool.submit(_on_fake_group, world, model, variant, dynamic).result()
        return max(run_ranks(world, _first_call, model, variant, dynamic))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-2l,one-all-reduce", help=f"of {list(MODELS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {list(VARIANTS)}")
    parser.add_argument("--shapes", default="static,dynamic")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--fake", action="store_true", help="one process on a fake group (one GPU)")
    parser.add_argument("--label", default="", help="added to the result file's name")
    args = parser.parse_args()
    env = environment()
    models, variants = args.models.split(","), args.variants.split(",")
    # discarded: the first cold compile on a machine also reads torch's headers and libraries into the OS cache
    measure("one-all-reduce", "inductor", False, args.world, args.fake)
    rows = []
    for model in models:
        for shape in args.shapes.split(","):
            row = dict(model=model, shape=shape)
            for variant in variants:
                row[variant] = measure(model, variant, shape == "dynamic", args.world, args.fake)
                print(f"{model} {shape} {variant}: {row[variant]:.1f} s", flush=True)
            if "inductor" in row:
                ratios = {f"{v} / inductor": row[v] / row["inductor"] for v in VARIANTS if v != "inductor" and v in row}
                row.update(ratios)
            rows.append(row)
    columns = ["model", "shape", *[k for k in rows[0] if k not in ("model", "shape")]]
    print_table(rows, columns)
    card = env["card"].replace(" ", "_") if env["gpus"] else "cpu"
    name = f"compile_time_{card}_{'fake' if args.fake else 'gloo'}_w{args.world}{args.label}_{env['date'][:10]}.json"
    print("wrote", write_json(name, dict(environment=env, world=args.world, fake=args.fake, rows=rows)))


if __name__ == "__main__":
    main()
