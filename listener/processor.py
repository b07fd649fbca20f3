"""Contract logs into the durable queue: decode, read what the event does not carry, record idempotently."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence

import anyio

from chain.client import ChainClient, RawLog
from chain.events import ProposalCanceled, ProposalCreated, ProposalExecuted, VoteCast
from chain.reads import BadAnswer, Reads
from chain.types import ProposalData, ProposalStatus
from core.concurrency import both
from core.errors import ChainError, ContractRevert
from core.logs import log_event
from listener.context import ListenerContext
from listener.messages import DecodedLog, decode
from listener.planning import ChunkPlan, deep_enough, is_range_error, tally_refresh_wait
from listener.status import BackfillProgress, StatusBoard
from storage import chain_state
from storage.models import VoteState

ProposalRead = ProposalData | str  # the data, or why it could not be read (bad data, recorded)

# The stored tallies are display data (the voter reads the chain itself): a proposal voted on in many blocks
# in a row is read at most once a second, and within 0.2 s of the last log once the chain goes quiet
# (listener/planning.py::tally_refresh_wait).
TALLY_REFRESH_S = 1.0
TALLY_QUIET_S = 0.2


class LogProcessor:
    """Processes batches of logs in chain order. Every log is claimed in `chain_logs` in the transaction
    that applies it, so replays (backfill after subscription, reconnects, reorg re-reads) change nothing.

    A VoteCast makes its proposal's stored tally stale; the processor keeps such ids pending (across batches
    and reconnects: it outlives the connection) until a refresh that succeeded: in `process` once one is due,
    when the listener goes idle (`tally_wait`), and at once after a reorg. A restart loses them: the
    start-up reconcile pass reads every open proposal again."""

    def __init__(
        self,
        ctx: ListenerContext,
        board: StatusBoard,
        logger: logging.Logger,
        *,
        chunk_blocks: int,
        tally_refresh_s: float = TALLY_REFRESH_S,
        tally_quiet_s: float = TALLY_QUIET_S,
    ) -> None:
        self.ctx = ctx
        self.board = board
        self.logger = logger
        self.chunk_blocks = max(1, chunk_blocks)  # halves for good when a provider refuses a range
        self.tally_refresh_s = tally_refresh_s
        self.tally_quiet_s = tally_quiet_s
        self.pending_tallies: set[int] = set()  # proposals whose stored tally may be behind the chain
        self._tallies_refreshed_at: float | None = None  # anyio.current_time() of the last refresh

    # -- ranges -----------------------------------------------------------------------------------------
    async def read_range(
        self,
        client: ChainClient,
        first: int,
        last: int,
        *,
        source: str,
        head_number: int,
        progress: BackfillProgress | None = None,
    ) -> int:
        """Logs of first..last (eth_getLogs) in chunks, processing each and advancing the cursor after it."""
        queued = 0
        plan = ChunkPlan(first, last, self.chunk_blocks)
        while (chunk := plan.current()) is not None:
            try:
                logs = await client.get_logs(*chunk)
            except ChainError as exc:
                smaller = plan.halved() if is_range_error(str(exc)) else None
                if smaller is None:
                    raise
                log_event(
                    self.logger,
                    "log_range_too_large",
                    level=logging.WARNING,
                    from_block=chunk[0],
                    to_block=chunk[1],
                    new_chunk_blocks=smaller.size,
                    error=str(exc),
                )
                plan, self.chunk_blocks = smaller, smaller.size
                continue
            queued += await self.process(client, logs, source=source, head_number=head_number)
            await chain_state.advance_cursor(self.ctx.sessions, self.ctx.stream, chunk[1])
            self.board.cursor_block = max(self.board.cursor_block or 0, chunk[1])
            if progress is not None:
                progress.advance(chunk[1] - chunk[0] + 1, len(logs))
            plan = plan.advanced()
        return queued

    # -- batches ----------------------------------------------------------------------------------------
    async def process(
        self, client: ChainClient, logs: Sequence[RawLog], *, source: str, head_number: int
    ) -> int:
        """Apply live logs in order; returns the vote rows queued. Removed logs are the caller's (reorgs)."""
        decoded = [
            d
            for d in (decode(raw) for raw in logs if not raw.removed and self._ours(raw))
            if self._acted_on(d)
        ]
        if not decoded:
            return 0
        # Which logs were processed before (a replay, a reconnect's backfill) and the proposals the new ones
        # create, read at once: a database read and a JSON-RPC batch on the way from event to vote.
        created = {d.event.proposal_id for d in decoded if isinstance(d.event, ProposalCreated)}
        seen, reads = await both(
            chain_state.processed_log_keys(self.ctx.sessions, [d.key for d in decoded]),
            self.read_proposals(client, created),
        )
        todo = [d for d in decoded if d.key not in seen]
        queued = 0
        tallies: set[int] = set()
        # Consecutive VoteCast logs, and consecutive ProposalCreated logs, are each recorded together in one
        # transaction (at most one of the two runs is open: the other was recorded when this one began).
        casts: list[DecodedLog] = []
        creates: list[DecodedLog] = []
        for item in todo:
            if isinstance(item.event, VoteCast):
                queued += await self._apply_created(creates, reads, source=source, head_number=head_number)
                creates = []
                casts.append(item)
                continue
            await self._apply_vote_casts(casts, tallies)
            casts = []
            if isinstance(item.event, ProposalCreated):
                creates.append(item)
                continue
            queued += await self._apply_created(creates, reads, source=source, head_number=head_number)
            creates = []
            await self._apply_other(item)
        await self._apply_vote_casts(casts, tallies)
        queued += await self._apply_created(creates, reads, source=source, head_number=head_number)
        self.pending_tallies |= tallies
        if self.tally_wait() == 0:
            await self.refresh_tallies(client)
        self.board.logs_processed += len(todo)
        if todo:
            self.board.last_event_time = dt.datetime.now(dt.UTC)
        if queued:
            self.board.votes_queued += queued
            self.ctx.signal.notify()
        return queued

    def _acted_on(self, item: DecodedLog) -> bool:
        """Whether the service acts on this log: not a known event it ignores (an asset, a role, a parameter),
        not an event of no known AssetDAO version (counted per topic, and warned about once per topic)."""
        if item.ignored:
            return False
        if item.unknown_topic is None:
            return True
        topic = item.unknown_topic
        self.board.unknown_topics[topic] += 1
        if self.board.unknown_topics[topic] == 1:
            log_event(
                self.logger,
                "unknown_event",
                level=logging.WARNING,
                topic=topic,
                block=item.raw.block_number,
                tx=item.raw.tx_hash,
                hint="an event of no known AssetDAO version: counted in dloop_unknown_events_total",
            )
        return False

    def _ours(self, raw: RawLog) -> bool:
        if raw.address.lower() == self.ctx.contract.lower():
            return True
        log_event(self.logger, "foreign_log_ignored", level=logging.WARNING, address=raw.address)
        return False

    async def _apply_created(
        self, items: Sequence[DecodedLog], reads: dict[int, ProposalRead], *, source: str, head_number: int
    ) -> int:
        """ProposalCreated logs with the proposals read for them: recorded in one transaction (bad ones each
        as a bad log); returns the vote rows queued."""
        ctx = self.ctx
        good: list[tuple[DecodedLog, chain_state.CreatedLog, str | None]] = []
        for item in items:
            assert isinstance(item.event, ProposalCreated)
            data = reads.get(item.event.proposal_id, "getProposal was not read")
            if isinstance(data, str):
                await self._record_bad(item, data)
                continue
            deep = deep_enough(item.raw.block_number, head_number, ctx.confirmations)
            # Parameter changes and "other" proposals may have no asset: only a real address can be bad.
            asset_problem = data.asset.error if int(data.asset_address, 16) != 0 else None
            problem = None if asset_problem is None else f"asset {data.asset_address}: {asset_problem}"
            state = VoteState.QUEUED if deep else VoteState.PENDING
            good.append((item, chain_state.CreatedLog(item.ref, data, state, problem), problem))
        if not good:
            return 0
        records = await chain_state.record_created_proposals(
            ctx.sessions,
            stream=ctx.stream,
            chain_id=ctx.chain_id,
            contract=ctx.contract,
            items=[created for _item, created, _problem in good],
            source=source,
            node_ids=ctx.node_ids,
        )
        queued = 0
        for (item, created, problem), record in zip(good, records, strict=True):
            if record is None:
                continue
            if record.record.created:
                self.board.proposals_recorded += 1
            if problem is not None:
                self._warn_bad(item, problem)
            log_event(
                self.logger,
                "proposal_recorded",
                proposal=created.data.proposal_id,
                block=item.raw.block_number,
                tx=item.raw.tx_hash,
                source=source,
                created=record.record.created,
                content_changed=record.record.content_changed,
                votes_added=record.record.votes_added,
                votes_queued=record.queued_votes,
                votes_reopened=record.reopened,
            )
            deep = created.initial_state == VoteState.QUEUED
            queued += record.queued_votes + (record.reopened if deep else 0)
        if queued:
            self.ctx.signal.notify()  # at once: not after the rest of the batch (and a tally refresh)
        return queued

    async def _apply_other(self, item: DecodedLog) -> None:
        """A log that is neither ProposalCreated nor VoteCast: undecodable, or a proposal closed."""
        ctx, event = self.ctx, item.event
        if event is None:
            await self._record_bad(item, item.error or "undecodable log")
            return
        executed = isinstance(event, ProposalExecuted)
        assert isinstance(event, ProposalCanceled | ProposalExecuted)
        closed = await chain_state.record_proposal_closed(
            ctx.sessions,
            stream=ctx.stream,
            chain_id=ctx.chain_id,
            contract=ctx.contract,
            log=item.ref,
            proposal_id=event.proposal_id,
            event=item.name,
            status=ProposalStatus.EXECUTED if executed else ProposalStatus.CANCELED,
            executed=executed,
        )
        if closed is not None:
            log_event(
                self.logger,
                "proposal_closed",
                proposal=event.proposal_id,
                event_name=item.name,
                block=item.raw.block_number,
                votes_closed=closed,
            )

    async def _apply_vote_casts(self, items: Sequence[DecodedLog], tallies: set[int]) -> None:
        """VoteCast logs: the vote rows of our nodes among them confirmed, all in one transaction."""
        if not items:
            return
        ctx = self.ctx
        casts = []
        for item in items:
            assert isinstance(item.event, VoteCast)
            node_id = ctx.node_by_address.get(item.event.voter.lower())
            casts.append(chain_state.VoteCastLog(item.ref, item.event.proposal_id, node_id))
        records = await chain_state.record_vote_casts(
            ctx.sessions,
            stream=ctx.stream,
            chain_id=ctx.chain_id,
            contract=ctx.contract,
            casts=casts,
        )
        for item, record in zip(items, records, strict=True):
            assert isinstance(item.event, VoteCast)
            if record is not None and record.known_proposal:
                tallies.add(item.event.proposal_id)
            if record is not None and record.confirmed:
                log_event(
                    self.logger,
                    "vote_confirmed_by_log",
                    proposal=item.event.proposal_id,
                    voter=item.event.voter,
                    block=item.raw.block_number,
                    tx=item.raw.tx_hash,
                )

    async def _record_bad(self, item: DecodedLog, error: str) -> None:
        self._warn_bad(item, error)
        await chain_state.record_bad_log(
            self.ctx.sessions,
            stream=self.ctx.stream,
            log=item.ref,
            event=item.name,
            proposal_id=item.proposal_id,
            error=error,
        )

    def _warn_bad(self, item: DecodedLog, error: str) -> None:
        log_event(
            self.logger,
            "bad_log",
            level=logging.WARNING,
            event_name=item.name,
            proposal=item.proposal_id,
            block=item.raw.block_number,
            tx=item.raw.tx_hash,
            log_index=item.raw.log_index,
            problem=error,
        )

    # -- reads ------------------------------------------------------------------------------------------
    async def read_proposals(
        self, client: ChainClient, proposal_ids: Iterable[int]
    ) -> dict[int, ProposalRead]:
        """getProposal for many ids in JSON-RPC batches. A revert or undecodable answer is bad data (a
        reason string); a transient failure raises, so the log is retried after a reconnect."""
        ids = sorted(set(proposal_ids))
        if not ids:
            return {}
        reads = Reads(client, batch_size=self.ctx.rpc_batch_size, plain=True)
        answers = await reads.proposal_values(ids)
        proposals: dict[int, ProposalRead] = {}
        for pid, values in answers.items():
            if isinstance(values, ContractRevert):
                proposals[pid] = f"getProposal({pid}) reverted: {values}"
            elif isinstance(values, BadAnswer):
                proposals[pid] = f"getProposal({pid}): {values}"
            elif isinstance(values, ChainError):
                raise values
            else:
                data = await reads.proposal_data(values)
                if isinstance(data, BadAnswer):
                    proposals[pid] = f"getProposal({pid}): {data}"
                elif isinstance(data, ChainError):
                    raise data
                else:
                    proposals[pid] = data
        return proposals

    def tally_wait(self) -> float | None:
        """Seconds the listener may wait for logs before `refresh_tallies` is due (0: now; None: nothing
        pending)."""
        refreshed = self._tallies_refreshed_at
        return tally_refresh_wait(
            pending=bool(self.pending_tallies),
            since_refresh=None if refreshed is None else anyio.current_time() - refreshed,
            interval=self.tally_refresh_s,
            quiet=self.tally_quiet_s,
        )

    async def refresh_tallies(self, client: ChainClient, proposal_ids: Iterable[int] = ()) -> None:
        """Store the chain's tallies of the pending proposals and of `proposal_ids` now. They stay pending
        until this succeeds: a failure (the connection lost) leaves them for the next refresh."""
        ids = self.pending_tallies | set(proposal_ids)
        if not ids:
            return
        started = anyio.current_time()
        reads = await self.read_proposals(client, ids)
        fresh = [data for data in reads.values() if isinstance(data, ProposalData)]
        if fresh:
            await chain_state.refresh_proposal_tallies(
                self.ctx.sessions,
                chain_id=self.ctx.chain_id,
                contract=self.ctx.contract,
                proposals=fresh,
            )
        # A getProposal that reverts now is not retried: as before, such a proposal keeps its stored tally.
        self.pending_tallies -= ids
        self._tallies_refreshed_at = started
