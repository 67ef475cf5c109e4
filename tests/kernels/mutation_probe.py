"""Prints, as JSON, which tensor arguments torch's analysis of user-defined Triton kernels takes each of the
pipeline's kernels to write. Run as its own process without TRITON_INTERPRET (under the interpreter the kernels are
not JIT functions): the analysis reads the kernels' TTIR, which Triton's CUDA front end builds without a GPU once
the active driver names a target."""

from __future__ import annotations

import json

import torch
import triton
from triton.backends.compiler import GPUTarget


class _Sm90:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def written(kernel, tensors: dict, scalars: dict) -> list[str]:
    from torch._higher_order_ops.triton_kernel_wrap import get_mutated_tensors, kernel_side_table

    kernel_idx = kernel_side_table.add_kernel(kernel)
    constants_idx = kernel_side_table.add_constant_args(scalars)
    return sorted(get_mutated_tensors(kernel_idx, constants_idx, tensors, {}))


def _report(k, bits: int, table: dict, values, token):
    """(kernel, the arguments it is seen to write) of each kernel at `bits`, rotated and plain."""
    quantize = dict(BITS=bits, G=128, SPIKE=False, BLOCK_G=32, numel=4096, total_groups=32, groups_per_chunk=16)
    dequantize = dict(BITS=bits, G=128, SPIKE=False, BLOCK_G=32, groups_per_chunk=16, WORLD=2)
    reduce = dict(IN_BITS=bits, OUT_BITS=bits, G=128, SPIKE=False, BLOCK_G=32, groups_per_chunk=16, WORLD=2)
    for rotate in (False, True):
        shape = dict(ROTATE=rotate, PER_THREAD=rotate)
        yield f"quantize rotate={rotate}", written(
            k.quantize_kernel, dict(x=values(), payload=torch.empty(4096, dtype=torch.uint8)),
            dict(quantize, chunk_bytes=2048, **shape))
        yield f"quantize_symm rotate={rotate}", written(
            k.quantize_symm_kernel, dict(x=values(), after=values(), token=token()),
            dict(quantize, **table, rank=0, stride16=128, WORLD=2, BARRIER=True, **shape))
        yield f"dequantize rotate={rotate}", written(
            k.dequantize_kernel, dict(payload=torch.empty(4096, dtype=torch.uint8), out=values()),
            dict(dequantize, numel=4096, chunk_bytes=2048, **shape))
        for barrier in (False, True):
            yield f"dequantize_peers rotate={rotate} barrier={barrier}", written(
                k.dequantize_peers_kernel, dict(out=values(), token=token()),
                dict(dequantize, **table, numel=4096, in_offset=0, rank=0, BARRIER=barrier, **shape))
        yield f"dequant_sum_peers rotate={rotate}", written(
            k.dequant_sum_peers_kernel, dict(out=values(), token=token()),
            dict(dequantize, **table, in_offset=0, rank=0, width=2048, ROTATE=rotate, PER_THREAD=False, BARRIER=True))
    yield "dequant_sum_requant", written(
        k.dequant_sum_requant_kernel, dict(received=torch.empty(4096, dtype=torch.uint8),
                                           out=torch.empty(4096, dtype=torch.uint8)),
        dict(reduce, in_chunk_bytes=2048))
    yield "dequant_sum_requant_peers", written(
        k.dequant_sum_requant_peers_kernel, dict(token=token()),
        dict(reduce, **table, in_offset=0, out_offset=4096, rank=0, BARRIER=True))


def main() -> None:
    if not torch.cuda.is_available():
        triton.runtime.driver.set_active(_Sm90())
    from flashcomm_compile.kernels import triton_kernels as k

    def values():
        return torch.empty(4096, dtype=torch.bfloat16)

    def token():
        return torch.empty(1, dtype=torch.int32)

    table = dict(table_high=1 << 20, table_low=4096)
    report = {}
    for bits in range(2, 9):  # every bit width's planes, also a check that each kernel builds at it
        report.update({f"{name} bits={bits}": mutated for name, mutated in _report(k, bits, table, values, token)})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
