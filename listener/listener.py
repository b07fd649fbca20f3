"""The real-time listener: one WebSocket connection at a time, subscribed to the contract's logs and to new
heads, with a backfill from the cursor on every (re)connect, a head watchdog and reconnects with backoff.

Per connection: subscribe first and buffer what arrives, backfill from the cursor up to the head, check the
recent blocks for reorgs, then process the buffer and everything after it. The backfill and the buffer
overlap; `chain_logs` (unique block hash + log index) makes the overlap harmless.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from eth_utils import to_checksum_address

from chain import requests
from chain.client import ChainClient, RpcErrorCounts
from chain.ws_client import connected_client, read_subscriptions, subscribe_heads, subscribe_logs
from core.errors import ChainError, ConfigError, DloopError, TransientChainError, error_leaves
from core.logs import log_event
from core.settings import Settings
from core.signals import WorkSignal
from listener.blocks import BlockTracker
from listener.context import ListenerContext
from listener.messages import (
    BadMessage,
    HeadMessage,
    LogMessage,
    Message,
    parse_subscription_message,
    waits_for_more,
)
from listener.planning import backfill_start, reconnect_delay
from listener.processor import LogProcessor
from listener.status import BackfillProgress, ListenerStatus, StatusBoard, terminal_stream
from storage import chain_state
from storage.engine import SessionFactory
from storage.proposals import NodeRecord

logger = logging.getLogger("dloop.listener")

# Heads and VoteCast logs wait this long for the next messages, so several blocks' share one transaction
# (`Listener._follow`); a created or closed proposal or a reorg is handled at once.
HOLD_S = 0.25


class HeadTimeout(TransientChainError):
    """No new head within DLOOP_HEAD_TIMEOUT: the connection is treated as dead."""


class SilentReorg(TransientChainError):
    """The idle chain's tip contradicts the heads received: reconnect, and the catch-up handles the reorg."""


