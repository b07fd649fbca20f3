"""The package layers point one way: core below the components, the composition root above them, dev tooling
beside. Read from the source with `ast`, so a lazy import inside a function counts as much as a top one."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = {"core"}
COMPONENTS = {"chain", "storage", "listener", "monitor", "voter", "web"}
ROOT = {"dloop"}
DEV = {"devtools"}
PACKAGES = CORE | COMPONENTS | ROOT | DEV


def _imports() -> dict[str, set[tuple[str, str]]]:
    """package -> {(imported package, 'file:line')}"""
    arrows: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top in PACKAGES and top != package:
                        arrows[package].add((top, f"{path.relative_to(REPO)}:{node.lineno}"))
    return arrows


def test_core_imports_no_other_package_of_the_project() -> None:
    assert not _imports()["core"]


def test_monitor_holds_pure_rules_and_imports_only_core() -> None:
    """Alert rules and analytics sit just above core: storage, web and dloop build on them, never back."""
    assert {target for target, _ in _imports()["monitor"]} <= CORE


def test_web_never_imports_the_listener_or_the_voter() -> None:
    sideways = sorted(where for target, where in _imports()["web"] if target in {"listener", "voter"})
    assert not sideways, f"web imports listener/voter at {sideways} (use web/ports.py)"


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_components_import_neither_the_composition_root_nor_dev_tooling(component: str) -> None:
    upward = sorted(where for target, where in _imports()[component] if target in ROOT | DEV)
    assert not upward, f"{component} imports upward at {upward}"


def test_the_composition_root_imports_no_dev_tooling() -> None:
    devtools = sorted(where for target, where in _imports()["dloop"] if target in DEV)
    assert not devtools, f"dloop imports devtools at {devtools}"


def test_no_import_cycle_between_packages() -> None:
    graph = {package: {target for target, _ in targets} for package, targets in _imports().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, set()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cyclic = sorted(package for package in graph if reaches(package, package, {package}))
    assert not cyclic, f"packages on an import cycle: {cyclic}"


@pytest.mark.slow  # runs a Python subprocess
def test_dloop_run_loads_no_dev_tooling() -> None:
    """What `dloop run` imports (CLI, commands, service wiring) leaves devtools out of sys.modules."""
    probe = (
        "import sys\n"
        "from dloop import cli, commands, service\n"
        "cli.build_parser()\n"
        "loaded = sorted(m for m in sys.modules if m == 'devtools' or m.startswith('devtools.'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "", f"dloop run imported {result.stdout.strip()}"
