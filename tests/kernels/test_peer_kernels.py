"""The symmetric-memory kernels, which reach every rank's buffer through a table of addresses, against the
all-to-all path's kernels: W simulated ranks in one process, each rank's "symmetric buffer" a tensor of this process
whose address goes into the table. Payloads, gathered chunks and outputs must be the same bytes, and every kernel
writes its token. On a GPU each simulated rank runs on a stream of its own with the barriers the first two kernels
end in (a barrier that let a rank through early, or never, fails or hangs here); under Triton's interpreter, which
runs the ranks one after another, without them (a rank would wait at its barrier for ranks not yet run)."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
import torch
from hypothesis import assume, given, settings

from flashcomm_compile.kernels import triton_kernels
from flashcomm_compile.kernels.address_table import address_table
from flashcomm_compile.symmetric import MAX_WORLD_SIZE, SymmetricLayout
from flashcomm_compile.pipeline import simulate
from tests.kernels.test_triton_kernels import DEVICES
from tests.strategies import PIPELINE_CASES, interpreter_misreads, make_activation


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
    symmetric = SymmetricLayout(layout, gather_bits)
    buffers = [torch.full((symmetric.total_bytes,), 0xAB, dtype=torch.uint8, device=device) for _ in inputs]
    pads = [torch.zeros(MAX_WORLD_SIZE, dtype=torch.int32, device=device) for _ in inputs]
    tables = [address_table([b.data_ptr() for b in buffers], [p.data_ptr() for p in pads], device) for _ in inputs]
    tokens = [torch.full((1,), 7, dtype=torch.int32, device=device) for _ in range(3 * world)]
    outputs = _run_ranks(inputs, symmetric, gather_bits, [t.data_ptr() for t in tables], tokens)
    payloads = [symmetric.payload_in(b) for b in buffers]

    for payload, sent in zip(payloads, expected.sent):
        assert torch.equal(payload[:, :layout.chunk_bytes], sent)
    assert torch.equal(torch.cat([symmetric.reduced_in(b) for b in buffers]), expected.gathered)
    for out in outputs:
        assert torch.equal(out.view(torch.uint8), expected.outputs[0].view(torch.uint8))
    assert all(t.item() == 0 for t in tokens)
    assert all(p.count_nonzero() == 0 for p in pads) and all(t[2 * world:].count_nonzero() == 0 for t in tables)


def _run_ranks(inputs, symmetric: SymmetricLayout, gather_bits: int, tables: list[int], tokens) -> list[torch.Tensor]:
    """Each rank's three kernels on its own stream (GPU, with barriers) or one rank after another (interpreter)."""
    world, layout, device = len(inputs), symmetric.payload, inputs[0].device
    gpu = device.type == "cuda"
    streams = [torch.cuda.Stream(device) for _ in inputs] if gpu else []
    for stream in streams:
        stream.wait_stream(torch.cuda.current_stream(device))

    def on(rank):
        return torch.cuda.stream(streams[rank]) if gpu else contextlib.nullcontext()

    for rank, x in enumerate(inputs):
        with on(rank):
            triton_kernels.quantize_symm(x, tables[rank], rank, symmetric.stride, layout, tokens[rank], tokens[rank],
                                         barrier=gpu)
    for rank in range(world):
        with on(rank):
            triton_kernels.dequant_sum_requant_peers(tables[rank], rank * symmetric.stride, symmetric.reduced_offset,
                                                     rank, layout, gather_bits, tokens[world + rank], barrier=gpu)
    outputs = []
    for rank, x in enumerate(inputs):
        with on(rank):
            outputs.append(triton_kernels.dequantize_peers(tables[rank], symmetric.reduced_offset, symmetric.reduced,
                                                           x.dtype, x.shape, tokens[2 * world + rank]))
    for stream in streams:
        _finished(stream)
    return outputs


def _finished(stream, seconds: float = 60.0) -> None:
    """Wait for the stream's kernels, failing (rather than hanging) when a barrier never opens."""
    done = stream.record_event()
    deadline = time.monotonic() + seconds
    while not done.query():
        assert time.monotonic() < deadline, "a barrier did not open within a minute: the ranks are stuck"
        time.sleep(0.001)
    torch.cuda.current_stream(stream.device).wait_stream(stream)


def test_symmetric_layout_aligns_every_chunk():
    from flashcomm_compile.kernels.layout import PayloadLayout

    layout = SymmetricLayout(PayloadLayout(1000, 3, 2, 32, True), 4)  # 28-byte groups: chunks not 16-aligned
    assert layout.payload.chunk_bytes % 16 != 0
    assert layout.stride % 16 == 0 and layout.stride >= layout.payload.chunk_bytes
    assert layout.reduced_offset == 3 * layout.stride
    assert layout.total_bytes % 16 == 0
    assert layout.total_bytes - layout.reduced_offset >= layout.reduced.chunk_bytes
