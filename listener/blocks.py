"""Recent block hashes, new heads and reorgs.

A reorg is noticed when a new head contradicts a stored hash (another block at its height, or an unknown
parent), when a processed log's block is not the stored block at its height, when a `removed: true` log
arrives, or at start-up when stored hashes differ from the chain. Everything recorded above the fork point is
then marked removed, the canonical logs of the replaced range are processed again, and confirmed votes
from the replaced blocks are checked against their receipts.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence

import anyio

from chain.client import BlockHeader, ChainClient, RawLog
from chain.reads import Reads
from core.errors import ChainError
from core.logs import log_event
from listener.context import ListenerContext
from listener.planning import deepest_queueable_block, head_conflicts, links_hold
from listener.processor import LogProcessor
from listener.status import StatusBoard
from storage import chain_state
from storage.chain_state import StoredBlock

_FETCH_ATTEMPTS = 3  # a window that does not chain means the chain moved while we read it: read again
_REFETCH_DELAY_S = 0.1


class BlockTracker:
    def __init__(
        self, ctx: ListenerContext, board: StatusBoard, processor: LogProcessor, logger: logging.Logger
    ) -> None:
        self.ctx = ctx
        self.board = board
        self.processor = processor
        self.logger = logger
        self.blocks: dict[int, StoredBlock] = {}
        self.log_blocks: dict[int, set[str]] = {}  # block hashes of logs processed live, by number

    async def load(self) -> None:
        stored = await chain_state.load_recent_blocks(self.ctx.sessions, self.ctx.stream)
        self.blocks = {b.number: b for b in stored}

    @property
    def top(self) -> int | None:
        return max(self.blocks) if self.blocks else None

    # -- live heads and logs ----------------------------------------------------------------------------
    def remember_logs(self, logs: Iterable[RawLog]) -> None:
        for raw in logs:
            self.log_blocks.setdefault(raw.block_number, set()).add(raw.block_hash)

    def stale_logs(self, logs: Iterable[RawLog]) -> list[RawLog]:
        """Logs from a block that is not the block we stored at that height."""
        return [
            raw
            for raw in logs
            if raw.block_number in self.blocks and self.blocks[raw.block_number].hash != raw.block_hash
        ]

    def conflicting_head(self, heads: Sequence[BlockHeader]) -> BlockHeader | None:
        """The first head (in arrival order) that contradicts stored hashes, earlier heads or live logs."""
        known = {n: b.hash for n, b in self.blocks.items()}
        for head in heads:
            if head_conflicts(known, head.number, head.hash, head.parent_hash):
                return head
            if any(h != head.hash for h in self.log_blocks.get(head.number, ())):
                return head
            known[head.number] = head.hash
        return None

    async def record_heads(self, heads: Sequence[BlockHeader]) -> int:
        """Store non-conflicting heads, advance the cursor, queue proposals now deep enough."""
        if not heads:
            return 0
        newest = max(heads, key=lambda h: h.number)
        blocks = [StoredBlock(h.number, h.hash, h.parent_hash) for h in heads]
        queue_up_to = (
            deepest_queueable_block(newest.number, self.ctx.confirmations)
            if self.ctx.confirmations > 1
            else None
        )
        # Logs of block h may arrive just after head h: the cursor stays one block behind the head.
        queued = await chain_state.record_heads(
            self.ctx.sessions,
            stream=self.ctx.stream,
            heads=blocks,
            keep_blocks=self.ctx.keep_blocks,
            cursor_block=newest.number - 1,
            chain_id=self.ctx.chain_id,
            contract=self.ctx.contract,
            queue_up_to_block=queue_up_to,
        )
        for block in blocks:
            self.blocks[block.number] = block
        self._prune(newest.number)
        self._note_head(newest)
        self.board.cursor_block = max(self.board.cursor_block or 0, newest.number - 1)
        if queued:
            self.board.votes_queued += queued
            self.ctx.signal.notify()
            log_event(self.logger, "pending_votes_queued", votes=queued, head=newest.number)
        return queued

    def _note_head(self, head: BlockHeader) -> None:
        self.board.last_head_number = head.number
        self.board.last_head_timestamp = head.timestamp
        self.board.last_head_time = dt.datetime.now(dt.UTC)

    def _prune(self, newest: int) -> None:
        floor = newest - self.ctx.keep_blocks
        for number in [n for n in self.blocks if n <= floor]:
            del self.blocks[number]
        for number in [n for n in self.log_blocks if n <= floor]:
            del self.log_blocks[number]

    # -- checking stored hashes against the chain --------------------------------------------------------
    async def check_recent_blocks(
        self, client: ChainClient, *, reason: str, removed_from_block: int | None = None
    ) -> int:
        """Compare stored block hashes and recorded logs of the recent window with the chain; on any
        difference (or a removed log at `removed_from_block`), handle the reorg. Then store the canonical
        window. Returns the vote rows queued."""
        latest, window = await self._canonical_window(client)
        mismatches = [n for n, b in self.blocks.items() if n not in window or window[n].hash != b.hash]
        first = min(window)
        recorded = await chain_state.log_hashes_between(self.ctx.sessions, self.ctx.stream, first, 2**62)
        # A recorded log at a height the node has no block for is not a mismatch: the stored block there
        # already is, and the logs re-read after it are the node's own word (else every check would fork).
        mismatches += [
            n
            for n, hashes in recorded.items()
            if (n in window and hashes != {window[n].hash}) or n > latest.number
        ]
        if removed_from_block is not None:
            mismatches.append(removed_from_block)
        queued = 0
        fork = min(mismatches) - 1 if mismatches else None
        if fork is not None:
            queued = await self._handle_reorg(client, fork, latest, window, reason)
        await chain_state.replace_recent_blocks(
            self.ctx.sessions,
            stream=self.ctx.stream,
            above=latest.number if fork is None else fork,
            blocks=[StoredBlock(h.number, h.hash, h.parent_hash) for h in window.values()],
            keep_blocks=self.ctx.keep_blocks,
        )
        self.blocks = {n: StoredBlock(h.number, h.hash, h.parent_hash) for n, h in window.items()}
        self.log_blocks = {}
        self._note_head(latest)
        return queued

    async def _canonical_window(self, client: ChainClient) -> tuple[BlockHeader, dict[int, BlockHeader]]:
        """The latest block and the canonical headers of the recent window (plus older stored heights).

        A height the node answers null for (below its head) is read again; if it stays missing it is left
        out of the window, which makes a stored block there a mismatch (a reorg from below it) rather than an
        error: under load anvil was seen to keep no block at a height an `anvil_reorg` replaced, and failing
        the whole check on it made the listener reconnect in a loop and miss later reorgs."""
        for attempt in range(1, _FETCH_ATTEMPTS + 1):
            latest = await client.block("latest")
            low = max(0, latest.number - self.ctx.keep_blocks + 1)
            numbers = sorted(set(range(low, latest.number)) | {n for n in self.blocks if n < low})
            answers = await self._reads(client).blocks(numbers)
            window = {latest.number: latest}
            missing = []
            for number, answer in zip(numbers, answers, strict=True):
                header = _header(answer)
                if header is None:
                    missing.append(number)
                else:
                    window[number] = header
            if missing and attempt < _FETCH_ATTEMPTS:
                await anyio.sleep(_REFETCH_DELAY_S)
                continue
            if links_hold(window, low, latest.number):
                if missing:
                    log_event(self.logger, "blocks_missing", level=logging.WARNING, heights=missing[:20])
                return latest, window
        raise ChainError("the chain kept changing while its recent blocks were read")

    async def _handle_reorg(
        self,
        client: ChainClient,
        fork: int,
        latest: BlockHeader,
        window: dict[int, BlockHeader],
        reason: str,
    ) -> int:
        ctx = self.ctx
        self.board.reorgs_seen += 1
        log_event(
            self.logger,
            "reorg_detected",
            level=logging.WARNING,
            reason=reason,
            fork_block=fork,
            head=latest.number,
            depth=max(0, (self.top or latest.number) - fork),
        )
        orphaned = await chain_state.orphan_after(
            ctx.sessions,
            stream=ctx.stream,
            chain_id=ctx.chain_id,
            contract=ctx.contract,
            fork_block=fork,
        )
        cursor = self.board.cursor_block
        self.board.cursor_block = fork if cursor is None else min(cursor, fork)
        queued = await self.processor.read_range(
            client, fork + 1, latest.number, source="backfill", head_number=latest.number
        )
        queued += await self._recheck_votes(client, fork, window)
        # At once, with any still pending: the chain changed under them.
        await self.processor.refresh_tallies(client, orphaned.proposal_ids)
        if orphaned.votes_reopened:
            queued += orphaned.votes_reopened
            self.board.votes_queued += orphaned.votes_reopened
            ctx.signal.notify()
        log_event(
            self.logger,
            "reorg_handled",
            fork_block=fork,
            head=latest.number,
            logs_removed=orphaned.logs_removed,
            proposals_rechecked=sorted(orphaned.proposal_ids),
            proposals_parked=sorted(orphaned.parked_proposals),
            votes_reopened=orphaned.votes_reopened,
        )
        return queued

    async def _recheck_votes(self, client: ChainClient, fork: int, window: dict[int, BlockHeader]) -> int:
        """Confirmed votes from replaced blocks: still on chain (maybe in another block), or back to queue."""
        ctx = self.ctx
        votes = await chain_state.confirmed_votes_after(
            ctx.sessions,
            chain_id=ctx.chain_id,
            contract=ctx.contract,
            block=fork,
        )
        queued = 0
        for vote in votes:
            block = await self._canonical_block_of(client, vote.tx_hash, window)
            if block is not None:
                if block != vote.confirmed_block:
                    await chain_state.move_vote_confirmation(ctx.sessions, vote.vote_id, block)
                continue
            reason = f"vote tx {vote.tx_hash} left the chain in a reorg (fork at block {fork})"
            if await chain_state.requeue_orphaned_vote(
                ctx.sessions,
                vote.vote_id,
                parked=vote.proposal_parked,
                reason=reason,
            ):
                queued += 0 if vote.proposal_parked else 1
                log_event(
                    self.logger,
                    "vote_requeued_after_reorg",
                    level=logging.WARNING,
                    proposal=vote.proposal_id,
                    node_id=vote.node_id,
                    tx=vote.tx_hash,
                )
        if queued:
            self.board.votes_queued += queued
            ctx.signal.notify()
        return queued

    async def _canonical_block_of(
        self, client: ChainClient, tx_hash: str | None, window: dict[int, BlockHeader]
    ) -> int | None:
        if tx_hash is None:
            return None
        reads = self._reads(client)
        # A receipt without `status` counts as success here (as this check always did): only a mined revert
        # proves the vote was not cast.
        (receipt,) = await reads.receipts([tx_hash], missing_status=1)
        if isinstance(receipt, ChainError):
            raise receipt
        if receipt is None or receipt.block_hash is None:
            return None
        if receipt.status != 1:
            # Mined again on the new chain but reverted (e.g. its proposal is gone): the vote is not cast.
            return None
        header = window.get(receipt.block_number)
        if header is None:
            header = _header((await reads.blocks([receipt.block_number]))[0])
        if header is None:
            # No block at the receipt's height: not provably on chain. Queued again, the vote is not sent
            # twice: the voter reads hasVoted before any transaction.
            return None
        return receipt.block_number if header.hash.lower() == receipt.block_hash.lower() else None

    def _reads(self, client: ChainClient) -> Reads:
        return Reads(client, batch_size=self.ctx.rpc_batch_size, plain=True)


def _header(answer: BlockHeader | ChainError | None) -> BlockHeader | None:
    """A block header, or None for a height the node has no block for; a failed read is raised."""
    if isinstance(answer, ChainError):
        raise answer
    return answer
