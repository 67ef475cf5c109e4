"""The launch table that FLASHCOMM_LAUNCH overrides: parsed exactly, bad items named, used by the kernels, and
without effect on the bytes."""

import os

import pytest
import torch

from flashcomm_compile.kernels import reference, triton_kernels
from flashcomm_compile.kernels.launches import LAUNCH, Launch, parse_launch
from flashcomm_compile.pipeline import simulate
from tests.strategies import make_activation


def test_parse_launch_reads_each_kernel():
    """The one-group-per-thread warps are optional: without them the kernel keeps its default."""
    assert parse_launch("quantize=4096x8,dequantize=1024x2x8") == {
        "quantize": Launch(4096, 8, LAUNCH["quantize"].per_thread_warps), "dequantize": Launch(1024, 2, 8)}
    assert parse_launch("") == {}


def test_a_per_thread_launch_takes_its_own_warps():
    launch = Launch(8192, 8, 1)
    assert (launch.block_groups(128), launch.num_warps()) == (64, 8)
    assert (launch.block_groups(128, group_per_thread=True), launch.num_warps(group_per_thread=True)) == (32, 1)


@pytest.mark.parametrize("spec", ["quantise=4096x8", "quantize=4096", "quantize=bigx8", "dequantize",
                                  "quantize=4096x8x2x1", "quantize=4096x8x"])
def test_parse_launch_names_the_bad_item(spec):
    with pytest.raises(ValueError, match="FLASHCOMM_LAUNCH item"):
        parse_launch(spec)


def test_every_kernel_has_a_launch_that_holds_whole_groups():
    assert triton_kernels.LAUNCH is LAUNCH
    assert set(LAUNCH) == {"quantize", "dequant_sum_requant", "dequantize", "dequant_sum_requant_peers",
                           "dequantize_peers", "dequant_sum_peers"}
    for launch in LAUNCH.values():
        assert launch.block_groups(1024) >= 1 and launch.block_groups(32) * 32 <= max(launch.elements, 32)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton on CPU needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("launch, reduce_bits, group_size, spike, rotate", [
    (Launch(1024, 4), 4, 128, False, False), (Launch(8192, 8), 8, 32, False, False),
    (Launch(8192, 8, 1), 2, 32, True, False), (Launch(1024, 4, 1), 4, 128, False, True),
    (Launch(1024, 4, 4), 4, 128, True, True)])
def test_a_launch_changes_how_groups_are_split_not_the_bytes(monkeypatch, launch, reduce_bits, group_size, spike,
                                                             rotate):
    """Every kernel at another launch gives the bytes of the default launch (and of the reference, for the payloads;
    the interpreter's bf16 output rounding is checked in test_triton_kernels). 3000 values per rank leave a partial
    last program and a partial group."""
    inputs = [make_activation(3000, torch.bfloat16, "outliers", seed) for seed in range(2)]
    default, _ = simulate(triton_kernels, inputs, reduce_bits, 8, group_size, spike, rotate)
    for kernel in ("quantize", "dequant_sum_requant", "dequantize"):
        monkeypatch.setitem(LAUNCH, kernel, launch)
    got, _ = simulate(triton_kernels, inputs, reduce_bits, 8, group_size, spike, rotate)
    want, _ = simulate(reference, inputs, reduce_bits, 8, group_size, spike, rotate)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(got.sent, default.sent, want.sent))
    assert torch.equal(got.gathered, default.gathered) and torch.equal(got.gathered, want.gathered)
    assert torch.equal(got.outputs[0].view(torch.int16), default.outputs[0].view(torch.int16))
