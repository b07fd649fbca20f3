"""storage.chain_state on a real SQLite file and PostgreSQL database: idempotent log records, cursor, recent
blocks, reorg records."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import select, update

from chain.types import AssetInfo, LogRef, ProposalData
from storage import chain_state
from storage.chain_state import StoredBlock
from storage.engine import SessionFactory
from storage.models import ChainLog, Proposal, RecentBlock, Vote, VoteOutcome, VoteState
from storage.proposals import NodeRecord
from tests.support.database import Database

pytestmark = [pytest.mark.anyio, pytest.mark.both_databases]

CHAIN, CONTRACT = 31337, "0x5FC8d32690cc91D4c39d9d3abcBD16989F875707"
STREAM = chain_state.stream_name(CHAIN, CONTRACT)
USDC = AssetInfo("0x" + "11" * 20, "USDC", 6)
DATA = ProposalData(
    proposal_id=1,
    proposal_type=0,
    asset_address=USDC.address,
    amount=500_000_000,
    description="Allocate 500 USDC to the reserve",
    proposer="0x" + "22" * 20,
    created_at=1_700_000_000,
    voting_ends=1_700_259_200,
    yes_votes=0,
    no_votes=0,
    status=1,
    executed=False,
    asset=USDC,
)


def ref(block: int, index: int = 0, fork: str = "a") -> LogRef:
    return LogRef(
        block, "0x" + f"{block:02x}{fork}".ljust(64, "0"), "0x" + f"{block:02x}{index}".ljust(64, "f"), index
    )


@pytest.fixture
def store(db: Database) -> tuple[SessionFactory, list[NodeRecord]]:
    """The shared `db` (tests/conftest.py): five made-up nodes, no proposals."""
    return db.sessions, db.nodes


async def created(
    sessions: SessionFactory,
    nodes: list[NodeRecord],
    log: LogRef,
    data: ProposalData = DATA,
    state: VoteState = VoteState.QUEUED,
) -> chain_state.CreatedRecord | None:
    return await chain_state.record_created_proposal(
        sessions,
        stream=STREAM,
        chain_id=CHAIN,
        contract=CONTRACT,
        data=data,
        source="subscription",
        node_ids=[n.id for n in nodes],
        log=log,
        initial_state=state,
    )


async def states(sessions: SessionFactory) -> list[str]:
    async with sessions() as session:
        return list((await session.execute(select(Vote.state).order_by(Vote.node_id))).scalars().all())


async def test_cursor_only_moves_forward(store: tuple[SessionFactory, list[NodeRecord]]) -> None:
    sessions, _ = store
    assert await chain_state.read_cursor(sessions, STREAM) is None
    await chain_state.advance_cursor(sessions, STREAM, 10, "0xaa")
    await chain_state.advance_cursor(sessions, STREAM, 5)
    assert await chain_state.read_cursor(sessions, STREAM) == chain_state.CursorRecord(10, "0xaa")
    await chain_state.advance_cursor(sessions, STREAM, 12)
    assert (await chain_state.read_cursor(sessions, STREAM)) == chain_state.CursorRecord(12, None)


async def test_the_same_created_log_twice_changes_nothing(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    sessions, nodes = store
    first = await created(sessions, nodes, ref(20))
    assert first is not None and first.record.created and first.queued_votes == 5
    assert await created(sessions, nodes, ref(20)) is None
    assert await states(sessions) == ["queued"] * 5
    assert (await chain_state.read_cursor(sessions, STREAM)) == chain_state.CursorRecord(19, None)
    assert await chain_state.processed_log_keys(sessions, [(ref(20).block_hash, 0), ("0xother", 0)]) == {
        (ref(20).block_hash, 0)
    }


async def test_pending_rows_are_queued_when_the_proposal_is_deep_or_seen_again(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    sessions, nodes = store
    record = await created(sessions, nodes, ref(30), state=VoteState.PENDING)
    assert record is not None and record.queued_votes == 0
    assert await states(sessions) == ["pending"] * 5
    heads = [StoredBlock(n, f"0x{n:064x}", f"0x{n - 1:064x}") for n in range(30, 33)]
    queued = await chain_state.record_heads(
        sessions,
        stream=STREAM,
        heads=heads,
        keep_blocks=2,
        cursor_block=31,
        chain_id=CHAIN,
        contract=CONTRACT,
        queue_up_to_block=29,
    )
    assert queued == 0 and await states(sessions) == ["pending"] * 5
    assert [b.number for b in await chain_state.load_recent_blocks(sessions, STREAM)] == [31, 32]  # bounded
    queued = await chain_state.record_heads(
        sessions,
        stream=STREAM,
        heads=[StoredBlock(33, f"0x{33:064x}", f"0x{32:064x}")],
        keep_blocks=2,
        cursor_block=32,
        chain_id=CHAIN,
        contract=CONTRACT,
        queue_up_to_block=30,
    )
    assert queued == 5 and await states(sessions) == ["queued"] * 5


async def test_vote_cast_confirms_our_row_once_and_never_clobbers(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    sessions, nodes = store
    await created(sessions, nodes, ref(40))

    async def cast(log: LogRef, node: NodeRecord | None) -> chain_state.VoteCastRecord | None:
        return await chain_state.record_vote_cast(
            sessions,
            stream=STREAM,
            chain_id=CHAIN,
            contract=CONTRACT,
            log=log,
            proposal_id=1,
            voter_node_id=None if node is None else node.id,
        )

    assert await cast(ref(41, 0), nodes[0]) == chain_state.VoteCastRecord(True, True)
    assert await cast(ref(41, 0), nodes[0]) is None  # replay
    assert await cast(ref(42, 0), nodes[0]) == chain_state.VoteCastRecord(True, False)  # already confirmed
    assert await cast(ref(42, 1), None) == chain_state.VoteCastRecord(True, False)  # someone else
    async with sessions() as session:
        vote = (await session.execute(select(Vote).where(Vote.node_id == nodes[0].id))).scalar_one()
    assert vote.state == "confirmed" and vote.confirmed_block == 41 and vote.tx_hash == ref(41, 0).tx_hash
    assert await states(sessions) == ["confirmed"] + ["queued"] * 4


async def test_closing_event_closes_votes_not_yet_sent(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    sessions, nodes = store
    await created(sessions, nodes, ref(50))
    async with sessions.begin() as session:
        await session.execute(update(Vote).where(Vote.node_id == nodes[1].id).values(state=VoteState.SENT))

    async def close() -> int | None:
        return await chain_state.record_proposal_closed(
            sessions,
            stream=STREAM,
            chain_id=CHAIN,
            contract=CONTRACT,
            log=ref(51),
            proposal_id=1,
            event="ProposalCanceled",
            status=5,
            executed=False,
        )

    assert await close() == 4
    assert await close() is None
    assert await states(sessions) == ["closed", "sent", "closed", "closed", "closed"]
    async with sessions() as session:
        row = (await session.execute(select(Proposal))).scalar_one()
    assert row.status_name == "canceled"


async def test_bad_logs_are_recorded_with_their_reason(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    sessions, _ = store
    bad = {"stream": STREAM, "log": ref(60), "event": "unknown", "proposal_id": None, "error": "undecodable"}
    assert await chain_state.record_bad_log(sessions, **bad)  # type: ignore[arg-type]
    assert not await chain_state.record_bad_log(sessions, **bad)  # type: ignore[arg-type]
    async with sessions() as session:
        log = (await session.execute(select(ChainLog))).scalar_one()
    assert (log.event, log.error, log.removed) == ("unknown", "undecodable", False)


async def test_orphaning_marks_logs_parks_proposals_and_rewinds_the_cursor(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    sessions, nodes = store
    await created(sessions, nodes, ref(70))
    await created(sessions, nodes, ref(75), data=dataclasses.replace(DATA, proposal_id=2))
    await chain_state.record_vote_cast(
        sessions,
        stream=STREAM,
        chain_id=CHAIN,
        contract=CONTRACT,
        log=ref(76),
        proposal_id=1,
        voter_node_id=nodes[0].id,
    )
    await chain_state.advance_cursor(sessions, STREAM, 80)

    result = await chain_state.orphan_after(
        sessions, stream=STREAM, chain_id=CHAIN, contract=CONTRACT, fork_block=72
    )
    assert result.logs_removed == 2 and result.proposal_ids == {1, 2} and result.parked_proposals == {2}
    assert (await chain_state.read_cursor(sessions, STREAM)) == chain_state.CursorRecord(72, None)
    async with sessions() as session:
        removed = dict((await session.execute(select(ChainLog.block_number, ChainLog.removed))).all())
        parked = (await session.execute(select(Proposal).where(Proposal.proposal_id == 2))).scalar_one()
    assert removed == {70: False, 75: True, 76: True}
    assert parked.block_hash is None and parked.block_number is None

    # The vote confirmed in an orphaned block is found and goes back to the queue.
    [confirmed] = await chain_state.confirmed_votes_after(
        sessions, chain_id=CHAIN, contract=CONTRACT, block=72
    )
    assert confirmed.confirmed_block == 76 and not confirmed.proposal_parked
    assert await chain_state.requeue_orphaned_vote(sessions, confirmed.vote_id, parked=False, reason="reorg")
    assert not await chain_state.requeue_orphaned_vote(
        sessions, confirmed.vote_id, parked=False, reason="reorg"
    )

    # The canonical log of proposal 2 (another block hash) brings it back, with new content: decided again.
    again = await created(
        sessions, nodes, ref(74, fork="b"), data=dataclasses.replace(DATA, proposal_id=2, amount=1)
    )
    assert again is not None and again.record.content_changed and again.queued_votes == 5
    async with sessions() as session:
        back = (await session.execute(select(Proposal).where(Proposal.proposal_id == 2))).scalar_one()
        rows = (await session.execute(select(Vote.state))).scalars().all()
    assert back.block_number == 74 and back.block_hash == ref(74, fork="b").block_hash
    assert sorted(rows) == ["queued"] * 10

    # The same orphaned log coming back (a reorg back to the first chain) is processed again.
    assert await chain_state.processed_log_keys(sessions, [(ref(75).block_hash, 0)]) == set()
    assert await created(sessions, nodes, ref(75), data=dataclasses.replace(DATA, proposal_id=2)) is not None


async def test_replacing_recent_blocks_drops_everything_above_the_fork(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    sessions, _ = store
    old = [StoredBlock(n, f"0x{n:063x}a", "0x") for n in range(1, 6)]
    await chain_state.replace_recent_blocks(sessions, stream=STREAM, above=0, blocks=old, keep_blocks=256)
    new = [StoredBlock(n, f"0x{n:063x}b", "0x") for n in range(3, 5)]
    await chain_state.replace_recent_blocks(sessions, stream=STREAM, above=2, blocks=new, keep_blocks=256)
    async with sessions() as session:
        stored = dict((await session.execute(select(RecentBlock.number, RecentBlock.hash))).all())
    assert stored == {1: old[0].hash, 2: old[1].hash, 3: new[0].hash, 4: new[1].hash}


async def outcomes(sessions: SessionFactory) -> list[tuple[str, str | None]]:
    async with sessions() as session:
        rows = await session.execute(select(Vote.state, Vote.outcome).order_by(Vote.node_id))
        return [(state, outcome) for state, outcome in rows.all()]


async def test_a_reorged_closing_log_reopens_by_outcome_not_by_text(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    """Votes closed by a closing log are queued again when the log leaves the chain: decided on `outcome`,
    whatever `last_error` says. A row closed for another reason stays closed, even with the same text."""
    sessions, nodes = store
    await created(sessions, nodes, ref(80))
    assert await chain_state.record_proposal_closed(
        sessions, stream=STREAM, chain_id=CHAIN, contract=CONTRACT, log=ref(85), proposal_id=1,
        event="ProposalCanceled", status=5, executed=False,
    ) == 5  # fmt: skip
    assert set(await outcomes(sessions)) == {("closed", "closed_by_event")}
    async with sessions.begin() as session:
        await session.execute(update(Vote).where(Vote.node_id == nodes[0].id).values(last_error="edited"))
        await session.execute(
            update(Vote).where(Vote.node_id == nodes[1].id).values(outcome=VoteOutcome.CLOSED)
        )  # closed by the voter (say): its text still reads "closed on chain by ..."

    result = await chain_state.orphan_after(
        sessions, stream=STREAM, chain_id=CHAIN, contract=CONTRACT, fork_block=82
    )
    assert result.votes_reopened == 4
    assert await outcomes(sessions) == [
        ("queued", "reopened_after_reorg"),
        ("closed", "closed"),
        *[("queued", "reopened_after_reorg")] * 3,
    ]


async def test_votes_reverted_with_proposal_not_found_are_owed_when_it_is_created_again(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    sessions, nodes = store
    first = await created(sessions, nodes, ref(90))
    assert first is not None
    row_id = first.record.proposal_row_id
    async with sessions.begin() as session:
        await session.execute(
            update(Vote)
            .where(Vote.node_id.in_([nodes[0].id, nodes[1].id]))
            .values(state=VoteState.FAILED, outcome=VoteOutcome.PROPOSAL_NOT_FOUND, last_error="any text")
        )
        await session.execute(
            update(Vote)
            .where(Vote.node_id == nodes[2].id)
            .values(state=VoteState.FAILED, outcome=VoteOutcome.REVERTED, last_error="reverted on chain: X")
        )
    reopened = await chain_state.reopen_votes_sent_before_creation(
        sessions, row_id, state=VoteState.QUEUED, content_changed=False
    )
    assert reopened == 2
    after = await outcomes(sessions)
    assert [state for state, _ in after] == ["queued", "queued", "failed", "queued", "queued"]
    assert after[0] == after[1] == ("queued", "reopened_after_reorg")


async def test_two_streams_keep_their_own_blocks_logs_and_reorgs(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    """Two deployments in one database: another chain's blocks at the same heights are not a reorg of this
    one, its proposal ids are not this one's, and a reorg here leaves its logs alone."""
    sessions, nodes = store
    other_chain = 31338
    other = chain_state.stream_name(other_chain, CONTRACT)
    for stream, fork in ((STREAM, "a"), (other, "b")):
        blocks = [StoredBlock(n, "0x" + f"{n:02x}{fork}".ljust(64, "0"), "0x" + "00" * 32) for n in (40, 41)]
        await chain_state.replace_recent_blocks(
            sessions, stream=stream, above=0, blocks=blocks, keep_blocks=256
        )
    mine, theirs = [await chain_state.load_recent_blocks(sessions, s) for s in (STREAM, other)]
    assert [b.number for b in mine] == [b.number for b in theirs] == [40, 41]
    assert {b.hash for b in mine}.isdisjoint(b.hash for b in theirs)

    await created(sessions, nodes, ref(41, fork="a"))
    await chain_state.record_created_proposal(
        sessions,
        stream=other,
        chain_id=other_chain,
        contract=CONTRACT,
        data=dataclasses.replace(DATA, proposal_id=2),
        source="subscription",
        node_ids=[n.id for n in nodes],
        log=ref(41, fork="b"),
        initial_state=VoteState.QUEUED,
    )
    assert await chain_state.logged_proposals(sessions, STREAM, [1, 2]) == {1}
    assert await chain_state.logged_proposals(sessions, other, [1, 2]) == {2}
    assert set(await chain_state.log_hashes_between(sessions, other, 0, 100)) == {41}

    result = await chain_state.orphan_after(
        sessions, stream=STREAM, chain_id=CHAIN, contract=CONTRACT, fork_block=40
    )
    assert result.logs_removed == 1 and result.proposal_ids == {1}
    assert await chain_state.logged_proposals(sessions, other, [2]) == {2}


