"""The vote queue on a real SQLite file and PostgreSQL database: leases are exclusive and expire, every
transition is conditional."""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import StorageError
from storage import queue
from storage.engine import SessionFactory
from storage.lanes import NO_LANES
from storage.models import Vote, VoteOutcome, VoteState, VoteTransaction, utcnow
from storage.proposals import record_proposal
from storage.queue import ContractScope, SignedTx
from storage.transactions import write
from tests.support.database import Database, NodeSpec, made_up_proposal

pytestmark = [pytest.mark.anyio, pytest.mark.both_databases]


@pytest.fixture
def db_nodes() -> list[NodeSpec]:
    return [(f"n{i}", f"0x{i:040x}", "conservative") for i in (1, 2)]


@pytest.fixture
async def db(db: Database) -> tuple[SessionFactory, list[int]]:
    """The shared `db` (tests/conftest.py) with two nodes and five proposals."""
    for pid in range(1, 6):
        await record_proposal(
            db.sessions, chain_id=1, contract="0xdao", data=made_up_proposal(pid), source="backfill",
            node_ids=[n.id for n in db.nodes],
        )  # fmt: skip
    return db.sessions, [n.id for n in db.nodes]


SCOPE = ContractScope(1, "0xdao")  # the deployment of the `db` fixture's proposals
# A signed vote's record: the decision, and no lane fence (these tests use no lane leases).
DECIDED: dict[str, Any] = {"decision": "for", "confidence": 0.8, "reason": "r", "fence": NO_LANES}


def tx(n: int) -> SignedTx:
    return SignedTx(f"0x{n:064x}", n, 2 * 10**9, 10**9, 100_000, bytes([2, n]))


async def all_ids(sessions: SessionFactory) -> list[int]:
    async with sessions() as session:
        return list((await session.execute(select(Vote.id).order_by(Vote.id))).scalars())


async def test_candidates_are_whole_proposals_most_urgent_first(db: tuple[SessionFactory, list[int]]) -> None:
    sessions, nodes = db
    rows = await queue.queued_candidates(sessions, node_ids=nodes, max_proposals=2, scope=SCOPE)
    assert sorted({r.proposal_id for r in rows}) == [1, 2] and len(rows) == 4
    only_second = await queue.queued_candidates(sessions, node_ids=[nodes[1]], max_proposals=5, scope=SCOPE)
    assert {r.node_id for r in only_second} == {nodes[1]} and len(only_second) == 5


async def test_concurrent_leases_never_overlap(db: tuple[SessionFactory, list[int]]) -> None:
    sessions, _ = db
    ids = await all_ids(sessions)
    got: dict[str, list[int]] = {}

    async def take(owner: str) -> None:
        got[owner] = [r.vote_id for r in await queue.lease(sessions, ids, owner=owner, lease_seconds=60)]

    async with anyio.create_task_group() as tg:
        for owner in ("a", "b", "c"):
            tg.start_soon(take, owner)
    assert sorted(got["a"] + got["b"] + got["c"]) == ids  # each row to exactly one owner


async def test_leasing_the_most_urgent_takes_whole_proposals_and_never_overlaps(
    db: tuple[SessionFactory, list[int]],
) -> None:
    """What the voter leases per batch: the free rows of the most urgent proposals, chosen and leased in one
    transaction; three voters at once share the rows out, each row to one of them."""
    sessions, nodes = db
    first = await queue.lease_most_urgent(
        sessions, node_ids=nodes, max_proposals=2, scope=SCOPE, owner="a", lease_seconds=60
    )
    assert sorted({r.proposal_id for r in first}) == [1, 2] and len(first) == 4
    elsewhere = ContractScope(1, "0xother")
    assert (
        await queue.lease_most_urgent(
            sessions, node_ids=nodes, max_proposals=5, scope=elsewhere, owner="b", lease_seconds=60
        )
        == []
    )
    got: dict[str, list[int]] = {}

    async def take(owner: str) -> None:
        rows = await queue.lease_most_urgent(
            sessions, node_ids=[nodes[1]], max_proposals=5, scope=SCOPE, owner=owner, lease_seconds=60
        )
        got[owner] = [r.vote_id for r in rows]

    async with anyio.create_task_group() as tg:
        for owner in ("b", "c", "d"):
            tg.start_soon(take, owner)
    taken = got["b"] + got["c"] + got["d"]
    assert len(taken) == len(set(taken)) == 3  # the second node's rows of proposals 3-5, once each
    assert await queue.count_leasable(sessions, node_ids=nodes, scope=SCOPE) == 3  # the first node's


