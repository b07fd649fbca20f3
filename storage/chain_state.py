"""What the listener remembers about the chain: the cursor, recent block hashes and every contract log seen.

Each public function is one short transaction. A log is "claimed" by inserting its `chain_logs` row (unique
block_hash + log_index) in the same transaction as its effect, so the same log seen twice changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chain.types import LogRef, ProposalData, status_name
from storage import votes
from storage.engine import SessionFactory
from storage.models import (
    Chain,
    ChainCursor,
    ChainLog,
    Proposal,
    RecentBlock,
    Vote,
    VoteState,
    core_table,
    one_of,
    utcnow,
)
from storage.proposals import RecordResult, insert_new_in, record_proposal_in, refresh_tally
from storage.transactions import read, write

LogKey = tuple[str, int]  # (block_hash, log_index)

# Bulk UPDATEs here never read the updated objects back: skip the ORM's session synchronisation (a SELECT).
_NO_SYNC = {"synchronize_session": False}

CLOSING_EVENTS = ("ProposalCanceled", "ProposalExecuted")


def stream_name(chain_id: int, contract: str) -> str:
    """The cursor's key: one cursor per chain and contract."""
    return f"logs:{chain_id}:{contract.lower()}"


# -- cursor -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CursorRecord:
    """Every log in blocks <= block_number has been processed."""

    block_number: int
    block_hash: str | None


async def read_cursor(sessions: SessionFactory, stream: str) -> CursorRecord | None:
    async def work(session: AsyncSession) -> CursorRecord | None:
        row = await session.get(ChainCursor, stream)
        return None if row is None else CursorRecord(row.block_number, row.block_hash)

    return await read(sessions, work, what="read_cursor")


async def advance_cursor(
    sessions: SessionFactory, stream: str, block_number: int, block_hash: str | None = None
) -> None:
    async def work(session: AsyncSession) -> None:
        await _advance_cursor_in(session, stream, block_number, block_hash)

    return await write(sessions, work, what="advance_cursor", conflict_retries=1)


async def _advance_cursor_in(
    session: AsyncSession, stream: str, block_number: int, block_hash: str | None = None
) -> None:
    """Move the cursor forward only (a late log of an old block must not move it back)."""
    if block_number < 0:
        return
    # One UPDATE in the common case (every batch of logs and heads moves the cursor), no ORM object.
    moved = await session.execute(
        update(ChainCursor)
        .where(ChainCursor.stream == stream, ChainCursor.block_number < block_number)
        .values(block_number=block_number, block_hash=block_hash, updated_at=utcnow()),
        execution_options=_NO_SYNC,
    )
    if moved.rowcount == 0:  # type: ignore[attr-defined]  # ahead already, or no cursor yet
        known = await session.execute(select(ChainCursor.stream).where(ChainCursor.stream == stream))
        if known.first() is None:
            session.add(ChainCursor(stream=stream, block_number=block_number, block_hash=block_hash))
            await session.flush()


async def _rewind_cursor_in(session: AsyncSession, stream: str, block_number: int) -> None:
    await session.execute(
        update(ChainCursor)
        .where(ChainCursor.stream == stream, ChainCursor.block_number > block_number)
        .values(block_number=max(block_number, 0), block_hash=None, updated_at=utcnow()),
        execution_options=_NO_SYNC,
    )


# -- recent blocks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBlock:
    number: int
    hash: str
    parent_hash: str


async def load_recent_blocks(sessions: SessionFactory, stream: str) -> list[StoredBlock]:
    async def work(session: AsyncSession) -> list[StoredBlock]:
        query = select(RecentBlock).where(RecentBlock.stream == stream).order_by(RecentBlock.number)
        rows = (await session.execute(query)).scalars().all()
        return [StoredBlock(r.number, r.hash, r.parent_hash) for r in rows]

    return await read(sessions, work, what="load_recent_blocks")


