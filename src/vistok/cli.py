"""The ``vistok`` command.

``vistok <group> <verb> [options]``. This file only parses arguments and dispatches into the library; each handler
imports its module lazily so ``vistok --help`` stays fast. A new group is one ``_add_<group>(sub)`` function
registered in ``GROUPS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXAMPLES_FMT = argparse.RawDescriptionHelpFormatter


def _verb(sub, name: str, help: str, example: str, func: Callable[[argparse.Namespace], int | None]):
    p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}", formatter_class=EXAMPLES_FMT)
    p.set_defaults(func=func)
    return p


# ----------------------------------------------------------------------------------------------------------- info


def _cmd_info(args: argparse.Namespace) -> int:
    from vistok.info import format_info

    print(format_info())
    return 0


def _add_info(sub) -> None:
    _verb(
        sub,
        "info",
        "print versions, the compute device and which optional extras are installed",
        "vistok info",
        _cmd_info,
    )


# ----------------------------------------------------------------------------------------------------------- data


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from vistok.data.inspect import inspect_path, format_report

    report = inspect_path(args.path, max_files=args.max_files, progress=not args.quiet)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def _cmd_data_samples(args: argparse.Namespace) -> int:
    from vistok.data.samples import write_samples

    summary = write_samples(
        args.out, size=args.size, num_clips=args.clips, num_frames=args.frames, seed=args.seed, progress=not args.quiet
    )
    print(summary)
    return 0


def _add_data(sub) -> None:
    g = sub.add_parser(
        "data",
        help="inspect datasets and write the built-in samples",
        description="Inspect image/video folders and the built-in sample data.",
    )
    gs = g.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = _verb(
        gs,
        "inspect",
        "count files, resolutions, durations and unreadable files (with reasons) under PATH",
        "vistok data inspect ~/data/clips",
        _cmd_data_inspect,
    )
    p.add_argument("path", help="a folder, an image/video file, or a token-shard folder")
    p.add_argument("--max-files", type=int, default=None, help="look at no more than this many files")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = _verb(
        gs,
        "samples",
        "write the built-in photos and synthetic clips as PNG/MP4 files to look at",
        "vistok data samples samples/ --size 128 --clips 4",
        _cmd_data_samples,
    )
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--size", type=int, default=256, help="crop size of the written photos and clips (default 256)")
    p.add_argument("--clips", type=int, default=4, help="number of synthetic clips to write (default 4)")
    p.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


GROUPS: list[Callable] = [_add_info, _add_data]


def build_parser() -> argparse.ArgumentParser:
    from vistok import __version__

    parser = argparse.ArgumentParser(
        prog="vistok",
        description="vistok: images and video as tokens, and sequence models over them.",
        epilog="run 'vistok <group> --help' for the verbs of a group",
    )
    parser.add_argument("--version", action="version", version=f"vistok {__version__}")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for add in GROUPS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, ImportError) as e:  # user errors: one clear line, no traceback
        print(f"vistok: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