async def test_expired_lease_is_taken_up_again(db: tuple[SessionFactory, list[int]]) -> None:
    sessions, nodes = db
    ids = await all_ids(sessions)
    now = utcnow()
    assert len(await queue.lease(sessions, ids, owner="crashed", lease_seconds=30, now=now)) == 10
    assert (
        await queue.lease(sessions, ids, owner="new", lease_seconds=30, now=now + dt.timedelta(seconds=29))
        == []
    )
    later = now + dt.timedelta(seconds=31)
    assert await queue.count_leasable(sessions, node_ids=nodes, scope=SCOPE, now=later) == 10
    assert len(await queue.lease(sessions, ids, owner="new", lease_seconds=30, now=later)) == 10


async def test_release_now_or_deferred(db: tuple[SessionFactory, list[int]]) -> None:
    sessions, nodes = db
    ids = await all_ids(sessions)
    await queue.lease(sessions, ids, owner="me", lease_seconds=60)
    assert await queue.release(sessions, ids[:2], owner="someone else") == 0
    assert await queue.release(sessions, ids[:2], owner="me", error="later") == 2
    until = utcnow() + dt.timedelta(seconds=300)
    assert await queue.release(sessions, ids[2:4], owner="me", error="paused", defer_until=until) == 2
    assert await queue.count_leasable(sessions, node_ids=nodes, scope=SCOPE) == 2
    assert await queue.release_owner(sessions, "me") == 6
    assert (
        await queue.count_leasable(sessions, node_ids=nodes, scope=SCOPE) == 8
    )  # the deferred two still wait


async def test_transitions_need_the_lease(db: tuple[SessionFactory, list[int]]) -> None:
    sessions, _ = db
    vote = (await all_ids(sessions))[0]
    assert not await queue.record_sent(sessions, vote, owner="me", tx=tx(1), **DECIDED)
    await queue.lease(sessions, [vote], owner="other", lease_seconds=60)
    assert not await queue.record_sent(sessions, vote, owner="me", tx=tx(1), **DECIDED)
    assert not await queue.finish_unsent(
        sessions, vote, owner="me", state=VoteState.CLOSED, decision=None, confidence=None, reason="x"
    )
    assert await queue.finish_unsent(
        sessions, vote, owner="other", state=VoteState.CLOSED, decision=None, confidence=None, reason="closed"
    )
    async with sessions() as session:
        assert (await session.execute(select(Vote.state).where(Vote.id == vote))).scalar_one() == "closed"
        assert (await session.execute(select(VoteTransaction))).first() is None


