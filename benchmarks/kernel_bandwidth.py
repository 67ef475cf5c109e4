"""Bandwidth of the quantize / dequantize-sum-requantize / dequantize kernels next to a device-to-device copy, on one
GPU, at 64 MB of bf16 (counting bytes read plus bytes written, as the copy is counted), timed in CUDA graphs.

    PYTHONPATH=. python -m benchmarks.kernel_bandwidth [--sweep] [--baseline PATH] [--splits]

--sweep also times every candidate launch of each kernel for INT4/INT8 g128: elements per program x warps plain, the
warps of the one-group-per-thread launch rotated; it prints the fastest in FLASHCOMM_LAUNCH's syntax, which
`flashcomm_compile.kernels.launches.LAUNCH` is then set to.
--baseline times another version of triton_kernels.py (e.g. `git show REV:flashcomm_compile/kernels/triton_kernels.py`
saved under the ignored .device/) in the same run, beside the current one.
--splits times the equal splits INT4/INT4 ... INT8/INT8 too, plain and rotated: each kernel at 5, 6 and 7 bits beside
the 4- and 8-bit kernels it sits between (`split_ratios` prints how far it is from the slower of the two).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import sys

import torch
from triton.testing import do_bench_cudagraph

from flashcomm_compile.kernels import triton_kernels
from flashcomm_compile.kernels.launches import LAUNCH
from flashcomm_compile.kernels.layout import PayloadLayout
from benchmarks.common import environment, print_table, write_json

NUMEL = 32 * 2**20  # 64 MB of bf16
WORLD = 2
CONFIGS = [(4, 8, False, False), (8, 8, False, False), (2, 8, True, False), (4, 8, False, True)]  # bits, spike, rotate
SPLITS = [(bits, bits, False, rotate) for rotate in (False, True) for bits in range(4, 9)]
SWEEP_ELEMENTS = (2048, 4096, 8192, 16384)
SWEEP_WARPS = (2, 4, 8)
SWEEP_PER_THREAD_WARPS = (1, 2, 4, 8)


def _gbps(nbytes: int, ms: float) -> float:
    return nbytes / ms / 1e6


def load_kernels(path: str):
    """A triton_kernels.py from elsewhere, imported as a sibling of the current one (its relative imports resolve)."""
    spec = importlib.util.spec_from_file_location("flashcomm_compile.kernels.baseline_kernels", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _stages(x: torch.Tensor, reduce_bits: int, gather_bits: int, spike: bool, rotate: bool,
            triton_kernels=triton_kernels) -> list[tuple[str, object, int]]:
    """(kernel name, call, bytes read + written) for the three kernels of one config."""
    layout = PayloadLayout(x.numel(), WORLD, reduce_bits, 128, spike, rotate)
    out_layout = layout.with_bits(gather_bits)
    payload = triton_kernels.quantize(x, layout)
    reduced = triton_kernels.dequant_sum_requant(payload, layout, gather_bits)
    gathered = reduced.repeat(WORLD, 1)
    return [
        ("quantize", lambda: triton_kernels.quantize(x, layout), x.nbytes + payload.nbytes),
        ("dequant_sum_requant", lambda: triton_kernels.dequant_sum_requant(payload, layout, gather_bits),
         payload.nbytes + reduced.nbytes),
        ("dequantize", lambda: triton_kernels.dequantize(gathered, out_layout, x.dtype, x.shape),
         gathered.nbytes + x.nbytes),
    ]


def _time(fn) -> float:
    """GPU time in ms, median, from calls replayed in a CUDA graph: timed one launch at a time, these kernels measure
    the CPU's launch overhead (about 140 us here) rather than their own work."""
    return do_bench_cudagraph(fn, rep=100, return_mode="median")


def each_launch(kernel: str, per_thread: bool = False):
    """Every candidate launch of `kernel` (with `per_thread`: of its one-group-per-thread launch, rotated), as a row
    to fill, with LAUNCH[kernel] set to it while the caller times it; the launch in use before is put back
    afterwards, also on error."""
    chosen = LAUNCH[kernel]
    try:
        if per_thread:
            for warps in SWEEP_PER_THREAD_WARPS:
                LAUNCH[kernel] = dataclasses.replace(chosen, per_thread_warps=warps)
                yield dict(kernel=kernel, per_thread_warps=warps)
        else:
            for elements, warps in itertools.product(SWEEP_ELEMENTS, SWEEP_WARPS):
                LAUNCH[kernel] = dataclasses.replace(chosen, elements=elements, warps=warps)
                yield dict(kernel=kernel, elements=elements, warps=warps)
    finally:
        LAUNCH[kernel] = chosen


