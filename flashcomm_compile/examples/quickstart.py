"""A tensor-parallel MLP compiled with the flashcomm backend, written two ways: hand-written with functional
collectives, and with DTensor's parallelize_module. Run on 2 ranks (gloo on CPUs, NCCL on 2 GPUs):

    torchrun --nproc-per-node 2 -m flashcomm_compile.examples.quickstart [--dtensor]

The process group must exist before the model is built and compiled; the all-reduces the pass rewrites are the
ones on that group (any group works: the pass reads its size from its name). `make_tp_mlp` is also a factory for
`flashcomm-compile inspect flashcomm_compile.examples.quickstart:make_tp_mlp`, which calls it inside a fake process
group.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

import flashcomm_compile


class FuncolMLP(torch.nn.Module):
    """This rank's shards: the up projection split by columns, the down projection by rows, then the sum."""

    def __init__(self, dim: int, hidden: int, world: int):
        super().__init__()
        self.up = torch.nn.Linear(dim, hidden // world, bias=False)
        self.down = torch.nn.Linear(hidden // world, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = self.down(torch.relu(self.up(x)))
        return funcol.all_reduce(partial, "sum", dist.group.WORLD)  # the all-reduce the pass rewrites


def dtensor_mlp(dim: int, hidden: int, device: torch.device) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden, bias=False), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, dim, bias=False)).to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    return parallelize_module(mlp, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def make_tp_mlp(dim: int = 1024, hidden: int = 4096, tokens: int = 2048, dtensor: bool = False) -> tuple:
    """(model, example_inputs) on the current process group: a factory for `flashcomm-compile inspect`."""
    device = torch.device("cuda", dist.get_rank()) if dist.get_backend() == "nccl" else torch.device("cpu")
    torch.manual_seed(0)  # every rank builds the same weights
    model = dtensor_mlp(dim, hidden, device) if dtensor else FuncolMLP(dim, hidden, dist.get_world_size()).to(device)
    return model, (torch.randn(tokens, dim, device=device),)


def run(dtensor: bool, **shape: int) -> dict:
    """Compile the MLP with Inductor and with flashcomm; the rewrite's decisions and the error against Inductor."""
    model, (x,) = make_tp_mlp(dtensor=dtensor, **shape)
    backend = flashcomm_compile.backend(mode="always")  # "auto" (the default) rewrites only where it pays
    with torch.no_grad():
        exact = torch.compile(model)(x)
        out = torch.compile(model, backend=backend)(x)
    return dict(decisions=[(s.rewritten, s.reason) for r in backend.records for s in r.sites],
                from_cache=any(r.from_cache for r in backend.records),
                relative_error=((out - exact).norm() / exact.norm()).item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtensor", action="store_true", help="DTensor's parallelize_module instead of funcol")
    args = parser.parse_args()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.get_rank())
    result = run(args.dtensor)
    if dist.get_rank() == 0:
        cached = " (served from Inductor's cache: rewritten by an earlier run)" if result["from_cache"] else ""
        print(f"all-reduces: {result['decisions']}{cached}; relative error against Inductor: "
              f"{result['relative_error']:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
