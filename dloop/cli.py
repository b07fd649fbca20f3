"""The `dloop` command line: one entry point that loads settings once and hands them down.

Development commands (`dloop devnet`, `dloop demo`) are plugins found through the `dloop.commands` entry
point group, loaded only when one of them (or the help) is asked for: `dloop run` never imports them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from core.errors import DloopError


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


class PluginCommand(Protocol):
    """What a `dloop.commands` entry point names: a sub-command of its own."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


PLUGIN_GROUP = "dloop.commands"


def plugin_names() -> list[str]:
    return sorted({entry.name for entry in entry_points(group=PLUGIN_GROUP)})


def load_plugin(name: str) -> PluginCommand:
    for entry in entry_points(group=PLUGIN_GROUP, name=name):
        plugin: PluginCommand = entry.load()
        return plugin
    raise KeyError(name)


def _iso_date(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date: {text!r} (use YYYY-MM-DD or an ISO 8601 time)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def add_pause_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", nargs="?", default=None, help="a node name (default: the whole service)")


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strategy", required=True, help="conservative, aggressive or package.module:function"
    )
    parser.add_argument("--node", default=None, help="only this node's decisions")
    parser.add_argument(
        "--since", type=_iso_date, default=None, metavar="DATE", help="only proposals created from DATE (UTC)"
    )
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")


def build_parser(load_plugins: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; the plugins named in `load_plugins` are imported for their full arguments, the others
    are listed by name only."""
    parser = argparse.ArgumentParser(prog="dloop", description="dloop governance voting service")
    sub = parser.add_subparsers(dest="command", required=True)

    for name in plugin_names():
        if name in load_plugins:
            plugin = load_plugin(name)
            plugin.add_arguments(sub.add_parser(name, help=plugin.help))
        else:
            sub.add_parser(name, help=f"development tool (see dloop {name} --help)", add_help=False)

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
    trigger.add_argument(
        "--wait",
        action="store_true",
        help="wait for the round to finish and print it (asking again while the service answers 503)",
    )
    trigger.add_argument(
        "--timeout", type=float, default=300.0, help="seconds the whole command waits with --wait"
    )

    alerts = sub.add_parser("alerts", help="alert notifications: `dloop alerts test`")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    alerts_test = alerts_sub.add_parser(
        "test", help="send a test notification to every DLOOP_ALERT_WEBHOOK_URLS receiver; print each answer"
    )
    _env_file(alerts_test)

    report = sub.add_parser("report", help="governance analytics from the database (a table, CSV or JSON)")
    _env_file(report)
    report.add_argument(
        "--since", type=_iso_date, default=None, metavar="DATE", help="proposals created from DATE (UTC)"
    )
    report.add_argument(
        "--until", type=_iso_date, default=None, metavar="DATE", help="proposals created before DATE (UTC)"
    )
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.add_argument(
        "--database-url",
        default=None,
        help="database to read (default DLOOP_DATABASE_URL; no other setting needed)",
    )
    pause = sub.add_parser("pause", help="stop signing at once, for one node or the whole service")
    _service_client(pause)
    add_pause_arguments(pause)
    resume = sub.add_parser("resume", help="sign again, for one node or the whole service")
    _service_client(resume)
    add_pause_arguments(resume)
    replay = sub.add_parser(
        "replay",
        help="decide stored proposals again with a strategy; print where it differs (nothing signed)",
    )
    _env_file(replay)
    add_replay_arguments(replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    plugins = plugin_names()
    asked = [w for w in words[:1] if w in plugins] or (
        plugins if not words or words[0] in ("-h", "--help") else []
    )
    parser = build_parser(load_plugins=asked)
    args = parser.parse_args(words)
    try:
        if args.command in plugins:
            return load_plugin(args.command).run(args)
        from dloop import commands

        if args.command == "run":
            return commands.run_command(args)
        if args.command == "migrate":
            return commands.migrate_command(args)
        if args.command == "status":
            return commands.status_command(args)
        if args.command == "trigger":
            return commands.trigger_command(args)
        if args.command == "alerts":
            return commands.alerts_test_command(args)
        if args.command == "report":
            return commands.report_command(args)
        if args.command in ("pause", "resume", "replay"):
            from dloop import controls

            if args.command == "replay":
                return controls.replay_command(args)
            return controls.switch_command(args, paused=args.command == "pause")
    except DloopError as exc:
        print(f"dloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2  # unreachable: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
