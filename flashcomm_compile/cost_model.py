"""Predicted time of an all-reduce on each path, from constants the all-reduce benchmark measured, and of
sequence parallelism's reduce-scatter and all-gather, from the all-reduce's lines (none of them has been timed).

Each path is modelled as latency + size / bandwidth (a line in microseconds against megabytes), fitted per GPU,
link mode and world size by `benchmarks/fit_cost_model.py` into `cost_table.json` from GPU time in CUDA graphs.
Without CUDA graphs a rewritten all-reduce also costs the host time its transport adds to Inductor's NCCL call
(HOST_US), which the GPU waits for when the model is small: it is added to the flashcomm line there. "auto" rewrites
an all-reduce only where the flashcomm line lies at least SAFETY below NCCL's, so a misprediction of a few percent
cannot make it slower; where the table has no entry for the hardware it falls back to the `min_bytes` threshold.
Splits no two-GPU run has timed have lines predicted from measured ones, marked so (`benchmarks/fit_cost_model.py
--predict`).
The decision depends only on the message size, the config and the hardware, which every rank shares, so every rank
agrees.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import FlashCommConfig

TABLE_PATH = Path(__file__).with_name("cost_table.json")
SAFETY = 0.95  # rewrite only where predicted flashcomm time <= SAFETY x predicted NCCL time
# Host time a rewritten all-reduce adds to the all-reduce Inductor compiles, where no CUDA graph replays it, per
# transport: the lowered symm_mem pipeline (five kernel launches) costs the host no more than Inductor's NCCL call;
# the NCCL transport's two collectives about 0.3 ms more (docs/results.md, the 2026-11-28 2x H200 run: "no graphs").
HOST_US = {"symm_mem": 0.0, "nccl": 320.0}


@dataclass(frozen=True)
class Line:
    latency_us: float
    us_per_mb: float

    def predict_us(self, nbytes: float) -> float:
        return self.latency_us + self.us_per_mb * nbytes / 1e6


@dataclass(frozen=True)
class Prediction:
    """The two lines for one hardware; `flashcomm` includes `host_us` where no CUDA graph hides the host time.
    `predicted`: where no two-GPU run measured the flashcomm line, what it was predicted from (the table says)."""

    hardware: str
    nccl: Line
    flashcomm: Line
    host_us: float = 0.0
    predicted: str = ""

    @property
    def threshold_bytes(self) -> float:
        """Smallest size from which flashcomm is predicted at least 1/SAFETY times faster (inf: never)."""
        gain = SAFETY * self.nccl.us_per_mb - self.flashcomm.us_per_mb
        if gain <= 0:
            return math.inf
        return max(0.0, (self.flashcomm.latency_us - SAFETY * self.nccl.latency_us) / gain * 1e6)


def link_mode() -> str:
    return "p2p-disabled" if os.environ.get("NCCL_P2P_DISABLE") == "1" else "default"


_assumed: contextvars.ContextVar[str | None] = contextvars.ContextVar("flashcomm_assumed_hardware", default=None)


@contextlib.contextmanager
def assume_hardware(card_and_link: str | None):
    """Predict for another machine ("NVIDIA H200|default"), as `inspect` does on a laptop for the target GPUs."""
    token = _assumed.set(card_and_link)
    try:
        yield
    finally:
        _assumed.reset(token)


def assumed_hardware() -> str | None:
    return _assumed.get()


def hardware_key(device: torch.device, world_size: int) -> str:
    assumed = assumed_hardware()
    if assumed is not None:
        return f"{assumed}|w{world_size}"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{card}|{link_mode()}|w{world_size}"


@functools.cache
def _table() -> dict:
    return json.loads(TABLE_PATH.read_text()) if TABLE_PATH.exists() else {}


def measured(key: str) -> bool:
    """Whether the table has lines for "CARD|LINK|wW"."""
    return key in _table()


def known_hardware() -> list[str]:
    """The "CARD|LINK" keys the table has measurements for (any world size)."""
    return sorted({key.rsplit("|", 1)[0] for key in _table()})


def replayed_in_cuda_graphs(config: FlashCommConfig) -> bool:
    """config.cuda_graphs, or where it is None whether Inductor is compiling for CUDA graphs (read during the pass)."""
    if config.cuda_graphs is not None:
        return config.cuda_graphs
    from torch._inductor import config as inductor_config

    return bool(inductor_config.triton.cudagraphs)


def predict(device: torch.device, world_size: int, config: FlashCommConfig) -> Prediction | None:
    """The two lines for this hardware and config (its transport chosen), or None where nothing was measured."""
    if config.transport == "auto":
        raise ValueError("cost_model.predict needs a chosen transport ('nccl' or 'symm_mem'), got 'auto'")
    key = hardware_key(device, world_size)
    entry = _table().get(key, {})
    if "nccl" not in entry or config.variant not in entry:
        return None
    host_us = 0.0 if replayed_in_cuda_graphs(config) else HOST_US[config.transport]
    line = entry[config.variant]
    return Prediction(key, Line(**entry["nccl"]), Line(line["latency_us"] + host_us, line["us_per_mb"]), host_us,
                      line.get("predicted", ""))


def plain_wire_bytes(kind: str, nbytes: int, world: int) -> int:
    """What the plain collective of `kind` moves for an input of `nbytes`, as payloads are counted: a ring all-reduce
    moves the tensor twice, a reduce-scatter its input once, an all-gather its output (world times the input) once."""
    return {"all-reduce": 2 * nbytes, "reduce-scatter": nbytes, "all-gather": world * nbytes}[kind]


def for_kind(prediction: Prediction | None, kind: str, world_size: int) -> Prediction | None:
    """The prediction for a collective of `kind` whose input has as many bytes as the all-reduce's: each path's
    bandwidth term scaled by the share of an all-reduce's traffic the kind moves per input byte (`plain_wire_bytes`:
    a reduce-scatter half of it, an all-gather W / 2), latency and host time kept (an overestimate where the half
    issues fewer launches). Marked predicted: no reduce-scatter or all-gather has been timed."""
    if prediction is None or kind == "all-reduce":
        return prediction
    share = plain_wire_bytes(kind, 1, world_size) / plain_wire_bytes("all-reduce", 1, world_size)
    scaled = [Line(line.latency_us, line.us_per_mb * share) for line in (prediction.nccl, prediction.flashcomm)]
    source = f"the all-reduce's lines x {share:g} a byte (no {kind} timed)"
    return Prediction(prediction.hardware, *scaled, prediction.host_us,
                      source + (f"; those {prediction.predicted}" if prediction.predicted else ""))
