"""Inductor's analysis of flashcomm's kernels, made once per kind of launch: what tells two launches apart (CPU),
and that a compile of several alike all-reduces analyses each kernel once, with the same graph as without (GPU)."""

from __future__ import annotations

import collections
import contextlib
import re

import pytest
import sympy
import torch
import triton
import triton.language as tl

from flashcomm_compile.kernels import triton_kernels
from flashcomm_compile.kernels.analysis import ANALYSES, launch_kind


@triton.jit
def _foreign_kernel(x, BLOCK: tl.constexpr):
    pass


def _launch(**changes):
    args = dict(x=torch.empty(8, dtype=torch.bfloat16), payload=torch.empty(4, dtype=torch.uint8), numel=100,
                BITS=4, SPIKE=False)
    return launch_kind(triton_kernels.quantize_kernel, {**args, **changes}, {})


def test_launches_differ_by_dtype_and_scalar_values_not_by_sizes():
    assert _launch() == _launch(x=torch.empty(64, 3, dtype=torch.bfloat16))
    assert _launch() != _launch(x=torch.empty(8, dtype=torch.float16))
    assert _launch() != _launch(BITS=6) and _launch() != _launch(numel=1)
    assert _launch(SPIKE=True) != _launch(SPIKE=1)  # equal in Python, not to Triton's specialisation
    assert _launch(numel=sympy.Symbol("s0")) == _launch(numel=sympy.Symbol("s1") * 4)  # the TTIR sees 2 for both
    assert _launch(numel=sympy.Symbol("s0")) != _launch()


def test_other_kernels_and_unknown_arguments_are_left_to_inductor():
    assert launch_kind(_foreign_kernel, {"x": torch.empty(2), "BLOCK": 4}, {}) is None
    assert _launch(numel=object()) is None
    assert launch_kind(triton_kernels.quantize_kernel, {"x": torch.empty(2)}, {"x": ("stable", ([8],))}) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_alike_all_reduces_analyse_each_kernel_once(monkeypatch):
    """Four all-reduces of one shape, compiled on a fake group of 2: each of the three kernels analysed at most
    twice, not once per launch; the generated code is the same as with Inductor's own analysis."""
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol
    from torch._higher_order_ops import triton_kernel_wrap
    from torch._inductor.utils import run_and_get_code

    import flashcomm_compile
    from flashcomm_compile.inspection import fake_process_group

    analysed = []
    name = next(n for n in ANALYSES if hasattr(triton_kernel_wrap, n))  # the one this torch has
    original = getattr(triton_kernel_wrap, name)
    monkeypatch.setattr(triton_kernel_wrap, name,
                        lambda kernel, *args: analysed.append(kernel.fn.__name__) or original(kernel, *args))

    def f(x):
        for _ in range(4):
            x = funcol.all_reduce(x, "sum", dist.group.WORLD) * 0.5
        return x

    x = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16)
    codes = []
    with fake_process_group(2), torch._inductor.config.patch(fx_graph_cache=False):
        for memo in (True, False):
            torch._dynamo.reset()
            analysed.clear()
            backend = flashcomm_compile.backend(mode="always", transport="nccl")
            if not memo:
                monkeypatch.setattr(flashcomm_compile.dynamo_backend, "analysed_once", contextlib.nullcontext)
            _, code = run_and_get_code(torch.compile(f, backend=backend), x)
            codes.append(code)
            # with the memo: once when the first site is traced, once more when Inductor lowers its launches (their
            # scalars are then sympy numbers); without: at every launch Inductor lowers
            counts = collections.Counter(analysed)
            assert set(counts) == {"quantize_kernel", "dequant_sum_requant_kernel", "dequantize_kernel"}
            assert all(n <= 2 for n in counts.values()) if memo else all(n >= 4 for n in counts.values())
    assert _calls(codes[0][0]) == _calls(codes[1][0])


def _calls(code: str) -> collections.Counter:
    """The launches, ops, allocations and clones of a generated module (its text differs in paths and hashes)."""
    return collections.Counter(re.findall(r"\w+\.run\(|torch\.ops\.[\w.]+\(|empty_strided_cuda\(|\.clone\(", code))

