"""Bad configuration, as a user meets it: `dloop run` with one setting wrong prints ONE line
`dloop: error: <SETTING>: ...`, exits non-zero, shows no traceback, and never prints a key.

tests/test_cli_service.py already covers a truncated address, no RPC URL, an unreachable node, an address
without code, an unmigrated schema and a busy port; tests/test_settings.py the parsing of each value.
This file adds the rest of the issue's list at the process level: a bad key, a wrong URL scheme, an unwritable
database path, unknown strategies.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from devtools.anvil import free_port
from tests.support.chain import Chain
from tests.support.chaos import DLOOP, clean_env, service_env
from tests.support.database import migrate

OTHERS = "aggressive,conservative,aggressive,conservative"  # nodes 2-5


pytestmark = pytest.mark.devnet()  # the `chain` fixture: a private anvil for this module


def test_each_wrong_setting_gives_one_line_naming_it_and_no_key(chain: Chain, tmp_path: Path) -> None:
    anvil, devnet = chain
    env = service_env(anvil.ws_url, devnet, tmp_path / "dloop.db", DLOOP_HTTP_PORT=str(free_port()))
    migrate(tmp_path / "dloop.db")  # so only the setting under test is wrong
    good_key = devnet.node_keys[2]
    bad_key = good_key[:-1] + "g"  # one non-hex digit: the rest of the key must still not be printed
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    cases = {
        "bad key": ({"AI_NODE_3_PRIVATE_KEY": bad_key}, "AI_NODE_3_PRIVATE_KEY"),
        "key too short": ({"AI_NODE_2_PRIVATE_KEY": good_key[:40]}, "AI_NODE_2_PRIVATE_KEY"),
        "http:// URL": ({"DLOOP_RPC_WS_URL": anvil.http_url}, "DLOOP_RPC_WS_URL"),
        "ftp:// URL": ({"DLOOP_RPC_WS_URL": "ftp://127.0.0.1:21"}, "DLOOP_RPC_WS_URL"),
        "unwritable database": (
            {"DLOOP_DATABASE_URL": f"sqlite+aiosqlite:///{blocker}/dloop.db"},
            "DLOOP_DATABASE_URL",
        ),
        "unknown strategy": (
            {"DLOOP_NODE_STRATEGIES": "nonsense," + OTHERS},
            "DLOOP_NODE_STRATEGIES",
        ),
        "strategy module missing": (
            {"DLOOP_NODE_STRATEGIES": "nosuchpkg.rules:decide," + OTHERS},
            "DLOOP_NODE_STRATEGIES",
        ),
        "strategy function missing": (
            {"DLOOP_NODE_STRATEGIES": "voter.strategies:nosuch," + OTHERS},
            "DLOOP_NODE_STRATEGIES",
        ),
        "short address": ({"DLOOP_CONTRACT_ADDRESS": devnet.contract_address[:12]}, "DLOOP_CONTRACT_ADDRESS"),
    }
    # Concurrently: each process spends ~2 s importing web3 and friends.
    # Each case on its own copy of the migrated database, so a case's rows cannot hide another's.
    databases = {}
    for index, name in enumerate(cases):
        databases[name] = tmp_path / f"case{index}.db"
        shutil.copy(tmp_path / "dloop.db", databases[name])
    running = {
        name: subprocess.Popen(
            [*DLOOP, "run"],
            env=clean_env({**env, "DLOOP_DATABASE_URL": f"sqlite+aiosqlite:///{databases[name]}", **change}),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (change, _setting) in cases.items()
    }
    results = {name: process.communicate(timeout=60) for name, process in running.items()}
    secrets = [k.lower().removeprefix("0x") for k in (*devnet.node_keys, bad_key)]
    problems = []
    for name, (_change, setting) in cases.items():
        stdout, stderr = results[name]
        output = (stdout + stderr).lower()
        lines = stderr.strip().splitlines()
        if running[name].returncode == 0:
            problems.append(f"{name}: exit 0")
        if len(lines) != 1 or not lines[0].startswith(f"dloop: error: {setting}: "):
            problems.append(f"{name}: {stderr!r}")
        if "traceback" in output:
            problems.append(f"{name}: traceback")
        if any(secret in output or secret[:16] in output for secret in secrets):
            problems.append(f"{name}: a key is printed")
    assert not problems, "\n".join(problems)
    # A bad strategy stops start-up before anything is written (the nodes were once synced first).
    for name in ("unknown strategy", "strategy module missing", "strategy function missing"):
        with sqlite3.connect(databases[name]) as db:
            assert db.execute("SELECT COUNT(*) FROM nodes").fetchone() == (0,), name
