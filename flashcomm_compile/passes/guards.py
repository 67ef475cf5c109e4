"""When the quantized rewrite applies to an all-reduce: each check returns a decision with a reason people can read.

Every rank evaluates the same checks on the same graph and config, so every rank decides the same way; a
divergent decision would pair an all-to-all on one rank with an all-reduce on another and deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import FlashCommConfig
from ..kernels.layout import MAX_WORLD_SIZE, SUPPORTED_DTYPES
from .site import Site


@dataclass(frozen=True)
class Decision:
    rewrite: bool
    reason: str


def keep(reason: str) -> Decision:
    return Decision(False, reason)


def rewrite(reason: str) -> Decision:
    return Decision(True, reason)


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
    if config.mode == "never":
        return keep("mode never")
    if config.mode == "always":
        return rewrite("mode always")
    if site.proves(site.nbytes >= config.min_bytes):
        return rewrite(f"{site.nbytes} bytes >= min_bytes {config.min_bytes}")
    if site.proves(site.nbytes < config.min_bytes):
        return keep(f"below min_bytes ({site.nbytes} < {config.min_bytes})")
    return keep(f"{site.nbytes} bytes not provably >= min_bytes {config.min_bytes}")
