"""The symmetric-memory collectives as Inductor compiles them, on one GPU: W = 1 over a workspace of this process
(`benchmarks.host_cost.LocalWorkspace`; its barriers wait for this rank alone). The generated code must launch the
collective's kernels and nothing else: no copy of the input, which Inductor adds wherever torch's analysis takes a
kernel argument for written, and no barrier kernel. Captured in a CUDA graph, a replay gives what an eager call on
the new input gives. The multi-GPU tests check the bytes against the NCCL transport."""

from __future__ import annotations

import re

import pytest
import torch

from flashcomm_compile.config import FlashCommConfig
from flashcomm_compile.pipeline import SymmetricAllGather, SymmetricReduceScatter

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _workspace(config: FlashCommConfig, numel: int):
    from benchmarks.host_cost import LocalWorkspace

    return LocalWorkspace.for_all_reduces(numel, [config], torch.device("cuda"))


def _collectives(config: FlashCommConfig, workspace) -> dict:
    """Each kind over the workspace, W = 1, and the kernels its compiled code must launch."""
    address = workspace.table.data_ptr()
    return {"all-reduce": (workspace.pipeline(config),
                           ["dequant_sum_requant_peers_kernel", "dequantize_peers_kernel", "quantize_symm_kernel"]),
            "reduce-scatter": (SymmetricReduceScatter(config, 1, address, 0),
                               ["dequant_sum_peers_kernel", "quantize_symm_kernel"]),
            "all-gather": (SymmetricAllGather(config, 1, address, 0),
                           ["dequantize_peers_kernel", "quantize_symm_kernel"])}


@pytest.mark.parametrize("kind", ["all-reduce", "reduce-scatter", "all-gather"])
@pytest.mark.parametrize("rotation", ["none", "hadamard"])
@pytest.mark.parametrize("reduce_bits, gather_bits", [(4, 8), (6, 6), (5, 7)])
def test_compiled_collective_is_its_kernels_and_the_eager_bytes(kind, rotation, reduce_bits, gather_bits):
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import run_and_get_code

    config = FlashCommConfig(reduce_bits=reduce_bits, gather_bits=gather_bits, group_size=128, rotation=rotation,
                             transport="symm_mem")
    x = torch.randn(1000, 4096, device="cuda", dtype=torch.bfloat16)
    workspace = _workspace(config, x.numel())
    collective, kernels = _collectives(config, workspace)[kind]
    eager = collective(x)[0]
    with inductor_config.patch(fx_graph_cache=False):
        out, code = run_and_get_code(torch.compile(lambda t: collective(t)[0]), x)
    code = "\n".join(code)
    launched = sorted(re.sub(r"_\d+$", "", name) for name in re.findall(r"(\w+)\.run\(", code))
    assert launched == kernels, code
    assert "clone" not in code and "copy_" not in code, code
    assert torch.equal(out, eager)
    assert workspace.table[2:].count_nonzero() == 0 and workspace.pad.count_nonzero() == 0


@pytest.mark.parametrize("kind", ["all-reduce", "reduce-scatter", "all-gather"])
def test_one_dynamic_compile_serves_every_size(kind):
    """Compiled with a symbolic number of rows (sizes whose chunks need padding too): one compile, the eager bytes
    at each size."""
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx

    config = FlashCommConfig(reduce_bits=4, gather_bits=8, group_size=128, rotation="hadamard", transport="symm_mem")
    workspace = _workspace(config, 3000 * 4160)
    collective, _ = _collectives(config, workspace)[kind]
    compiles = []

    def inductor(gm, example_inputs):
        compiles.append(gm)
        return compile_fx(gm, example_inputs)

    compiled = torch.compile(lambda t: collective(t)[0], backend=inductor, dynamic=True)
    with inductor_config.patch(fx_graph_cache=False):
        for rows in (64, 3000, 7):  # 4160 values a row: 32.5 groups, odd row counts pad the last chunk
            x = torch.randn(rows, 4160, device="cuda", dtype=torch.bfloat16)
            assert torch.equal(compiled(x), collective(x)[0]), rows
    assert len(compiles) == 1


@pytest.mark.parametrize("kind", ["all-reduce", "reduce-scatter", "all-gather"])
def test_a_cuda_graph_replays_the_collective_on_new_inputs(kind):
    """Two collectives of the kind, ordered by their tokens, captured once and replayed on fresh inputs, against eager
    calls (their barriers on device: nothing of the host is needed between them)."""
    config = FlashCommConfig(reduce_bits=4, gather_bits=8, group_size=128, transport="symm_mem")
    x = torch.randn(512, 4096 + 64, device="cuda", dtype=torch.bfloat16)
    workspace = _workspace(config, x.numel())
    collective, _ = _collectives(config, workspace)[kind]

    def twice(t):
        first, token = collective(t)
        return collective(first * 0.5, token)[0]

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        twice(x)  # warm-up: Triton compiles outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = twice(x)
    for seed in range(3):
        x.copy_(torch.randn(x.shape, device="cuda", dtype=x.dtype, generator=torch.Generator("cuda").manual_seed(seed)))
        graph.replay()
        assert torch.equal(out, twice(x))
    assert workspace.table[2:].count_nonzero() == 0 and workspace.pad.count_nonzero() == 0
