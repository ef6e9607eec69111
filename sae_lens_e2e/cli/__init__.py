"""`sae-lens-e2e` command line: the entry point; one sub-command per module, each adding its own
parser (train, convert, export, quickstart)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes `add_parser(subparsers)`, which registers a sub-command and sets
# `func(args) -> int` as its default.
SUBCOMMAND_MODULES = [
    "sae_lens_e2e.cli.train",
    "sae_lens_e2e.cli.convert",
    "sae_lens_e2e.cli.export",
    "sae_lens_e2e.cli.quickstart",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-lens-e2e",
        description="End-to-end sparse autoencoder training for SAELens.",
    )
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
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as err:
        # Bad input: a clear one-line message, no traceback, non-zero exit.
        print(f"sae-lens-e2e {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
