"""The `dloop` command line: one entry point that loads settings once and hands them down."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dloop.errors import DloopError


def _env_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="settings file (KEY=value lines); default .env when present; the environment wins",
    )


def _service_client(parser: argparse.ArgumentParser) -> None:
    _env_file(parser)
    parser.add_argument(
        "--url", default=None, help="the service's base URL (default from DLOOP_HTTP_HOST/DLOOP_HTTP_PORT)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dloop", description="dloop governance voting service")
    sub = parser.add_subparsers(dest="command", required=True)

    devnet = sub.add_parser("devnet", help="start a local chain with the AssetDAO and realistic proposals")
    from dloop.devnet import add_devnet_arguments

    add_devnet_arguments(devnet)

    run = sub.add_parser("run", help="run the service: listener, voter, reconciler and HTTP API")
    _env_file(run)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    _env_file(migrate)
    migrate.add_argument(
        "--database-url", default=None, help="database to migrate (default DLOOP_DATABASE_URL)"
    )

    status = sub.add_parser("status", help="a summary of the running service: nodes, queue, last round")
    _service_client(status)

    trigger = sub.add_parser("trigger", help="start a voting round in the running service")
    _service_client(trigger)
    trigger.add_argument("--wait", action="store_true", help="wait for the round to finish and print it")
    trigger.add_argument("--timeout", type=float, default=300.0, help="seconds to wait with --wait")

    from dloop.demo import add_demo_arguments

    demo = sub.add_parser("demo", help="a devnet with 49 proposals plus the service, voting live")
    add_demo_arguments(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "devnet":
            from dloop.devnet import devnet_command

            return devnet_command(args)
        from dloop import commands

        if args.command == "run":
            return commands.run_command(args)
        if args.command == "migrate":
            return commands.migrate_command(args)
        if args.command == "status":
            return commands.status_command(args)
        if args.command == "trigger":
            return commands.trigger_command(args)
        if args.command == "demo":
            from dloop.demo import demo_command

            return demo_command(args)
    except DloopError as exc:
        print(f"dloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2  # unreachable: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
