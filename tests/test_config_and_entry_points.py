"""Config validation, the three ways in (backend by name, backend object, decorator) and the pass's cache key."""

from __future__ import annotations

import pytest
import torch

import flashcomm_compile
from flashcomm_compile import FlashCommConfig
from flashcomm_compile.passes.engine import FlashCommPass


@pytest.mark.parametrize("field, value", [
    ("reduce_bits", 1), ("gather_bits", 9), ("gather_bits", 16), ("reduce_bits", 6.0), ("group_size", 100),
    ("mode", "sometimes"), ("min_bytes", -1),
    ("spike_reserve", 1), ("backward", "yes"), ("reduce_bits", True), ("chunks", 0), ("chunks", 65), ("chunks", True),
    ("transport", "nvshmem"), ("transport", None), ("cuda_graphs", "yes"), ("cuda_graphs", 1),
    ("reduce_bits", 4.0), ("gather_bits", 8.0), ("group_size", 128.0), ("chunks", 2.0), ("min_bytes", 1.0),
    ("rotation", "random"), ("rotation", True), ("rotation", None),
    ("max_error", 0), ("max_error", -0.1), ("max_error", True), ("max_error", "0.02"), ("max_error", float("nan")),
    ("max_error", float("inf")), ("max_error", 1e-4),
])
def test_invalid_config_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FlashCommConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        flashcomm_compile.backend(**{field: value})


@pytest.mark.parametrize("bits", range(2, 9))
def test_every_bit_width_from_2_to_8_is_an_option(bits):
    config = FlashCommConfig(reduce_bits=bits, gather_bits=bits)
    assert config.variant == f"INT{bits}/INT{bits} g128"


def test_an_error_budget_picks_the_fewest_wire_bits_that_fit():
    """max_error chooses the bits: the split with the fewest wire bits predicted within it."""
    from flashcomm_compile.error_model import predicted_error, wire_bits

    for budget, group in ((0.02, 128), (0.05, 32), (0.1, 128), (0.3, 1024)):
        config = FlashCommConfig(max_error=budget, group_size=group)
        chosen = (config.reduce_bits, config.gather_bits)
        assert predicted_error(*chosen, group) <= budget
        cheaper = [(r, g) for r in range(2, 9) for g in range(2, 9)
                   if wire_bits(r, g, group) < wire_bits(*chosen, group)]
        assert all(predicted_error(r, g, group) > budget for r, g in cheaper)
    assert FlashCommConfig.from_options({"max_error": 0.02}).variant == "INT7/INT7 g128"
    with pytest.raises(ValueError, match="max_error chooses"):
        FlashCommConfig(max_error=0.02, reduce_bits=6, gather_bits=6)


def test_symm_mem_transport_runs_one_pipeline():
    with pytest.raises(ValueError, match="chunks must be 1 with transport 'symm_mem'"):
        FlashCommConfig(transport="symm_mem", chunks=4)
    assert FlashCommConfig(transport="symm_mem", rotation="none").variant == "INT4/INT8 g128 symm_mem"
    assert FlashCommConfig(transport="symm_mem", rotation="hadamard").variant == "INT4/INT8 g128 hadamard symm_mem"


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="reduce_bit"):
        FlashCommConfig.from_options({"reduce_bit": 4})


def test_defaults_follow_the_paper():
    config = FlashCommConfig()
    assert (config.reduce_bits, config.gather_bits, config.group_size, config.spike_reserve) == (4, 8, 128, False)
    assert config.rotation == "none" and config.variant == "INT4/INT8 g128"
    assert config.mode == "auto"


