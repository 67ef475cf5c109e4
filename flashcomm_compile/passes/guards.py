"""When the quantized rewrite applies to an all-reduce: each check returns a decision with a reason people can read.

Every rank evaluates the same checks on the same graph and config, so every rank decides the same way; a
divergent decision would pair an all-to-all on one rank with an all-reduce on another and deadlock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import cost_model
from ..config import FlashCommConfig
from ..kernels.layout import MAX_WORLD_SIZE, SUPPORTED_DTYPES
from .site import Site


@dataclass(frozen=True)
class Decision:
    rewrite: bool
    reason: str
    # set when the size is symbolic and not provably on one side: flashcomm from this many bytes, at run time
    runtime_threshold: int | None = None
    prediction: cost_model.Prediction | None = None


def keep(reason: str, prediction=None) -> Decision:
    return Decision(False, reason, prediction=prediction)


def rewrite(reason: str, prediction=None) -> Decision:
    return Decision(True, reason, prediction=prediction)


def eligibility(site: Site) -> Decision | None:
    """Why the rewrite cannot apply at all, or None when it can."""
    if site.reduce_op != "sum":
        return keep(f"reduce op {site.reduce_op}")
    if site.dtype not in SUPPORTED_DTYPES:
        return keep(f"dtype {str(site.dtype).removeprefix('torch.')}")
    if site.world_size is None:
        return keep(f"process group {site.group_name!r} unknown")
    if site.world_size < 2:
        return keep(f"world size {site.world_size}")
    if site.world_size > MAX_WORLD_SIZE:
        return keep(f"world size {site.world_size} > {MAX_WORLD_SIZE}")
    if site.proves(site.numel == 0):
        return keep("empty tensor")
    return None


def quantized_all_reduce(site: Site, config: FlashCommConfig) -> Decision:
    ineligible = eligibility(site)
    if ineligible is not None:
        return ineligible
    if config.transport == "symm_mem" and site.value.device.type != "cuda" and cost_model.assumed_hardware() is None:
        return keep(f"transport symm_mem needs CUDA tensors, not {site.value.device.type}")
    if config.mode == "never":
        return keep("mode never")
    if config.mode == "always":
        return rewrite("mode always")
    prediction = cost_model.predict(site.value.device, site.world_size, config)
    if prediction is None:
        return _by_threshold(site, config.min_bytes, "min_bytes", None)
    if math.isinf(prediction.threshold_bytes):
        return keep(f"predicted slower than NCCL at every size on {prediction.hardware}", prediction)
    return _by_threshold(site, math.ceil(prediction.threshold_bytes), "the cost model's threshold", prediction)


def _by_threshold(site: Site, threshold: int, name: str, prediction) -> Decision:
    """Rewrite from `threshold` bytes: at compile time where the size decides it, else at run time."""
    if site.proves(site.nbytes >= threshold):
        return rewrite(f"{site.nbytes} bytes >= {name} {threshold}", prediction)
    if site.proves(site.nbytes < threshold):
        return keep(f"below {name} ({site.nbytes} < {threshold})", prediction)
    return Decision(True, f"decided at run time: flashcomm from {threshold} bytes ({name})", threshold, prediction)
