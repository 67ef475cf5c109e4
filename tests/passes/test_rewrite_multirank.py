"""The pass end to end on gloo ranks (one case also on a GPU's single NCCL rank): the collectives in the rewritten
graph and in Inductor's generated code, the analytic bound, bitwise-identical ranks, untouched cases, every way of
naming the group, dynamic shapes (one compile in mode always, one per side of the threshold in auto), backward graphs
left alone unless asked, and Inductor's own code where the default options rewrite nothing."""

from __future__ import annotations

import re

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from torch._inductor.utils import run_and_get_code

from flashcomm_compile.kernels import reference
from flashcomm_compile.kernels.bounds import pipeline_error_bound
from flashcomm_compile.launch import run_ranks
from flashcomm_compile.pipeline import simulate

# one rewritten all-reduce on the NCCL transport; on CPUs the kernels are the torch reference's three custom ops
REWRITTEN_OPS = {
    "_c10d_functional.all_reduce.default": 0,
    "_c10d_functional.all_to_all_single.default": 1,
    "_c10d_functional.all_gather_into_tensor.default": 1,
    "_c10d_functional.wait_tensor.default": 2,
    "flashcomm.reference_quantize.default": 1,
    "flashcomm.reference_dequant_sum_requant.default": 1,
    "flashcomm.reference_dequantize.default": 1,
}
CPU_STAGES = ["reference_dequant_sum_requant", "reference_dequantize", "reference_quantize"]


def _counts(record, sites: int = 1) -> dict:
    return {k: record.op_counts.get(k, 0) for k in REWRITTEN_OPS}, {k: v * sites for k, v in REWRITTEN_OPS.items()}


def _calls_in(code: str) -> dict:
    """What Inductor's generated code calls: collectives, and anything of flashcomm's reached by name."""
    names = ("all_to_all_single", "all_gather_into_tensor", "_c10d_functional.all_reduce")
    calls = {name: code.count(f"{name}.default(") for name in names}
    flashcomm = re.findall(r"torch\.ops\.flashcomm\.(\w+)\.default\(", code)
    return {**calls, "flashcomm": sorted(set(flashcomm)), "flashcomm calls": len(flashcomm)}


def _compile(fn, dynamic=None, **config):
    import flashcomm_compile

    backend = flashcomm_compile.backend(keep_code=True, **config)
    return torch.compile(fn, backend=backend, dynamic=dynamic), backend


