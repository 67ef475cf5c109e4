"""The symmetric-memory kernels, which reach every rank's buffer through a table of addresses, against the
all-to-all path's kernels: W simulated ranks in one process, each rank's "symmetric buffer" a tensor of this process
whose address goes into the table. Payloads, gathered chunks and outputs must be the same bytes, and every kernel
writes its token. On a GPU each simulated rank runs on a stream of its own with the barriers its kernels end in (a
barrier that let a rank through early, or never, fails or hangs here); under Triton's interpreter, which runs the
ranks one after another, without them (a rank would wait at its barrier for ranks not yet run)."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
import torch
from hypothesis import assume, given, settings

from flashcomm_compile.kernels import triton_kernels
from flashcomm_compile.kernels.address_table import address_table
from flashcomm_compile.kernels.layout import PayloadLayout
from flashcomm_compile.pipeline import (SymmetricAllGather, SymmetricReduceScatter, gather_layout, scatter_layout,
                                        simulate, simulate_halves)
from flashcomm_compile.symmetric import MAX_WORLD_SIZE, SymmetricLayout, workspace_bytes
from tests.kernels.test_triton_kernels import DEVICES, ulp_close
from tests.strategies import (HALVES_CASES, PIPELINE_CASES, halves_config, halves_inputs, interpreter_misreads,
                              make_activation)


class SimulatedRanks:
    """W ranks' symmetric buffers (filled with 0xAB), signal pads and address tables in this process, and on a GPU
    a stream each."""

    def __init__(self, world: int, nbytes: int, device):
        self.world, self.gpu = world, torch.device(device).type == "cuda"
        self.buffers = [torch.full((nbytes,), 0xAB, dtype=torch.uint8, device=device) for _ in range(world)]
        self.pads = [torch.zeros(MAX_WORLD_SIZE, dtype=torch.int32, device=device) for _ in range(world)]
        self.tables = [address_table([b.data_ptr() for b in self.buffers], [p.data_ptr() for p in self.pads], device)
                       for _ in range(world)]
        self.streams = [torch.cuda.Stream(device) for _ in range(world)] if self.gpu else []
        for stream in self.streams:
            stream.wait_stream(torch.cuda.current_stream(device))

    def addresses(self) -> list[int]:
        return [t.data_ptr() for t in self.tables]

    def run(self, *stages) -> list[list]:
        """Each stage (fn(rank)) on every rank, rank by rank, each rank's on its stream; every stage's results."""
        results = []
        for stage in stages:
            results.append([])
            for rank in range(self.world):
                with torch.cuda.stream(self.streams[rank]) if self.gpu else contextlib.nullcontext():
                    results[-1].append(stage(rank))
        for stream in self.streams:
            _finished(stream)
        return results

    def settled(self) -> bool:
        """Every barrier left its flags and counters at zero for the next launch."""
        return (all(p.count_nonzero() == 0 for p in self.pads)
                and all(t[2 * self.world:].count_nonzero() == 0 for t in self.tables))


# Under Triton's interpreter a NaN-propagating min/max (a custom combine) runs value by value in Python, about 13 s an
# example here; the arithmetic is test_triton_kernels', what is new here is the addressing: fewer examples on CPU.
INTERPRETED_EXAMPLES = 10


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=INTERPRETED_EXAMPLES if os.environ.get("TRITON_INTERPRET") == "1"
          else settings.default.max_examples)
@given(**PIPELINE_CASES)
def test_peer_kernels_give_the_all_to_all_paths_bytes(device, world, dtype, distribution, numel, seed, reduce_bits,
                                                      gather_bits, group_size, spike, rotate):
    assume(not interpreter_misreads(device, dtype, distribution))
    _check_peer_kernels(device, world, dtype, distribution, numel, seed, reduce_bits, gather_bits, group_size, spike,
                        rotate)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("world", [2, 3])
def test_barriers_count_every_program_of_a_large_launch(world):
    """Thousands of programs per kernel, more than the barrier's sub-counters (each then counts many programs, and
    one program completes each): the ranks still see each other's every chunk, and the counters end at zero."""
    _check_peer_kernels("cuda", world, torch.bfloat16, "outliers", 3_000_017, 5, 4, 8, 128, False, False)