async def _put_blocks_in(
    session: AsyncSession, stream: str, blocks: Sequence[StoredBlock], keep_blocks: int
) -> None:
    if not blocks:
        return
    numbers = [b.number for b in blocks]
    mine = RecentBlock.stream == stream
    # Delete-then-insert is the portable upsert; the table is small and bounded.
    await session.execute(delete(RecentBlock).where(mine, one_of(RecentBlock.number, numbers)))
    now = utcnow()
    # The table's Core INSERT (one executemany, no ORM unit of work): a head arrives with every block.
    await session.execute(
        insert(core_table(RecentBlock)),
        [
            {
                "stream": stream,
                "number": b.number,
                "hash": b.hash,
                "parent_hash": b.parent_hash,
                "seen_at": now,
            }
            for b in blocks
        ],
    )
    await session.execute(delete(RecentBlock).where(mine, RecentBlock.number <= max(numbers) - keep_blocks))


async def record_heads(
    sessions: SessionFactory,
    *,
    stream: str,
    heads: Sequence[StoredBlock],
    keep_blocks: int,
    cursor_block: int,
    chain_id: int,
    contract: str,
    queue_up_to_block: int | None,
) -> int:
    """Store new heads, advance the cursor and queue pending votes whose proposal is now deep enough.

    Returns how many vote rows went from pending to queued.
    """

    async def work(session: AsyncSession) -> int:
        await _put_blocks_in(session, stream, heads, keep_blocks)
        await _advance_cursor_in(session, stream, cursor_block)
        if queue_up_to_block is None:
            return 0
        return await _queue_deep_pending_in(session, chain_id, contract, queue_up_to_block)

    return await write(sessions, work, what="record_heads", conflict_retries=1)


async def _queue_deep_pending_in(
    session: AsyncSession, chain_id: int, contract: str, up_to_block: int
) -> int:
    deep = select(Proposal.id).where(
        Proposal.chain_id == chain_id,
        Proposal.contract == contract,
        Proposal.block_number <= up_to_block,  # NULL (parked after a reorg) never matches
    )
    return await votes.queue_deep_pending(session, deep)


async def replace_recent_blocks(
    sessions: SessionFactory, *, stream: str, above: int, blocks: Sequence[StoredBlock], keep_blocks: int
) -> None:
    """After a reorg: forget every stored block above the fork point and store the canonical ones."""

    async def work(session: AsyncSession) -> None:
        await session.execute(
            delete(RecentBlock).where(RecentBlock.stream == stream, RecentBlock.number > above)
        )
        await _put_blocks_in(session, stream, blocks, keep_blocks)

    return await write(sessions, work, what="replace_recent_blocks", conflict_retries=1)


# -- contract logs ----------------------------------------------------------------------------------------


async def processed_log_keys(sessions: SessionFactory, keys: Iterable[LogKey]) -> set[LogKey]:
    """Which of these logs were already processed (and not removed since)."""
    wanted = set(keys)
    if not wanted:
        return set()
    hashes = {block_hash for block_hash, _ in wanted}

    async def work(session: AsyncSession) -> set[LogKey]:
        rows = await session.execute(
            select(ChainLog.block_hash, ChainLog.log_index).where(
                one_of(ChainLog.block_hash, hashes), ChainLog.removed.is_(False)
            )
        )
        return {(h, i) for h, i in rows.all() if (h, i) in wanted}

    return await read(sessions, work, what="processed_log_keys")


async def logged_proposals(sessions: SessionFactory, stream: str, proposal_ids: Iterable[int]) -> set[int]:
    """Which of these proposals the listener recorded from their ProposalCreated log (live, not removed)."""
    wanted = sorted(set(proposal_ids))
    if not wanted:
        return set()

    async def work(session: AsyncSession) -> set[int]:
        rows = await session.execute(
            select(ChainLog.proposal_id).where(
                ChainLog.stream == stream,
                ChainLog.event == "ProposalCreated",
                one_of(ChainLog.proposal_id, wanted),
                ChainLog.removed.is_(False),
                ChainLog.error.is_(None),
            )
        )
        return {int(pid) for (pid,) in rows.all() if pid is not None}

    return await read(sessions, work, what="logged_proposals")


