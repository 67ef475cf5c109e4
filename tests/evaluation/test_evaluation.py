"""`evaluate` and `flashcomm-compile accuracy` on 2 gloo ranks: each config's error on the model's outputs against the
exact run, the worst site's own error, top-1 on logits, the recommendation, and the errors users get instead of a
traceback."""

from __future__ import annotations

import json

import pytest

from flashcomm_compile.cli import main
from flashcomm_compile.evaluation import EvaluationError, candidates, evaluate, parse_split

FACTORIES = "tests.evaluation.factories"


def test_each_config_against_the_exact_run_and_the_fewest_bits_within_the_budget():
    evaluation = evaluate(f"{FACTORIES}:llama_with_head", 2, candidates(["INT8/INT8", "INT4/INT8"], ("none",)),
                          max_error=1.0, progress=False)
    assert evaluation.outputs == [[1, 32, 1000]] and evaluation.backend == "gloo"
    modules = {f"llama.layers.{i}.{m}" for i in (0, 1) for m in ("attention.wo", "feed_forward.w2")}
    assert {s["module"] for s in evaluation.sites} == modules
    int8, int4 = evaluation.configs
    assert (int8.config, int4.config) == ("INT8/INT8 g128", "INT4/INT8 g128")
    assert (int8.wire_bits_per_value, int4.wire_bits_per_value) == (17.0, 13.0)
    assert 0 < int8.relative_error < int4.relative_error < 0.2
    assert int8.worst_site["error"] < int4.worst_site["error"] and int4.worst_site["module"] in modules
    assert int4.cosine < int8.cosine <= 1 and 0 < int8.max_abs_error < int4.max_abs_error
    assert 0.5 < int4.top1_agreement <= 1 and 0.5 < int8.top1_agreement <= 1  # the model's vocab_size: logits
    assert evaluation.recommended is int4  # fewest wire bits within 1.0
    evaluation.max_error = (int8.relative_error + int4.relative_error) / 2
    assert evaluation.recommended is int8
    assert "recommended (fewest wire bits within --max-error" in evaluation.to_text()


def test_a_single_all_reduce_errs_on_the_output_as_on_its_own():
    """One all-reduce of the ranks' own inputs: the output's error is the site's simulated one, and rotation cuts
    the error an outlier column makes."""
    plain, rotated = evaluate(f"{FACTORIES}:one_all_reduce", 2, candidates(["INT4/INT8"]), max_error=1.0,
                              progress=False).configs
    for row in (plain, rotated):
        assert row.relative_error == pytest.approx(row.worst_site["error"], rel=1e-3)
        assert row.top1_agreement is None
    assert rotated.relative_error < plain.relative_error / 2


@pytest.mark.parametrize("factory, message", [
    ("fails_on_rank_1", "factory tests.evaluation.factories:fails_on_rank_1 failed on rank 1: ValueError: no weights"),
    ("no_all_reduce", "the model has no all-reduce the pass can rewrite"),
    ("sharded_output", "the exact run's outputs differ between rank 0 and rank 1"),
])
def test_what_cannot_be_evaluated_says_why(factory, message):
    with pytest.raises(EvaluationError, match=message.replace("(", r"\(")):
        evaluate(f"{FACTORIES}:{factory}", 2, candidates(["INT4/INT8"], ("none",)), progress=False)


def test_cli_prints_the_table_then_fails_where_no_config_meets_the_budget(tmp_path, capsys):
    out = tmp_path / "accuracy.json"
    code = main(["accuracy", f"{FACTORIES}:one_all_reduce", "--configs", "INT8/INT8,INT2+spike/INT4",
                 "--rotations", "none", "--max-error", "1e-9", "--format", "json", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no config meets --max-error 1e-09: the least erring, INT8/INT8 g128" in err
    assert "Traceback" not in err
    data = json.loads(out.read_text())
    assert data["version"] == 1 and data["recommended"] is None and data["world_size"] == 2
    assert [c["config"] for c in data["configs"]] == ["INT8/INT8 g128", "INT2+spike/INT4 g128"]
    assert data["configs"][1]["options"]["spike_reserve"] is True


@pytest.mark.parametrize("args, message", [
    (["--configs", "INT9/INT4"], "--configs: reduce_bits must be one of"),
    (["--configs", "6/6"], "--configs: '6/6' is not a split like INT6/INT6"),
    (["--rotations", "random"], "--rotations: 'random' is not one of"),
    (["--world-size", "1"], "--world-size must be in [2, 64]"),
])
def test_cli_rejects_bad_options_before_starting_ranks(args, message, capsys):
    assert main(["accuracy", f"{FACTORIES}:one_all_reduce", *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_names_the_rank_whose_factory_failed(capsys):
    assert main(["accuracy", f"{FACTORIES}:fails_on_rank_1", "--configs", "INT4/INT8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "failed on rank 1: ValueError: no weights for this rank" in err and "Traceback" not in err


def test_splits_are_named_as_the_readme_names_them():
    assert parse_split("INT6/INT6") == dict(reduce_bits=6, gather_bits=6, spike_reserve=False)
    assert parse_split("INT2+spike/INT4") == dict(reduce_bits=2, gather_bits=4, spike_reserve=True)
