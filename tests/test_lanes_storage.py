"""Lane leases (storage/lanes.py) on a real SQLite file and PostgreSQL database: one owner per lane, taken
only once its lease expired, a fencing token that moves with every take, and no signed vote recorded under a
fence that is no longer current. No chain."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest
from sqlalchemy import select, text

from core.errors import LaneLost
from storage import lanes, queue
from storage.engine import SessionFactory, create_engine, session_factory
from storage.lanes import NO_LANES
from storage.models import NonceFiller, Vote, VoteState, utcnow
from storage.proposals import record_proposal
from storage.queue import SentRecord, SignedTx
from tests.support.database import Database, made_up_proposal

pytestmark = [pytest.mark.anyio, pytest.mark.both_databases]

LANE = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20


async def test_one_owner_per_lane_taken_only_after_its_lease_expired(db: Database) -> None:
    sessions, t0 = db.sessions, utcnow()
    mine = await lanes.acquire(sessions, chain_id=1, addresses=[LANE, OTHER], owner="a", seconds=5, now=t0)
    assert all(c.held and c.taken and c.after.token == 1 for c in mine.values())
    # Another instance, while a's leases are live: nothing for it; it sees who holds them.
    theirs = await lanes.acquire(sessions, chain_id=1, addresses=[LANE], owner="b", seconds=5, now=t0)
    assert not theirs[LANE].held and theirs[LANE].after.owner == "a"
    # a renews: same token, later expiry, not a new take.
    renewed = await lanes.acquire(
        sessions, chain_id=1, addresses=[LANE], owner="a", seconds=5, now=t0 + dt.timedelta(seconds=3)
    )
    assert renewed[LANE].held and not renewed[LANE].taken and renewed[LANE].after.token == 1
    assert renewed[LANE].after.acquired_at == mine[LANE].after.acquired_at
    # a stops renewing: once its lease expired, b takes the lane under the next token.
    later = t0 + dt.timedelta(seconds=8.5)
    taken = await lanes.acquire(sessions, chain_id=1, addresses=[LANE], owner="b", seconds=5, now=later)
    assert taken[LANE].held and taken[LANE].taken and taken[LANE].after.token == 2
    assert taken[LANE].before is not None and taken[LANE].before.owner == "a"
    # a's next renewal finds the lane b's.
    back = await lanes.acquire(sessions, chain_id=1, addresses=[LANE], owner="a", seconds=5, now=later)
    assert not back[LANE].held and back[LANE].after.owner == "b"
    # a lapsed lease taken again by its own owner is a new take too (what it knew is stale).
    late = t0 + dt.timedelta(seconds=30)
    again = await lanes.acquire(sessions, chain_id=1, addresses=[OTHER], owner="a", seconds=5, now=late)
    assert again[OTHER].taken and again[OTHER].after.token == 2
    owners = {r.address: (r.owner, r.token) for r in await lanes.owners(sessions, chain_id=1)}
    assert owners == {LANE: ("b", 2), OTHER: ("a", 2)}


async def test_a_released_lane_is_taken_at_once(db: Database) -> None:
    sessions, t0 = db.sessions, utcnow()
    await lanes.acquire(sessions, chain_id=1, addresses=[LANE], owner="a", seconds=60, now=t0)
    # Another deployment of the same instance on this chain ends only its own lanes.
    await lanes.acquire(sessions, chain_id=1, addresses=[OTHER], owner="a", seconds=60, now=t0)
    assert await lanes.release(sessions, chain_id=1, owner="a", addresses=[OTHER], now=t0) == 1
    assert await lanes.release(sessions, chain_id=1, owner="a", now=t0) == 1
    soon = t0 + dt.timedelta(milliseconds=1)
    taken = await lanes.acquire(sessions, chain_id=1, addresses=[LANE], owner="b", seconds=60, now=soon)
    assert taken[LANE].held and taken[LANE].after.token == 2
    assert taken[LANE].before is not None and taken[LANE].before.owner == "a"


async def test_two_instances_racing_for_a_new_lane_one_wins(db: Database) -> None:
    """Two engines (two processes' pools) insert the same new lane at once: one row, one owner; the loser
    reads the winner's row back instead of failing."""
    engines = [create_engine(db.url), create_engine(db.url)]
    try:
        factories = [session_factory(engine) for engine in engines]
        claims: dict[str, lanes.LaneClaim] = {}

        async def take(sessions: SessionFactory, owner: str) -> None:
            got = await lanes.acquire(sessions, chain_id=7, addresses=[LANE], owner=owner, seconds=30)
            claims[owner] = got[LANE]

        async with anyio.create_task_group() as tg:
            tg.start_soon(take, factories[0], "a")
            tg.start_soon(take, factories[1], "b")
        assert sum(c.held for c in claims.values()) == 1
        assert {c.after.owner for c in claims.values()} == {claims["a"].after.owner}
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_vote_signed_under_a_lapsed_fence_is_not_recorded(db: Database) -> None:
    """The fencing rule: instance a signed a vote, but b took the lane over before a recorded it. The record
    is refused in the same transaction (LaneLost), the row stays queued, no transaction is stored."""
    sessions = db.sessions
    node = db.nodes[0]
    await one_proposal(sessions, [node.id])
    address = node.address.lower()
    t0 = utcnow()
    a = await lanes.acquire(sessions, chain_id=1, addresses=[address], owner="a", seconds=2, now=t0)
    rows = await queue.lease(
        sessions, [r.vote_id for r in await candidates(sessions, node.id)], owner="a", lease_seconds=60
    )
    assert len(rows) == 1
    # b takes over once a's lease has expired (a missed its renewals: stopped, cut off, or just slow).
    later = t0 + dt.timedelta(seconds=3)
    b = await lanes.acquire(sessions, chain_id=1, addresses=[address], owner="b", seconds=60, now=later)
    assert b[address].held and b[address].after.token == 2
    signed = SignedTx("0x" + "99" * 32, 0, 2 * 10**9, 10**9, 100_000, b"\x02\x01")
    record = SentRecord(rows[0].vote_id, signed, "for", 0.9, "r")
    with pytest.raises(LaneLost, match="taken over by b"):
        await queue.record_sent_many(sessions, [record], owner="a", fence=a[address].fence)
    async with sessions() as session:
        vote = (await session.execute(select(Vote).where(Vote.id == rows[0].vote_id))).scalar_one()
    assert vote.state == VoteState.QUEUED and vote.tx_hash is None
    # The new owner frees the rows a leased, and records under its own, current fence.
    # Only the rows of the lane's deployment: the node's rows on another chain belong to that chain's lane.
    elsewhere, here = queue.ContractScope(2, "0xdao"), queue.ContractScope(1, "0xdao")
    assert await queue.release_node_leases(sessions, node.id, keep_owner="b", scope=elsewhere) == 0
    assert await queue.release_node_leases(sessions, node.id, keep_owner="b", scope=here) == 1
    leased = await queue.lease(sessions, [rows[0].vote_id], owner="b", lease_seconds=60)
    recorded = await queue.record_sent_many(
        sessions, [SentRecord(leased[0].vote_id, signed, "for", 0.9, "r")], owner="b", fence=b[address].fence
    )
    assert recorded == {rows[0].vote_id}


async def test_an_expired_fence_is_refused_even_if_nobody_took_the_lane(db: Database) -> None:
    sessions = db.sessions
    t0 = utcnow() - dt.timedelta(seconds=10)
    a = await lanes.acquire(sessions, chain_id=1, addresses=[LANE], owner="a", seconds=1, now=t0)
    signed = SignedTx("0x" + "98" * 32, 0, 2 * 10**9, 10**9, 100_000, b"\x02\x02")
    with pytest.raises(LaneLost, match="expired"):
        await queue.record_replacement(sessions, 1, signed, note="bump", fence=a[LANE].fence)


async def test_a_record_without_the_lanes_fence_is_refused_while_lanes_are_in_use(db: Database) -> None:
    """A fence lost on the way can never pass for "no fencing": NO_LANES (a voter without lane ownership) is
    refused for a node whose lane has a lease row, for a first send, a replacement and a nonce filler alike;
    a node without one records as before."""
    sessions = db.sessions
    fenced, free = db.nodes[0], db.nodes[1]
    await one_proposal(sessions, [fenced.id, free.id])  # fmt: skip
    await lanes.acquire(sessions, chain_id=1, addresses=[fenced.address], owner="a", seconds=60)
    rows = {r.node_id: r for r in await candidates(sessions, fenced.id) + await candidates(sessions, free.id)}
    await queue.lease(sessions, [r.vote_id for r in rows.values()], owner="a", lease_seconds=60)
    signed = SignedTx("0x" + "97" * 32, 0, 2 * 10**9, 10**9, 100_000, b"\x02\x03")
    record = SentRecord(rows[fenced.id].vote_id, signed, "for", 0.9, "r")
    with pytest.raises(LaneLost, match="lanes are in use"):
        await queue.record_sent_many(sessions, [record], owner="a", fence=NO_LANES)
    with pytest.raises(LaneLost, match="lanes are in use"):
        await queue.record_replacement(sessions, rows[fenced.id].vote_id, signed, note="bump", fence=NO_LANES)
    with pytest.raises(LaneLost, match="lanes are in use"):
        await queue.record_nonce_filler(
            sessions, node_id=fenced.id, nonce=3, tx_hash="0x" + "96" * 32, reason="gap", fence=NO_LANES
        )
    free_record = SentRecord(rows[free.id].vote_id, signed, "for", 0.9, "r")
    assert await queue.record_sent_many(sessions, [free_record], owner="a", fence=NO_LANES) == {
        rows[free.id].vote_id
    }
    await queue.record_nonce_filler(
        sessions, node_id=free.id, nonce=3, tx_hash="0x" + "95" * 32, reason="gap", fence=NO_LANES
    )
    async with sessions() as session:
        vote = (await session.execute(select(Vote).where(Vote.id == rows[fenced.id].vote_id))).scalar_one()
        fillers = (await session.execute(select(NonceFiller.node_id))).scalars().all()
    assert vote.state == VoteState.QUEUED and vote.tx_hash is None
    assert fillers == [free.id]


async def test_a_lost_lanes_watcher_cannot_settle_the_new_owners_row(db: Database) -> None:
    """a recorded and sent a vote, then lost the lane; b took it and replaced a's transaction. a's watcher,
    still running, sees the nonce used by none of its hashes: it may neither requeue nor mark the row
    already_voted (only_if_tx_in=its hashes), nor record a replacement under its old fence."""
    sessions = db.sessions
    node = db.nodes[0]
    await one_proposal(sessions, [node.id])
    address = node.address.lower()
    t0 = utcnow()
    a = await lanes.acquire(sessions, chain_id=1, addresses=[address], owner="a", seconds=2, now=t0)
    [row] = await queue.lease(
        sessions, [r.vote_id for r in await candidates(sessions, node.id)], owner="a", lease_seconds=60
    )
    first = SignedTx("0x" + "91" * 32, 0, 2 * 10**9, 10**9, 100_000, b"\x02\x04")
    await queue.record_sent_many(
        sessions, [SentRecord(row.vote_id, first, "for", 0.9, "r")], owner="a", fence=a[address].fence
    )
    b = await lanes.acquire(
        sessions, chain_id=1, addresses=[address], owner="b", seconds=60, now=t0 + dt.timedelta(seconds=3)
    )
    second = SignedTx("0x" + "92" * 32, 0, 4 * 10**9, 2 * 10**9, 100_000, b"\x02\x05")
    assert await queue.record_replacement(sessions, row.vote_id, second, note="b", fence=b[address].fence)
    for state in (VoteState.ALREADY_VOTED, VoteState.QUEUED):
        assert not await queue.resolve_sent(
            sessions, row.vote_id, state=state, reason="a's watcher", tx_outcome="dropped",
            only_if_tx_in=[first.tx_hash],
        )  # fmt: skip
    third = SignedTx("0x" + "93" * 32, 0, 8 * 10**9, 4 * 10**9, 100_000, b"\x02\x06")
    with pytest.raises(LaneLost, match="taken over by b"):
        await queue.record_replacement(sessions, row.vote_id, third, note="a", fence=a[address].fence)
    async with sessions() as session:
        vote = (await session.execute(select(Vote).where(Vote.id == row.vote_id))).scalar_one()
    assert (vote.state, vote.tx_hash) == (VoteState.SENT, second.tx_hash)


async def test_a_take_stores_its_moment_whatever_the_sessions_time_zone(db: Database) -> None:
    """acquired_at of a take (the UPDATE path) is the moment given, also on a PostgreSQL whose TimeZone is
    not UTC (an untyped aware datetime would be bound as TIMESTAMP WITH TIME ZONE and stored shifted)."""
    if db.engine.dialect.name == "postgresql":
        async with db.engine.begin() as conn:
            name = await conn.scalar(text("SELECT current_database()"))
            await conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO 'America/New_York'"))
        await db.engine.dispose()  # new connections start in that time zone
        async with db.engine.connect() as conn:
            assert await conn.scalar(text("SHOW timezone")) == "America/New_York"
    t0 = utcnow()
    await lanes.acquire(db.sessions, chain_id=1, addresses=[LANE], owner="a", seconds=1, now=t0)
    later = t0 + dt.timedelta(seconds=5)
    taken = await lanes.acquire(db.sessions, chain_id=1, addresses=[LANE], owner="b", seconds=60, now=later)
    assert taken[LANE].held and taken[LANE].after.token == 2
    assert taken[LANE].after.acquired_at == later
    assert taken[LANE].after.expires_at == later + dt.timedelta(seconds=60)


async def test_lanes_recorded_together_each_under_its_own_fence(db: Database) -> None:
    """Several lanes' votes in one transaction (`record_sent_lanes`, one statement per step for all lanes):
    a lane whose fence lapsed records nothing, an unfenced lane whose node has a lease row is refused, and
    the lanes still held are recorded."""
    sessions = db.sessions
    held, lapsed, unfenced, free = db.nodes[:4]
    await one_proposal(sessions, [n.id for n in (held, lapsed, unfenced, free)])
    t0 = utcnow()
    mine = await lanes.acquire(
        sessions,
        chain_id=1,
        addresses=[held.address.lower(), unfenced.address.lower()],
        owner="a",
        seconds=60,
        now=t0,
    )
    gone = await lanes.acquire(
        sessions,
        chain_id=1,
        addresses=[lapsed.address.lower()],
        owner="a",
        seconds=1,
        now=t0 - dt.timedelta(seconds=5),
    )
    rows = {}
    for node in (held, lapsed, unfenced, free):
        (rows[node.id],) = await candidates(sessions, node.id)
    await queue.lease(sessions, [r.vote_id for r in rows.values()], owner="a", lease_seconds=60)

    def record(node_id: int, byte: int) -> list[SentRecord]:
        tx = SignedTx("0x" + f"{byte:02x}" * 32, 0, 2 * 10**9, 10**9, 100_000, bytes([2, byte]))
        return [SentRecord(rows[node_id].vote_id, tx, "for", 0.9, "r")]

    outcome = await queue.record_sent_lanes(
        sessions,
        [
            (record(held.id, 0x91), mine[held.address.lower()].fence),
            (record(lapsed.id, 0x92), gone[lapsed.address.lower()].fence),
            (record(unfenced.id, 0x93), NO_LANES),
            (record(free.id, 0x94), NO_LANES),
        ],
        owner="a",
    )
    assert outcome[0] == {rows[held.id].vote_id} and outcome[3] == {rows[free.id].vote_id}
    assert isinstance(outcome[1], LaneLost) and "expired" in str(outcome[1])
    assert isinstance(outcome[2], LaneLost) and "lanes are in use" in str(outcome[2])
    async with sessions() as session:
        states = {node: state for node, state in await session.execute(select(Vote.node_id, Vote.state))}
    assert states == {
        held.id: VoteState.SENT,
        lapsed.id: VoteState.QUEUED,
        unfenced.id: VoteState.QUEUED,
        free.id: VoteState.SENT,
    }


async def one_proposal(sessions: SessionFactory, node_ids: list[int]) -> None:
    """Proposal 1 of the deployment these tests lease from (chain 1, contract 0xdao), a row per node."""
    await record_proposal(
        sessions, chain_id=1, contract="0xdao", data=made_up_proposal(1), source="backfill", node_ids=node_ids
    )


async def candidates(sessions: SessionFactory, node_id: int) -> list[queue.QueuedVote]:
    scope = queue.ContractScope(1, "0xdao")  # the deployment of these tests' proposals
    return await queue.queued_candidates(sessions, node_ids=[node_id], max_proposals=10, scope=scope)
