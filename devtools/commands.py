"""The development sub-commands of `dloop`, registered as `dloop.commands` entry points in pyproject.toml."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DevCommand:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _devnet_arguments(parser: argparse.ArgumentParser) -> None:
    from devtools.devnet import add_devnet_arguments

    add_devnet_arguments(parser)


def _devnet(args: argparse.Namespace) -> int:
    from devtools.devnet import devnet_command

    return devnet_command(args)


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from devtools.demo import add_demo_arguments

    add_demo_arguments(parser)


def _demo(args: argparse.Namespace) -> int:
    from devtools.demo import demo_command

    return demo_command(args)


devnet = DevCommand(
    "start a local chain with the AssetDAO and realistic proposals", _devnet_arguments, _devnet
)
demo = DevCommand("a devnet with 49 proposals plus the service, voting live", _demo_arguments, _demo)
