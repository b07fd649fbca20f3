"""Instances sharing one database share its alerts table: only the instance whose turn it is evaluates and
notifies (dloop/alerts.py `active`; the service gives it to the holder of the alerts lease, tested in
tests/test_alerts_lease.py). On becoming the evaluator it takes the firing set the other one left. Real
SQLite file; no chain."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import anyio
import pytest
from sqlalchemy import func, select

from chain.client import RpcCounts
from core.settings import load_settings
from dloop.alerts import AlertEvaluator
from monitor.engine import Alert
from monitor.notify import Notifier
from storage.alerts import firing_alerts, save_alerts
from storage.models import AlertRow
from storage.queries import ContractScope
from tests.support.database import Database
from web.ports import ListenerView, NodeChainState

pytestmark = pytest.mark.anyio

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


async def test_only_the_instance_whose_turn_it_is_evaluates_and_it_adopts_the_firing_set(
    db: Database,
) -> None:
    settings = dataclasses.replace(
        load_settings(
            {
                "DLOOP_RPC_WS_URL": "ws://127.0.0.1:1",
                "DLOOP_CONTRACT_ADDRESS": CONTRACT,
                "AI_NODE_1_PRIVATE_KEY": KEY,
            }
        ),
        alert_interval=0.05,
        head_timeout=3600.0,
    )
    node = db.nodes[0]
    reads = 0
    evaluated = anyio.Event()

    async def node_chain() -> Sequence[NodeChainState]:
        nonlocal reads
        reads += 1
        if reads >= 2:  # two passes as the evaluator: the second would have inserted a duplicate
            evaluated.set()
        return [
            NodeChainState(node.address, eth_balance_wei=0, dloop_balance_wei=10**18, required_wei=10**15)
        ]

    now = dt.datetime.now(dt.UTC)
    turn = False
    evaluator = AlertEvaluator(
        settings,
        db.sessions,
        ContractScope(31337, CONTRACT),
        [node],
        Notifier(()),
        listener=lambda: ListenerView(True, True, True, head_block=1, head_received_at=now),
        listener_enabled=True,
        node_chain=node_chain,
        rpc_counts=RpcCounts(),
        running_round=lambda: None,
        active=lambda: turn,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(evaluator.run)
        await anyio.sleep(0.4)
        # Not its turn: nothing read, nothing stored (the other instance evaluates).
        assert reads == 0 and await firing_alerts(db.sessions) == []
        # The other instance's alert, stored meanwhile: the same condition must not become a second row.
        fingerprint = f"NodeLowBalance:{node.name}"
        await save_alerts(
            db.sessions,
            [Alert(fingerprint, "NodeLowBalance", node.name, "warning", "low", now, now, last_notified=now)],
        )
        turn = True
        with anyio.fail_after(5):
            await evaluated.wait()
        tg.cancel_scope.cancel()
    async with db.sessions() as session:
        rows = await session.scalar(
            select(func.count()).select_from(AlertRow).where(AlertRow.fingerprint == fingerprint)
        )
    assert rows == 1
    assert [a.fingerprint for a in await firing_alerts(db.sessions)] == [fingerprint]
