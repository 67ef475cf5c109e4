"""Hypothesis strategies for activations as TP all-reduces see them: normal values, outlier channels, constant
groups, all zeros, magnitudes near the dtype's maximum (with headroom, or up to it: groups spanning -max..max; the
exact sum stays finite), tiny values, values around the smallest normal number."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BITS = tuple(range(2, 9))
GROUP_SIZES = (32, 64, 128, 256, 512, 1024)
DISTRIBUTIONS = ("normal", "outliers", "constant_groups", "zeros", "huge", "full_range", "tiny", "subnormal")


# one all-reduce of W ranks' activations through the pipeline: @given(**PIPELINE_CASES)
PIPELINE_CASES = dict(
    world=st.integers(1, 8), dtype=st.sampled_from(DTYPES), distribution=st.sampled_from(DISTRIBUTIONS),
    numel=st.integers(1, 2500), seed=st.integers(0, 2**31 - 1), reduce_bits=st.sampled_from(BITS),
    gather_bits=st.sampled_from(BITS), group_size=st.sampled_from(GROUP_SIZES), spike=st.booleans(),
    rotate=st.booleans())


# sequence parallelism's reduce-scatter and all-gather of W ranks' [W * rows, width] activations: @given(**HALVES_CASES)
HALVES_CASES = dict(
    world=st.integers(2, 4), rows=st.integers(1, 3), width=st.integers(1, 200), dtype=st.sampled_from(DTYPES),
    distribution=st.sampled_from(DISTRIBUTIONS), seed=st.integers(0, 2**31 - 1), reduce_bits=st.sampled_from(BITS),
    gather_bits=st.sampled_from(BITS), group_size=st.sampled_from(GROUP_SIZES), spike=st.booleans(),
    rotate=st.booleans())


def interpreter_misreads(device: str, dtype: torch.dtype, distribution: str) -> bool:
    """Triton's CPU interpreter converts subnormal bfloat16 values to float32 wrongly (-1.05e-38 reads as -9.18e-39):
    such inputs can only be checked against the reference on a GPU."""
    return device == "cpu" and dtype == torch.bfloat16 and distribution == "subnormal"


def make_activation(numel: int, dtype: torch.dtype, distribution: str, seed: int, world_size: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=gen, dtype=torch.float64)
    if distribution == "outliers":
        hits = torch.randint(0, numel, (max(1, numel // 50),), generator=gen)
        x[hits] *= 500.0
    elif distribution == "constant_groups":
        x = x[torch.arange(numel) // 32]
    elif distribution == "zeros":
        x = torch.zeros(numel, dtype=torch.float64)
    elif distribution == "huge":
        x = x / x.abs().max().clamp_min(1e-30) * (torch.finfo(dtype).max / (2 * world_size))
    elif distribution == "full_range":  # groups spanning -max..max of the dtype over all ranks; finite exact sums
        x = x / x.abs().max().clamp_min(1e-30) * (torch.finfo(dtype).max / world_size)
    elif distribution == "tiny":
        x = x * 1e-6
    elif distribution == "subnormal":  # around the smallest normal number: scales far below 2^-100, subnormal values
        x = x * torch.finfo(dtype).tiny * 4
    return x.to(dtype)


@st.composite
def activations(draw, world_size: int = 1, max_numel: int = 3000):
    numel = draw(st.integers(1, max_numel))
    dtype = draw(st.sampled_from(DTYPES))
    distribution = draw(st.sampled_from(DISTRIBUTIONS))
    seed = draw(st.integers(0, 2**31 - 1))
    return make_activation(numel, dtype, distribution, seed, world_size)


def halves_config(reduce_bits: int, gather_bits: int, group_size: int, spike: bool, rotate: bool):
    from flashcomm_compile.config import FlashCommConfig

    return FlashCommConfig(reduce_bits=reduce_bits, gather_bits=gather_bits, group_size=group_size,
                           spike_reserve=spike, rotation="hadamard" if rotate else "none")


def halves_inputs(world: int, rows: int, width: int, dtype: torch.dtype, distribution: str,
                  seed: int) -> list[torch.Tensor]:
    """Each rank's [W * rows, width] activation."""
    return [make_activation(world * rows * width, dtype, distribution, seed + r, world).reshape(world * rows, width)
            for r in range(world)]
