"""The benchmark helpers whose output lands in the package or the docs: the cost-model fit, the launch sweep and the
launch pick."""

from __future__ import annotations

import pytest

from benchmarks.fit_cost_model import auto_worst_ratio, fit_line, predict_splits, within_target_in_sample
from flashcomm_compile.cost_model import Line, Prediction
from flashcomm_compile.kernels.launches import LAUNCH, Launch, parse_launch
from benchmarks.kernel_bandwidth import SWEEP_ELEMENTS, SWEEP_PER_THREAD_WARPS, SWEEP_WARPS, each_launch, fastest


def test_fit_line_recovers_latency_and_bandwidth():
    points = [(mb, 20.0 + 5.0 * mb) for mb in (0.1, 1.0, 10.0, 100.0)]
    assert fit_line(points) == dict(latency_us=20.0, us_per_mb=5.0)


def _kernel_run(extra_ms: float) -> dict:
    """A kernel_bandwidth --splits result: every kernel 0.01 ms, the 6-bit ones `extra_ms` more."""
    rows = [dict(config=f"INT{b}/INT{b}{rotation}", kernel=kernel, ms=0.01 + (extra_ms if b == 6 else 0.0))
            for b in range(4, 9) for rotation in ("", " hadamard")
            for kernel in ("quantize", "dequant_sum_requant", "dequantize")]
    rows += [dict(config=f"INT4/INT8{rotation}", kernel=kernel, ms=0.01) for rotation in ("", " hadamard")
             for kernel in ("quantize", "dequant_sum_requant", "dequantize")]
    return dict(numel=5 * 10**5, rows=rows, environment=dict(card="GPU", date="2026-12-07T00:00:00"))


def test_predicted_lines_add_wire_bytes_and_kernel_time_to_the_measured_int4_int8():
    """INT6/INT6 moves INT4/INT8's bytes: its line is INT4/INT8's plus its kernels' extra time per MB (3 kernels x
    1 us over 1 MB of bf16 values); INT8/INT8-like splits pay the transport's cost per wire bit; measured lines
    stay."""
    measured = {"nccl": dict(latency_us=10.0, us_per_mb=10.0),
                "INT4/INT4 g128": dict(latency_us=20.0, us_per_mb=2.0),
                "INT4/INT8 g128": dict(latency_us=20.0, us_per_mb=3.0),
                "INT8/INT8 g128": dict(latency_us=20.0, us_per_mb=4.0),
                "INT5/INT5 g128": dict(latency_us=25.0, us_per_mb=2.5)}
    table = {"GPU|default|w2": dict(measured)}
    predict_splits(table, _kernel_run(extra_ms=0.001))
    entry = table["GPU|default|w2"]
    assert entry["INT6/INT6 g128"]["us_per_mb"] == pytest.approx(3.0 + 3 * 1.0)
    assert entry["INT7/INT7 g128"]["us_per_mb"] == pytest.approx(3.0 + 2 * 0.25)  # 2 wire bits beyond INT4/INT8
    assert entry["INT6/INT6 g128"]["predicted"].startswith("predicted from wire bytes and kernel times on one GPU")
    assert entry["INT5/INT5 g128"] == measured["INT5/INT5 g128"]
    assert "INT6/INT6 g128 symm_mem" not in entry  # no measured symm_mem INT4/INT8 to predict from


def test_fit_line_lets_small_sizes_decide_the_latency():
    """A path whose large sizes bend (here 10% slower beyond 100 MB): an absolute fit would let them pull the
    latency to 0; relative to each time, the small sizes keep it near their 20 us."""
    points = [(mb, 20.0 + 5.0 * mb * (1.1 if mb > 100 else 1.0)) for mb in (0.01, 0.1, 1.0, 10.0, 100.0, 200.0, 400.0)]
    assert fit_line(points)["latency_us"] == pytest.approx(20.0, rel=0.1)


def test_fit_line_keeps_the_latency_at_least_half_the_smallest_time():
    points = [(1.0, 10.0), (100.0, 1000.0), (200.0, 2100.0)]  # least squares would put the latency below zero
    assert fit_line(points)["latency_us"] == pytest.approx(5.0)


def test_auto_worst_ratio_counts_only_sizes_it_rewrites():
    rows = [dict(MB=1.0, **{"nccl us": 10.0, "X us": 30.0}), dict(MB=100.0, **{"nccl us": 100.0, "X us": 80.0})]
    assert auto_worst_ratio(rows, "X", threshold_bytes=50e6) == 1.0  # 1 MB stays on NCCL
    assert auto_worst_ratio(rows, "X", threshold_bytes=0) == 3.0


def test_a_poorly_fitting_line_is_moved_above_the_sizes_where_auto_would_lose():
    rows = [dict(MB=mb, **{"nccl us": 10 + 6 * mb, "X us": t}) for mb, t in ((1, 14), (10, 77), (100, 400))]
    nccl, line = Line(10, 6), Line(5, 4)  # predicts a gain from 0 MB; measured 1.1x NCCL at 10 MB
    assert auto_worst_ratio(rows, "X", Prediction("", nccl, line).threshold_bytes) > 1.05
    moved = within_target_in_sample(rows, "X", nccl, line)
    assert moved.us_per_mb == line.us_per_mb and moved.latency_us > line.latency_us
    assert auto_worst_ratio(rows, "X", Prediction("", nccl, moved).threshold_bytes) <= 1.05
    assert within_target_in_sample(rows, "X", nccl, moved) == moved


def test_fastest_launch_per_kernel_in_flashcomm_launch_syntax():
    """Elements x warps from the fastest plain row; the one-group-per-thread warps from the fastest rotated row."""
    rows = [dict(kernel="quantize", rotation="none", elements=2048, warps=4, ms=0.05),
            dict(kernel="quantize", rotation="none", elements=8192, warps=4, ms=0.04),
            dict(kernel="quantize", rotation="none", elements=8192, warps=8, error="OutOfResources"),
            dict(kernel="quantize", rotation="hadamard", per_thread_warps=2, ms=0.02),
            dict(kernel="quantize", rotation="hadamard", per_thread_warps=4, ms=0.01),
            dict(kernel="dequantize", rotation="none", elements=4096, warps=8, ms=0.03)]
    assert fastest(rows) == "quantize=8192x4x4,dequantize=4096x8"
    assert parse_launch(fastest(rows)) == {"quantize": Launch(8192, 4, 4),
                                           "dequantize": Launch(4096, 8, LAUNCH["dequantize"].per_thread_warps)}


@pytest.mark.parametrize("per_thread", [False, True])
def test_each_launch_sets_every_candidate_and_puts_the_chosen_one_back(per_thread):
    chosen = LAUNCH["quantize"]
    seen = [(row, LAUNCH["quantize"]) for row in each_launch("quantize", per_thread)]
    if per_thread:
        assert [r["per_thread_warps"] for r, _ in seen] == list(SWEEP_PER_THREAD_WARPS)
        assert all(launch == Launch(chosen.elements, chosen.warps, r["per_thread_warps"]) for r, launch in seen)
    else:
        assert [(r["elements"], r["warps"]) for r, _ in seen] == [(e, w) for e in SWEEP_ELEMENTS for w in SWEEP_WARPS]
        assert all(launch == Launch(r["elements"], r["warps"], chosen.per_thread_warps) for r, launch in seen)
    assert LAUNCH["quantize"] == chosen
    with pytest.raises(RuntimeError):
        for _ in each_launch("quantize", per_thread):
            raise RuntimeError("the kernel failed")
    assert LAUNCH["quantize"] == chosen
