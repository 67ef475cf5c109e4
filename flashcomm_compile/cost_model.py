"""Predicted time of an all-reduce on each path, from constants the all-reduce benchmark measured.

Each path is modelled as latency + size / bandwidth (a line in microseconds against megabytes), fitted per GPU,
link mode and world size by `benchmarks/fit_cost_model.py` into `cost_table.json`. "auto" rewrites an all-reduce
only where the flashcomm line lies at least SAFETY below NCCL's, so a misprediction of a few percent cannot make it
slower; where the table has no entry for the hardware it falls back to the `min_bytes` threshold. The decision
depends only on the message size, the config and the hardware, which every rank shares, so every rank agrees.
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


@dataclass(frozen=True)
class Line:
    latency_us: float
    us_per_mb: float

    def predict_us(self, nbytes: float) -> float:
        return self.latency_us + self.us_per_mb * nbytes / 1e6


@dataclass(frozen=True)
class Prediction:
    hardware: str
    nccl: Line
    flashcomm: Line

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


def predict(device: torch.device, world_size: int, config: FlashCommConfig) -> Prediction | None:
    """The two lines for this hardware and config, or None where nothing was measured."""
    key = hardware_key(device, world_size)
    entry = _table().get(key, {})
    if "nccl" not in entry or config.variant not in entry:
        return None
    return Prediction(key, Line(**entry["nccl"]), Line(**entry[config.variant]))
