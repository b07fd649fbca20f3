"""The reconcile pass: read the contract itself and repair the queue, whatever the subscription missed.

A pass reads `getProposalCount()`, then every proposal not yet known or still open (ids 1..count inclusive,
no cap), `hasVoted` of every open proposal and node, and the receipts of our unresolved transactions. Then it
inserts missing proposals and vote rows, refreshes tallies, closes what can no longer be voted, marks what a
node already voted elsewhere, and confirms `sent` votes whose transaction was mined. It never does anything
that could lead to a second vote: rows are only ever moved *out* of the sending path, never back into it.

Rounds (a pass, then a drain of the queue by the voter) run one at a time: at start-up, every
`reconcile_interval` and on a manual trigger; a trigger while a round runs joins that round.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.abc
from sqlalchemy import and_, select, true, update
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from chain.client import (
    ChainClient,
    Receipt,
    RpcErrorCounts,
    decode_result,
    mined_receipt,
    parse_receipt,
    proposal_from_values,
)
from chain.codec import dao_functions
from chain.connection import open_ws
from chain.types import ProposalData, ProposalStatus
from core.errors import ChainError, DloopError, RateLimited, TransientChainError
from core.logs import log_event
from core.settings import Settings
from core.signals import WorkSignal
from storage.engine import SessionFactory
from storage.models import Proposal, Vote, VoteState, VoteTransaction, utcnow
from storage.proposals import NodeRecord, record_proposals
from storage.rounds import (
    ReconcileCounts,
    RoundKind,
    RoundRecord,
    RoundState,
    finish_round,
    record_reconcile,
    start_round,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
PASS_CHUNK = 500  # proposals read, recorded and fixed together in a reconcile pass

ConnectChain = Callable[[], AbstractAsyncContextManager[ChainClient]]
Drain = Callable[[], Awaitable[object]]
ResolveSent = Callable[[], Awaitable[int]]


# -- pure planning ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownProposal:
    """What the database already knows of a proposal."""

    proposal_id: int
    status: int
    voting_ends: int  # unix seconds
    has_open_votes: bool  # some vote row still pending/queued/sent


def ids_to_read(count: int, known: Mapping[int, KnownProposal], chain_time: int) -> list[int]:
    """Ids 1..count (inclusive; id 0 does not exist) that are unknown or may still change.

    A known proposal is skipped once it can no longer be voted on and none of our votes on it is open:
    its tally cannot move after `votingEnds`, and executed/canceled proposals are final.
    """
    wanted = []
    for proposal_id in range(1, count + 1):
        entry = known.get(proposal_id)
        if (
            entry is None
            or entry.has_open_votes
            or (entry.status == ProposalStatus.ACTIVE and entry.voting_ends >= chain_time)
        ):
            wanted.append(proposal_id)
    return wanted


@dataclass(frozen=True)
class VoteRow:
    vote_id: int
    proposal_id: int
    node_id: int
    state: str
    tx_hash: str | None
    confirmed_block: int | None = None


@dataclass(frozen=True)
class VoteFix:
    vote_id: int
    from_states: tuple[VoteState, ...]
    to_state: VoteState
    reason: str


_WAITING = (VoteState.PENDING, VoteState.QUEUED)


def plan_vote_fixes(
    rows: Sequence[VoteRow],
    open_ids: set[int],
    read_ids: set[int],
    has_voted: Mapping[tuple[int, int], bool],
    read_block: int | None = None,
) -> list[VoteFix]:
    """State changes the chain calls for. Only one can lead to a vote, and only when the chain says the
    node has not voted: the voter checks `hasVoted` again before it signs anything.

    - a proposal read and no longer open: waiting rows -> closed;
    - an open proposal the node already voted on (hasVoted, and we never sent anything): -> already_voted;
    - an open proposal read at a confirmed block: pending rows -> queued (the listener may be down);
    - a row confirmed at or below the block read, whose node has not voted there: its transaction left the
      chain in a reorg the listener did not see -> queued again.
    """
    fixes = []
    for row in rows:
        if (
            row.state == VoteState.CONFIRMED
            and row.proposal_id in open_ids
            and read_block is not None
            and row.confirmed_block is not None
            and row.confirmed_block <= read_block
            and has_voted.get((row.proposal_id, row.node_id)) is False
        ):
            reason = f"confirmed at block {row.confirmed_block}, not voted on chain at {read_block} (reorg)"
            fixes.append(VoteFix(row.vote_id, (VoteState.CONFIRMED,), VoteState.QUEUED, reason))
            continue
        if row.proposal_id not in read_ids or row.state not in _WAITING:
            continue
        if row.proposal_id not in open_ids:
            fixes.append(
                VoteFix(row.vote_id, _WAITING, VoteState.CLOSED, "proposal no longer open for voting")
            )
        elif has_voted.get((row.proposal_id, row.node_id)) and row.tx_hash is None:
            fixes.append(
                VoteFix(row.vote_id, _WAITING, VoteState.ALREADY_VOTED, "hasVoted was true before we sent")
            )
        elif row.state == VoteState.PENDING:
            fixes.append(
                VoteFix(row.vote_id, (VoteState.PENDING,), VoteState.QUEUED, "confirmed by reconcile")
            )
    return fixes


# -- results ------------------------------------------------------------------------------------------------


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

    @property
    def counts(self) -> ReconcileCounts:
        return ReconcileCounts(
            self.proposals_scanned, self.new_proposals, self.missing_votes, self.resolved_transactions
        )


@dataclass(frozen=True)
class RoundTicket:
    round_id: int
    joined: bool  # True: a round was already running and this request joined it
    started_at: dt.datetime


@dataclass
class ReconcilerStatus:
    current_round: int | None = None
    phase: str = "idle"  # idle / reconciling / draining
    passes: int = 0
    last_round: int | None = None
    last_result: ReconcileResult | None = None
    last_error: str | None = None
    last_finished_at: dt.datetime | None = None
    rpc_errors: collections.Counter[str] = field(default_factory=collections.Counter)


# -- the reconciler -----------------------------------------------------------------------------------------


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        nodes: Sequence[NodeRecord],
        signal: WorkSignal,
        chain_id: int,
        *,
        drain: Drain | None = None,
        resolve_sent: ResolveSent | None = None,
        connect: ConnectChain | None = None,
        concurrency: int = 8,
        read_attempts: int = 5,
        backoff_max: float = 10.0,
        pass_chunk: int = PASS_CHUNK,
        rpc_errors: RpcErrorCounts | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.nodes = tuple(nodes)
        self.signal = signal
        self.chain_id = chain_id
        self.contract = settings.contract_address
        self.drain = drain
        # The voter's own resolution of `sent` rows (its lanes track receipts and replacements); without one,
        # the reconciler confirms only rows whose transaction is mined with success.
        self.resolve_sent = resolve_sent
        self._connect = connect or self._open_connection
        self.concurrency = concurrency
        self.read_attempts = read_attempts
        self.backoff_max = backoff_max
        self.pass_chunk = pass_chunk
        self.status = ReconcilerStatus(
            rpc_errors=rpc_errors if rpc_errors is not None else collections.Counter()
        )
        self._lock = anyio.Lock()
        self._current: RoundTicket | None = None
        self._requested = anyio.Event()
        self._finished: dict[int, anyio.Event] = {}

    def _open_connection(self) -> AbstractAsyncContextManager[ChainClient]:
        return ws_chain_client(self.settings, self.status.rpc_errors)

    # -- rounds ---------------------------------------------------------------------------------------------
    async def trigger(self, kind: RoundKind = RoundKind.MANUAL) -> RoundTicket:
        """Start a round, or join the one running; returns at once (the round runs in `run`)."""
        async with self._lock:
            if self._current is not None:
                return RoundTicket(self._current.round_id, True, self._current.started_at)
            record = await start_round(self.sessions, kind)
            self._current = RoundTicket(record.id, False, record.started_at)
            self._finished[record.id] = anyio.Event()
            self.status.current_round = record.id
            self._requested.set()
            log_event(logger, "round_started", round=record.id, kind=str(kind))
            return self._current

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.trigger(RoundKind.STARTUP)  # registered before we report ready: triggers join it
        task_status.started()
        while True:
            with anyio.move_on_after(self.settings.reconcile_interval):
                await self._requested.wait()
            if self._current is None:
                await self.trigger(RoundKind.SCHEDULED)
            self._requested = anyio.Event()
            ticket = self._current
            assert ticket is not None
            try:
                await self._run_round(ticket.round_id)
            finally:
                with anyio.CancelScope(shield=True):
                    async with self._lock:
                        self._current = None
                        self.status.current_round = None
                        self.status.phase = "idle"
                        self._finished.pop(ticket.round_id).set()

    async def wait_for_round(self, round_id: int) -> None:
        """Return once round `round_id` has finished (at once if it is not running in this process)."""
        event = self._finished.get(round_id)
        if event is not None:
            await event.wait()

    def phase(self, round_id: int) -> str | None:
        return self.status.phase if self.status.current_round == round_id else None

    async def _run_round(self, round_id: int) -> RoundRecord | None:
        try:
            self.status.phase = "reconciling"
            result = await self.reconcile(round_id)
            with anyio.CancelScope(shield=True):
                await record_reconcile(self.sessions, round_id, result.counts)
            self.signal.notify()
            if self.drain is not None:
                self.status.phase = "draining"
                await self.drain()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await finish_round(self.sessions, round_id, state=RoundState.FAILED, error="interrupted")
            raise
        except Exception as exc:
            # A failed round must not stop the service: the listener and the voter go on, the next round
            # (scheduled or triggered) tries again. Anything not ours is a bug: keep its traceback.
            reason = str(exc) if isinstance(exc, DloopError) else f"{type(exc).__name__}: {exc}"
            self.status.last_error = reason
            if isinstance(exc, DloopError):
                log_event(logger, "round_failed", level=logging.WARNING, round=round_id, error=reason)
            else:
                logger.error("round_crashed", exc_info=exc, extra={"dloop_fields": {"round": round_id}})
            with anyio.CancelScope(shield=True):
                return await finish_round(self.sessions, round_id, state=RoundState.FAILED, error=reason)
        error = "; ".join(result.read_errors)[:2000] or None
        with anyio.CancelScope(shield=True):
            record = await finish_round(self.sessions, round_id, state=RoundState.DONE, error=error)
        self.status.last_round = round_id
        self.status.last_finished_at = utcnow()
        if record is not None:
            log_event(
                logger,
                "round_finished",
                round=round_id,
                scanned=record.proposals_scanned,
                new=record.new_proposals,
                missing_votes=record.missing_votes,
                resolved=record.resolved_transactions,
                sent=record.votes_sent,
                confirmed=record.votes_confirmed,
            )
        return record

    # -- one pass -------------------------------------------------------------------------------------------
    async def reconcile(self, round_id: int | None = None) -> ReconcileResult:
        """One pass; retried as a whole on transient chain errors (rate limits back off longer)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientChainError),
            wait=wait_random_exponential(multiplier=0.5, max=self.backoff_max),
            stop=stop_after_attempt(self.read_attempts),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    async with self._connect() as client:
                        result = await self._pass(client)
                except ChainError as exc:
                    log_event(
                        logger, "reconcile_retry", level=logging.WARNING, round=round_id, error=str(exc)
                    )
                    raise
        self.status.passes += 1
        self.status.last_result = result
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
        head_block = await self._retrying(lambda: client.block("latest"))
        read_block = max(head_block.number - confirmations, 0)
        tag = hex(read_block)
        chain_time = head_block.timestamp  # a vote sent now is judged at (at least) this time
        functions = dao_functions()
        count_call = {"to": self.contract, "data": functions["getProposalCount"].encode()}
        count_raw = await self._retrying(lambda: client.request("eth_call", [count_call, tag]))
        count = int(decode_result(functions["getProposalCount"], count_raw)[0])

        known = await self._known_proposals()
        wanted = ids_to_read(count, known, chain_time)
        errors: list[str] = []
        sent = await self._sent_receipts(client) if self.resolve_sent is None else {}
        tally: collections.Counter[str] = collections.Counter()
        # A chunk of proposals at a time, all read at the same block: a pass over 10,000 open proposals held
        # every answer, 50,000 hasVoted results and vote rows at once (tens of MB that the allocator kept).
        for start in range(0, len(wanted), self.pass_chunk):
            chunk = wanted[start : start + self.pass_chunk]
            tally += await self._reconcile_chunk(client, chunk, tag, chain_time, read_block, errors)
        if self.resolve_sent is None:
            resolved = await self._resolve_sent(sent, head_block.number, confirmations)
        else:
            try:
                resolved = await self.resolve_sent()
            except ChainError as exc:  # e.g. the voter is between connections: its lanes adopt them later
                errors.append(f"resolving sent votes: {exc}")
                resolved = 0
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
        )

    async def _reconcile_chunk(
        self,
        client: ChainClient,
        wanted: Sequence[int],
        tag: str,
        chain_time: int,
        read_block: int,
        errors: list[str],
    ) -> collections.Counter[str]:
        """Read these proposals and their votes at `tag`, then record and fix them in short transactions."""
        get_proposal = dao_functions()["getProposal"]
        raw_proposals = await self._read(
            client,
            [("eth_call", [{"to": self.contract, "data": get_proposal.encode(i)}, tag]) for i in wanted],
        )
        proposals: list[ProposalData] = []
        for proposal_id, raw in zip(wanted, raw_proposals, strict=True):
            if isinstance(raw, ChainError):
                errors.append(f"proposal {proposal_id}: {raw}")
                continue
            try:
                values = decode_result(get_proposal, raw)
                asset_address = str(values[2])
                asset = await self._retrying(functools.partial(client.asset_info, asset_address))
                proposals.append(proposal_from_values(values, asset))
            except (ValueError, ChainError) as exc:
                errors.append(f"proposal {proposal_id}: {exc}")

        open_ids = {p.proposal_id for p in proposals if p.open_at(chain_time)}
        has_voted = await self._has_voted(client, sorted(open_ids), tag, errors)
        tally: collections.Counter[str] = collections.Counter(scanned=len(proposals))
        records = await record_proposals(
            self.sessions,
            chain_id=self.chain_id,
            contract=self.contract,
            proposals=[
                (data, VoteState.QUEUED if data.proposal_id in open_ids else VoteState.CLOSED)
                for data in proposals
            ],
            source="reconcile",
            node_ids=[n.id for n in self.nodes],
        )
        for data, recorded in zip(proposals, records, strict=True):
            tally["new"] += int(recorded.created)
            if data.proposal_id in open_ids:
                tally["missing_votes"] += recorded.votes_added
        rows = await self._vote_rows({p.proposal_id for p in proposals})
        fixes = plan_vote_fixes(rows, open_ids, {p.proposal_id for p in proposals}, has_voted, read_block)
        tally.update(str(state) for state in await self._apply_fixes(fixes))
        return tally

    async def _read(self, client: ChainClient, requests: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """call_many with backoff: a rate-limited batch is retried smaller; failed single reads again."""
        if not requests:
            return []
        batch_size = self.settings.rpc_batch_size
        results: list[Any] = [None] * len(requests)
        pending = list(range(len(requests)))
        for attempt in range(self.read_attempts):
            try:
                # A refused batch raises TransientChainError: the pass starts again on a fresh connection,
                # and ChainClient remembers not to batch with this provider.
                answers = await client.call_many(
                    [requests[i] for i in pending], batch_size=batch_size, concurrency=self.concurrency
                )
            except RateLimited:
                if attempt == self.read_attempts - 1:
                    raise
                batch_size = max(1, batch_size // 2)
                await anyio.sleep(self._backoff(attempt))
                continue
            for i, answer in zip(pending, answers, strict=True):
                results[i] = answer
            pending = [i for i in pending if isinstance(results[i], TransientChainError)]
            if not pending:
                break
            await anyio.sleep(self._backoff(attempt))
        return results

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """One read, retried with backoff on transient errors and rate limits."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientChainError),
            wait=wait_random_exponential(multiplier=0.25, max=self.backoff_max),
            stop=stop_after_attempt(self.read_attempts),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await call()
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        return float(min(self.backoff_max, 0.25 * 2**attempt) * (0.5 + random.random() / 2))

    async def _has_voted(
        self, client: ChainClient, open_ids: Sequence[int], tag: str, errors: list[str]
    ) -> dict[tuple[int, int], bool]:
        has_voted_fn = dao_functions()["hasVoted"]
        pairs = [(pid, node) for pid in open_ids for node in self.nodes]
        answers = await self._read(
            client,
            [
                ("eth_call", [{"to": self.contract, "data": has_voted_fn.encode(pid, node.address)}, tag])
                for pid, node in pairs
            ],
        )
        result: dict[tuple[int, int], bool] = {}
        for (pid, node), raw in zip(pairs, answers, strict=True):
            if isinstance(raw, ChainError):
                errors.append(f"hasVoted({pid}, {node.name}): {raw}")
                continue
            try:
                result[(pid, node.id)] = bool(decode_result(has_voted_fn, raw)[0])
            except ValueError as exc:
                errors.append(f"hasVoted({pid}, {node.name}): {exc}")
        return result

    # -- database reads and writes --------------------------------------------------------------------------
    async def _known_proposals(self) -> dict[int, KnownProposal]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(Proposal.id, Proposal.proposal_id, Proposal.status, Proposal.voting_ends_at).where(
                    Proposal.chain_id == self.chain_id, Proposal.contract == self.contract
                )
            )
            proposals = list(rows)
            open_refs = set(
                (
                    await session.execute(
                        select(Vote.proposal_ref).where(Vote.state.in_([str(s) for s in _OPEN])).distinct()
                    )
                )
                .scalars()
                .all()
            )
        return {
            pid: KnownProposal(pid, status, int(ends.timestamp()), ref in open_refs)
            for ref, pid, status, ends in proposals
        }

    async def _vote_rows(self, proposal_ids: set[int]) -> list[VoteRow]:
        if not proposal_ids:
            return []
        async with self.sessions() as session:
            rows = await session.execute(
                select(Vote.id, Proposal.proposal_id, Vote.node_id, Vote.state, Vote.tx_hash)
                .add_columns(Vote.confirmed_block)
                .join(Proposal, Vote.proposal_ref == Proposal.id)
                .where(
                    Proposal.chain_id == self.chain_id,
                    Proposal.contract == self.contract,
                    Proposal.proposal_id.in_(sorted(proposal_ids)),
                )
            )
            return [VoteRow(*row) for row in rows]

    async def _apply_fixes(self, fixes: Sequence[VoteFix]) -> list[VoteState]:
        applied = []
        for fix in fixes:
            # Shielded: a write cancelled mid-statement could not roll back (see storage/queue.py).
            with anyio.CancelScope(shield=True):
                result = await self._apply_fix(fix)
            if result:
                applied.append(fix.to_state)
        return applied

    async def _apply_fix(self, fix: VoteFix) -> bool:
        async with self.sessions.begin() as session:
            requeue_confirmed = VoteState.CONFIRMED in fix.from_states
            values: dict[str, object] = {
                "state": fix.to_state,
                "last_error": fix.reason,
                "updated_at": utcnow(),
            }
            if requeue_confirmed:
                values.update(confirmed_block=None, confirmed_at=None)
            result = await session.execute(
                update(Vote)
                .where(
                    Vote.id == fix.vote_id,
                    Vote.state.in_([str(s) for s in fix.from_states]),
                    # Rows we sent a transaction for stay the voter's, except a confirmation the chain
                    # no longer has.
                    true() if requeue_confirmed else Vote.tx_hash.is_(None),
                )
                .values(**values)
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def _sent_receipts(self, client: ChainClient) -> dict[int, list[Receipt | None]]:
        """Receipts of every transaction of every `sent` vote, by vote id."""
        async with self.sessions() as session:
            rows = list(
                (
                    await session.execute(
                        select(VoteTransaction.vote_id, VoteTransaction.tx_hash)
                        .join(Vote, VoteTransaction.vote_id == Vote.id)
                        .join(Proposal, Vote.proposal_ref == Proposal.id)
                        .where(
                            Vote.state == VoteState.SENT,
                            Proposal.chain_id == self.chain_id,
                            Proposal.contract == self.contract,
                        )
                    )
                ).all()
            )
        answers = await self._read(client, [("eth_getTransactionReceipt", [tx]) for _vote, tx in rows])
        receipts: dict[int, list[Receipt | None]] = {}
        for (vote_id, _tx), raw in zip(rows, answers, strict=True):
            receipts.setdefault(vote_id, []).append(
                None if isinstance(raw, ChainError) else parse_receipt(raw)
            )
        return receipts

    async def _resolve_sent(
        self, receipts: Mapping[int, Sequence[Receipt | None]], head: int, depth: int
    ) -> int:
        """`sent` -> `confirmed` for votes whose transaction is mined with success; never anything else."""
        resolved = 0
        for vote_id, vote_receipts in receipts.items():
            receipt = mined_receipt(vote_receipts, head, depth)
            if receipt is None:
                continue
            with anyio.CancelScope(shield=True):
                async with self.sessions.begin() as session:
                    result = await session.execute(
                        update(Vote)
                        .where(Vote.id == vote_id, Vote.state == VoteState.SENT)
                        .values(
                            state=VoteState.CONFIRMED,
                            tx_hash=receipt.tx_hash,
                            confirmed_at=utcnow(),
                            confirmed_block=receipt.block_number,
                            gas_used=receipt.gas_used,
                            lease_owner=None,
                            lease_expires_at=None,
                        )
                    )
                    if result.rowcount == 1:  # type: ignore[attr-defined]
                        resolved += 1
                        await session.execute(
                            update(VoteTransaction)
                            .where(
                                and_(
                                    VoteTransaction.vote_id == vote_id,
                                    VoteTransaction.tx_hash == receipt.tx_hash,
                                )
                            )
                            .values(outcome="mined")
                        )
                        log_event(logger, "vote_resolved_by_reconcile", vote=vote_id, tx=receipt.tx_hash)
        return resolved


_OPEN = (VoteState.PENDING, VoteState.QUEUED, VoteState.SENT)


@asynccontextmanager
async def ws_chain_client(
    settings: Settings, rpc_errors: RpcErrorCounts | None = None
) -> AsyncIterator[ChainClient]:
    """A fresh WebSocket connection per pass: a reconcile never depends on a long-lived socket.

    An error web3 raises while disconnecting (e.g. a stray error answer left on the socket) is logged, never
    allowed to replace the pass's own outcome.
    """
    connection = open_ws(settings.rpc_ws_url, request_timeout=settings.rpc_timeout)
    w3 = await connection.__aenter__()
    try:
        yield ChainClient(
            w3, settings.contract_address, timeout=settings.rpc_timeout, error_counts=rpc_errors
        )
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await _close_quietly(connection, exc)
        raise
    with anyio.CancelScope(shield=True):
        await _close_quietly(connection, None)


async def _close_quietly(connection: AbstractAsyncContextManager[Any], exc: BaseException | None) -> None:
    try:
        await connection.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
    except Exception as close_error:
        log_event(logger, "rpc_disconnect_error", level=logging.DEBUG, error=f"{type(close_error).__name__}")
