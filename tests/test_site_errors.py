"""benchmarks/site_errors.py: the per-site statistics that explain where the quantization error comes from."""

from __future__ import annotations

import torch

from benchmarks.site_errors import site_row


def _ranks_with_outlier_channel(tokens: int = 64, hidden: int = 256, height: float = 200.0):
    generator = torch.Generator().manual_seed(0)
    ranks = [torch.randn(tokens, hidden, generator=generator) for _ in range(2)]
    for x in ranks:
        x[:, 7] = height  # one channel per token row: one value per group of 128 carries the group
    return ranks


def test_an_outlier_channel_is_found_and_rotation_takes_its_error_away():
    row = site_row(_ranks_with_outlier_channel(), (4, 8), 128)
    assert row["plain_peaky_groups"] == 0.5  # every row's first group of two
    assert row["rotated_peaky_groups"] == 0.0
    assert row["plain_error_share_peaky"] > 0.99
    assert row["rotated_error"] < row["plain_error"] / 2
    assert 0.09 < row["gaussian_error"] < 0.11  # INT4/INT8 g128 on Gaussian inputs: 0.0999 (docs/results.md)


def test_without_outliers_rotation_changes_little():
    generator = torch.Generator().manual_seed(1)
    row = site_row([torch.randn(64, 256, generator=generator) for _ in range(2)], (4, 8), 128)
    assert row["plain_peaky_groups"] == 0.0
    assert abs(row["rotated_error"] - row["plain_error"]) < 0.01

