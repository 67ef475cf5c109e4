"""`flashcomm-compile inspect MODULE:FACTORY`: the inspection report from the command line.

Exit codes: 0 on success; 2 for a bad MODULE:FACTORY, a factory that raises, a model that does not trace or a bad
option, with a one-line message (the traceback too with --verbose).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from .config import REWRITE_MODES, SUPPORTED_BITS, SUPPORTED_GROUP_SIZES, TRANSPORTS, FlashCommConfig


class UsageError(Exception):
    """A problem with what the user asked for, reported in one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashcomm-compile")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("inspect", help="show what the pass does to every all-reduce of a model, and why")
    p.add_argument("target", metavar="MODULE:FACTORY", help="FACTORY() returns (model, example_inputs)")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--reduce-bits", type=int, choices=SUPPORTED_BITS, default=4)
    p.add_argument("--gather-bits", type=int, choices=SUPPORTED_BITS, default=8)
    p.add_argument("--group-size", type=int, choices=SUPPORTED_GROUP_SIZES, default=128)
    p.add_argument("--spike-reserve", action="store_true")
    p.add_argument("--mode", choices=REWRITE_MODES, default="auto")
    p.add_argument("--min-bytes", type=int, default=FlashCommConfig.min_bytes)
    p.add_argument("--chunks", type=int, default=FlashCommConfig.chunks, help="pieces per all-reduce, pipelined")
    p.add_argument("--transport", choices=TRANSPORTS, default=FlashCommConfig.transport)
    p.add_argument("--hardware", help='predict with the measurements of e.g. "NVIDIA H200|default"')
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


def _inspect(args: argparse.Namespace) -> str:
    from .inspection import fake_process_group, inspect

    options = dict(reduce_bits=args.reduce_bits, gather_bits=args.gather_bits, group_size=args.group_size,
                   spike_reserve=args.spike_reserve, mode=args.mode, min_bytes=args.min_bytes, chunks=args.chunks,
                   transport=args.transport, cuda_graphs=True if args.cuda_graphs else None)
    try:
        FlashCommConfig(**options)
    except ValueError as e:
        raise UsageError(str(e)) from e
    factory = _load_factory(args.target)
    with fake_process_group(args.world_size):
        try:
            model, example_inputs = factory()
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"factory {args.target} raised {type(e).__name__}: {e}") from e
        try:
            report = inspect(model, *example_inputs, world_size=args.world_size, hardware=args.hardware,
                             dynamic=True if args.dynamic else None, **options)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"the model did not trace: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    if args.format == "json":
        return report.to_json()
    if args.format == "html":
        return report.to_html(full=args.full)
    return report.to_text(full=args.full, color=args.out is None and sys.stdout.isatty())


def main(argv: list[str] | None = None) -> int:
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
