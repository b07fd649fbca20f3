"""Secrets: `dloop run` with its keys in encrypted keystores (the password read from a file), DEBUG logs, a
few proposals voted. Then every log line, every API answer and every column of every table are searched for
each node key's hex (with and without 0x, any case), for the keystore password and for the API token: never
found. The HTTP API binds to loopback unless told otherwise. The log formatters' masking (message text,
fields, tracebacks, both formats) is tests/test_logs.py.

The trigger's token check is tests/test_service_scenarios.py (with and without DLOOP_API_TOKEN).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_typing import HexStr

from core.settings import Settings
from devtools.anvil import AnvilProcess
from devtools.devnet import deploy_devnet
from tests.support.chaos import DloopRun, db_states, report, service_env, settled
from tests.support.database import migrate
from tests.support.waiting import poll_until

pytestmark = pytest.mark.slow  # starts anvil and `dloop run`

PROPOSALS = 4
NODES = 5
PASSWORD = "correct horse battery staple 7f3a"
API_TOKEN = "api-token-5d2c91f0e7"
ENDPOINTS = [
    "/",
    "/health",
    "/nodes",
    "/active-proposals",
    "/proposals/1",
    "/votes",
    "/votes?limit=500",
    "/rounds/1",
    "/metrics",
    "/schema/openapi.json",
]


def _database_dump(db: Path) -> str:
    """Every value of every column of every table, as text (bytes as hex)."""
    parts: list[str] = []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        ]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                parts.extend(v.hex() if isinstance(v, bytes) else str(v) for v in row)
    assert "votes" in tables and "vote_transactions" in tables, tables
    return "\n".join(parts)


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a LISTEN socket on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def test_no_key_in_logs_api_answers_or_database_and_keystores_from_a_password_file(tmp_path: Path) -> None:
    assert (
        Settings(rpc_ws_url="ws://h:1", contract_address="0x" + "1" * 40, nodes=()).http_host == "127.0.0.1"
    )
    with AnvilProcess() as anvil:
        devnet = deploy_devnet(anvil.http_url, proposals=PROPOSALS)
        keystores = tmp_path / "keystores"
        keystores.mkdir()
        for number, key in enumerate(devnet.node_keys, start=1):
            encrypted = Account.encrypt(HexStr(key), PASSWORD, iterations=2)
            (keystores / f"ai-gov-{number:02d}.json").write_text(json.dumps(encrypted))
        password_file = tmp_path / "keystore-password"
        password_file.write_text(PASSWORD + "\n")
        db = tmp_path / "dloop.db"
        env = service_env(
            anvil.ws_url,
            devnet,
            db,
            DLOOP_LOG_LEVEL="DEBUG",
            DLOOP_API_TOKEN=API_TOKEN,
            DLOOP_KEYSTORE_DIR=str(keystores),
            DLOOP_KEYSTORE_PASSWORD_FILE=str(password_file),
        )
        env = {k: v for k, v in env.items() if not k.startswith("AI_NODE_")}  # the keystores only
        migrate(db)
        answers: dict[str, str] = {}
        with DloopRun(env, tmp_path, tmp_path / "run.log") as svc:
            svc.wait_live()
            poll_until(
                lambda: settled(db, PROPOSALS * NODES), timeout=30, what="the devnet's proposals voted"
            )
            trigger = httpx.post(
                f"{svc.url}/trigger-voting", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10
            )
            assert trigger.status_code == 202, trigger.text
            listening = _listening_addresses(int(env["DLOOP_HTTP_PORT"]))
            for path in ENDPOINTS:
                response = svc.get(path, timeout=10)
                assert response.status_code < 500, (path, response.text[:300])
                answers[path] = response.text
            assert svc.stop() == 0, svc.log_tail()
        votes_on_chain = db_states(db)["confirmed"]

    assert listening == {"0100007F"}, listening  # 127.0.0.1 only (little-endian hex in /proc/net/tcp)
    haystacks = {
        "log": (tmp_path / "run.log").read_text(errors="replace"),
        "database": _database_dump(db),
        **{f"GET {path}": text for path, text in answers.items()},
    }
    needles = {
        f"key of node {i}": key.lower().removeprefix("0x") for i, key in enumerate(devnet.node_keys, 1)
    }
    needles["keystore password"] = PASSWORD.lower()
    needles["API token"] = API_TOKEN.lower()
    leaks = [
        f"{needle} in {where}"
        for where, text in haystacks.items()
        for needle, secret in needles.items()
        if secret in text.lower()
    ]
    log_lines = haystacks["log"].count("\n")
    report(
        f"secrets: {len(needles)} secrets searched in {log_lines} DEBUG log lines, {len(answers)} API "
        f"answers, {len(haystacks['database'])} characters of database dump: {len(leaks)} found; "
        f"{votes_on_chain} votes confirmed, keystores unlocked from a password file; HTTP bound to "
        f"{listening}"
    )
    assert not leaks, leaks
    assert log_lines > 50, "DEBUG logging produced almost nothing: the search proves little"
    assert votes_on_chain >= PROPOSALS * NODES
