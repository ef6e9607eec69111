"""`sae-lens-e2e` command line: the entry point; one sub-command per module, each adding its own
parser (train, convert, export, quickstart, evaluate, groundtruth)."""

from __future__ import annotations

import argparse
import importlib
import sys

from sae_lens_e2e.cli.errors import user_message
from sae_lens_e2e.version import version_line

# Each module exposes `add_parser(subparsers)`, which registers a sub-command and sets
# `func(args) -> int` as its default. They import nothing heavy (torch, SAELens) at module
# level, so that `sae-lens-e2e --help` is quick.
SUBCOMMAND_MODULES = [
    "sae_lens_e2e.cli.train",
    "sae_lens_e2e.cli.convert",
    "sae_lens_e2e.cli.export",
    "sae_lens_e2e.cli.quickstart",
    "sae_lens_e2e.cli.evaluate",
    "sae_lens_e2e.cli.groundtruth",
]


class _Version(argparse.Action):
    """One unwrapped line (argparse's own version action wraps it to the terminal)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-lens-e2e",
        description="End-to-end sparse autoencoder training for SAELens.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the versions and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # Ctrl-C: one line. Every output is written atomically, so none is half-written.
        out = getattr(args, "out", None)
        left = f"{out} was left as it was" if out is not None else "nothing was written"
        print(f"sae-lens-e2e {args.command}: interrupted; {left}", file=sys.stderr)
        return 130
    except Exception as err:
        # Something the user can fix: one line, no traceback, non-zero exit. A bug: traceback.
        message = user_message(err)
        if message is None:
            raise
        print(f"sae-lens-e2e {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
