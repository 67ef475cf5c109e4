"""The pass in one process on a fake process group (as PyTorch tests micro_pipeline_tp): each guard's decision and
reason, the exact nodes that replace an all-reduce, what it logs, a user's own post-grad pass run beside it, and the
graph code kept only when asked."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch._inductor import config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass

import flashcomm_compile
from flashcomm_compile.inspection import fake_process_group

ALL_REDUCE = "_c10d_functional.all_reduce.default"
# what replaces one all-reduce on a CPU: the collectives and the reference's stages as custom ops
PIPELINE = {"_c10d_functional.all_to_all_single.default": 1, "_c10d_functional.all_gather_into_tensor.default": 1,
            "_c10d_functional.wait_tensor.default": 2,
            **{f"flashcomm.reference_{s}.default": 1 for s in ("quantize", "dequant_sum_requant", "dequantize")}}


@pytest.fixture(autouse=True)
def two_ranks():
    with fake_process_group(2), inductor_config.patch(fx_graph_cache=False):
        torch._dynamo.reset()
        yield


def _compile(fn, *inputs, **options):
    backend = flashcomm_compile.backend(**options)
    torch.compile(fn, backend=backend)(*inputs)
    return backend


def _sites(backend):
    return [(s.rewritten, s.reason) for record in backend.records for s in record.sites]


def test_each_guard_decides_with_its_reason():
    def f(x, i):
        return (funcol.all_reduce(x, "max", dist.group.WORLD), funcol.all_reduce(i, "sum", dist.group.WORLD),
                funcol.all_reduce(x[:2], "sum", dist.group.WORLD), funcol.all_reduce(x, "sum", dist.group.WORLD))

    x, i = torch.randn(64, 256), torch.arange(10)
    unmeasured = "; the cost model has no line for cpu|default|w2"
    assert _sites(_compile(f, x, i, min_bytes=1 << 16, transport="nccl")) == [
        (False, "reduce op max"), (False, "dtype int64"), (False, f"below min_bytes (2048 < 65536){unmeasured}"),
        (True, f"65536 bytes >= min_bytes 65536{unmeasured}")]
    torch._dynamo.reset()
    assert _sites(_compile(f, x, i, mode="never"))[2:] == [(False, "mode never")] * 2
    torch._dynamo.reset()
    assert _sites(_compile(f, x, i, mode="always", transport="symm_mem"))[2:] == [
        (False, "transport symm_mem needs CUDA tensors, not cpu")] * 2


def test_transport_auto_on_a_cpu_is_nccl_and_says_why():
    backend = _compile(lambda x: funcol.all_reduce(x, "sum", dist.group.WORLD), torch.randn(8, 128), mode="always")
    decision = backend.records[0].sites[0].decision
    assert (decision.transport, decision.transport_reason) == ("nccl", "auto: cpu tensors")


def test_the_replacement_is_exactly_the_pipeline():
    backend = _compile(lambda x: funcol.all_reduce(x * 2, "sum", dist.group.WORLD), torch.randn(8, 128),
                       mode="always")
    # every node left in the graph: x * 2, the pipeline, and two views of its payloads (no all-reduce)
    assert dict(backend.records[0].op_counts) == {"aten.mul.Tensor": 1, **PIPELINE, "aten.view.default": 2}


def test_logs_one_line_per_graph_and_one_per_site(caplog):
    def f(x, i):
        return funcol.all_reduce(x, "sum", dist.group.WORLD), funcol.all_reduce(i, "sum", dist.group.WORLD)

    with caplog.at_level(logging.DEBUG, logger="flashcomm_compile"):
        _compile(f, torch.randn(8, 128), torch.arange(4), mode="always")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("flashcomm_compile")]
    assert "flashcomm: rewrote 1 of 2 all-reduces, 1 over nccl; kept: dtype int64 x1" in lines
    assert any(line.endswith("rewritten: mode always (nccl: auto: cpu tensors)") for line in lines)
    assert any(line.endswith("kept: dtype int64") for line in lines)


class _Recorder(CustomGraphPass):
    """A user's own post-grad pass: notes how many all-reduces it saw."""

    def __init__(self):
        self.seen = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.seen.append(sum(str(n.target) == ALL_REDUCE for n in graph.nodes))

    def uuid(self) -> bytes:
        return b"recorder"


def test_a_users_post_grad_pass_runs_first_and_flashcomms_still_runs():
    user = _Recorder()
    with inductor_config.patch(post_grad_custom_post_pass=user):
        backend = _compile(lambda x: funcol.all_reduce(x, "sum", dist.group.WORLD), torch.randn(8, 128),
                           mode="always")
    assert user.seen == [1]  # it saw the all-reduce flashcomm then rewrote
    assert backend.records[0].rewritten()


