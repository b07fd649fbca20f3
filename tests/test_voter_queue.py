"""The vote queue on a real SQLite file: leases are exclusive and expire, every transition is conditional."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select, update

from chain.types import AssetInfo, ProposalData
from storage import queue
from storage.engine import SessionFactory, create_engine, session_factory
from storage.migrations import upgrade
from storage.models import Vote, VoteState, VoteTransaction, utcnow
from storage.proposals import record_proposal, sync_nodes
from storage.queue import SignedTx

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def proposal(pid: int) -> ProposalData:
    return ProposalData(
        pid, 0, "0x" + "11" * 20, 10**6, "A proposal", "0x" + "22" * 20, 1_700_000_000, 1_700_000_000 + pid,
        0, 0, 1, False, AssetInfo("0x" + "11" * 20, "USDC", 6),
    )  # fmt: skip


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[tuple[SessionFactory, list[int]]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}"
    await upgrade(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    nodes = await sync_nodes(sessions, [(f"n{i}", f"0x{i:040x}", "conservative") for i in (1, 2)])
    for pid in range(1, 6):
        await record_proposal(
            sessions, chain_id=1, contract="0xdao", data=proposal(pid), source="backfill",
            node_ids=[n.id for n in nodes],
        )  # fmt: skip
    # Disposed while the test's event loop runs: a pooled aiosqlite connection left to the garbage collector
    # answers into a closed loop ("Event loop is closed" in its worker thread).
    try:
        yield sessions, [n.id for n in nodes]
    finally:
        await engine.dispose()


DECIDED: dict[str, Any] = {"decision": "for", "confidence": 0.8, "reason": "r"}


def tx(n: int) -> SignedTx:
    return SignedTx(f"0x{n:064x}", n, 2 * 10**9, 10**9, 100_000, bytes([2, n]))


async def all_ids(sessions: SessionFactory) -> list[int]:
    async with sessions() as session:
        return list((await session.execute(select(Vote.id).order_by(Vote.id))).scalars())


async def test_candidates_are_whole_proposals_most_urgent_first(db: tuple[SessionFactory, list[int]]) -> None:
    sessions, nodes = db
    rows = await queue.queued_candidates(sessions, node_ids=nodes, max_proposals=2)
    assert sorted({r.proposal_id for r in rows}) == [1, 2] and len(rows) == 4
    only_second = await queue.queued_candidates(sessions, node_ids=[nodes[1]], max_proposals=5)
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
    assert await queue.count_leasable(sessions, node_ids=nodes, now=later) == 10
    assert len(await queue.lease(sessions, ids, owner="new", lease_seconds=30, now=later)) == 10


async def test_release_now_or_deferred(db: tuple[SessionFactory, list[int]]) -> None:
    sessions, nodes = db
    ids = await all_ids(sessions)
    await queue.lease(sessions, ids, owner="me", lease_seconds=60)
    assert await queue.release(sessions, ids[:2], owner="someone else") == 0
    assert await queue.release(sessions, ids[:2], owner="me", error="later") == 2
    until = utcnow() + dt.timedelta(seconds=300)
    assert await queue.release(sessions, ids[2:4], owner="me", error="paused", defer_until=until) == 2
    assert await queue.count_leasable(sessions, node_ids=nodes) == 2
    assert await queue.release_owner(sessions, "me") == 6
    assert await queue.count_leasable(sessions, node_ids=nodes) == 8  # the deferred two still wait


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
        sessions, vote, owner="me", tx=tx(7), decision="for", confidence=0.8, reason="r"
    )
    replacement = SignedTx("0x" + "ab" * 32, 7, 3 * 10**9, 2 * 10**9, 100_000, b"\x02\x08")
    assert await queue.record_replacement(sessions, vote, replacement, note="stuck")
    [sent] = await queue.sent_votes(sessions, nodes[0])
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
    assert [s.vote_id for s in await queue.sent_votes(sessions, nodes[0])] == [vote]
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
        sessions, vote, owner="me", tx=tx(3), decision="for", confidence=0.8, reason="r"
    )
    async with sessions() as session:
        outcomes = (await session.execute(select(VoteTransaction.outcome))).scalars().all()
    assert outcomes == [None]
