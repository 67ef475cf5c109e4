"""The README's quickstart on 2 gloo ranks, both ways of writing TP, and as an inspect factory."""

from __future__ import annotations

import pytest

from flashcomm_compile.examples import quickstart
from flashcomm_compile.inspection import inspect_factory
from flashcomm_compile.launch import run_ranks

SMALL = dict(dim=256, hidden=512, tokens=64)


def _run(rank, world, dtensor):
    return quickstart.run(dtensor, **SMALL)


@pytest.mark.parametrize("dtensor", [False, True])
def test_quickstart_rewrites_the_all_reduce(dtensor):
    for rank in run_ranks(2, _run, dtensor):
        assert rank["decisions"] == [(True, "mode always")] and not rank["from_cache"]
        assert 0 < rank["relative_error"] < 0.15  # INT4/INT8 on Gaussian data: about 0.1


def test_quickstart_factory_inspects_on_a_laptop():
    report = inspect_factory(lambda: quickstart.make_tp_mlp(**SMALL), world_size=2, mode="always")
    assert [s.decision for s in report.sites] == ["rewritten"]