async def log_hashes_between(
    sessions: SessionFactory, stream: str, first: int, last: int
) -> dict[int, set[str]]:
    """Block hashes of the live logs recorded in blocks first..last, by block number."""

    async def work(session: AsyncSession) -> dict[int, set[str]]:
        rows = await session.execute(
            select(ChainLog.block_number, ChainLog.block_hash)
            .where(
                ChainLog.stream == stream,
                ChainLog.block_number >= first,
                ChainLog.block_number <= last,
                ChainLog.removed.is_(False),
            )
            .distinct()
        )
        found: dict[int, set[str]] = {}
        for number, block_hash in rows.all():
            found.setdefault(number, set()).add(block_hash)
        return found

    return await read(sessions, work, what="log_hashes_between")


async def _claim_log_in(
    session: AsyncSession, stream: str, log: LogRef, event: str, proposal_id: int | None, error: str | None
) -> bool:
    """Insert the log's row; False when it was processed already. A removed log seen again is revived."""
    return (await _claim_logs_in(session, stream, [(log, event, proposal_id, error)]))[0]


async def _claim_logs_in(
    session: AsyncSession, stream: str, logs: Sequence[tuple[LogRef, str, int | None, str | None]]
) -> list[bool]:
    """`_claim_log_in` for many logs: one SELECT, one bulk INSERT (a burst brings hundreds of VoteCast logs).
    The unique constraint on (block hash, log index) decides a race with another writer: the caller's
    transaction fails and runs again."""
    if not logs:
        return []
    hashes = sorted({log.block_hash for log, *_ in logs})
    rows = await session.execute(
        select(ChainLog.block_hash, ChainLog.log_index, ChainLog.id, ChainLog.removed).where(
            one_of(ChainLog.block_hash, hashes)
        )
    )
    stored = {(h, i): (row_id, removed) for h, i, row_id, removed in rows.all()}
    now = utcnow()
    claimed: list[bool] = []
    fresh: list[dict[str, object]] = []
    for log, event, proposal_id, error in logs:
        key = (log.block_hash, log.log_index)
        if key not in stored:
            stored[key] = (0, False)  # a second copy of the log in this batch is processed already
            claimed.append(True)
            fresh.append(
                {
                    "stream": stream,
                    "block_number": log.block_number,
                    "block_hash": log.block_hash,
                    "tx_hash": log.tx_hash,
                    "log_index": log.log_index,
                    "event": event[:32],
                    "proposal_id": proposal_id,
                    "removed": False,
                    "error": error,
                    "seen_at": now,
                }
            )
        elif stored[key][1]:  # removed by a reorg, seen again: revive it
            stored[key] = (stored[key][0], False)
            claimed.append(True)
            await session.execute(
                update(ChainLog)
                .where(ChainLog.id == stored[key][0])
                .values(removed=False, error=error, seen_at=now),
                execution_options={"synchronize_session": False},
            )
        else:
            claimed.append(False)
    if fresh:
        # Core INSERT: the ORM's bulk insert works per row (thousands here).
        await session.execute(insert(core_table(ChainLog)), fresh)
    return claimed


async def _proposal_row_ids_in(
    session: AsyncSession, chain_id: int, contract: str, proposal_ids: Iterable[int]
) -> dict[int, int]:
    wanted = sorted(set(proposal_ids))
    if not wanted:
        return {}
    rows = await session.execute(
        select(Proposal.proposal_id, Proposal.id).where(
            Proposal.chain_id == chain_id, Proposal.contract == contract, one_of(Proposal.proposal_id, wanted)
        )
    )
    return {int(pid): int(row_id) for pid, row_id in rows.all()}


@dataclass(frozen=True)
class CreatedRecord:
    record: RecordResult
    queued_votes: int  # vote rows now in state queued because of this log (new or promoted)
    reopened: int = 0  # votes that had reverted with ProposalNotFound, owed again (a proposal seen before)


@dataclass(frozen=True)
class CreatedLog:
    """A ProposalCreated log with the proposal read for it."""

    log: LogRef
    data: ProposalData
    initial_state: VoteState
    log_error: str | None = None  # bad data noted on the log's row (an asset that is not an ERC-20)