def test_graph_code_is_kept_only_when_asked():
    fn = lambda x: funcol.all_reduce(x, "sum", dist.group.WORLD)  # noqa: E731
    plain = _compile(fn, torch.randn(8, 128), mode="always")
    assert plain.records[0].before is None and plain.records[0].after is None
    torch._dynamo.reset()
    kept = _compile(fn, torch.randn(8, 128), mode="always", keep_code=True)
    assert "all_reduce" in kept.records[0].before and "all_to_all_single" in kept.records[0].after


def test_a_graph_the_cache_serves_is_recorded_as_such():
    """On a cache hit the pass does not run: the record says so instead of listing nothing."""
    from torch._inductor.utils import fresh_cache

    fn = lambda x: funcol.all_reduce(x + 1, "sum", dist.group.WORLD)  # noqa: E731
    with fresh_cache(), inductor_config.patch(fx_graph_cache=True):
        first = _compile(fn, torch.randn(8, 128), mode="always")
        torch._dynamo.reset()
        second = _compile(fn, torch.randn(8, 128), mode="always")
    assert [(r.from_cache, len(r.rewritten())) for r in first.records] == [(False, 1)]
    assert [(r.from_cache, r.sites) for r in second.records] == [(True, [])]


def test_alike_sites_share_one_trace_and_each_copy_has_its_own_values(monkeypatch):
    """Three all-reduces of one shape and one of another: two traces, four pipelines, and no fake value shared
    between two nodes (Inductor's reinplacing groups nodes by their values' storage)."""
    from flashcomm_compile import lowering
    from flashcomm_compile.passes import engine

    traces, values = [], []
    trace, apply_rules = lowering._trace, engine.apply_rules
    monkeypatch.setattr(lowering, "_trace", lambda fn, args: traces.append(1) or trace(fn, args))

    def apply_and_note_values(graph, *args):
        reports = apply_rules(graph, *args)
        values.extend(id(n.meta["val"]) for n in graph.nodes if isinstance(n.meta.get("val"), torch.Tensor))
        return reports

    monkeypatch.setattr(engine, "apply_rules", apply_and_note_values)

    def f(x, y):
        a = funcol.all_reduce(x, "sum", dist.group.WORLD)
        b = funcol.all_reduce(a * 2, "sum", dist.group.WORLD)
        c = funcol.all_reduce(b + 1, "sum", dist.group.WORLD)
        return c, funcol.all_reduce(y, "sum", dist.group.WORLD)

    for dynamic in (False, True):
        traces.clear(), values.clear(), torch._dynamo.reset()
        backend = flashcomm_compile.backend(mode="always")
        torch.compile(f, backend=backend, dynamic=dynamic)(torch.randn(8, 128), torch.randn(4, 256))
        assert len(traces) == 2 and len(backend.records[0].rewritten()) == 4, dynamic
        assert backend.records[0].op_counts["flashcomm.reference_quantize.default"] == 4
        assert len(values) >= 4 * 8 and len(values) == len(set(values))  # 8 tensors a pipeline at least


def test_sequence_parallel_halves_are_rewritten_in_mode_always_only_and_logged_per_kind(caplog):
    def f(x):
        y = funcol.reduce_scatter_tensor(x, "sum", 0, dist.group.WORLD)
        return funcol.all_gather_tensor(y * 2, 0, dist.group.WORLD)

    x = torch.randn(8, 256)
    with caplog.at_level(logging.INFO, logger="flashcomm_compile"):
        backend = _compile(f, x, mode="always")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("flashcomm_compile")]
    assert "flashcomm: rewrote 1 of 1 reduce-scatters, 1 of 1 all-gathers, 2 over nccl" in lines
    ops = backend.records[0].op_counts  # no dequant-sum-requant: each half is quantize, a collective, dequantize
    assert {op: n for op, n in ops.items() if op.startswith(("flashcomm", "_c10d"))} == {
        "flashcomm.reference_quantize.default": 2, "_c10d_functional.all_to_all_single.default": 1,
        "_c10d_functional.all_gather_into_tensor.default": 1, "_c10d_functional.wait_tensor.default": 2,
        "flashcomm.reference_dequantize.default": 2}
    torch._dynamo.reset()
    assert _sites(_compile(f, x)) == [
        (False, "mode auto: no reduce-scatter has been timed against NCCL yet (mode always rewrites it)"),
        (False, "mode auto: no all-gather has been timed against NCCL yet (mode always rewrites it)")]
    torch._dynamo.reset()
    assert _sites(_compile(f, x, mode="always", transport="symm_mem")) == [  # as an all-reduce would be
        (False, "transport symm_mem needs CUDA tensors, not cpu")] * 2
