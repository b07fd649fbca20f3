"""`dloop pause|resume NODE` with a deployments file: a node of any deployment is known, not only the first's
(no service answers here: the switch goes to the database)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from devtools.anvil import free_port
from dloop import cli
from tests.support.database import migrate

KEYS = [
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
]
FILE = """
[[deployments]]
name = "main"
rpc_ws_url = "ws://127.0.0.1:1"
contract_address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"

[[deployments.nodes]]
name = "ai-gov-01"
key_env = "NODE1_KEY"

[[deployments]]
name = "side"
rpc_ws_url = "ws://127.0.0.1:2"
contract_address = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"

[[deployments.nodes]]
name = "side-only"
key_env = "NODE2_KEY"
"""


def test_a_node_of_the_second_deployment_can_be_paused_and_an_unknown_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "dloop.db"
    migrate(database)
    (tmp_path / "dloop.toml").write_text(FILE)
    monkeypatch.chdir(tmp_path)
    for name in ("DLOOP_CONFIG", "DLOOP_RPC_WS_URL", "DLOOP_CONTRACT_ADDRESS", "DLOOP_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DLOOP_DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    monkeypatch.setenv("DLOOP_HTTP_PORT", str(free_port()))  # nothing listens there
    monkeypatch.setenv("NODE1_KEY", KEYS[0])
    monkeypatch.setenv("NODE2_KEY", KEYS[1])

    assert cli.main(["pause", "side-only"]) == 0
    out = capsys.readouterr().out
    assert "stored in the database" in out and "signing: paused for side-only" in out, out

    assert cli.main(["pause", "ai-gov-09"]) == 2  # refused before asking anyone
    err = capsys.readouterr().err
    assert err.startswith("dloop: error: node: 'ai-gov-09' is not configured (known: ai-gov-01, side-only)")
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT scope, paused FROM operator_controls").fetchall() == [("side-only", 1)]