async def record_created_proposal(
    sessions: SessionFactory,
    *,
    stream: str,
    chain_id: int,
    contract: str,
    data: ProposalData,
    source: str,
    node_ids: Sequence[int],
    log: LogRef,
    initial_state: VoteState,
    log_error: str | None = None,
) -> CreatedRecord | None:
    """ProposalCreated: the log, the proposal, one vote row per node and the cursor in one transaction.

    None when this log was processed before. `log_error` notes bad data (an asset that is not an ERC-20)
    on the log's row. Vote rows parked as pending (confirmations, or a reorg that
    took the proposal's block away) are queued when `initial_state` is queued; votes that reverted with
    ProposalNotFound while a reorg had taken the proposal away are owed again, in the same transaction (the
    log, once claimed, is never processed again).
    """
    item = CreatedLog(log, data, initial_state, log_error)
    records = await record_created_proposals(
        sessions,
        stream=stream,
        chain_id=chain_id,
        contract=contract,
        items=[item],
        source=source,
        node_ids=node_ids,
    )
    return records[0]


async def record_created_proposals(
    sessions: SessionFactory,
    *,
    stream: str,
    chain_id: int,
    contract: str,
    items: Sequence[CreatedLog],
    source: str,
    node_ids: Sequence[int],
) -> list[CreatedRecord | None]:
    """`record_created_proposal` for consecutive ProposalCreated logs (a burst brings hundreds), all in one
    transaction: the logs claimed in one SELECT and one INSERT, the proposals seen for the first time inserted
    in bulk with their vote rows; a proposal stored before (a reorg, a replay) goes the one-by-one way."""

    async def work(session: AsyncSession) -> list[CreatedRecord | None]:
        claims = [(i.log, "ProposalCreated", i.data.proposal_id, i.log_error) for i in items]
        claimed = await _claim_logs_in(session, stream, claims)
        todo = [item for item, ok in zip(items, claimed, strict=True) if ok]
        if not todo:
            return [None] * len(items)
        times = Counter(item.data.proposal_id for item in todo)
        known = await _proposal_row_ids_in(session, chain_id, contract, times)
        fresh = [i for i in todo if times[i.data.proposal_id] == 1 and i.data.proposal_id not in known]
        row_ids = await insert_new_in(
            session, chain_id, contract, [(i.data, i.initial_state, i.log) for i in fresh], source, node_ids
        )
        new = {id(item) for item in fresh}
        records: list[CreatedRecord | None] = []
        for item, ok in zip(items, claimed, strict=True):
            if not ok:
                records.append(None)
            elif id(item) in new:
                queued = len(node_ids) if item.initial_state == VoteState.QUEUED else 0
                result = RecordResult(row_ids[item.data.proposal_id], True, False, len(node_ids))
                records.append(CreatedRecord(result, queued))
            else:
                records.append(await _record_created_in(session, chain_id, contract, item, source, node_ids))
        await _advance_cursor_in(session, stream, max(item.log.block_number for item in todo) - 1)
        return records

    return await write(sessions, work, what="record_created_proposals", conflict_retries=1)


async def _record_created_in(
    session: AsyncSession,
    chain_id: int,
    contract: str,
    item: CreatedLog,
    source: str,
    node_ids: Sequence[int],
) -> CreatedRecord:
    """A claimed ProposalCreated log of a proposal that may be stored already, in the caller's transaction."""
    initial_state = item.initial_state
    result = await record_proposal_in(
        session,
        chain_id=chain_id,
        contract=contract,
        data=item.data,
        source=source,
        node_ids=node_ids,
        log=item.log,
        initial_state=initial_state,
    )
    if result.content_changed:
        # record_proposal resets queued/no_vote decisions; parked rows must not keep theirs either.
        await votes.forget_pending_decisions(session, result.proposal_row_id)
    promoted = 0
    if initial_state == VoteState.QUEUED and not result.created:  # a new proposal has no parked rows
        promoted = await votes.queue_deep_pending(session, [result.proposal_row_id])
    reopened = 0
    if not result.created:  # back after a reorg: its votes that reverted meanwhile are owed again
        reopened = await votes.reopen_not_found(
            session, result.proposal_row_id, state=initial_state, content_changed=result.content_changed
        )
    queued = promoted + (result.votes_added if initial_state == VoteState.QUEUED else 0)
    return CreatedRecord(result, queued, reopened)