async def test_sent_confirmed_and_a_listener_racing(db: tuple[SessionFactory, list[int]]) -> None:
    sessions, nodes = db
    vote = (await all_ids(sessions))[0]
    await queue.lease(sessions, [vote], owner="me", lease_seconds=60)
    assert await queue.record_sent(
        sessions, vote, owner="me", tx=tx(7), decision="for", confidence=0.8, reason="r", fence=NO_LANES
    )
    replacement = SignedTx("0x" + "ab" * 32, 7, 3 * 10**9, 2 * 10**9, 100_000, b"\x02\x08")
    assert await queue.record_replacement(sessions, vote, replacement, note="stuck", fence=NO_LANES)
    [sent] = await queue.sent_votes(sessions, nodes[0], scope=SCOPE)
    assert sent.nonce == 7 and sent.latest == replacement and len(sent.transactions) == 2
    # The listener saw our VoteCast first and marked the row confirmed; ours must still succeed, harmlessly.
    async with sessions.begin() as session:
        await session.execute(update(Vote).where(Vote.id == vote).values(state=VoteState.CONFIRMED))
    assert await queue.mark_confirmed(sessions, vote, tx_hash=replacement.tx_hash, block_number=9, gas_used=5)
    assert await queue.mark_confirmed(sessions, vote, tx_hash=replacement.tx_hash, block_number=9, gas_used=5)
    async with sessions() as session:
        row = (await session.execute(select(Vote).where(Vote.id == vote))).scalar_one()
        assert (row.state, row.confirmed_block, row.gas_used) == ("confirmed", 9, 5)
        outcomes = dict(
            (await session.execute(select(VoteTransaction.tx_hash, VoteTransaction.outcome))).all()
        )
    assert outcomes == {tx(7).tx_hash: "replaced", replacement.tx_hash: "mined"}
    # Not from other states: a queued row cannot be confirmed by the voter.
    other = (await all_ids(sessions))[1]
    assert not await queue.mark_confirmed(sessions, other, tx_hash="0x1", block_number=1, gas_used=1)


async def test_reorg_reopens_and_requeue_forgets_the_nonce(db: tuple[SessionFactory, list[int]]) -> None:
    sessions, nodes = db
    vote = (await all_ids(sessions))[0]
    await queue.lease(sessions, [vote], owner="me", lease_seconds=60)
    await queue.record_sent(sessions, vote, owner="me", tx=tx(3), **DECIDED)
    await queue.mark_confirmed(sessions, vote, tx_hash=tx(3).tx_hash, block_number=4, gas_used=1)
    assert await queue.reopen_confirmed(sessions, tx_hashes=[tx(3).tx_hash]) == 1
    assert [s.vote_id for s in await queue.sent_votes(sessions, nodes[0], scope=SCOPE)] == [vote]
    assert await queue.resolve_sent(
        sessions, vote, state=VoteState.QUEUED, reason="nonce used elsewhere", tx_outcome="dropped"
    )
    assert not await queue.resolve_sent(sessions, vote, state=VoteState.QUEUED, reason="again")
    async with sessions() as session:
        row = (await session.execute(select(Vote).where(Vote.id == vote))).scalar_one()
        assert (row.state, row.nonce, row.tx_hash, row.lease_owner) == ("queued", None, None, None)
    # Sent again with the same signed bytes (deterministic signature): the stored transaction is reused.
    await queue.lease(sessions, [vote], owner="me", lease_seconds=60)
    assert await queue.record_sent(
        sessions, vote, owner="me", tx=tx(3), decision="for", confidence=0.8, reason="r", fence=NO_LANES
    )
    async with sessions() as session:
        outcomes = (await session.execute(select(VoteTransaction.outcome))).scalars().all()
    assert outcomes == [None]


async def outcome_of(sessions: SessionFactory, vote: int) -> tuple[str, str | None]:
    async with sessions() as session:
        row = (await session.execute(select(Vote.state, Vote.outcome).where(Vote.id == vote))).one()
        return row.state, row.outcome


async def test_each_transition_records_its_outcome(db: tuple[SessionFactory, list[int]]) -> None:
    sessions, _ = db
    first, second = (await all_ids(sessions))[:2]
    await queue.lease(sessions, [first, second], owner="me", lease_seconds=60)
    assert await queue.finish_unsent(
        sessions, second, owner="me", state=VoteState.NO_VOTE, decision="none", confidence=0.5, reason="r"
    )
    assert await outcome_of(sessions, second) == ("no_vote", "no_vote")
    assert await queue.record_sent(sessions, first, owner="me", tx=tx(4), **DECIDED)
    assert await outcome_of(sessions, first) == ("sent", "sent")
    assert await queue.resolve_sent(
        sessions, first, state=VoteState.PENDING, reason="ProposalNotFound", tx_outcome="reverted",
        outcome=VoteOutcome.PROPOSAL_NOT_FOUND,
    )  # fmt: skip
    assert await outcome_of(sessions, first) == ("pending", "proposal_not_found")
    # pending is not a source of sent or failed: the voter cannot touch the row until it is queued again.
    assert not await queue.mark_failed(sessions, first, reason="x")
    assert not await queue.record_sent(sessions, first, owner="me", tx=tx(5), **DECIDED)
    assert await outcome_of(sessions, first) == ("pending", "proposal_not_found")