def test_uuid_covers_the_config(monkeypatch):
    base = FlashCommPass(FlashCommConfig(transport="nccl")).uuid()
    assert FlashCommPass(FlashCommConfig(transport="nccl")).uuid() == base
    for change in (dict(reduce_bits=8), dict(gather_bits=4), dict(group_size=64), dict(spike_reserve=True),
                   dict(mode="always"), dict(min_bytes=0), dict(backward=True), dict(chunks=2),
                   dict(transport="auto"), dict(cuda_graphs=True), dict(rotation="hadamard"),
                   dict(reduce_bits=6, gather_bits=6), dict(max_error=0.02)):
        assert FlashCommPass(FlashCommConfig(**{"transport": "nccl", **change})).uuid() != base, change
    # code rewritten for symm_mem holds this process's workspace addresses: never cached where it may be chosen
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert FlashCommPass(FlashCommConfig(transport="symm_mem")).uuid() is None
    assert FlashCommPass(FlashCommConfig()).uuid() is None


def test_uuid_covers_the_link_mode_launch_and_assumed_hardware(monkeypatch):
    from flashcomm_compile.cost_model import assume_hardware
    from flashcomm_compile.kernels.launches import LAUNCH, Launch

    nccl = FlashCommConfig(transport="nccl")
    base = FlashCommPass(nccl).uuid()
    with assume_hardware("NVIDIA H200|default"):
        assert FlashCommPass(nccl).uuid() != base
    monkeypatch.setitem(LAUNCH, "quantize", Launch(8192, 4))  # as FLASHCOMM_LAUNCH or a tuning run sets it
    launch = FlashCommPass(nccl).uuid()
    assert launch != base
    monkeypatch.setenv("NCCL_P2P_DISABLE", "1")
    assert FlashCommPass(nccl).uuid() not in (base, launch)


def _fn(x):
    return torch.sin(x) * 2


def test_backend_by_name_with_options_compiles():
    torch._dynamo.reset()
    compiled = torch.compile(_fn, backend="flashcomm", options={"reduce_bits": 8, "mode": "always"})
    x = torch.randn(8)
    assert torch.allclose(compiled(x), _fn(x))


def test_backend_by_name_takes_inductor_mode_in_options():
    torch._dynamo.reset()
    compiled = torch.compile(_fn, backend="flashcomm", options={"inductor_mode": "max-autotune-no-cudagraphs"})
    x = torch.randn(8)
    assert torch.allclose(compiled(x), _fn(x))
    with pytest.raises(ValueError, match="inductor_mode"):
        flashcomm_compile.dynamo_backend.flashcomm(None, [], mode="default",
                                                   options={"inductor_mode": "reduce-overhead"})


def test_backend_by_name_rejects_bad_options_naming_them():
    torch._dynamo.reset()
    compiled = torch.compile(_fn, backend="flashcomm", options={"group_size": 7})
    with pytest.raises(Exception, match="group_size"):
        compiled(torch.randn(8))


def test_decorator_routes_mode_by_vocabulary():
    @flashcomm_compile.compile(reduce_bits=8, mode="always", dynamic=False)
    def f(x):
        return x + 1

    assert f.flashcomm_backend.config.mode == "always" and f.flashcomm_backend.inductor_mode is None
    assert torch.equal(f(torch.ones(3)), torch.full((3,), 2.0))

    g = flashcomm_compile.compile(lambda x: x * 3, mode="max-autotune-no-cudagraphs")
    assert g.flashcomm_backend.inductor_mode == "max-autotune-no-cudagraphs"
    assert g.flashcomm_backend.config.mode == "auto"
    with pytest.raises(ValueError, match="mode"):
        flashcomm_compile.compile(lambda x: x, mode="fast")

    both = flashcomm_compile.compile(lambda x: x, mode="always", inductor_mode="reduce-overhead")
    assert both.flashcomm_backend.config.mode == "always"
    assert both.flashcomm_backend.inductor_mode == "reduce-overhead"
    with pytest.raises(ValueError, match="inductor_mode"):
        flashcomm_compile.compile(lambda x: x, mode="reduce-overhead", inductor_mode="default")


def test_decorator_on_a_module_forward():
    class M(torch.nn.Module):
        @flashcomm_compile.compile(gather_bits=4)
        def forward(self, x):
            return x * 2

    assert torch.equal(M()(torch.ones(2)), torch.full((2,), 2.0))
