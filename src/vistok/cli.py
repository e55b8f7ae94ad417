"""The ``vistok`` command.

``vistok <group> <verb> [options]``. This file only parses arguments and dispatches into the library. Commands are
listed in ``COMMANDS`` as (name, one-line help, builder); only the builder of the command being run is called (the
others get a light placeholder), so ``vistok --help`` and ``vistok info`` never import torch. Builders that live next
to their library code (``add_*_parser(subparsers)``) keep the options beside the config they fill in. A new command
is one entry in ``COMMANDS``.
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
    _verb(sub, "info", _HELP["info"], "vistok info", _cmd_info)


# ----------------------------------------------------------------------------------------------------------- data


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from vistok.data.inspect import format_report, inspect_path

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


def _cmd_data_scenes(args: argparse.Namespace) -> int:
    from vistok.data.scenes import write_scenes

    summary = write_scenes(
        args.out, n=args.n, size=args.size, num_clips=args.clips, num_frames=args.frames, split=args.split,
        seed=args.seed, progress=not args.quiet,
    )  # fmt: skip
    print(summary)
    return 0


def _add_data(sub) -> None:
    g = sub.add_parser(
        "data",
        help=_HELP["data"],
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

    p = _verb(
        gs,
        "scenes",
        "write the built-in captioned scenes of coloured shapes (PNG + captions/QA JSONL) and sprite clips",
        "vistok data scenes scenes/ --n 1500 --size 64 --clips 0",
        _cmd_data_scenes,
    )
    p.add_argument("out", help="output folder (created): OUT/scenes/*.png + scenes.jsonl, OUT/clips/")
    p.add_argument("--n", type=int, default=16, help="number of scenes (default 16)")
    p.add_argument("--size", type=int, default=128, help="scene size in pixels (default 128)")
    p.add_argument("--clips", type=int, default=4, help="number of sprite clips (default 4)")
    p.add_argument("--frames", type=int, default=12, help="frames per clip (default 12)")
    p.add_argument("--split", default="train", choices=["train", "heldout"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_encode(sub) -> None:
    from vistok.tokenizers.api import add_encode_parser

    add_encode_parser(sub)


def _add_decode(sub) -> None:
    from vistok.tokenizers.api import add_decode_parser

    add_decode_parser(sub)


def _add_reconstruct(sub) -> None:
    from vistok.tokenizers.api import add_reconstruct_parser

    add_reconstruct_parser(sub)


def _add_tokenizer(sub) -> None:
    from vistok.tokenizers.api import add_tokenizer_eval_parser
    from vistok.train.tokenizer import add_tokenizer_train_parser

    g = sub.add_parser(
        "tokenizer",
        help=_HELP["tokenizer"],
        description="Train and evaluate image/video tokenizers (MAGVIT-v2, VQGAN).",
    )
    gs = g.add_subparsers(dest="verb", metavar="VERB", required=True)
    add_tokenizer_train_parser(gs)
    add_tokenizer_eval_parser(gs)


def _add_lvm(sub) -> None:
    from vistok.train.lvm import add_lvm_parser

    add_lvm_parser(sub)


def _add_maskgit(sub) -> None:
    from vistok.train.maskgit import add_maskgit_parser

    add_maskgit_parser(sub)


def _add_merge(sub) -> None:
    from vistok.tokenizers.merge_cli import add_merge_parser

    add_merge_parser(sub)


def _add_univi(sub) -> None:
    from vistok.train.univi import add_univi_parser

    add_univi_parser(sub)


def _add_digit(sub) -> None:
    from vistok.train.dino import add_digit_parser

    add_digit_parser(sub)


def _add_transfusion(sub) -> None:
    from vistok.train.transfusion_cli import add_transfusion_parser

    add_transfusion_parser(sub)


def _add_demo(sub) -> None:
    from vistok.demo.runner import add_demo_parser

    add_demo_parser(sub)


COMMANDS: list[tuple[str, str, Callable]] = [
    ("demo", "run every system end to end on the built-in data and write report.html", _add_demo),
    ("info", "print versions, the compute device and which optional extras are installed", _add_info),
    ("data", "inspect datasets and write the built-in samples", _add_data),
    ("encode", "turn an image, a video or a folder into tokens", _add_encode),
    ("decode", "turn tokens back into pixels", _add_decode),
    ("reconstruct", "encode + decode, with a side-by-side comparison and PSNR/SSIM", _add_reconstruct),
    ("tokenizer", "train and evaluate tokenizers", _add_tokenizer),
    ("lvm", "LVM: train on visual sentences, continue sequences and complete analogies", _add_lvm),
    (
        "maskgit",
        "MaskGIT: train and sample MAGVIT-v2's masked token model (class-conditional or from frames)",
        _add_maskgit,
    ),
    ("merge", "Chat-UniVi dynamic visual tokens: merge patch tokens and draw the clusters", _add_merge),
    (
        "transfusion",
        "Transfusion: one model for text and images (train on captioned scenes, generate, caption)",
        _add_transfusion,
    ),
    ("digit", "DiGIT: discriminative tokens from k-means over self-supervised features", _add_digit),
    (
        "univi",
        "Chat-UniVi: train a small vision-language model on merged visual tokens and ask it questions",
        _add_univi,
    ),
]
_HELP = {name: help for name, help, _ in COMMANDS}


def build_parser(command: str | None = None, full: bool = False) -> argparse.ArgumentParser:
    """The argument parser; with ``full`` every command is built, else only ``command`` (others are placeholders)."""
    from vistok import __version__

    parser = argparse.ArgumentParser(
        prog="vistok",
        description="vistok: images and video as tokens, and sequence models over them.",
        epilog="run 'vistok <command> --help' for its options and an example",
    )
    parser.add_argument("--version", action="version", version=f"vistok {__version__}")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for name, help, add in COMMANDS:
        if full or name == command:
            add(sub)
        else:
            sub.add_parser(name, help=help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in _HELP else None)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):  # a placeholder was parsed: cannot happen unless argv changed meaning
        parser.error(f"unknown command {args.group!r}")
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