@dataclass(frozen=True)
class VoteCastRecord:
    known_proposal: bool
    confirmed: bool  # our node's vote row moved to confirmed by this log


@dataclass(frozen=True)
class VoteCastLog:
    log: LogRef
    proposal_id: int
    voter_node_id: int | None  # None: the voter is not one of our nodes


async def record_vote_cast(
    sessions: SessionFactory,
    *,
    stream: str,
    chain_id: int,
    contract: str,
    log: LogRef,
    proposal_id: int,
    voter_node_id: int | None,
) -> VoteCastRecord | None:
    """VoteCast: the log and, when the voter is one of our nodes, its vote row confirmed with the block."""
    cast = VoteCastLog(log, proposal_id, voter_node_id)
    return (
        await record_vote_casts(sessions, stream=stream, chain_id=chain_id, contract=contract, casts=[cast])
    )[0]


async def record_vote_casts(
    sessions: SessionFactory,
    *,
    stream: str,
    chain_id: int,
    contract: str,
    casts: Sequence[VoteCastLog],
) -> list[VoteCastRecord | None]:
    """Consecutive VoteCast logs in ONE transaction (a burst brings hundreds): per log its record, None when
    it was processed before. The cursor moves to just below the last log's block."""
    if not casts:
        return []

    async def work(session: AsyncSession) -> list[VoteCastRecord | None]:
        claimed = await _claim_logs_in(
            session, stream, [(c.log, "VoteCast", c.proposal_id, None) for c in casts]
        )
        mine = [c for c, new in zip(casts, claimed, strict=True) if new]
        row_ids = await _proposal_row_ids_in(session, chain_id, contract, (c.proposal_id for c in mine))
        ours = [c for c in mine if c.proposal_id in row_ids and c.voter_node_id is not None]
        confirmed = await votes.confirm_by_logs(
            session,
            [
                votes.LogConfirmation(
                    row_ids[c.proposal_id], c.voter_node_id or 0, c.log.tx_hash, c.log.block_number
                )
                for c in ours
            ],
        )
        records: list[VoteCastRecord | None] = []
        for cast, new in zip(casts, claimed, strict=True):
            row_id = row_ids.get(cast.proposal_id)
            key = (row_id, cast.voter_node_id)
            records.append(VoteCastRecord(row_id is not None, key in confirmed) if new else None)
        await _advance_cursor_in(session, stream, max(c.log.block_number for c in casts) - 1)
        return records

    return await write(sessions, work, what="record_vote_casts", conflict_retries=1, background=True)


async def record_proposal_closed(
    sessions: SessionFactory,
    *,
    stream: str,
    chain_id: int,
    contract: str,
    log: LogRef,
    proposal_id: int,
    event: str,
    status: int,
    executed: bool,
) -> int | None:
    """ProposalCanceled / ProposalExecuted: status updated, votes not yet sent become closed.

    Returns the number of votes closed, None when this log was processed before.
    """

    async def work(session: AsyncSession) -> int | None:
        if not await _claim_log_in(session, stream, log, event, proposal_id, None):
            return None
        row_id = (await _proposal_row_ids_in(session, chain_id, contract, [proposal_id])).get(proposal_id)
        closed = 0
        if row_id is not None:
            values: dict[str, object] = {
                "status": status,
                "status_name": status_name(status),
                "updated_at": utcnow(),
            }
            if executed:
                values["executed"] = True
            await session.execute(
                update(Proposal).where(Proposal.id == row_id).values(**values), execution_options=_NO_SYNC
            )
            closed = await votes.close_by_event(session, row_id, event)
        await _advance_cursor_in(session, stream, log.block_number - 1)
        return closed

    return await write(sessions, work, what="record_proposal_closed", conflict_retries=1)


