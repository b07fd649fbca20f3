"""Recording proposals and their per-node vote rows. Each function is one short transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from chain.types import LogRef, ProposalData, format_units, status_name, type_name
from storage import votes
from storage.engine import SessionFactory
from storage.models import Node, Proposal, VoteState, core_table, one_of
from storage.transactions import write

# A transaction that lost an insert race to another writer runs again and reads the winner's rows back.
CONFLICT_RETRIES = 2


@dataclass(frozen=True)
class NodeRecord:
    id: int
    name: str
    address: str
    strategy: str


async def sync_nodes(sessions: SessionFactory, nodes: Iterable[tuple[str, str, str]]) -> list[NodeRecord]:
    """Insert or update the configured nodes (name, address, strategy); returns them with their ids.

    Two processes starting on one fresh database both insert: the loser reads the winner's rows instead.
    """
    wanted = list(nodes)

    async def work(session: AsyncSession) -> list[NodeRecord]:
        records = []
        for name, address, strategy in wanted:
            node = (await session.execute(select(Node).where(Node.address == address))).scalar_one_or_none()
            if node is None:
                node = (await session.execute(select(Node).where(Node.name == name))).scalar_one_or_none()
            if node is None:
                node = Node(name=name, address=address, strategy=strategy)
                session.add(node)
            else:
                node.name, node.address, node.strategy = name, address, strategy
            await session.flush()
            records.append(NodeRecord(node.id, node.name, node.address, node.strategy))
        return records

    return await write(sessions, work, what="sync_nodes", conflict_retries=1)


@dataclass(frozen=True)
class RecordResult:
    proposal_row_id: int
    created: bool  # a new proposal row
    content_changed: bool  # same id, different content (a reorg replaced it)
    votes_added: int


def _content(data: ProposalData) -> dict[str, object]:
    """The columns of a proposal row that come from the chain (its content, then its tally)."""
    return {
        "proposal_type": data.proposal_type,
        "proposal_type_name": type_name(data.proposal_type),
        "asset_address": data.asset_address,
        "asset_symbol": data.asset.symbol,
        "asset_decimals": data.asset.decimals,
        "amount": str(data.amount),
        "amount_units": format_units(data.amount_units),
        "description": data.description,
        "proposer": data.proposer,
        "created_at": data.created_at_utc,
        "voting_ends_at": data.voting_ends_utc,
        "read_error": data.asset.error,
        "content_hash": data.content_hash(),
        **_tally(data),
    }


def _tally(data: ProposalData) -> dict[str, object]:
    return {
        "status": data.status,
        "status_name": status_name(data.status),
        "executed": data.executed,
        "yes_votes": str(data.yes_votes),
        "no_votes": str(data.no_votes),
    }


def _apply(row: Proposal, data: ProposalData) -> None:
    for column, value in _content(data).items():
        setattr(row, column, value)


def refresh_tally(row: Proposal, data: ProposalData) -> None:
    for column, value in _tally(data).items():
        setattr(row, column, value)


async def record_proposal(
    sessions: SessionFactory,
    *,
    chain_id: int,
    contract: str,
    data: ProposalData,
    source: str,
    node_ids: Sequence[int],
    log: LogRef | None = None,
    initial_state: VoteState = VoteState.QUEUED,
) -> RecordResult:
    """Insert the proposal and one vote row per node, or refresh it; seen twice, it changes nothing twice.

    If the stored content differs (a reorg put other content under the same id), decisions made on the old
    content are discarded: votes not yet sent go back to the queue.
    """
    items = [(data, initial_state)]
    return (await _record(sessions, chain_id, contract, items, source, node_ids, log))[0]


async def record_proposals(
    sessions: SessionFactory,
    *,
    chain_id: int,
    contract: str,
    proposals: Sequence[tuple[ProposalData, VoteState]],
    source: str,
    node_ids: Sequence[int],
    chunk: int = 200,
) -> list[RecordResult]:
    """`record_proposal` for many (each with its initial vote state), `chunk` per transaction: a reconcile
    pass over thousands of proposals would otherwise spend most of its time committing."""
    results: list[RecordResult] = []
    for start in range(0, len(proposals), chunk):
        part = proposals[start : start + chunk]
        results += await _record(sessions, chain_id, contract, part, source, node_ids, None)
    return results


async def _record(
    sessions: SessionFactory,
    chain_id: int,
    contract: str,
    items: Sequence[tuple[ProposalData, VoteState]],
    source: str,
    node_ids: Sequence[int],
    log: LogRef | None,
) -> list[RecordResult]:
    """One write transaction for all `items`. Another writer first with one of them (an insert race): the
    whole transaction runs again and reads its rows back."""

    async def work(session: AsyncSession) -> list[RecordResult]:
        if log is None and len(items) > 1:
            return await _record_many_in(session, chain_id, contract, items, source, node_ids)
        return [
            await record_proposal_in(
                session,
                chain_id=chain_id,
                contract=contract,
                data=data,
                source=source,
                node_ids=node_ids,
                log=log,
                initial_state=state,
            )
            for data, state in items
        ]

    return await write(sessions, work, what="record_proposal", conflict_retries=CONFLICT_RETRIES)


async def _record_many_in(
    session: AsyncSession,
    chain_id: int,
    contract: str,
    items: Sequence[tuple[ProposalData, VoteState]],
    source: str,
    node_ids: Sequence[int],
) -> list[RecordResult]:
    """`record_proposal_in` for many at once: the proposals not stored yet (all of them, on a first reconcile
    pass over thousands) are inserted in two bulk statements, theirs and their vote rows; the others, one by
    one as before (a refresh, or new content after a reorg)."""
    scope = (Proposal.chain_id == chain_id, Proposal.contract == contract)
    wanted = sorted({data.proposal_id for data, _ in items})
    known = set(
        (
            await session.execute(
                select(Proposal.proposal_id).where(*scope, one_of(Proposal.proposal_id, wanted))
            )
        )
        .scalars()
        .all()
    )
    fresh: dict[int, tuple[ProposalData, VoteState]] = {}
    for data, state in items:
        if data.proposal_id not in known:
            fresh.setdefault(data.proposal_id, (data, state))
    row_ids = await insert_new_in(
        session,
        chain_id,
        contract,
        [(data, state, None) for data, state in fresh.values()],
        source,
        node_ids,
    )
    results: list[RecordResult] = []
    for data, state in items:
        if data.proposal_id in fresh and fresh.pop(data.proposal_id)[0] is data:
            results.append(RecordResult(row_ids[data.proposal_id], True, False, len(node_ids)))
        else:  # stored before, or a second item with the same id in this batch
            results.append(
                await record_proposal_in(
                    session,
                    chain_id=chain_id,
                    contract=contract,
                    data=data,
                    source=source,
                    node_ids=node_ids,
                    initial_state=state,
                )
            )
    return results


async def insert_new_in(
    session: AsyncSession,
    chain_id: int,
    contract: str,
    fresh: Sequence[tuple[ProposalData, VoteState, LogRef | None]],
    source: str,
    node_ids: Sequence[int],
) -> dict[int, int]:
    """Proposals known not to be stored yet (distinct ids), each with its initial vote state and the log that
    created it: two bulk INSERTs, theirs and their vote rows, and one SELECT of their row ids."""
    if not fresh:
        return {}
    rows = [
        {
            "chain_id": chain_id,
            "contract": contract,
            "proposal_id": data.proposal_id,
            "source": source,
            **_content(data),
            **(_position(log) if log is not None else {}),
        }
        for data, _state, log in fresh
    ]
    # Core INSERT: the ORM's bulk insert works per row (thousands here).
    await session.execute(insert(core_table(Proposal)), rows)
    wanted = [data.proposal_id for data, _state, _log in fresh]
    found = await session.execute(
        select(Proposal.proposal_id, Proposal.id).where(
            Proposal.chain_id == chain_id, Proposal.contract == contract, one_of(Proposal.proposal_id, wanted)
        )
    )
    row_ids = {int(pid): int(row_id) for pid, row_id in found.all()}
    await votes.insert_for_new_proposals(
        session, [(row_ids[data.proposal_id], state) for data, state, _log in fresh], node_ids
    )
    return row_ids


def _position(log: LogRef) -> dict[str, object]:
    """Where the proposal was created: the columns record_proposal_in sets from its log."""
    return {
        "block_number": log.block_number,
        "block_hash": log.block_hash,
        "tx_hash": log.tx_hash,
        "log_index": log.log_index,
    }


async def record_proposal_in(
    session: AsyncSession,
    *,
    chain_id: int,
    contract: str,
    data: ProposalData,
    source: str,
    node_ids: Sequence[int],
    log: LogRef | None = None,
    initial_state: VoteState = VoteState.QUEUED,
) -> RecordResult:
    """`record_proposal` inside the caller's transaction (the listener adds its log record and cursor)."""
    row = (
        await session.execute(
            select(Proposal).where(
                Proposal.chain_id == chain_id,
                Proposal.contract == contract,
                Proposal.proposal_id == data.proposal_id,
            )
        )
    ).scalar_one_or_none()
    created = row is None
    content_changed = False
    if row is None:
        row = Proposal(chain_id=chain_id, contract=contract, proposal_id=data.proposal_id, source=source)
        _apply(row, data)
        session.add(row)
    else:
        content_changed = row.content_hash != data.content_hash()
        if content_changed:
            _apply(row, data)
            row.source = source
        else:
            refresh_tally(row, data)
    if log is not None and (created or content_changed or row.block_hash is None):
        row.block_number, row.block_hash = log.block_number, log.block_hash
        row.tx_hash, row.log_index = log.tx_hash, log.log_index
    await session.flush()
    if content_changed:
        await votes.decide_again(session, row.id)
    added = await votes.insert_missing(session, row.id, node_ids, initial_state)
    return RecordResult(row.id, created, content_changed, added)
