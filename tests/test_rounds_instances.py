"""Rounds of several instances on one database (storage/rounds.py): an instance starting up closes only the
rounds that can never finish (a stopped instance's), never a live owner's; on SQLite (one instance by its
run lock) every round left running. Real SQLite file and PostgreSQL; no chain."""

from __future__ import annotations

import datetime as dt

import pytest

from storage import lanes
from storage.models import utcnow
from storage.rounds import (
    INTERRUPTED,
    RoundKind,
    RoundState,
    fail_interrupted_rounds,
    finish_round,
    get_round,
    start_round,
)
from tests.support.database import Database

pytestmark = [pytest.mark.anyio, pytest.mark.both_databases]


async def _rounds(db: Database) -> dict[str | None, int]:
    """One running round each: a live lane owner, a dead one, a standby (no lease) and an older version's."""
    now = utcnow()
    await lanes.acquire(db.sessions, chain_id=1, addresses=["0x" + "aa" * 20], owner="live", seconds=60)
    await lanes.acquire(
        db.sessions,
        chain_id=1,
        addresses=["0x" + "bb" * 20],
        owner="dead",
        seconds=5,
        now=now - dt.timedelta(hours=1),
    )
    ids = {}
    for instance in ("live", "dead", "standby", None):
        ids[instance] = (await start_round(db.sessions, RoundKind.SCHEDULED, instance=instance)).id
    return ids


async def test_a_starting_instance_leaves_a_live_owners_round_running(db: Database) -> None:
    ids = await _rounds(db)
    closed = await fail_interrupted_rounds(db.sessions, instance="me", shared=True)
    assert closed == 3
    states = {name: (await get_round(db.sessions, rid)) for name, rid in ids.items()}
    assert {name: r.state for name, r in states.items() if r is not None} == {
        "live": RoundState.RUNNING,
        "dead": RoundState.FAILED,
        "standby": RoundState.FAILED,
        None: RoundState.FAILED,
    }
    assert states["dead"] is not None and states["dead"].error == INTERRUPTED
    # The standby was alive after all: its round ends with its real outcome, not the mistaken one.
    done = await finish_round(db.sessions, ids["standby"], state=RoundState.DONE, instance="standby")
    assert done is not None and done.state == RoundState.DONE and done.error is None
    # A dead instance's round stays failed whatever anyone else finishes.
    again = await finish_round(db.sessions, ids["dead"], state=RoundState.DONE, instance="live")
    assert again is not None and again.state == RoundState.FAILED


async def test_one_instance_by_its_run_lock_closes_every_round_left_running(db: Database) -> None:
    ids = await _rounds(db)
    assert await fail_interrupted_rounds(db.sessions, instance="me") == len(ids)
    for rid in ids.values():
        record = await get_round(db.sessions, rid)
        assert record is not None and record.state == RoundState.FAILED
