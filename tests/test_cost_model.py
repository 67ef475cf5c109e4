"""The cost model's arithmetic and its lookup by hardware."""

from __future__ import annotations

import math

import pytest
import torch

from flashcomm_compile import FlashCommConfig, cost_model
from flashcomm_compile.cost_model import Line, Prediction


def test_threshold_is_where_flashcomm_is_predicted_safely_faster():
    p = Prediction("x", nccl=Line(100.0, 10.0), flashcomm=Line(200.0, 5.0))
    t = p.threshold_bytes
    assert p.flashcomm.predict_us(t) == pytest.approx(cost_model.SAFETY * p.nccl.predict_us(t))
    assert p.flashcomm.predict_us(t * 1.01) < cost_model.SAFETY * p.nccl.predict_us(t * 1.01)
    assert p.flashcomm.predict_us(t * 0.99) > cost_model.SAFETY * p.nccl.predict_us(t * 0.99)


def test_never_faster_when_its_bandwidth_is_not_better():
    assert math.isinf(Prediction("x", Line(100.0, 5.0), Line(50.0, 5.0)).threshold_bytes)


@pytest.mark.parametrize("world", [2, 4, 8])
def test_halves_are_predicted_from_the_all_reduce_by_the_traffic_they_move(world):
    """Ring all-reduce = reduce-scatter + all-gather: a reduce-scatter of n bytes moves what half an all-reduce of n
    does; an all-gather of n bytes a rank gathers W n, what half an all-reduce of W n does."""
    measured = Prediction("H|default|w", Line(30.0, 8.0), Line(40.0, 3.0), host_us=5.0)
    nbytes = 6e6
    scatter = cost_model.for_kind(measured, "reduce-scatter", world)
    gather = cost_model.for_kind(measured, "all-gather", world)
    for path in ("nccl", "flashcomm"):
        line = getattr(measured, path)
        assert getattr(scatter, path).predict_us(nbytes) == pytest.approx(line.predict_us(nbytes / 2))
        assert getattr(gather, path).predict_us(nbytes) == pytest.approx(line.predict_us(world * nbytes / 2))
    assert scatter.host_us == gather.host_us == 5.0
    assert "no reduce-scatter timed" in scatter.predicted and "no all-gather timed" in gather.predicted
    assert cost_model.for_kind(measured, "all-reduce", world) is measured
    assert cost_model.for_kind(None, "all-gather", world) is None


def test_lookup_by_card_link_world_and_variant(monkeypatch):
    table = {"cpu|default|w2": {"nccl": dict(latency_us=10.0, us_per_mb=2.0),
                                "INT4/INT8 g128": dict(latency_us=20.0, us_per_mb=1.0)}}
    monkeypatch.setattr(cost_model, "_table", lambda: table)
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    p = cost_model.predict(torch.device("cpu"), 2, FlashCommConfig(cuda_graphs=True, transport="nccl", rotation="none"))
    assert p is not None and p.flashcomm == Line(20.0, 1.0)
    assert cost_model.predict(torch.device("cpu"), 4, FlashCommConfig(transport="nccl", rotation="none")) is None
    assert cost_model.predict(torch.device("cpu"), 2, FlashCommConfig(transport="nccl", rotation="hadamard")) is None
    assert cost_model.predict(torch.device("cpu"), 2, FlashCommConfig(reduce_bits=8, transport="nccl",
                                                                      rotation="none")) is None
    monkeypatch.setenv("NCCL_P2P_DISABLE", "1")
    assert cost_model.predict(torch.device("cpu"), 2, FlashCommConfig(transport="nccl", rotation="none")) is None
    with pytest.raises(ValueError, match="chosen transport"):
        cost_model.predict(torch.device("cpu"), 2, FlashCommConfig(transport="auto"))


def test_without_cuda_graphs_a_rewrite_costs_host_time(monkeypatch):
    """Inductor's default mode launches each rewritten all-reduce's kernels and collectives from Python: what the
    NCCL transport adds to Inductor's own all-reduce is added to the flashcomm line, which moves the threshold up;
    CUDA graphs (Inductor's reduce-overhead, or the caller's) hide it. The symm_mem transport adds none."""
    from torch._inductor import config as inductor_config

    table = {"cpu|default|w2": {"nccl": dict(latency_us=10.0, us_per_mb=20.0),
                                "INT4/INT8 g128": dict(latency_us=30.0, us_per_mb=5.0),
                                "INT4/INT8 g128 symm_mem": dict(latency_us=20.0, us_per_mb=2.0)}}
    monkeypatch.setattr(cost_model, "_table", lambda: table)
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    cpu = torch.device("cpu")
    nccl = FlashCommConfig(transport="nccl")
    hidden = cost_model.predict(cpu, 2, FlashCommConfig(transport="nccl", cuda_graphs=True))
    counted = cost_model.predict(cpu, 2, FlashCommConfig(transport="nccl", cuda_graphs=False))
    assert hidden.host_us == 0 and counted.host_us == cost_model.HOST_US["nccl"] > 0
    assert counted.flashcomm == Line(30.0 + cost_model.HOST_US["nccl"], 5.0)
    assert counted.threshold_bytes > hidden.threshold_bytes
    with inductor_config.patch({"triton.cudagraphs": False}):
        assert cost_model.predict(cpu, 2, nccl) == counted
    with inductor_config.patch({"triton.cudagraphs": True}):
        assert cost_model.predict(cpu, 2, nccl) == hidden
    symm_mem = cost_model.predict(cpu, 2, FlashCommConfig(transport="symm_mem", cuda_graphs=False))
    assert symm_mem.host_us == 0 and symm_mem.flashcomm == Line(20.0, 2.0)


def test_shipped_table_has_measured_entries():
    table = cost_model._table()
    assert "NVIDIA H200|default|w2" in table and "NVIDIA H200|p2p-disabled|w2" in table


def test_a_predicted_line_says_so(monkeypatch):
    table = {"cpu|default|w2": {"nccl": dict(latency_us=10.0, us_per_mb=2.0),
                                "INT6/INT6 g128": dict(latency_us=20.0, us_per_mb=1.2, predicted="from kernels")}}
    monkeypatch.setattr(cost_model, "_table", lambda: table)
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    config = FlashCommConfig(reduce_bits=6, gather_bits=6, cuda_graphs=True, transport="nccl", rotation="none")
    p = cost_model.predict(torch.device("cpu"), 2, config)
    assert p.flashcomm == Line(20.0, 1.2) and p.predicted == "from kernels"


def test_shipped_table_predicts_every_new_split_where_int4_int8_was_measured():
    """Each entry with a measured INT4/INT8 line has predicted lines for the frontier's splits, marked, and no
    measured line was replaced."""
    for key, entry in cost_model._table().items():
        for transport in ("", " symm_mem"):
            if f"INT4/INT8 g128{transport}" not in entry:
                continue
            assert "predicted" not in entry[f"INT4/INT8 g128{transport}"], key
            for split in ("INT5/INT5", "INT6/INT6", "INT7/INT7", "INT5/INT6", "INT6/INT8"):
                for rotation in ("", " hadamard"):
                    assert "predicted" in entry[f"{split} g128{rotation}{transport}"], (key, split, rotation)
