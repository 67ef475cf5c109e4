"""The inspection report (API and CLI) on a TP model mixing eligible and ineligible all-reduces, on a fake group."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import flashcomm_compile
from flashcomm_compile.error_model import predicted_error
from flashcomm_compile.inspection import inspect_factory
from tests.inspection import factories

ROOT = Path(__file__).resolve().parents[2]
UNMEASURED = "; the cost model has no line for cpu|default|w2"
EXPECTED = [("rewritten", f"65536 bytes >= min_bytes 4096{UNMEASURED}")] * 4 + [
    ("kept", "reduce op max"), ("kept", "dtype int64"), ("kept", f"below min_bytes (32 < 4096){UNMEASURED}")]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test inspects the same model class: past dynamo's recompile limit for its code, inspect raises."""
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def report():
    return inspect_factory(factories.mixed, world_size=2, min_bytes=4096)


def test_sites_decisions_and_reasons(report):
    assert [(s.decision, s.reason) for s in report.sites] == EXPECTED
    assert [s.module for s in report.sites[:2]] == ["llama.layers.0.attention.wo", "llama.layers.0.feed_forward.w2"]
    assert "llama.py" in report.sites[0].source and "factories.py" in report.sites[4].source
    assert "(called from" in report.sites[0].source  # the hook's line, and the forward that ran the module
    assert report.sites[0].shape == ["1", "64", "256"] and report.sites[0].dtype == "float32"
    # INT4 + INT8 payloads of 16384 fp32 values in 128 groups of 8 metadata bytes: (8192 + 1024) + (16384 + 1024)
    # bytes, against 2 x 65536 on a ring
    assert report.sites[0].reduce_payload_bytes == 9216 and report.sites[0].gather_payload_bytes == 17408
    assert report.sites[0].compression == round(2 * 65536 / (9216 + 17408), 3)
    assert report.sites[4].compression is None  # not eligible: nothing to compress
    assert report.sites[0].predicted_error == round(predicted_error(4, 8, 128), 5)
    assert report.sites[4].predicted_error is None
    assert report.sites[0].wire_bits_per_value == 13.0  # 4 + 8 code bits, 2 x 64 bits of scale and zero per 128
    assert report.sites[0].padding == "none" and report.sites[6].padding == "248 zeros, masked in the kernels"
    totals = report.totals()
    assert (totals["sites"], totals["rewritten"], totals["kept"]) == (7, 4, 3)
    assert totals["wire_bytes_flashcomm"] == 4 * (9216 + 17408) + 2 * (65536 + 8 + 32)


def test_text_diff_shows_the_new_collectives(report):
    diff = report.diff().splitlines()

    def calls(sign: str, op: str) -> int:
        return sum(1 for line in diff if line.startswith(sign) and f"= torch.ops.{op}.default(" in line)

    for op in ("_c10d_functional.all_to_all_single", "_c10d_functional.all_gather_into_tensor"):
        assert calls("+", op) == 4, op
    for stage in ("quantize", "dequant_sum_requant", "dequantize"):  # the reference's stages (a CPU model)
        assert calls("+", f"flashcomm.reference_{stage}") == 4, stage
    assert calls("-", "_c10d_functional.all_reduce") == 4
    assert report.diff() in report.to_text()
    assert len(report.diff(full=True).splitlines()) > len(diff)
    assert "\033[32m+" in report.diff(color=True)


def test_json_schema(report):
    data = json.loads(report.to_json())
    assert data["version"] == 1 and data["world_size"] == 2 and data["config"]["min_bytes"] == 4096
    site_keys = {"graph", "kind", "node", "module", "source", "shape", "dtype", "bytes", "group", "decision", "reason",
                 "transport", "transport_reason", "reduce_payload_bytes", "gather_payload_bytes", "compression",
                 "padding", "predicted_error", "wire_bits_per_value", "predicted_us", "cost_line"}
    assert all(set(s) == site_keys for s in data["sites"])
    first = data["sites"][0]
    assert first["bytes"] == 65536 and isinstance(first["reduce_payload_bytes"], int)
    assert [s["decision"] for s in data["sites"]] == [d for d, _ in EXPECTED]
    assert set(data["totals"]) >= {"sites", "rewritten", "kept", "bytes", "wire_bytes_nccl", "wire_bytes_flashcomm"}
    assert {"before", "after"} == set(data["graphs"][0])


