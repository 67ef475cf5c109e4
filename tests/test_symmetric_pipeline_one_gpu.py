"""The symmetric-memory pipeline as Inductor compiles it, on one GPU: W = 1 over a workspace of this process
(`benchmarks.host_cost.LocalWorkspace`; its barriers wait for this rank alone). The generated code must launch the
three kernels and nothing else: no copy of the input, which Inductor adds wherever torch's analysis takes a kernel
argument for written, and no barrier kernel. The multi-GPU tests check the bytes against the NCCL transport."""

from __future__ import annotations

import re

import pytest
import torch

from flashcomm_compile.config import FlashCommConfig
from flashcomm_compile.pipeline import SymmetricPipeline
from flashcomm_compile.symmetric import SymmetricLayout

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("rotation", ["none", "hadamard"])
@pytest.mark.parametrize("reduce_bits, gather_bits", [(4, 8), (6, 6), (5, 7)])
def test_compiled_pipeline_is_three_launches_and_the_eager_bytes(rotation, reduce_bits, gather_bits):
    from benchmarks.host_cost import LocalWorkspace
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import run_and_get_code

    config = FlashCommConfig(reduce_bits=reduce_bits, gather_bits=gather_bits, group_size=128, rotation=rotation,
                             transport="symm_mem")
    x = torch.randn(1000, 4096, device="cuda", dtype=torch.bfloat16)
    workspace = LocalWorkspace(SymmetricLayout.of(x.numel(), 1, config).total_bytes, x.device)
    pipeline = SymmetricPipeline(config, 1, workspace.table.data_ptr(), 0)
    eager = pipeline(x)[0]
    with inductor_config.patch(fx_graph_cache=False):
        out, code = run_and_get_code(torch.compile(lambda t: pipeline(t)[0]), x)
    code = "\n".join(code)
    launched = sorted(re.sub(r"_\d+$", "", name) for name in re.findall(r"(\w+)\.run\(", code))
    assert launched == ["dequant_sum_requant_peers_kernel", "dequantize_peers_kernel", "quantize_symm_kernel"], code
    assert "clone" not in code and "copy_" not in code, code
    assert torch.equal(out, eager)
    assert workspace.table[2:].count_nonzero() == 0 and workspace.pad.count_nonzero() == 0