async def test_a_node_voting_on_two_chains_has_one_queue_per_chain(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    """One node row per address; each chain's voter leases and adopts only its own chain's rows."""
    from storage import queue

    sessions, nodes = store
    await created(sessions, nodes, ref(50))
    await chain_state.record_created_proposal(
        sessions,
        stream=chain_state.stream_name(31338, CONTRACT),
        chain_id=31338,
        contract=CONTRACT,
        data=dataclasses.replace(DATA, proposal_id=7),
        source="subscription",
        node_ids=[nodes[0].id],
        log=ref(50, fork="b"),
        initial_state=VoteState.QUEUED,
    )
    node = [nodes[0].id]
    here, there = queue.ContractScope(CHAIN, CONTRACT), queue.ContractScope(31338, CONTRACT)
    mine = await queue.queued_candidates(sessions, node_ids=node, max_proposals=10, scope=here)
    theirs = await queue.queued_candidates(sessions, node_ids=node, max_proposals=10, scope=there)
    assert [(r.chain_id, r.proposal_id) for r in mine] == [(CHAIN, 1)]
    assert [(r.chain_id, r.proposal_id) for r in theirs] == [(31338, 7)]
    assert await queue.count_leasable(sessions, node_ids=node, scope=there) == 1
    assert await queue.count_leasable(sessions, node_ids=node, scope=here) == 1


async def test_consecutive_created_logs_are_recorded_together_like_one_by_one(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    """A burst's ProposalCreated logs in one transaction: new proposals in bulk, with their log's position; a
    log seen before is None; a proposal stored before (here re-created on another fork) goes the one-by-one
    way; the cursor ends below the last block."""
    sessions, nodes = store
    assert await created(sessions, nodes, ref(40)) is not None
    second, third = (dataclasses.replace(DATA, proposal_id=i) for i in (2, 3))
    items = [
        chain_state.CreatedLog(ref(40), DATA, VoteState.QUEUED),  # processed before
        chain_state.CreatedLog(ref(41), second, VoteState.QUEUED),
        chain_state.CreatedLog(ref(42, fork="b"), DATA, VoteState.QUEUED),  # proposal 1 again, same content
        chain_state.CreatedLog(ref(43), third, VoteState.PENDING, log_error="asset: not an ERC-20"),
        chain_state.CreatedLog(ref(43), third, VoteState.PENDING),  # the same log twice in one batch
    ]
    records = await chain_state.record_created_proposals(
        sessions,
        stream=STREAM,
        chain_id=CHAIN,
        contract=CONTRACT,
        items=items,
        source="subscription",
        node_ids=[n.id for n in nodes],
    )
    assert records[0] is None and records[4] is None
    assert records[1] is not None and records[1].record.created and records[1].queued_votes == 5
    assert records[2] is not None and not records[2].record.created and records[2].queued_votes == 0
    assert records[3] is not None and records[3].record.created and records[3].queued_votes == 0
    assert (await chain_state.read_cursor(sessions, STREAM)) == chain_state.CursorRecord(42, None)
    async with sessions() as session:
        rows = (await session.execute(select(Proposal).order_by(Proposal.proposal_id))).scalars().all()
        assert [(p.proposal_id, p.block_number, p.tx_hash) for p in rows] == [
            (1, 40, ref(40).tx_hash),
            (2, 41, ref(41).tx_hash),
            (3, 43, ref(43).tx_hash),
        ]
        by_proposal = (
            await session.execute(
                select(Proposal.proposal_id, Vote.state).join(Vote, Vote.proposal_ref == Proposal.id)
            )
        ).all()
        assert sorted((pid, str(state)) for pid, state in by_proposal) == sorted(
            [(1, "queued")] * 5 + [(2, "queued")] * 5 + [(3, "pending")] * 5
        )
        errors = (await session.execute(select(ChainLog.block_number, ChainLog.error))).all()
        assert sorted(errors) == [(40, None), (41, None), (42, None), (43, "asset: not an ERC-20")]


async def test_a_burst_recorded_in_bulk_keeps_each_deployments_stream(
    store: tuple[SessionFactory, list[NodeRecord]],
) -> None:
    """The bulk path (perf, #18) claims its logs under the caller's stream like the one-by-one path (#17):
    two deployments' bursts with the same proposal ids stay apart, and a reorg of one leaves the other."""
    sessions, nodes = store
    other_chain = 31338
    other = chain_state.stream_name(other_chain, CONTRACT)
    for stream, chain_id, fork in ((STREAM, CHAIN, "a"), (other, other_chain, "b")):
        records = await chain_state.record_created_proposals(
            sessions,
            stream=stream,
            chain_id=chain_id,
            contract=CONTRACT,
            items=[
                chain_state.CreatedLog(
                    ref(60 + i, fork=fork), dataclasses.replace(DATA, proposal_id=i), VoteState.QUEUED
                )
                for i in (1, 2)
            ],
            source="subscription",
            node_ids=[n.id for n in nodes],
        )
        assert all(r is not None and r.record.created for r in records)
    async with sessions() as session:
        rows = (await session.execute(select(ChainLog.stream, ChainLog.proposal_id))).all()
    assert sorted(rows) == sorted([(STREAM, 1), (STREAM, 2), (other, 1), (other, 2)])
    for stream in (STREAM, other):
        assert await chain_state.logged_proposals(sessions, stream, [1, 2]) == {1, 2}
        assert set(await chain_state.log_hashes_between(sessions, stream, 0, 100)) == {61, 62}
    result = await chain_state.orphan_after(
        sessions, stream=other, chain_id=other_chain, contract=CONTRACT, fork_block=61
    )
    assert result.logs_removed == 1 and result.proposal_ids == {2}
    assert await chain_state.logged_proposals(sessions, STREAM, [1, 2]) == {1, 2}
    assert await chain_state.logged_proposals(sessions, other, [1, 2]) == {1}
