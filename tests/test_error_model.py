"""The error model behind `max_error` against the simulated pipeline: on Gaussian activations the relative RMS error
of every split of 2-8 bits lies within 10% of the prediction, at the smallest and the default group size and on 2
and 4 ranks."""

from __future__ import annotations

import pytest
import torch

from flashcomm_compile.error_model import predicted_error
from flashcomm_compile.kernels import reference
from flashcomm_compile.pipeline import simulate

SPLITS = [(r, g) for r in range(2, 9) for g in range(2, 9)]


@pytest.mark.parametrize("group_size, world", [(128, 2), (32, 4)])
def test_every_split_errs_as_predicted_on_gaussian_data(group_size, world):
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(64 * 1024, generator=generator) for _ in range(world)]
    exact = torch.stack([x.double() for x in inputs]).sum(0)
    for reduce_bits, gather_bits in SPLITS:
        run, _ = simulate(reference, inputs, reduce_bits, gather_bits, group_size, False)
        error = ((run.outputs[0].double() - exact).norm() / exact.norm()).item()
        predicted = predicted_error(reduce_bits, gather_bits, group_size)
        assert abs(error / predicted - 1) < 0.1, (reduce_bits, gather_bits, error, predicted)