def test_predictions_for_a_target_gpu():
    report = inspect_factory(factories.mixed, world_size=2, hardware="NVIDIA H200|p2p-disabled")
    first = report.sites[0]
    assert first.predicted_us is not None and first.predicted_us["nccl"] > 0
    assert first.reason.startswith("below the cost model's threshold")


def test_a_split_no_two_gpu_run_timed_is_predicted_and_says_so():
    measured = inspect_factory(factories.mixed, world_size=2, hardware="NVIDIA H200|default")
    predicted = inspect_factory(factories.mixed, world_size=2, hardware="NVIDIA H200|default", reduce_bits=6,
                                gather_bits=6)
    assert measured.sites[0].cost_line == "measured"
    assert predicted.sites[0].cost_line.startswith("predicted from wire bytes and kernel times on one NVIDIA H100")
    assert predicted.sites[0].predicted_error < measured.sites[0].predicted_error / 2
    assert predicted.sites[0].wire_bits_per_value == measured.sites[0].wire_bits_per_value


def test_predictions_count_host_time_without_cuda_graphs(tmp_path):
    """Inductor's default mode: a rewrite's host time is part of its prediction; in CUDA graphs (--cuda-graphs) not."""
    from flashcomm_compile import cli, cost_model

    hardware = "NVIDIA H200|p2p-disabled"
    counted = inspect_factory(factories.mixed, world_size=2, hardware=hardware).sites[0].predicted_us
    out = tmp_path / "report.json"
    assert cli.main(["inspect", "tests.inspection.factories:mixed", "--hardware", hardware, "--cuda-graphs",
                     "--format", "json", "--out", str(out)]) == 0
    hidden = json.loads(out.read_text())["sites"][0]["predicted_us"]
    host = cost_model.HOST_US["nccl"]  # P2P disabled: the NCCL transport
    assert counted["host"] == host and hidden["host"] == 0
    assert counted["flashcomm"] - hidden["flashcomm"] == pytest.approx(host, abs=0.1)
    assert counted["nccl"] == hidden["nccl"]


def test_symm_mem_transport_for_a_target_gpu():
    """On a CPU, for GPUs that map each other's memory: each eligible all-reduce is rewritten for symm_mem, chosen
    by transport="auto" too (traced here as the NCCL transport's pipeline, which sends the same bytes)."""
    for transport in ("symm_mem", "auto"):
        report = inspect_factory(factories.mixed, world_size=2, hardware="NVIDIA H100 80GB HBM3|default",
                                 mode="always", transport=transport)
        assert [s.decision for s in report.sites] == ["rewritten"] * 4 + ["kept"] * 2 + ["rewritten"]
        assert {s.transport for s in report.sites if s.decision == "rewritten"} == {"symm_mem"}
        assert report.graphs[0].op_counts["_c10d_functional.all_to_all_single.default"] == 5
    auto = inspect_factory(factories.mixed, world_size=2, hardware="NVIDIA H100 80GB HBM3|p2p-disabled",
                           mode="always")
    assert {s.transport for s in auto.sites if s.decision == "rewritten"} == {"nccl"}
    assert "does not map peers' memory" in auto.sites[0].transport_reason


def test_dynamic_shapes_show_the_symbolic_size():
    def f(x):
        import torch.distributed as dist
        import torch.distributed._functional_collectives as funcol

        return funcol.all_reduce(x * 2, "sum", dist.group.WORLD)

    x = torch.randn(8, 256)
    torch._dynamo.mark_dynamic(x, 0)  # a dynamic sequence length, a static hidden size
    report = flashcomm_compile.inspect(f, x, world_size=2, mode="always")
    assert report.sites[0].shape[0].startswith("s") and "s" in report.sites[0].bytes
    assert report.sites[0].decision == "rewritten"
    assert report.sites[0].padding == "none"  # 2 x 128 divides s0 x 256 for every s0: proven symbolically
    y = torch.randn(8, 100)
    torch._dynamo.mark_dynamic(y, 0)
    odd = flashcomm_compile.inspect(f, y, world_size=2, mode="always")
    assert odd.sites[0].padding.endswith("masked in the kernels") and "s" in odd.sites[0].padding