class Listener:
    """Follows the AssetDAO in real time and queues a vote row per node for every new proposal.

    `run` never returns on its own and never exits because a connection was lost; it reconnects with
    exponential backoff and jitter. `task_status.started()` is called once the first connection is live
    (subscribed and caught up), so `await tg.start(listener.run)` returns when nothing can be missed.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        nodes: Sequence[NodeRecord],
        signal: WorkSignal,
        chain_id: int,
        *,
        reconnect_base_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        recent_blocks: int = 256,
        find_deployment_block: bool = True,
        progress_interval: float = 5.0,
        progress_bar: bool | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 10.0,
        max_batch: int = 2000,
        hold_s: float = HOLD_S,
        probe_idle_chain: bool = True,
        rpc_errors: RpcErrorCounts | None = None,
    ) -> None:
        self.settings = settings
        self.rpc_errors: RpcErrorCounts = rpc_errors if rpc_errors is not None else Counter()
        contract = to_checksum_address(settings.contract_address)
        self.ctx = ListenerContext(
            sessions=sessions,
            signal=signal,
            chain_id=chain_id,
            contract=contract,
            stream=chain_state.stream_name(chain_id, contract),
            node_ids=tuple(n.id for n in nodes),
            node_by_address={n.address.lower(): n.id for n in nodes},
            confirmations=settings.confirmations,
            rpc_batch_size=settings.rpc_batch_size,
            keep_blocks=max(2, recent_blocks),
        )
        self.reconnect_base_delay = reconnect_base_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.find_deployment_block = find_deployment_block
        self.progress_interval = progress_interval
        self.progress_bar = progress_bar
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_batch = max_batch
        self.hold_s = hold_s
        self.probe_idle_chain = probe_idle_chain
        self._board = StatusBoard()
        self._processor = LogProcessor(self.ctx, self._board, logger, chunk_blocks=settings.log_chunk_blocks)
        self._tracker = BlockTracker(self.ctx, self._board, self._processor, logger)
        self._last_head_at = 0.0
        self._last_head_seen: int | None = None  # newest head number received (maybe not processed yet)
        self._random = random.Random()

    @property
    def status(self) -> ListenerStatus:
        return self._board.snapshot()

    # -- the reconnect loop -----------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        went_live = False  # this connection got live; set by on_live, since most connections end in an error

        def on_live() -> None:
            nonlocal started, went_live
            went_live = True
            if not started:
                started = True
                task_status.started()

        attempt = 0
        loaded = False
        while True:
            went_live = False
            try:
                if not loaded:
                    await self._tracker.load()
                    loaded = True
                await self._connection(on_live)
                reason = "the node closed the connection"
            except Exception as exc:
                fatal = _find(exc, ConfigError)
                if fatal is not None:
                    raise fatal from exc
                reason = _describe(exc)
                if not any(isinstance(leaf, DloopError) for leaf in error_leaves(exc)):
                    logger.error("listener_unexpected_error", exc_info=exc)  # a bug: keep the traceback
            finally:
                self._board.connected = False
            if went_live:
                attempt = 0
            delay = reconnect_delay(
                attempt,
                base=self.reconnect_base_delay,
                cap=self.reconnect_max_delay,
                jitter=self._random.random(),
            )
            attempt += 1
            self._board.reconnects += 1
            self._board.last_error = reason
            log_event(
                logger,
                "listener_reconnecting",
                level=logging.WARNING,
                reason=reason,
                delay_seconds=round(delay, 3),
                attempt=attempt,
                reconnects=self._board.reconnects,
            )
            await anyio.sleep(delay)

    async def _connection(self, on_live: Callable[[], None]) -> bool:
        """One connection, until it fails. Returns (or raises) only when the connection is over."""
        went_live = False
        async with connected_client(
            self.settings.rpc_ws_url,
            self.ctx.contract,
            timeout=self.settings.rpc_timeout,
            error_counts=self.rpc_errors,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
        ) as client:
            node_chain = await client.chain_id()
            if node_chain != self.ctx.chain_id:
                raise ConfigError(
                    "DLOOP_RPC_WS_URL", f"the node is on chain {node_chain}, expected {self.ctx.chain_id}"
                )
            heads_id = await subscribe_heads(client)
            # Every log of the contract, decoded by topic: a filter on one version's topics would make the
            # listener blind to the other's (chain/events.py).
            logs_id = await subscribe_logs(client, self.ctx.contract)
            send, receive = anyio.create_memory_object_stream[Message](max_buffer_size=math.inf)
            async with send, receive, anyio.create_task_group() as tg:
                tg.start_soon(self._read_subscriptions, client, heads_id, logs_id, send)
                await self._catch_up(client)
                self._last_head_at = anyio.current_time()
                self._last_head_seen = self._board.last_head_number
                tg.start_soon(self._watchdog, client)
                self._board.connected = went_live = True
                self._board.last_error = None
                log_event(
                    logger,
                    "listener_live",
                    head=self._board.last_head_number,
                    cursor=self._board.cursor_block,
                    reconnects=self._board.reconnects,
                )
                on_live()
                await self._follow(client, receive)
        return went_live

    async def _read_subscriptions(
        self, client: ChainClient, heads_id: str, logs_id: str, send: MemoryObjectSendStream[Message]
    ) -> None:
        """Move every subscription message into our unbounded buffer at once: the socket's queue never fills
        (chain/rpc_socket.py: a full one holds back the reading of answers too)."""

        def on_message(message: Mapping[str, Any]) -> None:
            parsed = parse_subscription_message(message, heads_id=heads_id, logs_id=logs_id)
            if parsed is None:
                return
            if isinstance(parsed, HeadMessage):
                self._last_head_at = anyio.current_time()
                self._last_head_seen = max(self._last_head_seen or 0, parsed.header.number)
            send.send_nowait(parsed)

        await read_subscriptions(client, on_message)

    async def _watchdog(self, client: ChainClient) -> None:
        """No new head within DLOOP_HEAD_TIMEOUT: the connection is dead, unless (with `probe_idle_chain`)
        the node answers eth_blockNumber in time with no newer block: then the chain is idle (an automining
        devnet without traffic) and the connection is alive."""
        timeout = self.settings.head_timeout
        while True:
            silent = anyio.current_time() - self._last_head_at
            if silent < timeout:
                await anyio.sleep(timeout - silent)
                continue
            if self.probe_idle_chain and await self._chain_is_idle(client, timeout):
                self._last_head_at = anyio.current_time()
                continue
            self._board.connected = False  # known dead now, before the (bounded) closing handshake
            raise HeadTimeout(f"no new head for {silent:.1f} s (DLOOP_HEAD_TIMEOUT is {timeout:g} s)")

    async def _chain_is_idle(self, client: ChainClient, timeout: float) -> bool:
        try:
            with anyio.fail_after(timeout):
                latest = await client.block("latest")
        except (ChainError, TimeoutError):
            return False  # a frozen or broken connection
        seen = self._last_head_seen
        # A newer block than any head received means the subscription is broken, not the chain idle.
        if seen is None or latest.number > seen:
            return False
        # An idle chain brings no next head to expose a reorg whose own heads we never got (a rollback,
        # or a same-height replacement whose notifications were lost): compare the tip with what we saw.
        stored = self._tracker.blocks.get(latest.number)
        if latest.number < seen or (stored is not None and stored.hash.lower() != latest.hash.lower()):
            raise SilentReorg(
                f"the chain's tip is block {latest.number} {latest.hash}, not what the heads said "
                f"(newest head {seen}, stored hash {stored.hash if stored else None})"
            )
        return True

    # -- catching up ------------------------------------------------------------------------------------
    async def _catch_up(self, client: ChainClient) -> None:
        latest = await client.block("latest")
        cursor = await chain_state.read_cursor(self.ctx.sessions, self.ctx.stream)
        deployment = None
        if cursor is None and self.settings.start_block is None and self.find_deployment_block:
            deployment = await self._deployment_block(client, latest.number)
        first = backfill_start(
            cursor_block=None if cursor is None else cursor.block_number,
            start_block=self.settings.start_block,
            deployment_block=deployment,
            head=latest.number,
            backfill_blocks=self.settings.backfill_blocks,
        )
        self._board.cursor_block = None if cursor is None else cursor.block_number
        if first <= latest.number:
            progress = BackfillProgress(
                self._board,
                logger,
                first_block=first,
                last_block=latest.number,
                interval=self.progress_interval,
                bar=terminal_stream(self.progress_bar),
            )
            try:
                await self._processor.read_range(
                    client,
                    first,
                    latest.number,
                    source="backfill",
                    head_number=latest.number,
                    progress=progress,
                )
            finally:
                progress.finish()
        await self._tracker.check_recent_blocks(client, reason="catch-up")

    async def _deployment_block(self, client: ChainClient, head: int) -> int | None:
        """The first block with the contract's code (binary search on eth_getCode); None when the node
        has no history for that (a pruned node) or the contract has no code."""

        async def has_code(number: int) -> bool:
            code = await client.request(*requests.code(self.ctx.contract, number))
            return str(code or "0x") not in ("0x", "0x0", "")

        try:
            if not await has_code(head):
                return None
            low, high = 0, head
            while low < high:
                middle = (low + high) // 2
                if await has_code(middle):
                    high = middle
                else:
                    low = middle + 1
        except ChainError as exc:
            log_event(logger, "deployment_block_unknown", level=logging.WARNING, error=str(exc))
            return None
        log_event(logger, "deployment_block_found", block=low)
        return low

    # -- following --------------------------------------------------------------------------------------
    async def _follow(self, client: ChainClient, receive: MemoryObjectReceiveStream[Message]) -> None:
        held: list[Message] = []  # heads and VoteCast logs waiting (at most `hold_s`) for the next messages
        held_since = 0.0
        while True:
            wait = self._processor.tally_wait()
            if held:
                left = max(0.0, held_since + self.hold_s - anyio.current_time())
                wait = left if wait is None else min(wait, left)
            first = await _next_message(receive, wait)
            if first is None:
                if held:  # nothing more came: what waited is handled now
                    batch, held = held, []
                    await self._handle_batch(client, batch)
                else:  # quiet for a while, or a refresh is due: the stored tallies catch up
                    await self._processor.refresh_tallies(client)
                continue
            batch = [first]
            while len(held) + len(batch) < self.max_batch:
                try:
                    batch.append(receive.receive_nowait())
                except anyio.WouldBlock:
                    break
            if not held:
                held_since = anyio.current_time()
            held.extend(batch)
            # Under automine a block comes with every few votes, and each batch of its head and VoteCast
            # logs was two write transactions; held a moment, several blocks share them. Anything else (a
            # proposal created or closed, a reorg) is handled at once, with what waited before it.
            if (
                not all(waits_for_more(m) for m in batch)
                or len(held) >= self.max_batch
                or anyio.current_time() - held_since >= self.hold_s
            ):
                batch, held = held, []
                await self._handle_batch(client, batch)

    async def _handle_batch(self, client: ChainClient, batch: Sequence[Message]) -> None:
        heads = [m.header for m in batch if isinstance(m, HeadMessage)]
        logs = [m.log for m in batch if isinstance(m, LogMessage) and not m.log.removed]
        removed = [m.log for m in batch if isinstance(m, LogMessage) and m.log.removed]
        for bad in (m for m in batch if isinstance(m, BadMessage)):
            log_event(logger, "bad_subscription_message", level=logging.WARNING, problem=bad.error)
        # A log proves its block was mined, even if its head is still on the way.
        head_number = max(
            [h.number for h in heads]
            + [raw.block_number for raw in logs]
            + [self._tracker.top or 0, self._board.last_head_number or 0]
        )
        await self._processor.process(client, logs, source="subscription", head_number=head_number)
        self._tracker.remember_logs(logs)
        stale = self._tracker.stale_logs(logs)
        conflict = self._tracker.conflicting_head(heads)
        if removed or stale or conflict is not None:
            if removed:
                reason = f"removed log in block {min(r.block_number for r in removed)}"
            elif stale:
                reason = f"log from a replaced block {stale[0].block_number}"
            else:
                assert conflict is not None
                reason = f"new head {conflict.number} does not extend the stored chain"
            await self._tracker.check_recent_blocks(
                client,
                reason=reason,
                removed_from_block=min(r.block_number for r in removed) if removed else None,
            )
        else:
            await self._tracker.record_heads(heads)


async def _next_message(receive: MemoryObjectReceiveStream[Message], wait: float | None) -> Message | None:
    """The next message, or None when none arrived within `wait` seconds (None: no limit).

    Giving up on `receive()` loses no message: anyio (pinned) hands a message only to a receiver with no
    cancellation pending, and does not cancel a receiver it has handed one to (agronholm/anyio#728)."""
    if wait is None:
        return await receive.receive()
    if wait > 0:
        with anyio.move_on_after(wait):
            return await receive.receive()
    return None


def _find(exc: BaseException, kind: type[ConfigError]) -> ConfigError | None:
    return next((leaf for leaf in error_leaves(exc) if isinstance(leaf, kind)), None)


def _describe(exc: BaseException) -> str:
    leaves = error_leaves(exc)
    return "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in leaves)[:500]
