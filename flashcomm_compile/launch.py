"""Run a function on W local ranks (spawned processes on 127.0.0.1, a free port) and collect the results.

NCCL with one GPU per rank where there are enough GPUs, gloo on the CPU otherwise. Used by the demo, the tests and
the benchmarks; benchmarks on many GPUs may use torchrun instead.
"""

from __future__ import annotations

import os
import pickle
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend(world_size: int) -> str:
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"


def rank_device(rank: int) -> torch.device:
    """This rank's GPU under NCCL, the CPU under gloo."""
    return torch.device("cuda", rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def _worker(rank, world_size, port, backend, fn, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        # pickled here: tensors sent through the queue would be shared memory that dies with this process
        queue.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        queue.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(world_size: int, fn, *args, backend: str = "gloo", timeout: float = 600.0) -> list:
    """fn(rank, world_size, *args) on every rank; returns the results in rank order or raises with a rank's error.

    fn must be importable by name (a module-level function); its result is pickled back to the caller."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, backend, fn, args, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(world_size):
            rank, ok, value = queue.get(timeout=timeout)
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world_size)]