async def record_bad_log(
    sessions: SessionFactory,
    *,
    stream: str,
    log: LogRef,
    event: str,
    proposal_id: int | None,
    error: str,
) -> bool:
    """A log that could not be processed (undecodable, getProposal reverted): recorded with the reason."""

    async def work(session: AsyncSession) -> bool:
        claimed = await _claim_log_in(session, stream, log, event, proposal_id, error[:2000])
        await _advance_cursor_in(session, stream, log.block_number - 1)
        return claimed

    return await write(sessions, work, what="record_bad_log", conflict_retries=1)


async def refresh_proposal_tallies(
    sessions: SessionFactory, *, chain_id: int, contract: str, proposals: Sequence[ProposalData]
) -> int:
    """Store fresh tallies and status read from the chain; proposals not recorded here are skipped."""
    if not proposals:
        return 0
    by_id = {p.proposal_id: p for p in proposals}

    async def work(session: AsyncSession) -> int:
        rows = (
            (
                await session.execute(
                    select(Proposal).where(
                        Proposal.chain_id == chain_id,
                        Proposal.contract == contract,
                        one_of(Proposal.proposal_id, by_id),
                    )
                )
            )
            .scalars()
            .all()
        )
        for row in rows:
            data = by_id[row.proposal_id]
            if row.content_hash == data.content_hash():  # different content: a reorg the listener handles
                refresh_tally(row, data)
        return len(rows)

    return await write(sessions, work, what="refresh_proposal_tallies", conflict_retries=1, background=True)


# -- reorgs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrphanResult:
    logs_removed: int
    proposal_ids: frozenset[int]  # proposals touched by removed logs or parked
    parked_proposals: frozenset[int]  # proposals whose creation block was orphaned
    votes_reopened: int = 0  # closed by a cancel/execute that left the chain, queued again


async def orphan_after(
    sessions: SessionFactory, *, stream: str, chain_id: int, contract: str, fork_block: int
) -> OrphanResult:
    """Everything recorded from blocks above the fork point is suspect: logs marked removed, proposals
    created there parked (their queued votes go back to pending until their canonical log is processed),
    and the cursor rewound to the fork point. The caller then re-reads the canonical logs."""

    async def work(session: AsyncSession) -> OrphanResult:
        touched = (
            await session.execute(
                select(ChainLog.proposal_id, ChainLog.event).where(
                    ChainLog.stream == stream, ChainLog.block_number > fork_block, ChainLog.removed.is_(False)
                )
            )
        ).all()
        proposal_ids = {pid for pid, _ in touched if pid is not None}
        unclosed = {pid for pid, event in touched if pid is not None and event in CLOSING_EVENTS}
        removed = await session.execute(
            update(ChainLog)
            .where(ChainLog.stream == stream, ChainLog.block_number > fork_block, ChainLog.removed.is_(False))
            .values(removed=True),
            execution_options=_NO_SYNC,
        )
        parked_rows = (
            await session.execute(
                select(Proposal.id, Proposal.proposal_id).where(
                    Proposal.chain_id == chain_id,
                    Proposal.contract == contract,
                    Proposal.block_number > fork_block,
                )
            )
        ).all()
        parked: dict[int, int] = {row_id: pid for row_id, pid in parked_rows}
        if parked:
            await session.execute(
                update(Proposal)
                .where(one_of(Proposal.id, parked))
                .values(
                    block_number=None, block_hash=None, tx_hash=None, log_index=None, updated_at=utcnow()
                ),
                execution_options=_NO_SYNC,
            )
            await votes.park(session, list(parked))
        reopened = 0
        if unclosed:
            # The cancel/execute that closed these votes is gone: they wait again (the tally refresh
            # restores the status; a canonical closing log closes them again).
            rows = (
                await session.execute(
                    select(Proposal.id, Proposal.block_number).where(
                        Proposal.chain_id == chain_id,
                        Proposal.contract == contract,
                        one_of(Proposal.proposal_id, sorted(unclosed)),
                    )
                )
            ).all()
            for state, refs in (
                (VoteState.QUEUED, [row_id for row_id, block in rows if block is not None]),
                (VoteState.PENDING, [row_id for row_id, block in rows if block is None]),  # parked
            ):
                if refs:
                    count = await votes.reopen_closed_by_event(session, refs, state)
                    if state == VoteState.QUEUED:
                        reopened += count
        await _rewind_cursor_in(session, stream, fork_block)
        return OrphanResult(
            int(getattr(removed, "rowcount", 0) or 0),
            frozenset(proposal_ids | set(parked.values())),
            frozenset(parked.values()),
            reopened,
        )

    return await write(sessions, work, what="orphan_after", conflict_retries=1)