def _everyone(x: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return parts


# (dtype, config, shape) of one all-reduce each; bit-plane widths first (INT6/INT6 rotated also runs on 4 ranks)
SINGLE_SITE_CASES = [
    (torch.bfloat16, dict(reduce_bits=6, gather_bits=6, rotation="hadamard"), (9, 200)),
    (torch.float32, dict(reduce_bits=5, gather_bits=7, rotation="none", group_size=32), (6, 100)),
    (torch.float32, dict(reduce_bits=4, gather_bits=8, rotation="none"), (48, 320)),
    (torch.bfloat16, dict(reduce_bits=2, gather_bits=4, spike_reserve=True, group_size=32, rotation="none"), (7, 33)),
    (torch.float16, dict(reduce_bits=8, gather_bits=8, group_size=1024, rotation="none"), (3, 2048)),
    (torch.bfloat16, dict(reduce_bits=4, gather_bits=8, rotation="hadamard", group_size=64), (5, 96)),
]


def _single_site(rank, world, cases: int):
    """One all-reduce per config of the first `cases`: node counts, equality with the simulated pipeline, the
    bound."""
    from torch._inductor import config as inductor_config

    results = []
    for dtype, config, shape in SINGLE_SITE_CASES[:cases]:
        torch.manual_seed(100 + rank)
        x = torch.randn(shape, dtype=dtype)

        def f(t):
            return funcol.all_reduce(t * 2, "sum", dist.group.WORLD) + 1

        compiled, backend = _compile(f, mode="always", **config)
        # emulated casts: the `+ 1` fused after the dequantize rounds its input to dtype first, as eager does
        with inductor_config.patch(fx_graph_cache=False, emulate_precision_casts=True):
            out, code = run_and_get_code(compiled, x)
        inputs = _everyone(x * 2)
        run, layout = simulate(reference, inputs, config["reduce_bits"], config["gather_bits"],
                               config.get("group_size", 128), config.get("spike_reserve", False),
                               config.get("rotation") == "hadamard")
        exact = torch.stack([t.double() for t in inputs]).sum(0) + 1
        bound = pipeline_error_bound(run.sent, run.gathered, layout, config["gather_bits"], dtype, run.outputs[0])
        # `+ 1` is one more rounding to dtype
        bound = bound.reshape(exact.shape).double() + exact.abs() * torch.finfo(dtype).eps
        results.append(dict(
            counts=_counts(backend.records[0]),
            calls=_calls_in(code[0]),
            equals_simulation=torch.equal(out, run.outputs[0] + 1),
            within_bound=bool(torch.all((out.double() - exact).abs() <= bound)),
            out=out,
        ))
    return results


@pytest.mark.parametrize("world, cases", [(2, len(SINGLE_SITE_CASES)), (4, 1)])
def test_single_all_reduce_rewritten_exactly_and_within_bound(world, cases):
    ranks = run_ranks(world, _single_site, cases)
    for case in range(len(ranks[0])):
        got, expected = ranks[0][case]["counts"]
        assert got == expected
        # the collectives are Inductor's own; on CPUs the reference's three stages are its only flashcomm calls
        assert ranks[0][case]["calls"] == {"all_to_all_single": 1, "all_gather_into_tensor": 1,
                                           "_c10d_functional.all_reduce": 0, "flashcomm": CPU_STAGES,
                                           "flashcomm calls": 3}
        for rank in ranks:
            assert rank[case]["within_bound"] and rank[case]["equals_simulation"]
        assert all(torch.equal(ranks[0][case]["out"], rank[case]["out"]) for rank in ranks[1:])


def _untouched(rank, world):
    """All-reduces the rule must leave exactly as they were, each with its reason."""
    from torch._inductor import config as inductor_config

    def f(x, i):
        a = funcol.all_reduce(x, "max", dist.group.WORLD)
        b = funcol.all_reduce(i, "sum", dist.group.WORLD)
        c = funcol.all_reduce(x[:2], "sum", dist.group.WORLD)  # 2 KiB, below min_bytes
        return a, b, c

    x, i = torch.randn(64, 256), torch.arange(10) + rank
    out = {}
    for label, config in (("auto", dict(mode="auto", min_bytes=1 << 20)), ("never", dict(mode="never")),
                          ("symm_mem on cpu", dict(mode="always", transport="symm_mem"))):
        compiled, backend = _compile(f, **config)
        with inductor_config.patch(fx_graph_cache=False):
            got = compiled(x, i)
        record = backend.records[0]
        out[label] = dict(same_graph=record.before == record.after, reasons=[s.reason for s in record.sites],
                          exact=all(torch.equal(g, e) for g, e in zip(got, f(x, i))))
    return out


def test_ineligible_all_reduces_stay_exactly_as_they_were():
    result = run_ranks(2, _untouched)[0]
    assert result["auto"]["same_graph"] and result["never"]["same_graph"]
    assert result["auto"]["exact"] and result["never"]["exact"]
    assert result["auto"]["reasons"] == ["reduce op max", "dtype int64", "below min_bytes (2048 < 1048576); the cost "
                                         "model has no line for cpu|default|w2"]
    assert result["never"]["reasons"] == ["reduce op max", "dtype int64", "mode never"]
    symm_mem = result["symm_mem on cpu"]
    assert symm_mem["same_graph"] and symm_mem["exact"]
    assert symm_mem["reasons"] == ["reduce op max", "dtype int64"] + ["transport symm_mem needs CUDA tensors, not cpu"]


def _group_spellings(rank, world):
    """The group as a ProcessGroup, a DeviceMesh, a list of ranks: each all-reduce is rewritten."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch._inductor import config as inductor_config

    mesh = init_device_mesh("cpu", (world,))
    groups = {"process_group": dist.group.WORLD, "device_mesh": mesh, "rank_list": list(range(world))}
    out = {}
    for label, group in groups.items():
        compiled, backend = _compile(lambda t, g=group: funcol.all_reduce(t, "sum", g), mode="always")
        x = torch.randn(16, 128) + rank
        with inductor_config.patch(fx_graph_cache=False):
            y = compiled(x)
        out[label] = dict(rewritten=[s.rewritten for s in backend.records[0].sites], out=y,
                          error=(y - sum(_everyone(x))).abs().max().item())
    return out


def test_every_group_spelling_is_rewritten():
    ranks = run_ranks(2, _group_spellings)
    for label, r0 in ranks[0].items():
        assert r0["rewritten"] == [True], label
        assert torch.equal(r0["out"], ranks[1][label]["out"]), label
        assert r0["error"] < 0.5, label


def _dynamic(rank, world):
    from torch._inductor import config as inductor_config

    out = {}
    for hidden in (256, 100):  # 100: W x group does not divide the size, the kernels pad
        compiled, backend = _compile(lambda t: funcol.all_reduce(t.relu(), "sum", dist.group.WORLD),
                                     dynamic=True, mode="always")
        errors = []
        with inductor_config.patch(fx_graph_cache=False):
            for seq in (5, 17, 64):
                x = torch.randn(seq, hidden)
                errors.append((compiled(x) - sum(_everyone(x.relu()))).abs().max().item())
        out[hidden] = dict(graphs=len(backend.records), errors=errors,
                           rewritten=[s.rewritten for r in backend.records for s in r.sites],
                           shapes=[str(s.site.shape) for r in backend.records for s in r.sites])
    return out


def test_dynamic_sequence_length_compiles_once():
    result = run_ranks(2, _dynamic)[0]
    for hidden, r in result.items():
        assert r["graphs"] == 1, r
        assert r["rewritten"] == [True]
        assert "s" in r["shapes"][0]  # the size is symbolic
        assert max(r["errors"]) < 0.5


def _backward(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    from torch._inductor import config as inductor_config

    out = {}
    for backward in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 512, bias=False), torch.nn.Linear(512, 256, bias=False))
        mesh = init_device_mesh("cpu", (world,))
        parallelize_module(model, mesh, {"0": ColwiseParallel(), "1": RowwiseParallel()})
        compiled, backend = _compile(model, mode="always", backward=backward)
        x = torch.randn(32, 256, requires_grad=True)
        with inductor_config.patch(fx_graph_cache=False):
            compiled(x).sum().backward()
        grad = x.grad.clone()
        x.grad = None
        model(x).sum().backward()
        out[backward] = dict(records=len(backend.records),
                             rewritten=[[s.rewritten for s in r.sites] for r in backend.records],
                             grad_error=(grad - x.grad).abs().max().item())
    return out


def test_backward_graph_untouched_unless_enabled():
    result = run_ranks(2, _backward)[0]
    assert result[False]["records"] == 1 and result[False]["rewritten"] == [[True]]
    assert result[False]["grad_error"] < 1e-4
    assert result[True]["records"] == 2 and result[True]["rewritten"] == [[True], [True]]
    assert result[True]["grad_error"] > 1e-4  # the backward all-reduce is quantized now


def _after_a_plain_compile(rank, world):
    """Inductor's caches stay on: a graph compiled earlier without the pass must not be handed back."""

    def f(t):
        return funcol.all_reduce(t, "sum", dist.group.WORLD)

    x = torch.randn(64, 256) + rank
    exact = torch.compile(f, dynamic=True)(x)
    flash, _ = _compile(f, dynamic=True, mode="always", reduce_bits=4)
    return (flash(x) - exact).abs().max().item()


def test_flashcomm_compile_is_not_served_from_a_plain_compile_cache():
    assert min(run_ranks(2, _after_a_plain_compile)) > 1e-3


def _size_specialized(rank, world):
    """"auto" on a symbolic size the threshold splits: the compiled code is guarded on the side of the first size,
    the other side compiles once more; NCCL's exact sum below the threshold, the pipeline from it."""
    from torch._inductor import config as inductor_config

    f = lambda t: funcol.all_reduce(t, "sum", dist.group.WORLD)  # noqa: E731
    compiled, backend = _compile(f, dynamic=True, mode="auto", min_bytes=16 * 256 * 4)
    errors = {}
    with inductor_config.patch(fx_graph_cache=False):
        for seq in (17, 5, 64, 3, 40):
            x = torch.randn(seq, 256) + rank
            errors[seq] = (compiled(x) - sum(_everyone(x))).abs().max().item()
    return dict(graphs=len(backend.records), errors=errors,
                reasons=[s.reason for r in backend.records for s in r.sites],
                rewritten=[s.rewritten for r in backend.records for s in r.sites])


def test_auto_specializes_symbolic_sizes_on_the_side_of_the_threshold():
    result = run_ranks(2, _size_specialized)[0]
    assert result["graphs"] == 2  # one compile per side, whatever the number of sizes
    assert result["rewritten"] == [True, False]
    assert "(specialized: smaller sizes compile again)" in result["reasons"][0]
    assert "specialized: larger sizes compile again" in result["reasons"][1]
    assert result["errors"][5] == 0.0 and result["errors"][3] == 0.0  # below 16 x 256 x 4 bytes: NCCL's exact sum
    assert all(result["errors"][seq] > 0 for seq in (17, 64, 40))  # quantized


def _same_code_other_world_size(rank, world):
    """The graph names its group ("0"), not the group's size: a graph compiled on 2 ranks, cached on disk, must not
    be handed to 4 ranks (its all-to-all splits would be wrong)."""
    from torch._inductor import config as inductor_config

    def f(t):
        return funcol.all_reduce(t, "sum", dist.group.WORLD)

    x = torch.randn(32, 256) + rank
    with inductor_config.patch(fx_graph_cache=True):
        out = _compile(f, dynamic=False, mode="always", reduce_bits=8, gather_bits=8)[0](x)
    exact = sum(_everyone(x))
    return ((out - exact).norm() / exact.norm()).item()


def test_a_graph_cached_for_one_world_size_is_not_reused_for_another():
    for world in (2, 4):
        assert max(run_ranks(world, _same_code_other_world_size)) < 0.02


def _inductors_own_code(rank, world):
    """A small Llama compiled as TP clients ship prefill (fullgraph, dynamic), by Inductor and by flashcomm's default
    options, which keep every all-reduce here (below min_bytes on a CPU, a single rank on a GPU): the generated code
    of each."""
    import re

    import flashcomm_compile
    from flashcomm_compile.examples.llama import LlamaShape, build, shard_with_funcol
    from flashcomm_compile.launch import rank_device

    device = rank_device(rank)
    model = shard_with_funcol(build(LlamaShape(dim=256, n_heads=4, ffn_dim=512, n_layers=2), device=device), rank,
                              world, dist.group.WORLD)
    x = torch.randn(1, 64, 256, device=device)

    def generated_code(compile_):
        torch._dynamo.reset()
        compiled = compile_(model, fullgraph=True, dynamic=True)
        with torch.no_grad():
            _, code = run_and_get_code(compiled, x)
        # the AOT ID comment counts this process's compiles
        return compiled, [re.sub(r"# AOT ID: .*", "", c) for c in code]

    _, inductor = generated_code(torch.compile)
    flashcomm, default_options = generated_code(flashcomm_compile.compile)
    kept = [s.rewritten for r in flashcomm.flashcomm_backend.records for s in r.sites]
    return dict(inductor=inductor, default_options=default_options), kept


@pytest.mark.parametrize("world, backend", [
    (2, "gloo"),
    pytest.param(1, "nccl", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                       reason="needs CUDA")])])
def test_default_options_that_keep_every_all_reduce_leave_inductors_code_as_it_was(world, backend):
    """Where the default options rewrite nothing, the model must run Inductor's own code: same kernels, same
    collectives, same calls (what "the default options never make a model slower" rests on)."""
    codes, kept = run_ranks(world, _inductors_own_code, backend=backend)[0]
    assert kept == [False] * 4
    assert codes["default_options"] == codes["inductor"]
    assert codes["inductor"][0].count("_c10d_functional.all_reduce_.default(") == 4