async def test_a_write_retries_a_busy_database_and_reports_storage_errors(
    db: tuple[SessionFactory, list[int]],
) -> None:
    sessions, _ = db
    calls: list[int] = []

    async def busy_once(session: AsyncSession) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE votes", {}, Exception("database is locked"))
        return len(calls)

    assert await write(sessions, busy_once, what="test") == 2

    async def always_busy(session: AsyncSession) -> None:
        raise OperationalError("UPDATE votes", {}, Exception("database is locked"))

    with pytest.raises(StorageError, match=r"test: .*database is locked"):
        await write(sessions, always_busy, what="test")

    async def conflict(session: AsyncSession) -> None:
        raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    with pytest.raises(StorageError, match="UNIQUE"):
        await write(sessions, conflict, what="test", conflict_retries=1)


async def test_a_cancelled_write_still_commits(db: tuple[SessionFactory, list[int]]) -> None:
    """Shielded: the cancellation takes effect after the commit, never between a statement and its end."""
    sessions, _ = db
    vote = (await all_ids(sessions))[0]

    async def slow(session: AsyncSession) -> None:
        await session.execute(update(Vote).where(Vote.id == vote).values(last_error="written"))
        await anyio.sleep(0.2)

    with anyio.move_on_after(0.05) as scope:
        await write(sessions, slow, what="test")
        await anyio.sleep(5)  # the cancellation arrives here, after the commit
    assert scope.cancelled_caught
    async with sessions() as session:
        written = (await session.execute(select(Vote.last_error).where(Vote.id == vote))).scalar_one()
    assert written == "written"


async def test_another_contracts_rows_on_the_same_chain_are_not_this_deployments(
    db: tuple[SessionFactory, list[int]],
) -> None:
    """A deployment is a chain AND a contract: rows a former contract left on the same chain, for the same
    key, are never leased, counted or adopted by this one (they would be voted here by proposal number)."""
    sessions, nodes = db
    await record_proposal(
        sessions, chain_id=1, contract="0xold", data=made_up_proposal(9), source="backfill", node_ids=nodes
    )
    other = ContractScope(1, "0xold")
    rows = await queue.queued_candidates(sessions, node_ids=nodes, max_proposals=50, scope=SCOPE)
    assert {(r.contract, r.proposal_id) for r in rows} == {("0xdao", pid) for pid in range(1, 6)}
    assert await queue.count_leasable(sessions, node_ids=nodes, scope=SCOPE) == 10
    theirs = await queue.queued_candidates(sessions, node_ids=nodes, max_proposals=50, scope=other)
    assert {(r.contract, r.proposal_id) for r in theirs} == {("0xold", 9)} and len(theirs) == 2
    assert await queue.count_leasable(sessions, node_ids=nodes, scope=other) == 2
    # A sent row of the other contract is not adopted by this deployment's lanes.
    old = theirs[0].vote_id
    await queue.lease(sessions, [old], owner="me", lease_seconds=60)
    assert await queue.record_sent(sessions, old, owner="me", tx=tx(4), **DECIDED)
    assert await queue.sent_votes(sessions, theirs[0].node_id, scope=SCOPE) == []
    assert await queue.sent_vote_ids(sessions, nodes, scope=SCOPE) == {}
    assert [s.vote_id for s in await queue.sent_votes(sessions, theirs[0].node_id, scope=other)] == [old]
    assert await queue.sent_vote_ids(sessions, nodes, scope=other) == {theirs[0].node_id: {old}}
