"""Timing that every rank does in lockstep: warm-up, then the median of many timed runs (CUDA events on GPUs)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.distributed as dist


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int = 3, iters: int = 10) -> float:
    """Median wall time of fn() in ms, the maximum over ranks (a collective step is as slow as its slowest rank)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if dist.is_initialized():
            dist.barrier()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    median = torch.tensor([statistics.median(samples)], dtype=torch.float64)
    if dist.is_initialized():
        if device.type == "cuda":
            median = median.to(device)
        dist.all_reduce(median, op=dist.ReduceOp.MAX)
    return median.item()


def graph_median_ms(fn: Callable[[], object], device: torch.device, calls: int = 10, iters: int = 20) -> float:
    """GPU time of one fn() in ms: `calls` back-to-back calls captured in one CUDA graph, replayed in lockstep.

    Without the graph a single call of a compiled function measures the CPU's launch overhead (guards, wrappers)
    more than the GPU's work; inside a model's graph that overhead is paid once for many kernels."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm-up (compiles, allocates) off the default stream, as capture requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    ms = median_ms(graph.replay, device, warmup=2, iters=iters) / calls
    del graph
    return ms


def back_to_back_us(fn: Callable[[], object], device: torch.device, calls: int = 20, iters: int = 5) -> float:
    """Time per call in us of `calls` back-to-back calls without CUDA graphs, as Inductor's default mode runs them:
    the host's cost (Python, launches, guards) shows wherever it exceeds the GPU's. Median of `iters`, slowest rank."""
    for _ in range(2):
        fn()
    samples = []
    for _ in range(iters):
        if dist.is_initialized():
            dist.barrier()
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    median = torch.tensor([statistics.median(samples)], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(median, op=dist.ReduceOp.MAX)
    return median.item()
