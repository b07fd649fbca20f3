"""The `dloop` command line: one entry point that loads settings once and hands them down."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dloop.errors import DloopError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dloop", description="dloop governance voting service")
    sub = parser.add_subparsers(dest="command", required=True)

    devnet = sub.add_parser("devnet", help="start a local chain with the AssetDAO and realistic proposals")
    from dloop.devnet import add_devnet_arguments

    add_devnet_arguments(devnet)

    sub.add_parser("migrate", help="bring the database schema up to date")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "devnet":
            from dloop.devnet import devnet_command

            return devnet_command(args)
        if args.command == "migrate":
            from dloop.commands import migrate_command

            return migrate_command()
    except DloopError as exc:
        print(f"dloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2  # unreachable: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
