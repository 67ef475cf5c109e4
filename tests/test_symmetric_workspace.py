"""The symmetric-memory workspace's bookkeeping, without GPUs: `_create` (the collective allocation) is replaced by
a plain tensor, so what is tested is when a workspace is made, how big, and what is kept alive."""

from __future__ import annotations

import threading

import pytest
import torch

from flashcomm_compile import symmetric


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
