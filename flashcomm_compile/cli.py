"""`flashcomm-compile inspect MODULE:FACTORY`: the inspection report from the command line.

Exit codes: 0 on success; 2 for a bad MODULE:FACTORY, a factory that raises or returns something else than
(model, example_inputs), a model that does not trace, an output that cannot be written or a bad option, with a
one-line message (the traceback too with --verbose). The current directory is on the import path, as with
`python -m`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from .config import REWRITE_MODES, ROTATIONS, SUPPORTED_BITS, SUPPORTED_GROUP_SIZES, TRANSPORTS, FlashCommConfig
from .cost_model import known_hardware
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
    return parser


def _load_factory(target: str):
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UsageError(f"expected MODULE:FACTORY, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise UsageError(f"cannot import module {module_name!r}: {type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{module_name!r} has no callable {attr!r}")
    return factory


def _check_output(path: str | None) -> None:
    """Refuse an output path that cannot be written before the (slow) tracing starts."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"--out {path}: not writable")


def _model_and_inputs(made, target: str) -> tuple:
    if not (isinstance(made, (tuple, list)) and len(made) == 2 and callable(made[0])
            and isinstance(made[1], (tuple, list))):
        raise UsageError(f"factory {target} returned {type(made).__name__} {str(made)[:80]!r}; expected "
                         "(model, example_inputs): a callable and a tuple of its inputs")
    return made


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
    factory = _load_factory(args.target)
    with fake_process_group(args.world_size):
        try:
            made = factory()
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"factory {args.target} raised {type(e).__name__}: {e}") from e
        model, example_inputs = _model_and_inputs(made, args.target)
        try:
            report = inspect(model, *example_inputs, world_size=args.world_size, hardware=args.hardware,
                             dynamic=True if args.dynamic else None, **options)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"the model did not trace at world size {args.world_size} ({type(e).__name__}: "
                             f"{_first_line(e)}); shapes must divide by the world size; --verbose shows where")
    if args.format == "json":
        return report.to_json()
    if args.format == "html":
        return report.to_html(full=args.full)
    return report.to_text(full=args.full, color=args.out is None and sys.stdout.isatty())


def _first_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def main(argv: list[str] | None = None) -> int:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # MODULE as `python -m` would find it
    args = _parser().parse_args(argv)
    try:
        text = _inspect(args)
    except UsageError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"flashcomm-compile: error: {e}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
