"""Every Triton kernel against its torch reference: under TRITON_INTERPRET=1 on CPU, compiled on CUDA.

Under the interpreter the payload bytes must match exactly (both compute in float32 with the same operations). The
dequantized output must match exactly too, except where a backend rounds differently: Triton's interpreter truncates
float32 -> bfloat16 instead of rounding to nearest, and compiled CUDA code divides with an approximate division and
may contract code * scale + zero into one FMA. There the scales may differ in the last bit, a code by one at an
exact tie, the output by one unit in the last place; and the result must still lie within the analytic bound.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import assume, given

from flashcomm_compile.kernels import reference
from flashcomm_compile.kernels.bounds import pipeline_error_bound
from flashcomm_compile.kernels.layout import PayloadLayout
from flashcomm_compile.pipeline import simulate, simulate_halves
from tests.strategies import (HALVES_CASES, PIPELINE_CASES, halves_config, halves_inputs, interpreter_misreads,
                              make_activation)

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                                 reason="Triton on CPU needs TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


def _triton():
    from flashcomm_compile.kernels import triton_kernels

    return triton_kernels


def ulp_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, or one unit in the last place apart (NaN matching NaN)."""
    a64, b64 = a.double(), b.double()
    both_nan = a64.isnan() & b64.isnan()
    ulp = torch.finfo(a.dtype).eps * torch.maximum(a64.abs(), b64.abs()) + torch.finfo(a.dtype).tiny
    return bool(torch.all(both_nan | (a64 == b64) | ((a64 - b64).abs() <= ulp)))


def _same_payload(a: torch.Tensor, b: torch.Tensor, layout, device: str) -> bool:
    if device == "cpu":
        return torch.equal(a, b)
    got, want = reference.decode(a.cpu(), layout), reference.decode(b, layout)
    close = all(torch.allclose(getattr(got, f), getattr(want, f), rtol=1e-6, atol=0, equal_nan=True)
                for f in ("scale", "zero"))
    finite = torch.isfinite(want.scale)
    codes_close = bool(((got.codes - want.codes).abs()[finite] <= 1).all())
    spikes_equal = got.hi is None or (torch.equal(got.hi_index, want.hi_index)
                                      and torch.equal(got.lo_index, want.lo_index))
    return close and codes_close and spikes_equal


@pytest.mark.parametrize("device", DEVICES)
@given(**PIPELINE_CASES)
def test_kernels_match_reference_and_bound(device, world, dtype, distribution, numel, seed, reduce_bits,
                                           gather_bits, group_size, spike, rotate):
    assume(not interpreter_misreads(device, dtype, distribution))
    inputs = [make_activation(numel, dtype, distribution, seed + r, world) for r in range(world)]
    expected, layout = simulate(reference, inputs, reduce_bits, gather_bits, group_size, spike, rotate)
    got, _ = simulate(_triton(), [x.to(device) for x in inputs], reduce_bits, gather_bits, group_size, spike, rotate)
    for sent, ref in zip(got.sent, expected.sent):
        assert _same_payload(sent, ref, layout, device)
    out = got.outputs[0].cpu()
    for other in got.outputs[1:]:
        assert torch.equal(other.cpu().view(torch.uint8), out.view(torch.uint8))
    exact = torch.stack([x.double() for x in inputs]).sum(0)
    bound = pipeline_error_bound([s.cpu() for s in got.sent], got.gathered.cpu(), layout, gather_bits, dtype, out)
    assert torch.all((out.double() - exact).abs() <= bound.double())
    if device == "cpu":
        assert ulp_close(out, expected.outputs[0])
    else:  # both lie within the bound of the exact sum, so within twice the bound of each other
        difference = (out.double() - expected.outputs[0].double()).abs()
        assert torch.all((difference <= 2 * bound.double()) | (out.isnan() & expected.outputs[0].isnan()))