def sweep(x: torch.Tensor, copy_gbps: float) -> list[dict]:
    """Every launch of each kernel, plain and (for the kernels rotation changes) rotated."""
    rows = []
    stages = [(name, fn, nbytes, rotate) for rotate in (False, True)
              for name, fn, nbytes in _stages(x, 4, 8, False, rotate)
              if not (rotate and name == "dequant_sum_requant")]
    for name, fn, nbytes, rotate in stages:
        for row in each_launch(name, per_thread=rotate):
            row["rotation"] = "hadamard" if rotate else "none"
            rows.append(row)
            try:
                ms = _time(fn)
            except Exception as e:  # noqa: BLE001 - e.g. out of resources for a large tile: reported, skipped
                row["error"] = type(e).__name__
                continue
            gbps = _gbps(nbytes, ms)
            row.update(ms=ms, GBps=gbps, of_copy=gbps / copy_gbps)
    return rows


def fastest(sweep_rows: list[dict]) -> str:
    """The fastest launch of each kernel, in FLASHCOMM_LAUNCH's syntax: elements x warps from the plain rows, then
    the one-group-per-thread warps from the rotated rows where the kernel has any."""
    best = {}
    for row in (row for row in sweep_rows if "ms" in row):
        key = (row["kernel"], row["rotation"])
        if key not in best or row["ms"] < best[key]["ms"]:
            best[key] = row
    items = []
    for (name, rotation), row in best.items():
        if rotation == "none":
            rotated = best.get((name, "hadamard"))
            per_thread = f"x{rotated['per_thread_warps']}" if rotated else ""
            items.append(f"{name}={row['elements']}x{row['warps']}{per_thread}")
    return ",".join(items)


def split_ratios(rows: list[dict]) -> list[dict]:
    """Each 5-, 6- and 7-bit kernel's time over the slower of the 4- and 8-bit kernels of its family (plain or
    rotated), from the current version's rows of the equal splits."""
    times = {(row["config"], row["kernel"]): row["ms"] for row in rows if row.get("version") == "current"}
    ratios = []
    for rotation in ("", " hadamard"):
        for bits in (5, 6, 7):
            for kernel in ("quantize", "dequant_sum_requant", "dequantize"):
                between = max(times[(f"INT{b}/INT{b}{rotation}", kernel)] for b in (4, 8))
                ms = times[(f"INT{bits}/INT{bits}{rotation}", kernel)]
                ratios.append(dict(config=f"INT{bits}/INT{bits}{rotation}", kernel=kernel, ms=ms,
                                   of_slower_neighbour=ms / between))
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--baseline", help="another triton_kernels.py to time beside the current one")
    parser.add_argument("--splits", action="store_true", help="the equal splits INT4/INT4 .. INT8/INT8 too")
    args = parser.parse_args()
    x = torch.randn(NUMEL, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    copy_ms = _time(lambda: y.copy_(x))
    copy_gbps = _gbps(2 * x.nbytes, copy_ms)
    rows = [dict(kernel="copy (d2d)", config="", ms=copy_ms, GBps=copy_gbps, of_copy=1.0)]
    versions = {"current": triton_kernels}
    if args.baseline:
        versions["baseline"] = load_kernels(args.baseline)
    configs = CONFIGS + [split for split in SPLITS if split not in CONFIGS] if args.splits else CONFIGS
    for reduce_bits, gather_bits, spike, rotate in configs:
        label = f"INT{reduce_bits}/INT{gather_bits}{'+spike' if spike else ''}{' hadamard' if rotate else ''}"
        for version, module in versions.items():
            try:
                stages = _stages(x, reduce_bits, gather_bits, spike, rotate, module)
            except Exception as e:  # noqa: BLE001 - a baseline older than the config (rotation, bit widths)
                print(f"{version} cannot run {label}: {type(e).__name__}")
                continue
            for name, fn, nbytes in stages:
                ms = _time(fn)
                gbps = _gbps(nbytes, ms)
                rows.append(dict(kernel=name, config=label, version=version, ms=ms, GBps=gbps,
                                 of_copy=gbps / copy_gbps))
    env = environment()
    launch = {name: vars(launch) for name, launch in LAUNCH.items()}
    print(f"kernel bandwidth, 64 MB bf16, W={WORLD}, group 128, {env['card']}, {env['date']}, launch {launch}")
    print_table(rows, ["kernel", "config", "version", "ms", "GBps", "of_copy"])
    result = dict(environment=env, numel=NUMEL, world_size=WORLD, launch=launch, rows=rows)
    if args.splits:
        result["split_ratios"] = split_ratios(rows)
        print("5-, 6- and 7-bit kernels against the slower of the 4- and 8-bit ones:")
        print_table(result["split_ratios"], ["config", "kernel", "ms", "of_slower_neighbour"])
    if args.sweep:
        result["sweep"] = sweep(x, copy_gbps)
        print("launch sweep, INT4/INT8 g128:")
        print_table(result["sweep"], ["kernel", "rotation", "elements", "warps", "per_thread_warps", "ms", "GBps",
                                      "of_copy", "error"])
        result["fastest"] = fastest(result["sweep"])
        print(f"FLASHCOMM_LAUNCH={result['fastest']}")
    card = env["card"].replace(" ", "_")
    write_json(f"kernel_bandwidth_{card}.json", result)


if __name__ == "__main__":
    main()
