"""Restart safety: the voter process is SIGKILLed at several points in the middle of a batch and started
again; every vote lands exactly once (per node: transactions == VoteCast events, one vote per proposal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from storage.models import VoteState
from tests.support.chain import devnet_chain
from tests.support.voter import check_exactly_once, make_harness, queue_proposals, vote_rows
from tests.support.waiting import wait_until

# slow: starts anvil and a voter process it kills
pytestmark = [pytest.mark.anyio, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
PROPOSALS = 40


def start_runner(config: dict[str, Any]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # As a module: run as a script, tests/support would shadow the `voter` package with voter.py.
    command = [sys.executable, "-m", "tests.support.voter_runner", json.dumps(config)]
    return subprocess.Popen(command, env=env, cwd=REPO)


async def test_sigkill_mid_batch_then_restart_votes_exactly_once(tmp_path: Path) -> None:
    # Enough proposals that every kill finds votes left to make: a run can vote many batches before its
    # kill step (under load one ran out of work before its fifth kill, at the second vote persisted).
    with devnet_chain(PROPOSALS) as (node, info):
        h = await make_harness(node, info, tmp_path)
        await queue_proposals(h)
        base = {
            "ws_url": node.ws_url,
            "contract": info.contract_address,
            "chain_id": info.chain_id,
            "node_keys": list(info.node_keys),
            "database_url": h.settings.database_url,
            "batch_size": 3,
            "lease_seconds": 1.5,  # rows leased by a killed run come back soon
            "timeout": 60,
        }
        kills = [("persisted", 4), ("broadcast", 6), ("leased", 2), ("confirmed", 3), ("persisted", 2)]
        for step, n in kills:
            proc = start_runner({**base, "kill_at": [step, n]})
            assert await anyio.to_thread.run_sync(proc.wait) == -signal.SIGKILL, (step, n)
            # After every crash: nothing was ever sent twice, and the chain agrees with each node's nonce.
            check_exactly_once(node.http_url, info.contract_address, h.addresses)

        # One more, killed from outside while votes are on their way.
        proc = start_runner(base)
        confirmed_now = sum(r.state == VoteState.CONFIRMED for r in await vote_rows(h.sessions))

        async def progressed() -> bool:
            rows = await vote_rows(h.sessions)
            return sum(r.state == VoteState.CONFIRMED for r in rows) >= confirmed_now + 3

        await wait_until(progressed, timeout=30, interval=0.02)
        proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(proc.wait)
        check_exactly_once(node.http_url, info.contract_address, h.addresses)

        started = time.monotonic()
        proc = start_runner({**base, "kill_at": None})
        assert await anyio.to_thread.run_sync(proc.wait) == 0
        print(f"final run finished in {time.monotonic() - started:.1f} s")
        rows = await vote_rows(h.sessions)
        assert {r.state for r in rows} == {VoteState.CONFIRMED}, [r for r in rows if r.state != "confirmed"]
        per_node = check_exactly_once(node.http_url, info.contract_address, h.addresses)
        assert list(per_node.values()) == [PROPOSALS] * 5
