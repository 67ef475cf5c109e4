"""Inductor's analysis of flashcomm's Triton kernels, made once per kind of launch within a compile.

Inductor learns which arguments a user-defined Triton kernel writes from the kernel's TTIR, which it generates anew
for every launch it lowers (and functionalization once more for every trace): 0.1-0.3 s for each of flashcomm's
kernels, three a rewritten all-reduce, so most of the pass's cost on a 32-layer model (docs/perf-notes.md). The TTIR
generated for the analysis sees only the kernel, the dtype of each tensor argument and the value of each scalar (a
symbolic one as 2), so launches alike in those get the same answer. Other kernels are analysed as Inductor does.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import sympy
import torch

_OURS = "flashcomm_compile.kernels.triton_kernels"
# the analysis, (kernel, kwargs, tma_descriptor_metadata) -> its answer, as torch 2.13 and 2.11 name it
ANALYSES = ("identify_accessed_tensors", "identify_mutated_tensors")


@contextlib.contextmanager
def analysed_once():
    """Within this context, Inductor analyses each kind of launch of a flashcomm kernel once."""
    from torch._higher_order_ops import triton_kernel_wrap

    originals = {name: getattr(triton_kernel_wrap, name) for name in ANALYSES if hasattr(triton_kernel_wrap, name)}
    for name, original in originals.items():
        setattr(triton_kernel_wrap, name, _memoized(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(triton_kernel_wrap, name, original)


def _memoized(analysis):
    answers: dict[tuple, Any] = {}

    def analysed(kernel, kwargs, tma_descriptor_metadata):
        key = launch_kind(kernel, kwargs, tma_descriptor_metadata)
        if key is None:
            return analysis(kernel, kwargs, tma_descriptor_metadata)
        if key not in answers:
            answers[key] = analysis(kernel, kwargs, tma_descriptor_metadata)
        return copy.copy(answers[key])  # torch 2.11's answer is a list, its callers' to keep

    return analysed


def launch_kind(kernel, kwargs: dict[str, Any], tma_descriptor_metadata) -> tuple | None:
    """What the TTIR of a launch of one of flashcomm's kernels depends on; None for other kernels, or arguments
    this cannot tell apart."""
    if _function_of(kernel).__module__ != _OURS or tma_descriptor_metadata:
        return None
    kinds = []
    for name, value in sorted(kwargs.items()):
        if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool, sympy.Expr)):
            kinds.append((name, "symbolic"))
        elif isinstance(value, (bool, int, float, str, type(None))):
            kinds.append((name, type(value).__name__, value))
        elif isinstance(getattr(value, "dtype", None), torch.dtype):  # a fake tensor, or Inductor's TensorBox
            kinds.append((name, "tensor", value.dtype))
        else:
            return None
    return kernel, tuple(kinds)


def _function_of(kernel):
    """The Python function under an Autotuner and a JITFunction."""
    while hasattr(kernel, "fn"):
        kernel = kernel.fn
    return kernel