def _scatter_then_gather(x):
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    y = funcol.reduce_scatter_tensor(x, "sum", 0, dist.group.WORLD)
    return funcol.all_gather_tensor(y * 2, 0, dist.group.WORLD)


def test_sequence_parallel_sites_show_their_kind_and_one_step_each():
    report = flashcomm_compile.inspect(_scatter_then_gather, torch.randn(8, 200), world_size=2, mode="always")
    scatter, gather = report.sites
    assert (scatter.kind, scatter.decision, gather.kind, gather.decision) == (
        "reduce-scatter", "rewritten", "all-gather", "rewritten")
    # each rank's chunk of 800 values padded to 7 groups of 128: INT4 codes (64 B) + scale and zero (8 B) a group
    assert (scatter.reduce_payload_bytes, scatter.gather_payload_bytes) == (2 * 7 * 72, None)
    assert (gather.reduce_payload_bytes, gather.gather_payload_bytes) == (None, 2 * 7 * 136)  # INT8 codes
    assert scatter.padding == gather.padding == "192 zeros, masked in the kernels"
    assert scatter.compression == round(8 * 200 * 4 / (2 * 7 * 72), 3)  # the plain reduce-scatter sends its input
    assert gather.compression == round(2 * 4 * 200 * 4 / (2 * 7 * 136), 3)  # the plain all-gather its output
    assert scatter.wire_bits_per_value == 4.5 and gather.wire_bits_per_value == 8.5
    assert report.totals()["wire_bytes_flashcomm"] == 2 * 7 * (72 + 136)
    assert "reduce-scatter" in report.to_text() and json.loads(report.to_json())["sites"][1]["kind"] == "all-gather"


