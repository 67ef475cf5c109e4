"""On 2 GPUs with NCCL: the compiled Triton pipeline against its eager kernels and the bound, the kernels launched by
Inductor's generated code (no flashcomm op behind the dispatcher), the symmetric-memory transport against the NCCL
transport (sites in any order, dynamic sizes, CUDA graphs), and the Llama TP model, all-reduce and
sequence-parallel, on both transports with Inductor's default mode and with CUDA graphs (mode="reduce-overhead")."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from flashcomm_compile.examples.llama import LlamaShape, build, shard_with_funcol
from flashcomm_compile.launch import run_ranks

pytestmark = [pytest.mark.gpu, pytest.mark.multigpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]


def _single_site(rank, world):
    import flashcomm_compile
    from flashcomm_compile.kernels import triton_kernels
    from flashcomm_compile.kernels.bounds import pipeline_error_bound
    from flashcomm_compile.pipeline import simulate

    torch.manual_seed(rank)
    x = torch.randn(4096, 4096 + 64, device="cuda", dtype=torch.bfloat16)
    from torch._inductor import config as inductor_config

    backend = flashcomm_compile.backend(mode="always", reduce_bits=4, gather_bits=8, rotation="none", transport="nccl")
    with inductor_config.patch(fx_graph_cache=False):
        out = torch.compile(lambda t: funcol.all_reduce(t, "sum", dist.group.WORLD), backend=backend)(x)
    inputs = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(inputs, x)
    run, layout = simulate(triton_kernels, inputs, 4, 8, 128, False)
    exact = torch.stack([t.double() for t in inputs]).sum(0)
    bound = pipeline_error_bound([s.cpu() for s in run.sent], run.gathered.cpu(), layout, 8, x.dtype,
                                 run.outputs[0].cpu()).reshape(x.shape)
    return dict(equal=torch.equal(out, run.outputs[0]), out=out.cpu(),
                within=bool(torch.all((out.double() - exact).abs().cpu() <= bound.double())),
                rewritten=len(backend.records[0].rewritten()))


def test_compiled_pipeline_on_nccl_matches_kernels_and_bound():
    ranks = run_ranks(2, _single_site, backend="nccl")
    for r in ranks:
        assert r["rewritten"] == 1 and r["equal"] and r["within"]
    assert torch.equal(ranks[0]["out"], ranks[1]["out"])


def _llama(rank, world, inductor_mode, transport):
    import flashcomm_compile

    shape = LlamaShape(dim=1024, n_heads=16, ffn_dim=2816, n_layers=4)
    model = shard_with_funcol(build(shape, dtype=torch.bfloat16, device="cuda"), rank, world, dist.group.WORLD)
    decorated = flashcomm_compile.compile(model, mode="always", inductor_mode=inductor_mode, reduce_bits=8,
                                          gather_bits=8, transport=transport)
    x = torch.randn(2, 512, shape.dim, device="cuda", dtype=torch.bfloat16,
                    generator=torch.Generator("cuda").manual_seed(0))
    from torch._inductor import config as inductor_config

    with torch.no_grad(), inductor_config.patch(fx_graph_cache=False):
        for _ in range(3):  # CUDA graphs record on a later call: check the replayed result
            out = decorated(x).clone()
        exact = model(x)
    error = ((out.float() - exact.float()).norm() / exact.float().norm()).item()
    return dict(out=out.cpu(), error=error, rewritten=len(decorated.flashcomm_backend.records[0].rewritten()))


@pytest.mark.parametrize("inductor_mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("transport", ["nccl", "symm_mem"])
def test_llama_on_nccl(inductor_mode, transport):
    ranks = run_ranks(2, _llama, inductor_mode, transport, backend="nccl")
    for r in ranks:
        assert r["rewritten"] == 8
        assert r["error"] < 0.03, r["error"]
    assert torch.equal(ranks[0]["out"], ranks[1]["out"])


def _symm_mem_sites(rank, world):
    """transport symm_mem, compiled with dynamic sizes: two sizes (the workspace grows), then replays of a CUDA graph;
    each result against the NCCL transport's compiled result, which must be the same bytes."""
    import flashcomm_compile

    def compiled(**options):
        backend = flashcomm_compile.backend(mode="always", reduce_bits=4, gather_bits=8, **options)
        fn = torch.compile(lambda t: funcol.all_reduce(t, "sum", dist.group.WORLD), backend=backend, dynamic=True)
        return fn, backend

    symm, symm_backend = compiled(transport="symm_mem")
    nccl, _ = compiled(transport="nccl")
    gen = torch.Generator("cuda").manual_seed(rank)
    results = []
    for rows in (64, 3000):
        x = torch.randn(rows, 4096 + 64, device="cuda", dtype=torch.bfloat16, generator=gen)
        results.append(torch.equal(symm(x), nccl(x)))
    x = torch.randn(1000, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
    expected = nccl(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        symm(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = symm(x)
    for _ in range(3):
        x.copy_(torch.randn(x.shape, device="cuda", dtype=x.dtype, generator=gen))
        expected = nccl(x)
        graph.replay()
        results.append(torch.equal(out, expected))
    symm_ops = sum(g.op_counts["triton.quantize_symm_kernel"] for g in symm_backend.records)
    return dict(results=results, out=out.cpu(), symm_ops=symm_ops)


def test_symm_mem_transport_gives_the_nccl_transports_bytes():
    ranks = run_ranks(2, _symm_mem_sites, backend="nccl")
    for r in ranks:
        assert all(r["results"]), r["results"]
        assert r["symm_ops"] == 1  # one compile: the workspace holds both sizes
    assert torch.equal(ranks[0]["out"], ranks[1]["out"])


def _generated_code(rank, world):
    """Both transports lowered: the pipeline's Triton kernels launched by Inductor's generated code, no flashcomm op
    behind the dispatcher; two independent symm_mem sites in one graph (the tokens keep them in order) give the NCCL
    transport's bytes; transport auto picks symm_mem on NVLink."""
    import flashcomm_compile
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import run_and_get_code

    def two_sites(a, b):
        return funcol.all_reduce(a, "sum", dist.group.WORLD), funcol.all_reduce(b * 3, "sum", dist.group.WORLD)

    gen = torch.Generator("cuda").manual_seed(rank)
    a, b = (torch.randn(512, 4096, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    out = {}
    for transport in ("nccl", "symm_mem", "auto"):
        backend = flashcomm_compile.backend(mode="always", transport=transport)
        with inductor_config.patch(fx_graph_cache=False):
            result, code = run_and_get_code(torch.compile(two_sites, backend=backend), a, b)
        out[transport] = dict(result=[t.cpu() for t in result], code=code[0],
                              transports=[s.decision.transport for s in backend.records[0].sites])
    return out


def test_both_transports_launch_their_kernels_from_the_generated_code():
    ranks = run_ranks(2, _generated_code, backend="nccl")
    for r in ranks:
        for transport, kernels in (("nccl", ("quantize_kernel", "dequant_sum_requant_kernel", "dequantize_kernel")),
                                   ("symm_mem", ("quantize_symm_kernel",
                                                 "dequant_sum_requant_peers_kernel", "dequantize_peers_kernel"))):
            code = r[transport]["code"]
            assert "torch.ops.flashcomm" not in code
            assert all(k in code for k in kernels), (transport, code[-3000:])
            assert "_c10d_functional.all_reduce" not in code
        assert ("all_to_all_single" in r["nccl"]["code"]) and ("all_to_all_single" not in r["symm_mem"]["code"])
        assert r["auto"]["transports"] == ["symm_mem", "symm_mem"]
        for i in range(2):
            assert torch.equal(r["symm_mem"]["result"][i], r["nccl"]["result"][i])
    assert torch.equal(ranks[0]["symm_mem"]["result"][1], ranks[1]["symm_mem"]["result"][1])


def _sequence_parallel_llama(rank, world, inductor_mode):
    """The sequence-parallel Llama with every reduce-scatter and all-gather rewritten, over each transport: the
    exact model on the whole sequence beside it."""
    import flashcomm_compile
    from flashcomm_compile.examples.llama import shard_with_dtensor
    from torch._inductor import config as inductor_config
    from torch.distributed.device_mesh import init_device_mesh

    shape = LlamaShape(dim=1024, n_heads=16, ffn_dim=2816, n_layers=2)
    torch.manual_seed(0)
    x = torch.randn(1, 512 * world, shape.dim, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        exact = build(shape, dtype=torch.bfloat16, device="cuda")(x).float()
    model = shard_with_dtensor(build(shape, dtype=torch.bfloat16, device="cuda"), init_device_mesh("cuda", (world,)),
                               sequence_parallel=True)
    out = {}
    for transport in ("nccl", "symm_mem"):
        torch._dynamo.reset()  # the same model compiled afresh for each transport
        backend = flashcomm_compile.backend(mode="always", reduce_bits=8, gather_bits=8, transport=transport,
                                            inductor_mode=inductor_mode)
        compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=True)
        with torch.no_grad(), inductor_config.patch(fx_graph_cache=False):
            for _ in range(3):  # CUDA graphs record on a later call: check the replayed result
                mine = compiled(x.chunk(world, dim=1)[rank]).clone()
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        full = torch.cat(gathered, dim=1).float()
        out[transport] = dict(full=full.cpu(), error=((full - exact).norm() / exact.norm()).item(),
                              transports={s.decision.transport for r in backend.records for s in r.sites},
                              kept=sum(not s.rewritten for r in backend.records for s in r.sites))
    return out


@pytest.mark.parametrize("inductor_mode", ["default", "reduce-overhead"])
def test_sequence_parallel_llama_on_both_transports(inductor_mode):
    ranks = run_ranks(2, _sequence_parallel_llama, inductor_mode, backend="nccl")
    for r in ranks:
        for transport in ("nccl", "symm_mem"):
            assert r[transport]["kept"] == 0 and r[transport]["transports"] == {transport}
            assert r[transport]["error"] < 0.03, (transport, r[transport]["error"])
        difference = (r["symm_mem"]["full"] - r["nccl"]["full"]).norm() / r["nccl"]["full"].norm()
        assert difference < 0.01, difference  # the same kernels' bytes; Inductor may fuse the sum's rounding away
    for transport in ("nccl", "symm_mem"):
        assert torch.equal(ranks[0][transport]["full"], ranks[1][transport]["full"])