def _finite_and_within_bound(device, inputs, reduce_bits, gather_bits, spike=False):
    """Both implementations' outputs, each checked finite and within the bound of the (finite) exact sum."""
    exact = torch.stack([x.double() for x in inputs]).sum(0)
    assert torch.all(exact.abs() <= torch.finfo(inputs[0].dtype).max)
    outputs = []
    for impl in (reference, _triton()):
        run, layout = simulate(impl, [x.to(device) for x in inputs], reduce_bits, gather_bits, 32, spike)
        out = run.outputs[0].cpu()
        assert torch.isfinite(out).all(), impl.__name__
        bound = pipeline_error_bound([s.cpu() for s in run.sent], run.gathered.cpu(), layout, gather_bits,
                                     inputs[0].dtype, out)
        assert torch.all((out.double() - exact).abs() <= bound.double()), impl.__name__
        outputs.append(out)
    return outputs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_sum_pushed_past_the_maximum_saturates(device, dtype):
    """Every exact sum is below the dtype's maximum M, but INT2 codes round rank 0's 0.76 M up to 0.9 M (its group's
    levels are 0, 0.3, 0.6, 0.9 M) while rank 1's 0.2 M is exact: the reduced value is 1.1 M (beyond float32's range
    for float32 and bfloat16 inputs). It comes back as M, within the bound, not as inf."""
    top = torch.finfo(dtype).max
    rank0, rank1 = torch.zeros(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64)
    rank0[1], rank0[2], rank1[1], rank1[3] = 0.76 * top, 0.9 * top, 0.2 * top, 0.3 * top
    for out in _finite_and_within_bound(device, [rank0.to(dtype), rank1.to(dtype)], 2, 2):
        assert out[1] == top


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("spike", [False, True])
def test_groups_spanning_the_whole_float32_range_stay_finite(device, dtype, bits, spike):
    """Each of rank 0's groups holds values of both signs up to 0.99 M (M: the dtype's maximum), so x - zero and
    code * scale exceed float32's range; rank 1's values are small. Every value comes back finite and within the
    bound."""
    top = torch.finfo(dtype).max
    signs = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(48)
    rank0 = signs * torch.linspace(0.01 * top, 0.99 * top, 96, dtype=torch.float64)
    rank1 = torch.linspace(-1.0, 1.0, 96, dtype=torch.float64)
    _finite_and_within_bound(device, [rank0.to(dtype), rank1.to(dtype)], bits, bits, spike)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("rotate", [False, True])
def test_kernels_keep_non_finite_non_finite(device, bad, rotate):
    """A non-finite input never comes back finite; rotated, it spreads over its group, which comes back all NaN."""
    inputs = [torch.randn(3000), torch.randn(3000)]
    inputs[1][1234] = bad
    got, _ = simulate(_triton(), [x.to(device) for x in inputs], 4, 8, 128, True, rotate)
    out = got.outputs[0].cpu()
    value = out[1234].item()
    assert value != value or abs(value) == float("inf")
    if rotate:
        group = 1234 // 128 * 128
        assert out[group : group + 128].isnan().all() and torch.isfinite(out[:group]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_codes_round_halfway_values_to_even(device):
    """A group holding 0 and 15 has scale 1 at 4 bits, so k + 0.5 lies exactly halfway between two codes: the
    kernel and the reference both code it to the even one (round-to-nearest-even of the exact product)."""
    halves = torch.arange(15, dtype=torch.float32) + 0.5
    group = torch.cat([torch.tensor([0.0, 15.0]), halves, torch.arange(1, 16, dtype=torch.float32)])
    x = group.repeat(2)  # one group for each of 2 ranks' chunks
    layout = PayloadLayout(x.numel(), 2, 4, 32, False)
    want = torch.tensor([round(v) for v in group.tolist()], dtype=torch.int32).repeat(2)
    for impl in (reference, _triton()):
        codes = reference.decode(impl.quantize(x.to(device), layout).cpu(), layout).codes.reshape(-1)
        assert torch.equal(codes, want), impl.__name__
    assert want[2:17].tolist() == [0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14]  # Python's round: ties to even


@pytest.mark.parametrize("device", DEVICES)
@given(**HALVES_CASES)
def test_sequence_parallel_halves_match_reference(device, world, rows, width, dtype, distribution, seed, reduce_bits,
                                                  gather_bits, group_size, spike, rotate):
    """The reduce-scatter's and the all-gather's kernel paths (one-chunk quantize, dequantize into float32 rows) on
    simulated ranks give the reference's values (the reference's bounds are tested on gloo ranks:
    tests/passes/test_sequence_parallel.py)."""
    assume(not interpreter_misreads(device, dtype, distribution))
    config = halves_config(reduce_bits, gather_bits, group_size, spike, rotate)
    inputs = halves_inputs(world, rows, width, dtype, distribution, seed)
    expected = simulate_halves(reference, inputs, config)
    got = simulate_halves(_triton(), [x.to(device) for x in inputs], config)
    # on a GPU a code may move by one at an exact tie: one step, at most 2 max|x| / (2^b - 1), in each rank's copy
    largest = world * max(x.double().abs().nan_to_num(posinf=0).max().item() for x in inputs)
    step = 2 * largest / ((1 << min(reduce_bits, gather_bits)) - 1)
    for want, have in zip((*expected[0], expected[1][0]), (*got[0], got[1][0])):
        have = have.cpu()
        assert have.shape == want.shape
        if device == "cpu":
            assert ulp_close(have, want)
        else:
            assert torch.allclose(have.double(), want.double(), rtol=1e-2, atol=(world + 1) * step, equal_nan=True)
