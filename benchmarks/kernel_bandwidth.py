"""Bandwidth of the quantize / dequantize-sum-requantize / dequantize kernels next to a device-to-device copy, on one
GPU, at 64 MB of bf16 (counting bytes read plus bytes written, as the copy is counted).

    PYTHONPATH=. python benchmarks/kernel_bandwidth.py
"""

from __future__ import annotations

import torch
from triton.testing import do_bench

from flashcomm_compile.kernels import triton_kernels
from flashcomm_compile.kernels.layout import PayloadLayout
from benchmarks.common import environment, print_table, write_json

NUMEL = 32 * 2**20  # 64 MB of bf16
WORLD = 2
CONFIGS = [(4, 8, False), (8, 8, False), (2, 8, True)]


def _gbps(nbytes: int, ms: float) -> float:
    return nbytes / ms / 1e6


def main() -> None:
    x = torch.randn(NUMEL, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    copy_ms = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    copy_bytes = 2 * x.numel() * x.element_size()
    rows = [dict(kernel="copy (d2d)", config="", ms=copy_ms, GBps=_gbps(copy_bytes, copy_ms), of_copy=1.0)]
    for reduce_bits, gather_bits, spike in CONFIGS:
        layout = PayloadLayout(NUMEL, WORLD, reduce_bits, 128, spike)
        out_layout = layout.with_bits(gather_bits)
        payload = triton_kernels.quantize(x, layout)
        reduced = triton_kernels.dequant_sum_requant(payload, layout, gather_bits)
        gathered = reduced.repeat(WORLD, 1)
        label = f"INT{reduce_bits}/INT{gather_bits}{'+spike' if spike else ''}"
        stages = [
            ("quantize", lambda: triton_kernels.quantize(x, layout), x.nbytes + payload.nbytes),
            ("dequant-sum-requant", lambda: triton_kernels.dequant_sum_requant(payload, layout, gather_bits),
             payload.nbytes + reduced.nbytes),
            ("dequantize", lambda: triton_kernels.dequantize(gathered, out_layout, x.dtype, x.shape),
             gathered.nbytes + x.nbytes),
        ]
        for name, fn, nbytes in stages:
            ms = do_bench(fn, warmup=50, rep=300, return_mode="median")
            rows.append(dict(kernel=name, config=label, ms=ms, GBps=_gbps(nbytes, ms),
                             of_copy=_gbps(nbytes, ms) / rows[0]["GBps"]))
    env = environment()
    print(f"kernel bandwidth, 64 MB bf16, W={WORLD}, group 128, {env['card']}, {env['date']}")
    print_table(rows, ["kernel", "config", "ms", "GBps", "of_copy"])
    write_json("kernel_bandwidth.json", dict(environment=env, numel=NUMEL, world_size=WORLD, rows=rows))


if __name__ == "__main__":
    main()
