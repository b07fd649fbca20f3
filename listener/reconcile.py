"""The reconcile pass (the contract scan): read the contract itself and repair the queue, whatever the
subscription missed.

A pass reads `getProposalCount()`, then every proposal not yet known or still open (ids 1..count inclusive,
no cap), `hasVoted` of every open proposal and node, and (without a voter to ask) the receipts of our `sent`
transactions, all at one confirmed block through `chain.reads`. The decisions are pure
(`listener.reconcile_plan`): insert missing proposals and vote rows, refresh tallies, close what can no longer
be voted, mark what a node already voted elsewhere, reopen a confirmation the chain no longer has, confirm
`sent` votes whose transaction was mined. It never does anything that could lead to a second vote.

When passes run (at start-up, on a timer, on a trigger) and what follows them (the voter's drain) is the
composition root's business: `dloop/rounds.py`.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import anyio

from chain.client import ChainClient, Receipt, RpcErrorCounts
from chain.reads import Reads
from chain.requests import Request
from chain.retrying import call_many_retrying
from chain.types import ProposalData
from chain.ws_client import ws_chain_client
from core.concurrency import both
from core.errors import ChainError, TransientChainError
from core.logs import log_event
from core.retry import backoff_delay, with_backoff
from core.settings import Settings
from listener.reconcile_plan import (
    RecordPlan,
    VoteFix,
    id_windows,
    ids_to_read,
    mined_sent_votes,
    plan_records,
    plan_vote_fixes,
)
from storage import queue, scan
from storage.engine import SessionFactory
from storage.models import VoteState
from storage.proposals import NodeRecord, record_proposals
from storage.queue import Confirmation
from storage.rounds import ReconcileCounts

logger = logging.getLogger(__name__)
PASS_CHUNK = 250  # proposals read, recorded and fixed together in a reconcile pass
KNOWN_WINDOW = 2_000  # proposal ids whose stored state is read at once, to decide which ones a pass reads

ConnectChain = Callable[[], AbstractAsyncContextManager[ChainClient]]


@dataclass(frozen=True)
class ReconcileResult:
    proposal_count: int
    read_block: int
    chain_time: int
    proposals_scanned: int
    new_proposals: int
    missing_votes: int
    resolved_transactions: int
    closed_votes: int
    already_voted: int
    promoted_votes: int
    read_errors: tuple[str, ...] = ()
    new_proposal_ids: tuple[int, ...] = ()  # recorded first by this pass (the listener had not)

    @property
    def counts(self) -> ReconcileCounts:
        return ReconcileCounts(
            self.proposals_scanned, self.new_proposals, self.missing_votes, self.resolved_transactions
        )


@dataclass
class ReconcilerStatus:
    last_error: str | None = None  # of the last pass (cleared by a pass that completes)
    rpc_errors: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(frozen=True)
class ChunkRead:
    """A chunk of proposals as read at one block: what `_write_chunk` records."""

    read_block: int
    proposals: list[ProposalData]
    plan: RecordPlan
    has_voted: dict[tuple[int, int], bool]


class Reconciler:
    """The contract scan. `confirm_sent`: confirm `sent` votes from their receipts here (when no voter
    resolves them; the service's rounds ask the voter instead)."""

    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        nodes: Sequence[NodeRecord],
        chain_id: int,
        *,
        confirm_sent: bool = True,
        connect: ConnectChain | None = None,
        concurrency: int = 8,
        attempts: int = 5,
        pass_chunk: int = PASS_CHUNK,
        known_window: int = KNOWN_WINDOW,
        rpc_errors: RpcErrorCounts | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.nodes = tuple(nodes)
        self.chain_id = chain_id
        self.contract = settings.contract_address
        self.confirm_sent = confirm_sent
        self._connect = connect or self._open_connection
        self.concurrency = concurrency
        self.attempts = attempts
        if pass_chunk < 1 or known_window < 1:
            raise ValueError(
                f"pass_chunk and known_window must be positive, not {pass_chunk}, {known_window}"
            )
        self.pass_chunk = pass_chunk
        self.known_window = known_window
        self.status = ReconcilerStatus(
            rpc_errors=rpc_errors if rpc_errors is not None else collections.Counter()
        )

    def _open_connection(self) -> AbstractAsyncContextManager[ChainClient]:
        return ws_chain_client(self.settings, self.status.rpc_errors)

    # -- one pass -------------------------------------------------------------------------------------------
    async def reconcile(self, round_id: int | None = None) -> ReconcileResult:
        """One pass, on a fresh connection each attempt: up to `attempts` while a transient chain error (a
        lost connection, a refused batch, reads still failing after their own retries) ends it."""
        try:
            for attempt in range(1, self.attempts + 1):
                try:
                    async with self._connect() as client:
                        result = await self._pass(client)
                    break
                except ChainError as exc:
                    log_event(
                        logger, "reconcile_retry", level=logging.WARNING, round=round_id, error=str(exc)
                    )
                    if attempt == self.attempts or not isinstance(exc, TransientChainError):
                        raise
                await anyio.sleep(backoff_delay(attempt))
        except Exception as exc:
            self.status.last_error = f"{type(exc).__name__}: {exc}"
            raise
        self.status.last_error = None
        log_event(
            logger,
            "reconcile_done",
            round=round_id,
            count=result.proposal_count,
            block=result.read_block,
            scanned=result.proposals_scanned,
            new=result.new_proposals,
            missing_votes=result.missing_votes,
            resolved=result.resolved_transactions,
            closed=result.closed_votes,
            already_voted=result.already_voted,
            errors=len(result.read_errors),
        )
        return result

    async def _pass(self, client: ChainClient) -> ReconcileResult:
        confirmations = self.settings.confirmations
        reads = Reads(client, batch_size=self.settings.rpc_batch_size, send=self._sender(client))
        head_block = await with_backoff(client.block, "latest")
        read_block = max(head_block.number - confirmations, 0)
        chain_time = head_block.timestamp  # a vote sent now is judged at (at least) this time
        count = await reads.proposal_count(read_block)

        wanted = await self._ids_to_read(count, chain_time)
        errors: list[str] = []
        sent = await self._sent_receipts(reads) if self.confirm_sent else {}
        tally: collections.Counter[str] = collections.Counter()
        new_ids: list[int] = []
        # A chunk of proposals at a time, all read at the same block: a pass over 10,000 open proposals held
        # every answer, 50,000 hasVoted results and vote rows at once (tens of MB that the allocator kept).
        # The next chunk is read while this one is written: the reads wait on the node, the writes on the
        # database, and one after the other a first pass took their sum.
        chunks = [wanted[start : start + self.pass_chunk] for start in range(0, len(wanted), self.pass_chunk)]
        if chunks:
            chunk_read = await self._read_chunk(reads, chunks[0], chain_time, read_block, errors)
            for following in chunks[1:]:
                written, chunk_read = await both(
                    self._write_chunk(chunk_read, new_ids),
                    self._read_chunk(reads, following, chain_time, read_block, errors),
                )
                tally += written
            tally += await self._write_chunk(chunk_read, new_ids)
        resolved = await self._confirm_mined_sent(sent, head_block.number, confirmations) if sent else 0
        return ReconcileResult(
            proposal_count=count,
            read_block=read_block,
            chain_time=chain_time,
            proposals_scanned=tally["scanned"],
            new_proposals=tally["new"],
            missing_votes=tally["missing_votes"],
            resolved_transactions=resolved,
            closed_votes=tally[VoteState.CLOSED],
            already_voted=tally[VoteState.ALREADY_VOTED],
            promoted_votes=tally[VoteState.QUEUED],
            read_errors=tuple(errors),
            new_proposal_ids=tuple(new_ids),
        )

    async def _ids_to_read(self, count: int, chain_time: int) -> list[int]:
        """Ids 1..count that this pass reads (no cap). What the database knows of them is read a window at a
        time: holding every stored proposal at once made each pass's peak grow with the contract's history,
        and the allocator kept that peak after the pass."""
        wanted: list[int] = []
        for window in id_windows(count, self.known_window):
            known = await scan.known_proposals(self.sessions, self.chain_id, self.contract, window)
            wanted += ids_to_read(window, known, chain_time)
        return wanted

    async def _read_chunk(
        self, reads: Reads, wanted: Sequence[int], chain_time: int, read_block: int, errors: list[str]
    ) -> ChunkRead:
        """These proposals and the votes of the open ones, read at `read_block`."""
        proposals: list[ProposalData] = []
        for proposal_id, data in (await reads.proposals(wanted, read_block)).items():
            if isinstance(data, ChainError):
                errors.append(f"proposal {proposal_id}: {data}")
            else:
                proposals.append(data)
        plan = plan_records(proposals, chain_time)
        has_voted = await self._has_voted(reads, sorted(plan.open_ids), read_block, errors)
        return ChunkRead(read_block, proposals, plan, has_voted)

    async def _write_chunk(self, chunk: ChunkRead, new_ids: list[int]) -> collections.Counter[str]:
        """Record a chunk's proposals and fix their vote rows, in short transactions."""
        plan = chunk.plan
        tally: collections.Counter[str] = collections.Counter(scanned=len(chunk.proposals))
        records = await record_proposals(
            self.sessions,
            chain_id=self.chain_id,
            contract=self.contract,
            proposals=[(r.data, r.initial_state) for r in plan.records],
            source="reconcile",
            node_ids=[n.id for n in self.nodes],
        )
        for data, recorded in zip(chunk.proposals, records, strict=True):
            tally["new"] += int(recorded.created)
            if recorded.created:
                new_ids.append(data.proposal_id)
            if data.proposal_id in plan.open_ids:
                tally["missing_votes"] += recorded.votes_added
        rows = await scan.vote_rows(self.sessions, self.chain_id, self.contract, plan.read_ids)
        fixes = plan_vote_fixes(rows, plan.open_ids, plan.read_ids, chunk.has_voted, chunk.read_block)
        tally.update(str(state) for state in await self._apply_fixes(fixes))
        return tally

    async def _has_voted(
        self, reads: Reads, open_ids: Sequence[int], block: int, errors: list[str]
    ) -> dict[tuple[int, int], bool]:
        """hasVoted of every open proposal and node, by (proposal id, node id)."""
        pairs = [(pid, node) for pid in open_ids for node in self.nodes]
        answers = await reads.has_voted([(pid, node.address) for pid, node in pairs], block)
        result: dict[tuple[int, int], bool] = {}
        for pid, node in pairs:
            voted = answers[(pid, node.address)]
            if isinstance(voted, ChainError):
                errors.append(f"hasVoted({pid}, {node.name}): {voted}")
            else:
                result[(pid, node.id)] = voted
        return result

    async def _sent_receipts(self, reads: Reads) -> dict[int, list[Receipt | None]]:
        """Receipts of every transaction of every `sent` vote, by vote id."""
        rows = await scan.sent_transactions(self.sessions, self.chain_id, self.contract)
        answers = await reads.receipts([tx for _vote, tx in rows])
        receipts: dict[int, list[Receipt | None]] = {}
        for (vote_id, _tx), answer in zip(rows, answers, strict=True):
            receipts.setdefault(vote_id, []).append(None if isinstance(answer, ChainError) else answer)
        return receipts

    # -- reading with backoff -------------------------------------------------------------------------------
    def _sender(self, client: ChainClient) -> Callable[[Sequence[Request]], Any]:
        """Every read of the pass, with the one retry layer of batched reads (a rate-limited batch is sent
        again smaller); a ChainError left after it fails this pass attempt or stays in the answers."""

        async def send(requests: Sequence[Request]) -> list[Any]:
            return await call_many_retrying(
                client,
                requests,
                batch_size=self.settings.rpc_batch_size,
                concurrency=self.concurrency,
                shrink_on_rate_limit=True,
            )

        return send

    # -- database writes ------------------------------------------------------------------------------------
    async def _apply_fixes(self, fixes: Sequence[VoteFix]) -> list[VoteState]:
        applied = []
        for fix in fixes:
            if await queue.apply_reconcile_fix(
                self.sessions,
                fix.vote_id,
                from_states=fix.from_states,
                to_state=fix.to_state,
                reason=fix.reason,
            ):
                applied.append(fix.to_state)
        return applied

    async def _confirm_mined_sent(
        self, receipts: Mapping[int, Sequence[Receipt | None]], head: int, depth: int
    ) -> int:
        """`sent` -> `confirmed` for votes whose transaction is mined with success; never anything else."""
        resolved = 0
        for vote_id, receipt in mined_sent_votes(receipts, head, depth).items():
            confirmation = Confirmation(
                vote_id, receipt.tx_hash, receipt.block_number, receipt.gas_used, receipt.fee_wei
            )
            if await queue.confirm_by_reconcile(self.sessions, confirmation):
                resolved += 1
                log_event(logger, "vote_resolved_by_reconcile", vote=vote_id, tx=receipt.tx_hash)
        return resolved
