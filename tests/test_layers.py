"""The package layers point one way: core below the components, the composition root above them, dev tooling
beside. Read from the source with `ast`, so a lazy import inside a function counts as much as a top one."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = {"chain", "storage", "listener", "monitor", "voter", "web"}
PACKAGES = {"core", *COMPONENTS, "dloop", "devtools"}

# package -> the packages it may import. tests/ and bench/ sit outside the service and may import anything;
# nothing of the service imports devtools/ (the CLI loads it as a plugin).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "chain": {"core"},
    "monitor": {"core"},  # alert rules and analytics: pure, just above core
    "storage": {"core", "chain", "monitor"},
    "listener": {"core", "chain", "storage"},
    "voter": {"core", "chain", "storage"},
    "web": {"core", "chain", "storage", "monitor"},
    "dloop": {"core", *COMPONENTS},
    "devtools": PACKAGES - {"devtools"},
}


def _imports() -> dict[str, set[tuple[str, str]]]:
    """package -> {(imported package, 'file:line')}"""
    arrows: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names, line = [alias.name for alias in node.names], node.lineno
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names, line = [node.module], node.lineno
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in PACKAGES and top != package:
                        arrows[package].add((top, f"{path.relative_to(REPO)}:{line}"))
    return arrows


def test_the_table_names_every_package() -> None:
    assert set(ALLOWED) == PACKAGES
    assert all(targets <= PACKAGES for targets in ALLOWED.values())


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_import_follows_an_allowed_arrow(package: str) -> None:
    wrong = sorted(
        f"{where} -> {target}" for target, where in _imports()[package] if target not in ALLOWED[package]
    )
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: {wrong}"


def test_devtools_is_imported_by_no_package_of_the_service() -> None:
    importers = sorted(
        where for package, targets in _imports().items() for target, where in targets if target == "devtools"
    )
    assert not importers, f"devtools imported at {importers}"


def test_no_import_cycle_between_packages() -> None:
    graph = {package: {target for target, _ in targets} for package, targets in _imports().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, set()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cyclic = sorted(package for package in graph if reaches(package, package, {package}))
    assert not cyclic, f"packages on an import cycle: {cyclic}"


@functools.cache
def _packages_loaded_by_dloop_run() -> frozenset[str]:
    """The top-level packages in sys.modules once what `dloop run` imports (CLI, commands, service wiring)
    is imported, in a fresh interpreter."""
    probe = (
        "import sys\n"
        "from dloop import cli, commands, service\n"
        "cli.build_parser()\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    return frozenset(result.stdout.strip().split(","))


@pytest.mark.slow  # runs a Python subprocess
def test_dloop_run_loads_no_dev_tooling() -> None:
    """What `dloop run` imports leaves devtools out of sys.modules."""
    assert "devtools" not in _packages_loaded_by_dloop_run(), "dloop run imported devtools"


@pytest.mark.slow  # runs a Python subprocess
def test_dloop_run_loads_neither_web3_nor_eth_account() -> None:
    """The service speaks JSON-RPC itself (chain/rpc_socket.py) and signs itself (chain/accounts.py):
    web3 (with aiohttp and requests) and eth-account cost about 20 MB of every `dloop run` (#18's memory
    aim). Dev tooling and the tests still use web3."""
    heavy = _packages_loaded_by_dloop_run() & {"web3", "eth_account", "aiohttp", "requests"}
    assert not heavy, f"dloop run imported {','.join(sorted(heavy))}"
