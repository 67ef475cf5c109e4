"""Error per all-reduce site: where the accuracy benchmark's quantization error comes from, plain against rotated.

The exact model runs on 2 ranks (gloo on the CPU, NCCL where 2 GPUs exist); each all-reduce's per-rank inputs are
recorded and the pipeline is simulated on them (`pipeline.simulate`, the torch reference: the bytes the kernels send).
A site's error is then its own, not what earlier sites' errors made of its input: relative L2 error of the reduced
tensor against the float64 sum. Beside it, what sets a group's scale: the largest peak-to-RMS ratio of a group of the
reduced tensor, before and after the block Hadamard transform (an outlier spread over G values keeps 1/sqrt(G) of its
height; the ratio cannot exceed sqrt(G), where one value carries the whole group), the share of the error in the
groups where that ratio is above sqrt(G / 2) (one value holds more than half the group's energy: an outlier), and
the error the same pipeline makes on Gaussian inputs of the same shape (what the bit width costs once there are no
outliers left).

    PYTHONPATH=. python -m benchmarks.site_errors [--bits 4/8] [--group 128]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from benchmarks.accuracy import OutlierLlama, sentences
from benchmarks.common import environment, print_table, write_json
from flashcomm_compile.examples import llama, minilm
from flashcomm_compile.kernels import reference
from flashcomm_compile.launch import default_backend, rank_device, run_ranks
from flashcomm_compile.pipeline import simulate


@contextlib.contextmanager
def recording_all_reduces(inputs: list[torch.Tensor]):
    """Every funcol.all_reduce called inside appends its input to `inputs` (the model's hooks look it up per call)."""
    exact = funcol.all_reduce
    funcol.all_reduce = lambda x, op, group: (inputs.append(x.detach().clone()), exact(x, op, group))[1]
    try:
        yield inputs
    finally:
        funcol.all_reduce = exact


def _gathered(x: torch.Tensor, world: int) -> list[torch.Tensor]:
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return [p.cpu() for p in parts]


def _peak_to_rms(groups: torch.Tensor) -> torch.Tensor:
    rms = groups.pow(2).mean(1).sqrt()
    return groups.abs().amax(1) / rms.clamp_min(torch.finfo(torch.float64).tiny)


def _exact_sum(per_rank: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([x.double() for x in per_rank]).sum(0).reshape(-1)


def _error(per_rank: list[torch.Tensor], exact: torch.Tensor, bits, group_size: int, rotate: bool) -> torch.Tensor:
    """The simulated pipeline's output minus the exact sum, float64, flat."""
    run, _ = simulate(reference, per_rank, bits[0], bits[1], group_size, False, rotate)
    return run.outputs[0].double().reshape(-1) - exact


def _gaussian_error(per_rank: list[torch.Tensor], bits, group_size: int) -> float:
    generator = torch.Generator().manual_seed(0)
    gaussian = [torch.randn(x.shape, generator=generator) for x in per_rank]
    exact = _exact_sum(gaussian)
    return (_error(gaussian, exact, bits, group_size, False).norm() / exact.norm()).item()


def site_row(per_rank: list[torch.Tensor], bits: tuple[int, int], group_size: int) -> dict:
    """The site's error with and without rotation, and the outlier statistics that explain it."""
    exact = _exact_sum(per_rank)
    groups = exact[: exact.numel() // group_size * group_size].view(-1, group_size)
    ratio = _peak_to_rms(groups)
    ratio_rotated = _peak_to_rms(reference.hadamard(groups.float()).double())
    row = dict(numel=exact.numel(), peak_to_rms=ratio.max().item(), rotated_peak_to_rms=ratio_rotated.max().item(),
               gaussian_error=_gaussian_error(per_rank, bits, group_size))
    peaky_above = (group_size / 2) ** 0.5  # one value holds more than half the group's energy
    for rotation, peaky in (("plain", ratio > peaky_above), ("rotated", ratio_rotated > peaky_above)):
        error = _error(per_rank, exact, bits, group_size, rotation == "rotated")
        row[f"{rotation}_error"] = (error.norm() / exact.norm()).item()
        in_peaky = error[: groups.numel()].view_as(groups)[peaky].norm() ** 2
        row[f"{rotation}_error_share_peaky"] = (in_peaky / error.norm() ** 2).item()
        row[f"{rotation}_peaky_groups"] = peaky.double().mean().item()
    return row


def _site_rows(rank: int, world: int, run_exact, bits, group_size) -> list[dict]:
    with torch.no_grad(), recording_all_reduces([]) as inputs:
        run_exact()
    rows = []
    for site, x in enumerate(inputs):
        per_rank = _gathered(x, world)
        if rank == 0:
            rows.append(dict(site=site, **site_row(per_rank, bits, group_size)))
    return rows


def minilm_sites(rank: int, world: int, bits, group_size: int) -> list[dict]:
    device = rank_device(rank)
    model = minilm.shard_with_funcol(minilm.load(), rank, world, dist.group.WORLD).to(device)
    ids, mask = (t.to(device) for t in minilm.tokenize(sentences()))
    rows = _site_rows(rank, world, lambda: model(ids, mask), bits, group_size)
    for row in rows:  # two all-reduces per layer: attention output, then FFN output
        row["name"] = f"layer {row['site'] // 2} {'attention' if row['site'] % 2 == 0 else 'FFN'}"
    return rows


def llama_sites(rank: int, world: int, bits, group_size: int) -> list[dict]:
    device = rank_device(rank)
    model = OutlierLlama(llama.LlamaShape(dim=512, n_heads=8, ffn_dim=1408, n_layers=4))
    llama.shard_with_funcol(model.body, rank, world, dist.group.WORLD)
    model = model.to(device)
    tokens = torch.randint(0, 4096, (4, 128), generator=torch.Generator().manual_seed(2)).to(device)
    rows = _site_rows(rank, world, lambda: model(tokens), bits, group_size)
    for row in rows:
        row["name"] = f"layer {row['site'] // 2} {'attention' if row['site'] % 2 == 0 else 'MLP'}"
    return rows


COLUMNS = ["name", "plain_error", "rotated_error", "gaussian_error", "peak_to_rms", "rotated_peak_to_rms",
           "plain_peaky_groups", "plain_error_share_peaky", "rotated_peaky_groups", "rotated_error_share_peaky"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bits", default="4/8", help="reduce/gather bits")
    parser.add_argument("--group", type=int, default=128)
    args = parser.parse_args()
    bits = tuple(int(b) for b in args.bits.split("/"))
    backend = default_backend(2)
    tables = {"minilm": run_ranks(2, minilm_sites, bits, args.group, backend=backend)[0],
              "llama": run_ranks(2, llama_sites, bits, args.group, backend=backend)[0]}
    env = environment()
    print(f"error per all-reduce site, INT{bits[0]}/INT{bits[1]} group {args.group}, 2 ranks on {backend}, "
          f"{env['card']}, {env['date']}")
    for model, rows in tables.items():
        print(model)
        print_table(rows, COLUMNS)
    name = f"site_errors_int{bits[0]}_int{bits[1]}_g{args.group}_{backend}.json"
    write_json(name, dict(environment=env, bits=list(bits), group=args.group, **tables))


if __name__ == "__main__":
    main()
