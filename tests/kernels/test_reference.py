"""Properties of the quantization scheme itself (torch reference): error bounds, edge cases, bad parameters."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, strategies as st

from flashcomm_compile.kernels import reference
from flashcomm_compile.kernels.bounds import group_l2_error_bound, payload_error_bound, pipeline_error_bound
from flashcomm_compile.kernels.layout import PayloadLayout
from flashcomm_compile.pipeline import simulate
from tests.strategies import BITS, DISTRIBUTIONS, DTYPES, GROUP_SIZES, activations, make_activation


def _roundtrip(x: torch.Tensor, layout: PayloadLayout) -> torch.Tensor:
    payload = reference.quantize(x, layout)
    values = reference.dequantize_groups(reference.decode(payload, layout)).reshape(-1)
    return payload, values[: x.numel()]


@given(x=activations(), bits=st.sampled_from(BITS), group_size=st.sampled_from(GROUP_SIZES),
       world=st.integers(1, 8), spike=st.booleans())
def test_roundtrip_within_bound_from_stored_scales(x, bits, group_size, world, spike):
    layout = PayloadLayout(x.numel(), world, bits, group_size, spike)
    payload, values = _roundtrip(x, layout)
    assert payload.shape == (world, layout.chunk_bytes)
    error = (values.double() - x.double()).abs()
    bound = payload_error_bound(payload, layout)[: x.numel()].double()
    assert torch.all(error <= bound), f"max excess {(error - bound).max().item()}"


@given(x=activations(), bits=st.sampled_from(BITS), group_size=st.sampled_from(GROUP_SIZES))
def test_spike_reserving_keeps_each_group_extremes_exactly(x, bits, group_size):
    layout = PayloadLayout(x.numel(), 1, bits, group_size, True)
    _, values = _roundtrip(x, layout)
    padded = torch.zeros(layout.padded_numel, dtype=torch.float32)
    padded[: x.numel()] = x.float()
    groups = padded.reshape(-1, group_size)
    full = torch.zeros(layout.padded_numel)
    full[: x.numel()] = values
    full = full.reshape(-1, group_size)
    rows = torch.arange(groups.shape[0])
    for index in (groups.argmax(1), groups.argmin(1)):
        assert torch.equal(full[rows, index], groups[rows, index])


@given(world=st.integers(1, 8), dtype=st.sampled_from(DTYPES), distribution=st.sampled_from(DISTRIBUTIONS),
       numel=st.integers(1, 2500), seed=st.integers(0, 2**31 - 1), reduce_bits=st.sampled_from(BITS),
       gather_bits=st.sampled_from(BITS), group_size=st.sampled_from(GROUP_SIZES), spike=st.booleans(),
       rotate=st.booleans())
def test_pipeline_matches_float64_sum_within_summed_bound(world, dtype, distribution, numel, seed, reduce_bits,
                                                          gather_bits, group_size, spike, rotate):
    """Per element and per group (L2: with rotation, sqrt(G) times the rotated group's bound, far tighter than the
    per-element bound summed over the group)."""
    inputs = [make_activation(numel, dtype, distribution, seed + r, world) for r in range(world)]
    run, layout = simulate(reference, inputs, reduce_bits, gather_bits, group_size, spike, rotate)
    exact = torch.stack([x.double() for x in inputs]).sum(0)
    out = run.outputs[0]
    assert out.dtype == dtype and out.shape == inputs[0].shape
    bound = pipeline_error_bound(run.sent, run.gathered, layout, gather_bits, dtype, out).double()
    error = (out.double() - exact).abs()
    assert torch.all(error <= bound), f"max excess {(error - bound).max().item()}"
    padded = torch.zeros(layout.padded_numel, dtype=torch.float64)
    padded[:numel] = error.reshape(-1).nan_to_num(0.0)  # a NaN error is a non-finite group's, checked above
    l2 = group_l2_error_bound(run.sent, run.gathered, layout, gather_bits, dtype, out)
    assert torch.all(padded.reshape(-1, group_size).norm(dim=1) <= l2.nan_to_num(float("inf")))
    for other in run.outputs[1:]:
        assert torch.equal(other.view(torch.uint8) if dtype != torch.float32 else other, out.view(torch.uint8)
                           if dtype != torch.float32 else out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spike", [False, True])
def test_constant_and_zero_groups_are_exact(dtype, spike):
    x = torch.cat([torch.zeros(128), torch.full((128,), 3.25), torch.full((128,), -7.0)]).to(dtype)
    layout = PayloadLayout(x.numel(), 2, 2, 64, spike)
    _, values = _roundtrip(x, layout)
    assert torch.equal(values, x.float())


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("spike", [False, True])
def test_non_finite_input_never_becomes_finite(bad, spike):
    """A group holding inf or NaN comes back all NaN, spikes included; the other groups are untouched."""
    x = torch.randn(4 * 64)
    x[70] = bad
    layout = PayloadLayout(x.numel(), 2, 4, 64, spike)
    _, values = _roundtrip(x, layout)
    assert values[64:128].isnan().all()
    assert torch.isfinite(values[:64]).all() and torch.isfinite(values[128:]).all()


@pytest.mark.parametrize("world", [2, 3])
def test_non_finite_on_one_rank_is_non_finite_in_the_sum(world):
    inputs = [torch.randn(1000) for _ in range(world)]
    inputs[1][123] = float("inf")
    inputs[0][777] = float("nan")
    run, _ = simulate(reference, inputs, 4, 8, 128, False)
    out = run.outputs[0]
    assert out[123].isnan() and out[777].isnan()


@pytest.mark.parametrize("numel", [1, 127, 129, 1000])
def test_padding_never_reaches_the_output(numel):
    inputs = [torch.full((numel,), 2.0), torch.full((numel,), 3.0)]
    run, layout = simulate(reference, inputs, 4, 8, 128, False)
    assert layout.padded_numel % (2 * 128) == 0 and layout.padded_numel >= numel
    assert torch.equal(run.outputs[0], torch.full((numel,), 5.0))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(world_size=0, bits=4, group_size=128), "world_size"),
        (dict(world_size=65, bits=4, group_size=128), "world_size"),
        (dict(world_size=2, bits=1, group_size=128), "bits"),
        (dict(world_size=2, bits=9, group_size=128), "bits"),
        (dict(world_size=2, bits=6.0, group_size=128), "bits"),
        (dict(world_size=2, bits=True, group_size=128), "bits"),
        (dict(world_size=2, bits=16, group_size=128), "bits"),
        (dict(world_size=2, bits=4, group_size=100), "group_size"),
        (dict(world_size=2, bits=4, group_size=2048), "group_size"),
    ],
)
def test_invalid_parameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PayloadLayout(numel=10, spike_reserve=False, **kwargs)


def test_integer_input_is_rejected_naming_the_dtype():
    from flashcomm_compile.config import FlashCommConfig
    from flashcomm_compile.pipeline import NcclPipeline

    with pytest.raises(ValueError, match="dtype"):
        NcclPipeline(FlashCommConfig(), "0", 2).quantize(torch.arange(10))


@pytest.mark.parametrize("bits, group_size, spike, expected", [
    (4, 128, False, 64 + 8), (8, 128, False, 128 + 8), (2, 32, True, 8 + 20), (4, 1024, True, 512 + 20),
])
def test_payload_bytes_per_group(bits, group_size, spike, expected):
    layout = PayloadLayout(4 * group_size, 2, bits, group_size, spike)
    assert layout.chunk_bytes == 2 * expected


def _float32_nearest(exact: Fraction) -> float:
    """The float32 value nearest to `exact`, ties to even (finite results only)."""
    first = torch.tensor(float(exact), dtype=torch.float32)
    candidates = [torch.nextafter(first, torch.tensor(d, dtype=torch.float32)) for d in (-math.inf, math.inf)]
    finite = [c for c in (first, *candidates) if math.isfinite(c.item())]
    best = min(finite, key=lambda c: (abs(Fraction(c.item()) - exact),
                                                    c.view(torch.int32).item() & 1))
    return best.item()


_float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(code=st.integers(0, 255), scale=_float32s, zero=_float32s, tiny=st.integers(-60, 0))
def test_fma_rounds_once(code, scale, zero, tiny):
    """reference.fma is the kernels' FMA: a * b + c rounded once to float32, also where float64 would round the
    sum first to a float32 halfway point (a tiny addend beside a product with more than 24 bits)."""
    zero = zero * 2.0**tiny  # far smaller than the product often: the double-rounding case
    a, b, c = (torch.tensor([v], dtype=torch.float32) for v in (float(code), scale, zero))
    c_value = c.item()
    exact = Fraction(code) * Fraction(b.item()) + Fraction(c_value)
    assume(abs(exact) <= Fraction(reference.FLOAT32_MAX))
    assert reference.fma(a, b, c).item() == _float32_nearest(exact)


def test_fma_rounds_a_halfway_product_by_its_tiny_addend():
    """3 * (1 + 2^-23) lies halfway between two float32 values, 3 + 2^-22 and 3 + 2^-21; a tiny negative addend
    decides it downwards, where float64 would first round the sum to the halfway point and then to even, upwards."""
    a, b, c = (torch.tensor([v], dtype=torch.float32) for v in (3.0, 1 + 2.0**-23, -(2.0**-60)))
    twice_rounded = torch.tensor(3 + 3 * 2.0**-23 - 2.0**-60, dtype=torch.float64).float().item()
    assert twice_rounded == 3 + 2.0**-21
    exact = Fraction(3) * Fraction(b.item()) - Fraction(2.0**-60)
    assert reference.fma(a, b, c).item() == 3 + 2.0**-22 == _float32_nearest(exact)
