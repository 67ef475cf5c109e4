"""An all-reduce cut into pieces (config.chunks): the pieces, the stage order in the rewritten graph, and results
bitwise equal to one simulated pipeline per piece on static sizes; a symbolic size runs one pipeline."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from hypothesis import given, strategies as st

from flashcomm_compile.pipeline import piece_bounds
from flashcomm_compile.kernels import reference
from flashcomm_compile.launch import run_ranks
from flashcomm_compile.pipeline import simulate
from tests.passes.test_rewrite_multirank import _compile, _everyone


@given(numel=st.integers(1, 10**6), chunks=st.integers(1, 64), world=st.integers(2, 8),
       group=st.sampled_from([32, 128, 1024]))
def test_pieces_cover_the_tensor_in_aligned_nonempty_blocks(numel, chunks, world, group):
    bounds = piece_bounds(numel, chunks, world * group)
    assert bounds[0][0] == 0 and bounds[-1][1] == numel
    assert all(end == start for (_, end), (start, _) in zip(bounds, bounds[1:]))
    assert all(start < end and start % (world * group) == 0 for start, end in bounds)
    assert len(bounds) <= chunks


def _per_piece_simulation(inputs, chunks, world, reduce_bits, gather_bits, group_size, spike):
    outputs = []
    for start, end in piece_bounds(inputs[0].numel(), chunks, world * group_size):
        run, _ = simulate(reference, [x.reshape(-1)[start:end] for x in inputs], reduce_bits, gather_bits,
                          group_size, spike)
        outputs.append(run.outputs[0])
    return torch.cat(outputs).view(inputs[0].shape)


def _static_pieces(rank, world):
    from torch._inductor import config as inductor_config

    results = []
    for dtype, config, shape in [(torch.float32, dict(reduce_bits=4, gather_bits=8, chunks=4, rotation="none"),
                                  (48, 320)),
                                 (torch.bfloat16, dict(reduce_bits=2, gather_bits=4, spike_reserve=True,
                                                       group_size=32, chunks=3, rotation="none"), (7, 33))]:
        torch.manual_seed(200 + rank)
        x = torch.randn(shape, dtype=dtype)
        compiled, backend = _compile(lambda t: funcol.all_reduce(t, "sum", dist.group.WORLD), dynamic=False,
                                     mode="always", **config)
        with inductor_config.patch(fx_graph_cache=False):
            out = compiled(x)
        expected = _per_piece_simulation(_everyone(x), config["chunks"], world, config["reduce_bits"],
                                         config["gather_bits"], config.get("group_size", 128),
                                         config.get("spike_reserve", False))
        order = _stage_calls(backend.records[0].after)
        results.append(dict(out=out, equal=torch.equal(out, expected), counts=dict(backend.records[0].op_counts),
                            order=order))
    return results


def _stage_calls(code: str) -> list[str]:
    """The pipeline's collectives and waits in a graph's code, in order (the record keeps the code, not the
    graph)."""
    names = ("all_to_all_single", "all_gather_into_tensor", "wait_tensor")
    return [name for line in code.splitlines() for name in names if f"{name}.default(" in line]


def test_static_size_cut_into_pieces_issued_stage_by_stage():
    ranks = run_ranks(2, _static_pieces)
    for case, pieces in enumerate((4, 2)):  # 15360 elements in 4 pieces; 231 in blocks of 64 -> 128 + 103
        counts, order = ranks[0][case]["counts"], ranks[0][case]["order"]
        for op in ("_c10d_functional.all_to_all_single.default", "_c10d_functional.all_gather_into_tensor.default"):
            assert counts[op] == pieces, (op, counts)
        assert counts["_c10d_functional.wait_tensor.default"] == 2 * pieces
        # every piece sent before any is reduced; each piece's gather started before the next piece is reduced
        stages = ["all_to_all_single"] * pieces + ["wait_tensor", "all_gather_into_tensor"] * pieces
        assert order == stages + ["wait_tensor"] * pieces
        for rank in ranks:
            assert rank[case]["equal"]
        assert torch.equal(ranks[0][case]["out"], ranks[1][case]["out"])


def _symbolic_pieces(rank, world):
    from torch._inductor import config as inductor_config

    compiled, backend = _compile(lambda t: funcol.all_reduce(t, "sum", dist.group.WORLD), dynamic=True,
                                 mode="always", chunks=4, rotation="none")
    equal = []
    with inductor_config.patch(fx_graph_cache=False):
        for seq in (3, 17, 64):
            x = torch.randn(seq, 256) + rank
            expected = _per_piece_simulation(_everyone(x), 1, world, 4, 8, 128, False)
            equal.append(torch.equal(compiled(x), expected))
    return dict(graphs=len(backend.records), equal=equal, ops=dict(backend.records[0].op_counts))


def test_symbolic_size_runs_one_pipeline_without_recompiling():
    """Pieces are cut where the size is known at compile time; a symbolic size gets one pipeline (cutting it in the
    graph would specialize the number of pieces on the size)."""
    result = run_ranks(2, _symbolic_pieces)[0]
    assert result["graphs"] == 1
    assert result["ops"]["_c10d_functional.all_to_all_single.default"] == 1
    assert result["equal"] == [True, True, True]
