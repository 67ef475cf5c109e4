"""The launch table that FLASHCOMM_LAUNCH overrides: parsed exactly, bad items named, used by the kernels."""

import pytest

from flashcomm_compile.kernels import triton_kernels
from flashcomm_compile.kernels.launches import LAUNCH, Launch, parse_launch


def test_parse_launch_reads_each_kernel():
    assert parse_launch("quantize=4096x8,dequantize=1024x2") == {"quantize": Launch(4096, 8),
                                                                 "dequantize": Launch(1024, 2)}
    assert parse_launch("") == {}


@pytest.mark.parametrize("spec", ["quantise=4096x8", "quantize=4096", "quantize=bigx8", "dequantize"])
def test_parse_launch_names_the_bad_item(spec):
    with pytest.raises(ValueError, match="FLASHCOMM_LAUNCH item"):
        parse_launch(spec)


def test_every_kernel_has_a_launch_that_holds_whole_groups():
    assert triton_kernels.LAUNCH is LAUNCH
    assert set(LAUNCH) == {"quantize", "dequant_sum_requant", "dequantize", "dequant_sum_requant_peers",
                           "dequantize_peers"}
    for launch in LAUNCH.values():
        assert launch.block_groups(1024) >= 1 and launch.block_groups(32) * 32 <= max(launch.elements, 32)
