"""`flashcomm-compile inspect MODULE:FACTORY`: the inspection report from the command line.
`flashcomm-compile accuracy MODULE:FACTORY`: the candidate configs' error on the model's outputs, on real ranks.

Exit codes: 0 on success; 2 for a bad MODULE:FACTORY, a factory that raises (on any rank) or returns something else
than (model, example_inputs), a model that does not trace, an output that cannot be written or a bad option, and for
accuracy a model without an all-reduce to rewrite, exact outputs that differ across ranks or a --max-error no config
meets (the table is printed first), with a one-line message (the traceback too with --verbose). The current
directory is on the import path, as with `python -m`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .config import REWRITE_MODES, ROTATIONS, SUPPORTED_BITS, SUPPORTED_GROUP_SIZES, TRANSPORTS, FlashCommConfig
from .cost_model import known_hardware
from .evaluation import DEFAULT_MAX_ERROR, FRONTIER
from .factories import FactoryError, first_line, load_factory, model_and_inputs
from .kernels.layout import MAX_WORLD_SIZE


class UsageError(Exception):
    """A problem with what the user asked for, reported in one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashcomm-compile")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "inspect", help="show what the pass does to every all-reduce of a model, and why",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="The factory runs inside a fake process group of --world-size ranks (rank 0): build the TP model "
                    "with dist.get_rank(), dist.get_world_size() and dist.group.WORLD.")
    p.add_argument("target", metavar="MODULE:FACTORY", help="FACTORY() returns (model, example_inputs)")
    p.add_argument("--world-size", type=int, default=2, help=f"ranks of the fake process group, 1..{MAX_WORLD_SIZE}")
    p.add_argument("--reduce-bits", type=int, choices=SUPPORTED_BITS, default=FlashCommConfig.reduce_bits,
                   help="bits of the reduce-scatter")
    p.add_argument("--gather-bits", type=int, choices=SUPPORTED_BITS, default=FlashCommConfig.gather_bits,
                   help="bits of the all-gather")
    p.add_argument("--max-error", type=float, help="an error budget (relative RMS error per all-reduce): the bits "
                   "are the split with the fewest wire bits predicted within it, instead of --reduce/--gather-bits")
    p.add_argument("--group-size", type=int, choices=SUPPORTED_GROUP_SIZES, default=128,
                   help="values per scale and zero")
    p.add_argument("--spike-reserve", action="store_true", help="keep each group's extremes exactly")
    p.add_argument("--rotation", choices=ROTATIONS, default=FlashCommConfig.rotation,
                   help="quantize each group after a Hadamard transform (spreads outliers)")
    p.add_argument("--mode", choices=REWRITE_MODES, default="auto", help="which all-reduces to rewrite")
    p.add_argument("--min-bytes", type=int, default=FlashCommConfig.min_bytes,
                   help='"auto" on hardware the cost model has not measured: rewrite from this size')
    p.add_argument("--chunks", type=int, default=FlashCommConfig.chunks, help="pieces per all-reduce, pipelined")
    p.add_argument("--transport", choices=TRANSPORTS, default=FlashCommConfig.transport,
                   help="how the quantized bytes travel")
    p.add_argument("--hardware", choices=known_hardware(), metavar="CARD|LINK",
                   help=f"predict with the cost model's measurements of this GPU and link: {known_hardware()} "
                        "(default: this machine's)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="predict for a model replayed in CUDA graphs (mode reduce-overhead): no host time counted")
    p.add_argument("--dynamic", action="store_true", help="trace with dynamic shapes")
    p.add_argument("--format", choices=("text", "json", "html"), default="text")
    p.add_argument("--out", help="write the report here instead of standard output")
    p.add_argument("--full", action="store_true", help="the whole graph in the diff, not only changed regions")
    p.add_argument("--verbose", action="store_true", help="print tracebacks")
    _accuracy_parser(commands)
    return parser


def _accuracy_parser(commands) -> None:
    p = commands.add_parser(
        "accuracy", help="measure what each candidate config does to a model's outputs, on real ranks",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="The factory runs on --world-size real ranks (gloo on the CPU, NCCL where each rank has a GPU): "
                    "build the TP model with dist.get_rank(), dist.get_world_size() and dist.group.WORLD. The exact "
                    "run and every config's run compare the model's replicated outputs.")
    p.add_argument("target", metavar="MODULE:FACTORY", help="FACTORY() returns (model, example_inputs)")
    p.add_argument("--world-size", type=int, default=2, help=f"ranks, 2..{MAX_WORLD_SIZE}")
    p.add_argument("--configs", default=",".join(FRONTIER),
                   help="splits to measure, e.g. INT6/INT6,INT2+spike/INT4")
    p.add_argument("--rotations", default=",".join(ROTATIONS), help=f"each split with each of {list(ROTATIONS)}")
    p.add_argument("--group-size", type=int, choices=SUPPORTED_GROUP_SIZES, default=128,
                   help="values per scale and zero")
    p.add_argument("--max-error", type=float, default=DEFAULT_MAX_ERROR,
                   help="relative RMS error of the outputs the recommended config may make")
    p.add_argument("--vocab-size", type=int, help="an output whose last axis has this length holds logits (top-1 "
                   "agreement); default: the model's vocab_size or config.vocab_size")
    p.add_argument("--dynamic", action="store_true", help="compile with dynamic shapes")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--out", help="write the results here instead of standard output")
    p.add_argument("--quiet", action="store_true", help="no progress line per config")
    p.add_argument("--verbose", action="store_true", help="print tracebacks")


def _check_output(path: str | None) -> None:
    """Refuse an output path that cannot be written before the (slow) tracing starts."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"--out {path}: not writable")


def _inspect(args: argparse.Namespace) -> str:
    from .inspection import fake_process_group, inspect

    if not 1 <= args.world_size <= MAX_WORLD_SIZE:
        raise UsageError(f"--world-size must be in [1, {MAX_WORLD_SIZE}], got {args.world_size}")
    _check_output(args.out)
    options = dict(reduce_bits=args.reduce_bits, gather_bits=args.gather_bits, group_size=args.group_size,
                   spike_reserve=args.spike_reserve, rotation=args.rotation, mode=args.mode, min_bytes=args.min_bytes,
                   chunks=args.chunks, transport=args.transport, cuda_graphs=True if args.cuda_graphs else None,
                   max_error=args.max_error)
    try:
        FlashCommConfig(**options)
    except ValueError as e:
        raise UsageError(str(e)) from e
    factory = load_factory(args.target)
    with fake_process_group(args.world_size):
        try:
            made = factory()
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"factory {args.target} raised {type(e).__name__}: {e}") from e
        model, example_inputs = model_and_inputs(made, args.target)
        try:
            report = inspect(model, *example_inputs, world_size=args.world_size, hardware=args.hardware,
                             dynamic=True if args.dynamic else None, **options)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"the model did not trace at world size {args.world_size} ({type(e).__name__}: "
                             f"{first_line(e)}); shapes must divide by the world size; --verbose shows where")
    if args.format == "json":
        return report.to_json()
    if args.format == "html":
        return report.to_html(full=args.full)
    return report.to_text(full=args.full, color=args.out is None and sys.stdout.isatty())


def _accuracy(args: argparse.Namespace) -> str:
    from .evaluation import EvaluationError, evaluate

    if not 2 <= args.world_size <= MAX_WORLD_SIZE:
        raise UsageError(f"--world-size must be in [2, {MAX_WORLD_SIZE}], got {args.world_size}")
    if not args.max_error > 0:
        raise UsageError(f"--max-error must be positive, got {args.max_error}")
    _check_output(args.out)
    load_factory(args.target)  # a bad MODULE:FACTORY is reported before any rank starts
    configs = _configs(args)
    try:
        evaluation = evaluate(args.target, args.world_size, configs, args.max_error, True if args.dynamic else None,
                              args.vocab_size, progress=not args.quiet)
    except EvaluationError as e:
        if getattr(e, "evaluation", None) is not None:  # measured, but nothing fits: show what was measured
            _write(args, _render(e.evaluation, args.format))
        raise UsageError(str(e)) from e
    except RuntimeError as e:  # a rank failed after the factory: its traceback's last line says why
        raise UsageError(f"the run failed: {str(e).strip().splitlines()[-1]}") from e
    return _render(evaluation, args.format)


def _configs(args: argparse.Namespace) -> list:
    from .evaluation import candidates

    rotations = args.rotations.split(",")
    for rotation in rotations:
        if rotation not in ROTATIONS:
            raise UsageError(f"--rotations: {rotation!r} is not one of {list(ROTATIONS)}")
    try:
        return candidates(args.configs.split(","), rotations, args.group_size)
    except ValueError as e:
        raise UsageError(f"--configs: {e}") from e


def _render(evaluation, format: str) -> str:
    return evaluation.to_json() if format == "json" else evaluation.to_text()


def _write(args: argparse.Namespace, text: str) -> None:
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


def main(argv: list[str] | None = None) -> int:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # MODULE as `python -m` would find it
    args = _parser().parse_args(argv)
    try:
        text = _inspect(args) if args.command == "inspect" else _accuracy(args)
    except (UsageError, FactoryError) as e:
        if args.verbose:
            traceback.print_exc()
        print(f"flashcomm-compile: error: {e}", file=sys.stderr)
        return 2
    _write(args, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
