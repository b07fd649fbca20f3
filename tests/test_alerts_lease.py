"""The alerts lease (dloop/alerts.py alerts_lease): instances sharing one database elect exactly one alert
evaluator whatever deployments they run and in which order, and the election moves when the holder stops
renewing. Real database (SQLite file and PostgreSQL); no chain."""

from __future__ import annotations

import dataclasses

import anyio
import pytest

from core.settings import load_settings
from dloop.alerts import alerts_lease, alerts_owner, holds_alerts
from storage import lanes
from storage.lanes import ALERTS_ADDRESS, ALERTS_CHAIN_ID
from tests.support.database import Database
from voter.ownership import LaneOwnership

pytestmark = [pytest.mark.anyio, pytest.mark.both_databases]

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
FIRST_LANE = "0x" + "ab" * 20


def lease(db: Database, owner: str) -> LaneOwnership:
    settings = dataclasses.replace(
        load_settings(
            {
                "DLOOP_RPC_WS_URL": "ws://127.0.0.1:1",
                "DLOOP_CONTRACT_ADDRESS": CONTRACT,
                "AI_NODE_1_PRIVATE_KEY": KEY,
            }
        ),
        database_url=db.url,
        lane_takeover_seconds=1.5,
    )
    return alerts_lease(settings, db.sessions, owner)


def first_lane(db: Database, owner: str, chain_id: int) -> LaneOwnership:
    return LaneOwnership(
        db.sessions, chain_id=chain_id, addresses=[FIRST_LANE], owner=owner, takeover_seconds=1.5
    )


async def test_instances_with_different_deployment_orders_elect_one_evaluator(db: Database) -> None:
    # a runs chain 1 first, b chain 2 first (its chain 1 was down at start): each owns its own first
    # deployment's first lane, which once made both evaluate. The alerts lease is one row for both.
    a_lane, b_lane = first_lane(db, "a", 1), first_lane(db, "b", 2)
    await a_lane.tick()
    await b_lane.tick()
    assert a_lane.fence(FIRST_LANE) is not None and b_lane.fence(FIRST_LANE) is not None
    a, b = lease(db, "a"), lease(db, "b")
    await b.tick()
    await a.tick()
    assert [holds_alerts(a), holds_alerts(b)] == [False, True]
    await a.tick()  # renewals change nothing
    await b.tick()
    assert [holds_alerts(a), holds_alerts(b)] == [False, True]
    assert [alerts_owner(a), alerts_owner(b)] == ["b", "b"]  # what GET / and /health show (alertsOwner)
    rows = await lanes.owners(db.sessions, chain_id=ALERTS_CHAIN_ID)
    assert [(r.address, r.owner, r.token) for r in rows] == [(ALERTS_ADDRESS, "b", 1)]
    # The lanes' rows are untouched by the election, and the election by theirs.
    assert [r.owner for r in await lanes.owners(db.sessions, chain_id=1)] == ["a"]
    assert [r.owner for r in await lanes.owners(db.sessions, chain_id=2)] == ["b"]
    assert holds_alerts(None)  # no lease (SQLite, one instance by its run lock): it always evaluates


async def test_the_evaluator_moves_when_its_holder_stops_renewing_and_at_a_clean_stop(db: Database) -> None:
    a, b = lease(db, "a"), lease(db, "b")
    await a.tick()
    await b.tick()
    assert [holds_alerts(a), holds_alerts(b)] == [True, False]
    # a goes silent: by its own clock it stops evaluating once its lease lapsed; b then takes it over.
    await anyio.sleep(a.lease_seconds + 0.05)
    assert not holds_alerts(a)
    await b.tick()
    assert holds_alerts(b)
    await a.tick()  # back: it stands by
    assert [holds_alerts(a), holds_alerts(b)] == [False, True]
    assert alerts_owner(a) == "b"
    [row] = await lanes.owners(db.sessions, chain_id=ALERTS_CHAIN_ID)
    assert (row.owner, row.token) == ("b", 2)
    # b's loop ends (a clean stop): its lease ends at once and a takes over at its next try.
    async with anyio.create_task_group() as tg:
        await tg.start(b.run)
        tg.cancel_scope.cancel()
    assert not holds_alerts(b)
    await a.tick()
    assert holds_alerts(a)
    [row] = await lanes.owners(db.sessions, chain_id=ALERTS_CHAIN_ID)
    assert (row.owner, row.token) == ("a", 3)
