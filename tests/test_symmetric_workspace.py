"""The symmetric-memory workspace's bookkeeping, without GPUs: `_create` (the collective allocation) is replaced by
a plain tensor, so what is tested is when a workspace is made, how big, what is kept alive, and where in it each
collective's data lies."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashcomm_compile import symmetric
from tests.strategies import BITS, GROUP_SIZES


@pytest.fixture
def created(monkeypatch):
    sizes = []

    def create(group_name, device, size):
        sizes.append(size)
        return symmetric.Workspace(torch.empty(size, dtype=torch.uint8), handle=None, table=None)

    monkeypatch.setattr(symmetric, "_create", create)
    monkeypatch.setattr(symmetric, "_workspaces", {})
    monkeypatch.setattr(symmetric, "_outgrown", [])
    return sizes


def test_workspace_grows_by_powers_of_two_and_keeps_what_it_outgrew(created):
    cpu = torch.device("cpu")
    first = symmetric.workspace("g", cpu, 1000)
    assert created == [symmetric.MIN_WORKSPACE_BYTES]
    assert symmetric.workspace("g", cpu, symmetric.MIN_WORKSPACE_BYTES) is first
    grown = symmetric.workspace("g", cpu, 3 << 20)
    assert created == [1 << 20, 4 << 20] and grown.buffer.numel() == 4 << 20
    assert symmetric.workspace("g", cpu, 2 << 20) is grown
    assert symmetric._outgrown == [first]  # a peer may still read it
    symmetric.workspace("other group", cpu, 10)
    assert created == [1 << 20, 4 << 20, 1 << 20]


def test_growing_during_cuda_graph_capture_is_refused_with_the_sizes(created, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="needs a 5000-byte workspace, more than the 0 bytes allocated"):
        symmetric.workspace("g", torch.device("cuda", 0), 5000)
    assert created == []


def test_outside_graph_pools_runs_on_another_thread_and_reraises():
    caller = threading.get_ident()
    assert symmetric._outside_graph_pools(torch.device("cpu"), threading.get_ident) != caller

    def fail():
        raise ValueError("rendezvous failed")

    with pytest.raises(ValueError, match="rendezvous failed"):
        symmetric._outside_graph_pools(torch.device("cpu"), fail)


@settings(deadline=None)
@given(sites=st.lists(st.tuples(st.sampled_from(["all-reduce", "reduce-scatter", "all-gather"]),
                                st.integers(1, 3_000_000)), min_size=1, max_size=6),
       world=st.integers(2, 8), reduce_bits=st.sampled_from(BITS), gather_bits=st.sampled_from(BITS),
       group_size=st.sampled_from(GROUP_SIZES), spike=st.booleans())
def test_collectives_write_the_lower_half_first_and_an_all_reduce_reads_the_upper(sites, world, reduce_bits,
                                                                                   gather_bits, group_size, spike):
    """Whatever the kinds and sizes of consecutive collectives on one workspace: what each writes before its first
    barrier lies in the lower half of the buffer it was given, an all-reduce's requantized chunk (read after its last
    barrier) in the upper half. The order that makes safe is argued in symmetric.py."""
    from types import SimpleNamespace

    from flashcomm_compile.config import FlashCommConfig
    from flashcomm_compile.lowering import SYMMETRIC_PIPELINES
    from flashcomm_compile.pipeline import gather_layout, scatter_layout
    from flashcomm_compile.symmetric import chunk_stride

    config = FlashCommConfig(reduce_bits=reduce_bits, gather_bits=gather_bits, group_size=group_size,
                             spike_reserve=spike, transport="symm_mem")
    buffers = {}

    def create(group_name, device, size):
        table = torch.zeros(1, dtype=torch.int64)
        buffers[table.data_ptr()] = size
        return symmetric.Workspace(torch.empty(size, dtype=torch.uint8), SimpleNamespace(rank=0), table)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(symmetric, "_create", create)
        patch.setattr(symmetric, "_workspaces", {})
        patch.setattr(symmetric, "_outgrown", [])
        for kind, numel in sites:
            collective = SYMMETRIC_PIPELINES[kind].over("g", torch.device("cpu"), numel, world, config)
            size = buffers[collective.table_address]
            if kind == "all-reduce":
                layout = collective.layout(numel)
                first = world * layout.stride
                assert layout.reduced_offset == size // 2
                assert size // 2 + layout.reduced.chunk_bytes <= size
            elif kind == "reduce-scatter":
                first = world * chunk_stride(scatter_layout(numel, world, config))
            else:
                first = chunk_stride(gather_layout(numel, config))
            assert first <= size // 2 and (size // 2) % 16 == 0