def test_sequence_parallel_sites_take_the_transport_an_all_reduce_would():
    """For GPUs that map each other's memory the halves go over symm_mem (configured or chosen by "auto"); with
    P2P disabled, over NCCL. Mode "auto" keeps them: none has been timed against NCCL."""
    for transport, hardware, chosen in (("symm_mem", "default", "symm_mem"), ("auto", "default", "symm_mem"),
                                        ("auto", "p2p-disabled", "nccl")):
        report = flashcomm_compile.inspect(_scatter_then_gather, torch.randn(8, 200), world_size=2, mode="always",
                                           transport=transport, hardware=f"NVIDIA H100 80GB HBM3|{hardware}")
        assert [(s.decision, s.transport) for s in report.sites] == [("rewritten", chosen)] * 2
    kept = flashcomm_compile.inspect(_scatter_then_gather, torch.randn(8, 200), world_size=2, mode="auto",
                                     hardware="NVIDIA H100 80GB HBM3|default")
    assert all(s.decision == "kept" and "has been timed against NCCL" in s.reason for s in kept.sites)
    # times predicted from the all-reduce's lines, and said to be
    assert all(s.predicted_us and "the all-reduce's lines" in s.cost_line for s in kept.sites)
    # the reduce-scatter of 6400 bytes and the all-gather of 3200 a rank each move what an all-reduce of 3200 does
    assert kept.sites[0].predicted_us == kept.sites[1].predicted_us


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "flashcomm_compile.cli", "inspect", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _clis(*invocations: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Several CLI runs, two at a time (each spends seconds importing torch and tracing)."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: _cli(*args), invocations))


def test_cli_json_and_exit_codes(tmp_path):
    out = tmp_path / "report.json"
    failures = [("nomodule:f", "cannot import module"), ("tests.inspection.factories", "MODULE:FACTORY"),
                ("tests.inspection.factories:not_callable", "no callable"),
                ("tests.inspection.factories:raises", "raised RuntimeError: no weights here"),
                ("tests.inspection.factories:untraceable", "did not trace")]
    report, verbose, rotated, no_chunks, symm_chunks, no_budget, *failed = _clis(
        ("tests.inspection.factories:mixed", "--min-bytes", "4096", "--format", "json", "--out", str(out)),
        ("tests.inspection.factories:raises", "--verbose"),
        ("tests.inspection.factories:mixed", "--rotation", "hadamard", "--mode", "always"),
        ("tests.inspection.factories:mixed", "--chunks", "0"),
        ("tests.inspection.factories:mixed", "--transport", "symm_mem", "--chunks", "2"),
        ("tests.inspection.factories:mixed", "--max-error", "0.0001"),
        *[(target,) for target, _ in failures])
    assert report.returncode == 0, report.stderr
    assert [s["decision"] for s in json.loads(out.read_text())["sites"]] == [d for d, _ in EXPECTED]
    for (target, message), done in zip(failures, failed, strict=True):
        assert done.returncode == 2, (target, done.stderr)
        errors = [line for line in done.stderr.splitlines() if line.startswith("flashcomm-compile: error")]
        assert len(errors) == 1 and message in errors[0], (target, done.stderr)
        assert "Traceback" not in done.stderr
    assert "Traceback" in verbose.stderr
    assert rotated.returncode == 0 and "INT4/INT8 g128 hadamard mode=always" in rotated.stdout, rotated.stderr
    assert no_chunks.returncode == 2 and "flashcomm-compile: error: chunks must be an int" in no_chunks.stderr
    assert symm_chunks.returncode == 2 and "chunks must be 1 with transport 'symm_mem'" in symm_chunks.stderr
    assert no_budget.returncode == 2 and "below what any split reaches" in no_budget.stderr


def test_cli_usage_errors_are_one_line_before_any_tracing(tmp_path):
    usage = [(["--world-size", "0"], "--world-size must be in [1, 64], got 0"),
             (["--world-size", "-1"], "--world-size must be in [1, 64], got -1"),
             (["--out", str(tmp_path / "missing" / "x.txt")], "does not exist"),
             (["--hardware", "Bogus GPU|default"], "invalid choice"),
             (["--hardware", "NVIDIA H200"], "invalid choice")]
    not_a_pair, help_run, *refused = _clis(("tests.inspection.factories:not_a_pair",), ("--help",),
                                           *[("tests.inspection.factories:mixed", *args) for args, _ in usage])
    for (args, message), done in zip(usage, refused, strict=True):
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and "did not trace" not in done.stderr
    assert not_a_pair.returncode == 2 and "returned int '7'; expected (model, example_inputs)" in not_a_pair.stderr
    help_text = help_run.stdout
    assert "NVIDIA H200|default" in help_text and "(default: 128)" in help_text


def test_unknown_hardware_is_refused_and_unmeasured_world_sizes_said(tmp_path):
    with pytest.raises(ValueError, match="unknown; known: .*NVIDIA H200\\|default"):
        inspect_factory(factories.mixed, world_size=2, hardware="Bogus GPU|default")
    report = inspect_factory(factories.mixed, world_size=4, hardware="NVIDIA H100 80GB HBM3|default")
    assert "has no line for world size 4 (min_bytes rule)" in report.to_text()
    assert report.sites[0].reason.endswith("the cost model has no line for NVIDIA H100 80GB HBM3|default|w4")


def test_console_script_finds_modules_in_the_current_directory(tmp_path):
    script = Path(sys.executable).with_name("flashcomm-compile")
    if not script.exists():
        pytest.skip("the console script is not installed")
    (tmp_path / "local_models.py").write_text("from tests.inspection.factories import mixed\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(script), "inspect", "local_models:mixed", "--format", "json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_html_renders_in_headless_chromium(report, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(report.to_html())
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    dom = done.stdout
    assert dom.count("<tr>") >= 8 and 'id="sites"' in dom and "reduce op max" in dom
    assert "diff_add" in dom  # the side-by-side diff rendered


def test_world_size_one_is_kept_exactly():
    def f(x):
        import torch.distributed as dist
        import torch.distributed._functional_collectives as funcol

        return funcol.all_reduce(x, "sum", dist.group.WORLD)

    report = flashcomm_compile.inspect(f, torch.randn(64, 256), world_size=1, mode="always")
    assert [(s.decision, s.reason) for s in report.sites] == [("kept", "world size 1")]
    assert report.graphs[0].before == report.graphs[0].after