def _check_peer_kernels(device, world, dtype, distribution, numel, seed, reduce_bits, gather_bits, group_size, spike,
                        rotate):
    inputs = [make_activation(numel, dtype, distribution, seed + r, world).to(device) for r in range(world)]
    expected, layout = simulate(triton_kernels, inputs, reduce_bits, gather_bits, group_size, spike, rotate)
    nbytes = workspace_bytes(layout, gather_bits)
    symmetric = SymmetricLayout(layout, gather_bits, nbytes // 2)
    ranks = SimulatedRanks(world, nbytes, device)
    tables, barrier = ranks.addresses(), ranks.gpu
    tokens = [torch.full((1,), 7, dtype=torch.int32, device=device) for _ in range(3 * world)]
    _, _, outputs = ranks.run(
        lambda r: triton_kernels.quantize_symm(inputs[r], tables[r], r, symmetric.stride, layout, tokens[r],
                                               tokens[r], barrier=barrier),
        lambda r: triton_kernels.dequant_sum_requant_peers(tables[r], r * symmetric.stride, symmetric.reduced_offset,
                                                           r, layout, gather_bits, tokens[world + r],
                                                           barrier=barrier),
        lambda r: triton_kernels.dequantize_peers(tables[r], symmetric.reduced_offset, symmetric.reduced,
                                                  inputs[r].dtype, inputs[r].shape, tokens[2 * world + r]))
    payloads = [symmetric.payload_in(b) for b in ranks.buffers]

    for payload, sent in zip(payloads, expected.sent):
        assert torch.equal(payload[:, :layout.chunk_bytes], sent)
    assert torch.equal(torch.cat([symmetric.reduced_in(b) for b in ranks.buffers]), expected.gathered)
    for out in outputs:
        assert torch.equal(out.view(torch.uint8), expected.outputs[0].view(torch.uint8))
    assert all(t.item() == 0 for t in tokens)
    assert ranks.settled()


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=INTERPRETED_EXAMPLES if os.environ.get("TRITON_INTERPRET") == "1"
          else settings.default.max_examples)
@given(**HALVES_CASES)
def test_peer_halves_give_the_all_to_all_halves_bytes(device, world, rows, width, dtype, distribution, seed,
                                                      reduce_bits, gather_bits, group_size, spike, rotate):
    """Sequence parallelism's reduce-scatter then all-gather over one workspace (SymmetricReduceScatter,
    SymmetricAllGather, their stages on each rank's stream) give the NCCL halves' bytes on every rank."""
    assume(not interpreter_misreads(device, dtype, distribution))
    _check_peer_halves(device, world, rows, width, dtype, distribution, seed, reduce_bits, gather_bits, group_size,
                       spike, rotate)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("world", [2, 4])
def test_halves_barriers_count_every_program_of_a_large_launch(world):
    _check_peer_halves("cuda", world, 1024, 4096 + 64, torch.bfloat16, "outliers", 3, 4, 8, 128, False, True)


def _check_peer_halves(device, world, rows, width, dtype, distribution, seed, reduce_bits, gather_bits, group_size,
                       spike, rotate):
    config = halves_config(reduce_bits, gather_bits, group_size, spike, rotate)
    inputs = [x.to(device) for x in halves_inputs(world, rows, width, dtype, distribution, seed)]
    scattered, gathered = simulate_halves(triton_kernels, inputs, config)
    nbytes = max(workspace_bytes(scatter_layout(inputs[0].numel(), world, config)),
                 workspace_bytes(gather_layout(inputs[0].numel(), config)))
    ranks = SimulatedRanks(world, nbytes, device)
    scatter = [SymmetricReduceScatter(config, world, t, r, ranks.gpu) for r, t in enumerate(ranks.addresses())]
    gather = [SymmetricAllGather(config, world, t, r, ranks.gpu) for r, t in enumerate(ranks.addresses())]
    tokens = [torch.full((1,), 7, dtype=torch.int32, device=device) for _ in range(4 * world)]
    _, got_scattered, _, got_gathered = ranks.run(
        lambda r: scatter[r].quantize(inputs[r], inputs[r], tokens[r]),
        lambda r: scatter[r].collect(inputs[r], tokens[world + r]),
        lambda r: gather[r].quantize(inputs[r], tokens[world + r], tokens[2 * world + r]),
        lambda r: gather[r].collect(inputs[r], tokens[3 * world + r]))

    for want, have in zip(gathered, got_gathered):
        assert have.shape == want.shape and torch.equal(have.view(torch.uint8), want.view(torch.uint8))
    for want, have in zip(scattered, got_scattered):
        # the sum's rounding into the dtype: torch's against the kernel's, which Triton's interpreter truncates
        assert have.shape == want.shape and (torch.equal(have.view(torch.uint8), want.view(torch.uint8))
                                             or not ranks.gpu and ulp_close(have, want))
    assert all(t.item() == 0 for t in tokens)
    assert ranks.settled()


def _finished(stream, seconds: float = 60.0) -> None:
    """Wait for the stream's kernels, failing (rather than hanging) when a barrier never opens."""
    done = stream.record_event()
    deadline = time.monotonic() + seconds
    while not done.query():
        assert time.monotonic() < deadline, "a barrier did not open within a minute: the ranks are stuck"
        time.sleep(0.001)
    torch.cuda.current_stream(stream.device).wait_stream(stream)


def test_symmetric_layout_aligns_every_chunk():
    payload = PayloadLayout(1000, 3, 2, 32, True)  # 28-byte groups: chunks not 16-aligned
    nbytes = workspace_bytes(payload, 4)
    layout = SymmetricLayout(payload, 4, nbytes // 2)
    assert layout.payload.chunk_bytes % 16 != 0
    assert layout.stride % 16 == 0 and layout.stride >= layout.payload.chunk_bytes
    assert 3 * layout.stride <= layout.reduced_offset and nbytes % 32 == 0
    assert nbytes - layout.reduced_offset >= layout.reduced.chunk_bytes