@dataclass(frozen=True)
class ConfirmedVote:
    vote_id: int
    proposal_id: int
    node_id: int
    tx_hash: str | None
    confirmed_block: int
    proposal_parked: bool  # the proposal's own block is not on the canonical chain (yet)


async def confirmed_votes_after(
    sessions: SessionFactory, *, chain_id: int, contract: str, block: int
) -> list[ConfirmedVote]:
    async def work(session: AsyncSession) -> list[ConfirmedVote]:
        rows = await session.execute(
            select(
                Vote.id,
                Proposal.proposal_id,
                Vote.node_id,
                Vote.tx_hash,
                Vote.confirmed_block,
                Proposal.block_hash,
            )
            .join(Proposal, Proposal.id == Vote.proposal_ref)
            .where(
                Proposal.chain_id == chain_id,
                Proposal.contract == contract,
                Vote.state == VoteState.CONFIRMED,
                Vote.confirmed_block > block,
            )
            .order_by(Vote.id)
        )
        return [
            ConfirmedVote(vote_id, pid, node_id, tx_hash, int(confirmed or 0), block_hash is None)
            for vote_id, pid, node_id, tx_hash, confirmed, block_hash in rows.all()
        ]

    return await read(sessions, work, what="confirmed_votes_after")


async def requeue_orphaned_vote(sessions: SessionFactory, vote_id: int, *, parked: bool, reason: str) -> bool:
    """A confirmed vote whose transaction left the chain goes back to the queue (pending when its proposal
    is parked); the voter checks hasVoted before sending anything."""

    async def work(session: AsyncSession) -> bool:
        return await votes.requeue_orphaned(session, vote_id, parked=parked, reason=reason)

    return await write(sessions, work, what="requeue_orphaned_vote", conflict_retries=1)


async def move_vote_confirmation(sessions: SessionFactory, vote_id: int, block: int) -> bool:
    """The vote's transaction is still on the chain, in another block after the reorg."""

    async def work(session: AsyncSession) -> bool:
        return await votes.move_confirmation(session, vote_id, block)

    return await write(sessions, work, what="move_vote_confirmation", conflict_retries=1)


async def remember_genesis(sessions: SessionFactory, chain_id: int, genesis_hash: str) -> str:
    """The genesis block hash this database knows for `chain_id`; the first start records the node's."""

    async def work(session: AsyncSession) -> str:
        known = await session.get(Chain, chain_id)
        if known is None:
            session.add(Chain(chain_id=chain_id, genesis_hash=genesis_hash.lower()))
            return genesis_hash.lower()
        return known.genesis_hash

    return await write(sessions, work, what="remember_genesis", conflict_retries=1)


async def reopen_votes_sent_before_creation(
    sessions: SessionFactory, proposal_row_id: int, *, state: VoteState, content_changed: bool
) -> int:
    """A proposal created again after a reorg: its votes that reverted with ProposalNotFound (mined while
    the reorg had taken it away) are owed again, back to `state` (see storage.votes.reopen_not_found)."""

    async def work(session: AsyncSession) -> int:
        return await votes.reopen_not_found(
            session, proposal_row_id, state=state, content_changed=content_changed
        )

    return await write(sessions, work, what=f"reopening votes of proposal row {proposal_row_id}")
