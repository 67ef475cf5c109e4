"""When the quantized rewrite applies to an all-reduce, and over which transport: each check returns a decision with
a reason people can read.

Every rank evaluates the same checks on the same graph, config and machine, so every rank decides the same way; a
divergent decision would pair an all-to-all on one rank with an all-reduce on another and deadlock. A symbolic size
that a threshold splits is specialized: the compiled code is guarded on the side its first size fell, and a size on
the other side compiles once more (every rank sees the same sizes, so every rank recompiles alike).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import cost_model
from ..config import FlashCommConfig
from ..kernels.layout import MAX_WORLD_SIZE, SUPPORTED_DTYPES
from ..symmetric import peer_access_problem
from .site import Site


@dataclass(frozen=True)
class Decision:
    rewrite: bool
    reason: str
    transport: str | None = None  # where rewritten: "nccl" or "symm_mem"
    transport_reason: str = ""
    prediction: cost_model.Prediction | None = None


def keep(reason: str, prediction=None) -> Decision:
    return Decision(False, reason, prediction=prediction)


def eligibility(site: Site) -> Decision | None:
    """Why the rewrite cannot apply at all, or None when it can."""
    if site.reduce_op not in ("sum", None):  # None: an all-gather, which reduces nothing
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


def transport(site: Site, config: FlashCommConfig) -> tuple[str | None, str]:
    """The transport for this site and why; None where the configured one cannot run here."""
    assumed = cost_model.assumed_hardware()
    on_gpu = site.value.device.type == "cuda"
    if config.transport == "nccl":
        return "nccl", "transport nccl"
    if config.transport == "symm_mem":
        if not on_gpu and assumed is None:
            return None, f"transport symm_mem needs CUDA tensors, not {site.value.device.type}"
        return "symm_mem", "transport symm_mem"
    if config.chunks > 1 and site.kind == "all-reduce":
        return "nccl", "auto: pieces need NCCL's collectives"
    if assumed is not None:
        if assumed.endswith("|p2p-disabled"):
            return "nccl", f"auto: {assumed} does not map peers' memory"
        return "symm_mem", f"auto: {assumed} maps peers' memory"
    if not on_gpu:
        return "nccl", f"auto: {site.value.device.type} tensors"
    problem = peer_access_problem(site.world_size)
    if problem is not None:
        return "nccl", f"auto: {problem}"
    return "symm_mem", "auto: the group's GPUs map each other's memory"


def _decided_before_costs(site: Site,
                          config: FlashCommConfig) -> Decision | tuple[str, str, cost_model.Prediction | None]:
    """The decision where costs do not matter (kept before any is weighed, or mode "always"), else, for mode "auto",
    the transport the site would take, why, and its cost model prediction (None where nothing was measured)."""
    ineligible = eligibility(site)
    if ineligible is not None:
        return ineligible
    if config.mode == "never":
        return keep("mode never")
    chosen, why = transport(site, config)
    if chosen is None:
        return keep(why)
    if config.mode == "always":
        return Decision(True, "mode always", chosen, why)
    return chosen, why, cost_model.predict(site.value.device, site.world_size, config.with_transport(chosen))


def quantized_all_reduce(site: Site, config: FlashCommConfig) -> Decision:
    decided = _decided_before_costs(site, config)
    if isinstance(decided, Decision):
        return decided
    chosen, why, prediction = decided
    if prediction is None:
        unmeasured = cost_model.hardware_key(site.value.device, site.world_size)
        return _by_threshold(site, config.min_bytes, "min_bytes", None, chosen, why,
                             note=f"; the cost model has no line for {unmeasured}")
    if math.isinf(prediction.threshold_bytes):
        return keep(f"predicted slower than NCCL at every size on {prediction.hardware}", prediction)
    return _by_threshold(site, math.ceil(prediction.threshold_bytes), "the cost model's threshold", prediction,
                         chosen, why)


def quantized_half(site: Site, config: FlashCommConfig) -> Decision:
    """Sequence parallelism's reduce-scatter or all-gather, as one half of the pipeline, over the transport chosen as
    for an all-reduce. Only mode "always" rewrites it: no two-GPU run has timed it against NCCL yet, and the default
    options must never make a model slower. "auto" keeps it with the times predicted from the all-reduce's lines."""
    decided = _decided_before_costs(site, config)
    if isinstance(decided, Decision):
        return decided
    prediction = decided[2]
    return keep(f"mode auto: no {site.kind} has been timed against NCCL yet (mode always rewrites it)",
                cost_model.for_kind(prediction, site.kind, site.world_size))


def _by_threshold(site: Site, threshold: int, name: str, prediction, chosen: str, why: str,
                  note: str = "") -> Decision:
    """Rewrite from `threshold` bytes. A symbolic size that the graph does not place on one side is specialized to
    the side its current size lies (a guard; the other side compiles once more)."""
    if site.proves(site.nbytes >= threshold):
        return Decision(True, f"{site.nbytes} bytes >= {name} {threshold}{note}", chosen, why, prediction)
    if site.proves(site.nbytes < threshold):
        return keep(f"below {name} ({site.nbytes} < {threshold}){note}", prediction)
    if site.specialize(site.nbytes >= threshold):
        return Decision(True, f"{site.nbytes} bytes >= {name} {threshold} (specialized: smaller sizes compile "
                              f"again){note}", chosen, why, prediction)
    return keep(f"below {name} ({site.nbytes} < {threshold}; specialized: larger sizes compile again){note}",
                prediction)
