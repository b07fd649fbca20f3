"""The voter: drains the vote queue for all nodes in bounded batches, each node through its own lane.

A round leases up to `batch_size` proposals' rows (all nodes), reads those proposals, the `hasVoted` flags and
the chain time in one consistent snapshot, decides per node, and hands the votes to the node lanes, which
send concurrently. Receipts are awaited by each lane's watcher, never by the round. Work not done by the
round's deadline goes back to the queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import os
import random
import secrets
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc

from chain.accounts import NodeAccount
from chain.client import ChainClient, RpcErrorCounts
from chain.connection import open_ws
from chain.reads import (
    BadAnswer,
    Batch,
    Reads,
    read_asset_price,
    read_has_voted,
    read_nonce,
    read_price_oracle,
    read_proposal,
)
from chain.requests import estimate_gas
from chain.retrying import call_many_retrying
from chain.types import ProposalData, ProposalType, status_name
from core.errors import ChainError, ConfigError, StorageError, TransientChainError, first_error
from core.logs import log_event
from core.retry import with_backoff
from core.settings import Settings
from core.signals import WorkSignal
from storage import queue
from storage.controls import PauseState, PauseWatch
from storage.engine import SessionFactory
from storage.lanes import LaneFence
from storage.models import VoteState, utcnow
from storage.proposals import NodeRecord, record_proposal
from storage.queue import QueuedVote
from voter.fee_oracle import FeeOracle
from voter.fees import gwei_to_wei
from voter.jobs import Counters, VoteJob, estimate_request, estimate_value, vote_calldata, vote_gas_key
from voter.lane import NodeLane, StepHook
from voter.own_votes import own_votes_on_chain
from voter.ownership import LaneOwnership, LaneView
from voter.planning import NonceCounts, plan_batch, rows_by_node
from voter.receipts import ReceiptPoller
from voter.sender import Ready, Signed, broadcast_all
from voter.strategies import Decision, Price, Tally, decide, node_config, value_text

log = logging.getLogger("dloop.voter")
READ_RETRY = 10.0  # seconds before a row whose proposal could not be read is tried again
MAX_TRIES_PER_ROUND = 3
ESTIMATE_FRESH_SECONDS = 2.0  # a gas estimate older than this is made again just before signing


@dataclass(frozen=True)
class DrainResult:
    """What one round did."""

    started_at: dt.datetime
    finished_at: dt.datetime
    batches: int
    leased: int
    sent: int
    confirmed: int
    failed: int
    closed: int
    already_voted: int
    no_vote: int
    deferred: int
    in_flight: int  # transactions still awaiting a receipt when the round ended
    deadline_reached: bool
    left_work: bool  # queued rows of sendable nodes remain (the next round starts at once)
    dry_run: int = 0  # decided and recorded under DLOOP_DRY_RUN, not signed


@dataclass(frozen=True)
class NodeStatus:
    name: str
    address: str
    strategy: str
    next_nonce: int | None
    in_flight: int
    unfunded: bool
    last_error: str | None
    last_vote_at: dt.datetime | None
    paused: bool = False


@dataclass(frozen=True)
class LaneStatus:
    """Who signs for one node: this instance (`owned`) or another (`owner`), when several share a database."""

    node: str
    address: str
    owned: bool
    owner: str | None
    token: int | None
    expires_at: dt.datetime | None
    acquired_at: dt.datetime | None


@dataclass(frozen=True)
class VoterStatus:
    connected: bool
    rounds: int
    round_running: bool
    last_round: DrainResult | None
    votes_sent: int
    votes_confirmed: int
    votes_failed: int
    replaced: int
    rebroadcast: int
    reconnects: int
    last_connection_error: str | None
    nodes: tuple[NodeStatus, ...] = field(default_factory=tuple)
    service_paused: bool = False
    dry_run: bool = False
    instance: str = ""  # this process's owner id (queue and lane leases)
    lanes: tuple[LaneStatus, ...] = field(default_factory=tuple)  # empty: no lane ownership in play


@dataclass(frozen=True)
class Snapshot:
    """Proposals, hasVoted flags and the chain time, all read at one block."""

    block_number: int
    chain_time: int
    proposals: dict[int, ProposalData | ChainError]
    voted: dict[tuple[int, str], bool | ChainError]
    nonces: dict[str, NonceCounts] = field(default_factory=dict)  # by node address; missing: read again
    prices: dict[str, Price] = field(default_factory=dict)  # by asset address (lower case), at that block

    def price_of(self, data: ProposalData) -> Price | None:
        """The asset's price for an investment or divestment (None for other types)."""
        if data.proposal_type not in (ProposalType.INVESTMENT, ProposalType.DIVESTMENT):
            return None
        return self.prices.get(data.asset_address.lower(), Price.missing("no price was read"))


def process_owner_id() -> str:
    """A lease owner unique to this process run."""
    return f"voter-{socket.gethostname()[:24]}-{os.getpid()}-{secrets.token_hex(3)}"


class Voter:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        accounts: tuple[NodeAccount, ...],
        nodes: Sequence[NodeRecord],
        signal: WorkSignal,
        chain_id: int,
        *,
        owner: str | None = None,
        poll_interval: float = 3.0,
        receipt_poll_interval: float = 0.2,
        stall_seconds: float = 5.0,
        step_hook: StepHook | None = None,
        rpc_errors: RpcErrorCounts | None = None,
        pauses: PauseWatch | None = None,
        ownership: LaneOwnership | None = None,
    ) -> None:
        if len(accounts) != len(nodes):
            raise ConfigError("nodes", f"{len(accounts)} node accounts but {len(nodes)} node rows")
        for account, node in zip(accounts, nodes, strict=True):
            if account.address.lower() != node.address.lower():
                raise ConfigError("nodes", f"node row {node.name} is not the account of {account.name}")
        self.settings = settings
        self.sessions = sessions
        self.signal = signal
        self.rpc_errors: RpcErrorCounts = rpc_errors if rpc_errors is not None else Counter()
        self.chain_id = chain_id
        self.owner = owner or process_owner_id()
        self.poll_interval = poll_interval
        self.step_hook = step_hook
        self.totals = Counters()
        self.pauses = pauses or PauseWatch(sessions)  # the operator's pause switches (storage/controls.py)
        # Several instances on one database: only the lanes this instance owns are attached and sign.
        self.ownership = ownership
        if ownership is not None and ownership.on_change is None:
            ownership.on_change = signal.notify  # a lane taken or lost: a round at once
        fees = FeeOracle(gwei_to_wei(settings.max_fee_gwei))
        # Strategies load here, at start: an unknown one is a ConfigError naming DLOOP_NODE_STRATEGIES.
        self.lanes = [
            NodeLane(
                account=account,
                node=node,
                config=node_config(account.strategy, settings.strategies),
                settings=settings,
                sessions=sessions,
                owner=self.owner,
                chain_id=chain_id,
                fees=fees,
                totals=self.totals,
                step_hook=step_hook,
                pauses=self.pauses,
                ownership=ownership,
            )
            for account, node in zip(accounts, nodes, strict=True)
        ]
        self._by_node = {lane.node.id: lane for lane in self.lanes}
        self._receipts = ReceiptPoller(
            self.lanes,
            sessions,
            batch_size=settings.rpc_batch_size,
            poll_interval=receipt_poll_interval,
            stall_seconds=stall_seconds,
        )
        self._client: ChainClient | None = None
        self._round_lock = anyio.Lock()
        self._rounds = 0
        self._last_round: DrainResult | None = None
        self._serving = False  # run() is active (connected or reconnecting)
        self._reconnects = 0
        self._connection_error: str | None = None

    # -- status ----------------------------------------------------------------------------------------
    @property
    def status(self) -> VoterStatus:
        return VoterStatus(
            connected=self._client is not None,
            rounds=self._rounds,
            round_running=self._round_lock.locked(),
            last_round=self._last_round,
            votes_sent=self.totals.sent,
            votes_confirmed=self.totals.confirmed,
            votes_failed=self.totals.failed,
            replaced=self.totals.replaced,
            rebroadcast=self.totals.rebroadcast,
            reconnects=self._reconnects,
            last_connection_error=self._connection_error,
            nodes=tuple(
                NodeStatus(
                    name=lane.node.name,
                    address=lane.address,
                    strategy=lane.config.strategy_name,
                    next_nonce=lane.next_nonce,
                    in_flight=len(lane.tracked),
                    unfunded=lane.unfunded,
                    last_error=lane.last_error,
                    last_vote_at=lane.last_vote_at,
                    paused=self.pauses.cached.paused(lane.node.name),
                )
                for lane in self.lanes
            ),
            service_paused=self.pauses.cached.service,
            dry_run=self.settings.dry_run,
            instance=self.ownership.owner if self.ownership is not None else self.owner,
            lanes=self._lane_statuses(),
        )

    def _lane_statuses(self) -> tuple[LaneStatus, ...]:
        if self.ownership is None:
            return ()
        names = {lane.address.lower(): lane.node.name for lane in self.lanes}
        return tuple(self._lane_status(names[view.address], view) for view in self.ownership.views())

    @staticmethod
    def _lane_status(name: str, view: LaneView) -> LaneStatus:
        return LaneStatus(
            node=name,
            address=view.address,
            owned=view.owned,
            owner=view.owner,
            token=view.token,
            expires_at=view.expires_at,
            acquired_at=view.acquired_at,
        )

    # -- operator controls -----------------------------------------------------------------------------
    async def current(self) -> PauseState:
        return await self.pauses.current()

    async def set_paused(self, scopes: Sequence[str], paused: bool, *, by: str) -> PauseState:
        """Store the switches, read them back, then wait for every lane's signing lock: a send that checked
        the old state finishes first, and every later one sees the new state. After this returns, no
        transaction of a paused node is signed. A resume wakes the voter at once."""
        state = await self.pauses.set(scopes, paused, by=by)
        for lane in self.lanes:
            async with lane.lock:
                pass
        if not paused:
            self.signal.notify()
        return state

    # -- long-running service --------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect (a fresh client per connection), resolve `sent` rows, then vote whenever work is queued.

        Reports started once the first connection is ready; reconnects with backoff on transient errors.
        """
        started = False
        delay = 0.5
        self._serving = True
        try:
            while True:
                lost: BaseException | None = None
                try:
                    async with self._connected() as tg:
                        if not started:
                            task_status.started()
                            started = True
                        delay = 0.5
                        await self._serve()
                        tg.cancel_scope.cancel()
                except* (TransientChainError, StorageError) as group:
                    # The node or the database is away for now (a locked SQLite file, a dropped socket):
                    # start over with a fresh connection; queued work waits, `sent` rows are resolved again.
                    # (A malformed answer costs only its request: `ChainClient` and `with_backoff` handle it.)
                    lost = first_error(group)
                self._reconnects += 1
                self._connection_error = str(lost)
                log_event(log, "voter_reconnecting", level=logging.WARNING, error=str(lost), delay=delay)
                await anyio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 30.0)
        finally:
            self._serving = False
            # On shutdown, hand back the queued rows this process leased, so a restart votes them at once
            # instead of waiting for the leases to expire. Rows already `sent` are not leases.
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await queue.release_owner(self.sessions, self.owner)
                except StorageError as exc:
                    log_event(log, "voter_lease_release_failed", level=logging.WARNING, error=str(exc))

    async def _serve(self) -> None:
        more = True  # a round at start
        while True:
            if not more:
                await self.signal.wait(self.poll_interval)
            result = await self._locked_round(None)
            more = result.left_work

    @asynccontextmanager
    async def _connected(self) -> AsyncIterator[anyio.abc.TaskGroup]:
        """A fresh WebSocket client, lanes attached (`sent` rows resolved), watchers running."""
        settings = self.settings
        async with open_ws(settings.rpc_ws_url, request_timeout=settings.rpc_timeout) as w3:
            client = ChainClient(
                w3, settings.contract_address, timeout=settings.rpc_timeout, error_counts=self.rpc_errors
            )
            try:
                async with anyio.create_task_group() as tg:
                    await self._attach(client)
                    await tg.start(self._receipts.run, client)
                    yield tg
            finally:
                self._detach()

    async def _attach(self, client: ChainClient) -> None:
        actual = await with_backoff(client.chain_id)
        if actual != self.chain_id:
            raise ChainError(f"connected to chain {actual}, expected chain {self.chain_id}")
        # Rows this process held when its previous connection dropped are free again.
        await queue.release_owner(self.sessions, self.owner)
        if self.ownership is None:
            async with anyio.create_task_group() as tg:
                for lane in self.lanes:
                    tg.start_soon(lane.attach, client)
        else:
            await self._sync_lanes(client)
        self._client = client
        log_event(log, "voter_connected", owner=self.owner, nodes=len(self.lanes))

    def _detach(self) -> None:
        self._client = None
        for lane in self.lanes:
            lane.detach()
            lane.state.fence = None  # a new connection attaches the owned lanes again

    async def _sync_lanes(self, client: ChainClient) -> None:
        """Lanes follow ownership (each round and each connection): a lane lost is forgotten; a lane taken
        is attached the way a restart does (`sent` rows resolved from the chain, nonce synced) before it
        signs anything. The owned lanes attach concurrently."""
        if self.ownership is None:
            return
        taken: list[tuple[NodeLane, LaneFence]] = []
        for lane in self.lanes:
            fence = self.ownership.fence(lane.address)
            if fence == lane.state.fence:
                continue
            if lane.state.fence is not None:
                await lane.release()
                log_event(log, "lane_detached", node=lane.node.name, address=lane.address)
            if fence is not None:
                taken.append((lane, fence))
        if taken:
            async with anyio.create_task_group() as tg:
                for lane, fence in taken:
                    tg.start_soon(self._take_lane, lane, client, fence)

    async def _take_lane(self, lane: NodeLane, client: ChainClient, fence: LaneFence) -> None:
        started = anyio.current_time()
        # Queued rows of this node leased by another instance (a dead one's leases last DLOOP_LEASE_SECONDS)
        # are free now: only the lane's owner can record a vote for them.
        freed = await queue.release_node_leases(
            self.sessions,
            lane.node.id,
            keep_owner=self.owner,
            scope=queue.ContractScope(self.chain_id, self.settings.contract_address),
        )
        lane.state.fence = fence
        try:
            await lane.attach(client)
        except TransientChainError:
            lane.state.fence = None
            raise
        except ChainError as exc:
            lane.state.fence = None  # attached again at the next round
            lane.last_error = f"taking the lane: {exc}"
            log_event(log, "node_error", level=logging.WARNING, node=lane.node.name, error=lane.last_error)
            return
        log_event(
            log,
            "lane_ready",
            node=lane.node.name,
            address=lane.address,
            token=fence.token,
            freed_leases=freed,
            attach_seconds=round(anyio.current_time() - started, 3),
        )
        self.signal.notify()

    # -- rounds ----------------------------------------------------------------------------------------
    async def drain(self, *, deadline: float | None = None) -> DrainResult:
        """One round: lease batches until the queue is empty or the deadline (an `anyio.current_time()`
        value; default now + DLOOP_ROUND_DEADLINE) passes. Undone work stays queued.

        While `run()` is active this uses its connection; otherwise it connects, resolves `sent` rows,
        runs the round and waits (until the deadline) for the receipts of what it sent.
        """
        end = deadline if deadline is not None else anyio.current_time() + self.settings.round_deadline
        if self._client is not None:
            return await self._locked_round(end)
        if self._serving:
            raise TransientChainError("the voter is reconnecting to the node; try again shortly")
        confirmed, failed = self.totals.confirmed, self.totals.failed
        results: list[DrainResult] = []
        delay = 0.2
        while True:  # a dropped connection (or a provider that spoils it) is reconnected until the deadline
            lost: BaseException | None = None
            try:
                async with self._connected() as tg:
                    results.append(await self._locked_round(end))
                    async with anyio.create_task_group() as settle:
                        for lane in self.lanes:
                            settle.start_soon(lane.settle_all, end)
                    tg.cancel_scope.cancel()
            except* TransientChainError as group:
                lost = first_error(group)
            if lost is None:
                break
            if anyio.current_time() + delay >= end:
                raise TransientChainError(f"drain gave up at its deadline: {lost}") from lost
            log_event(log, "voter_reconnecting", level=logging.WARNING, error=str(lost), delay=delay)
            self._reconnects += 1
            self._connection_error = str(lost)
            await anyio.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)
        return dataclasses.replace(
            combined(results),
            confirmed=self.totals.confirmed - confirmed,
            failed=self.totals.failed - failed,
            in_flight=sum(len(lane.tracked) for lane in self.lanes),
        )

    async def recheck_sent(self) -> int:
        """Resolve `sent` rows no lane tracks yet (e.g. confirmed votes a reorg handler reopened) now.

        Needs a connection (`run()` active); without one it does nothing: every connection starts with it.
        """
        if self._client is None:
            return 0
        async with self._round_lock:
            counts = [await lane.adopt_sent() for lane in self.lanes if lane.state.owned]
        return sum(counts)

    async def _locked_round(self, deadline: float | None) -> DrainResult:
        end = deadline if deadline is not None else anyio.current_time() + self.settings.round_deadline
        async with self._round_lock:
            result = await self._round(end)
        self._rounds += 1
        self._last_round = result
        quiet = result.leased == 0 and result.confirmed == 0
        log_event(
            log,
            "voter_round",
            level=logging.DEBUG if quiet else logging.INFO,
            **{k: v for k, v in result.__dict__.items() if not k.endswith("_at")},
        )
        return result

    async def _round(self, deadline: float) -> DrainResult:
        client = self._require_client()
        started = utcnow()
        counters = Counters()
        confirmed_before, failed_before = self.totals.confirmed, self.totals.failed
        batches = leased_total = 0
        await self._sync_lanes(client)
        sent = await queue.sent_vote_ids(
            self.sessions,
            list(self._by_node),
            scope=queue.ContractScope(self.chain_id, self.settings.contract_address),
        )
        for lane in self.lanes:
            if not lane.state.owned:
                continue
            await self._lane_safely(lane, lane.check_funding)
            if (
                sent.get(lane.node.id, set()) - lane.tracked.keys()
            ):  # rows sent by an earlier run, or reopened
                await self._lane_safely(lane, lane.adopt_sent)
        handled: Counter[int] = Counter()  # what keeps coming back waits for the next round
        while anyio.current_time() < deadline:
            await self.pauses.current()  # read again when older than a second (another instance's change)
            sendable = self._sendable()
            if not sendable:
                break
            held = await queue.lease_most_urgent(
                self.sessions,
                node_ids=sendable,
                max_proposals=self.settings.batch_size,
                scope=queue.ContractScope(self.chain_id, self.settings.contract_address),
                owner=self.owner,
                lease_seconds=self.settings.lease_seconds,
            )
            # The lease took whole proposals of these nodes, at most batch_size of them: the plan keeps them
            # all and puts them in batch order.
            leased = plan_batch(held, batch_size=self.settings.batch_size, node_ids=sendable)
            if not leased:
                break  # nothing free, or another voter was first: count_leasable below tells which
            if all(handled[row.vote_id] >= MAX_TRIES_PER_ROUND for row in leased):
                await self._release(leased, "tried again in the next round", counters)
                break
            handled.update(row.vote_id for row in leased)
            batches += 1
            leased_total += len(leased)
            self._step("leased")
            handed_back = (counters.deferred, counters.requeued, counters.paused)
            await self._process_batch(client, leased, deadline, counters)
            partial = len({row.proposal_row_id for row in leased}) < self.settings.batch_size
            if partial and (counters.deferred, counters.requeued, counters.paused) == handed_back:
                # Nothing else was free a moment ago and nothing went back: count_leasable (a read) says
                # whether rows came since, rather than another lease (a write) that would take nothing.
                break
        deadline_reached = anyio.current_time() >= deadline
        sendable = self._sendable()
        left = (
            bool(sendable)
            and await queue.count_leasable(
                self.sessions,
                node_ids=sendable,
                scope=queue.ContractScope(self.chain_id, self.settings.contract_address),
            )
            > 0
        )
        return DrainResult(
            started_at=started,
            finished_at=utcnow(),
            batches=batches,
            leased=leased_total,
            sent=counters.sent,
            confirmed=self.totals.confirmed - confirmed_before,
            failed=self.totals.failed - failed_before,
            closed=counters.closed,
            already_voted=counters.already_voted,
            no_vote=counters.no_vote,
            deferred=counters.deferred,
            in_flight=sum(len(lane.tracked) for lane in self.lanes),
            deadline_reached=deadline_reached,
            left_work=left,
            dry_run=counters.dry_run,
        )

    async def _lane_safely(self, lane: NodeLane, step: Callable[[], Awaitable[object]]) -> None:
        """One node's trouble must not stop the others: a non-transient chain error stays on its lane."""
        try:
            await step()
        except TransientChainError:
            raise
        except ChainError as exc:
            lane.last_error = f"{getattr(getattr(step, 'func', step), '__name__', 'step')}: {exc}"
            log_event(log, "node_error", level=logging.WARNING, node=lane.node.name, error=lane.last_error)

    def _sendable(self) -> list[int]:
        """Nodes whose queued rows a round leases: owned by this instance, funded and not paused (a paused
        node's rows stay queued, unleased, until it is resumed; another instance's, for their owner)."""
        pauses = self.pauses.cached
        return [
            lane.node.id
            for lane in self.lanes
            if lane.state.owned and not lane.unfunded and not pauses.paused(lane.node.name)
        ]

    def _require_client(self) -> ChainClient:
        if self._client is None:
            raise ChainError("voter is not connected")
        return self._client

    def _step(self, name: str) -> None:
        if self.step_hook is not None:
            self.step_hook(name)

    async def _process_batch(
        self, client: ChainClient, rows: list[QueuedVote], deadline: float, counters: Counters
    ) -> None:
        try:
            snapshot = await self.read_snapshot(client, rows)
        except ChainError as exc:
            transient = isinstance(exc, TransientChainError)
            await self._release(
                rows,
                f"reading the proposals failed: {exc}",
                counters,
                defer=None if transient else READ_RETRY,
            )
            if transient:
                raise
            return
        await self._refresh_changed(rows, snapshot)
        own = await self._confirm_own_votes(client, rows, snapshot, counters)
        jobs: dict[int, list[VoteJob]] = {}
        for node_id, node_rows in rows_by_node(rows).items():
            lane = self._by_node[node_id]
            for row in node_rows:
                if row.vote_id in own:
                    continue
                job = await self._decide_row(lane, row, snapshot, counters)
                if job is not None:
                    jobs.setdefault(node_id, []).append(job)
        jobs = await self._with_gas_estimates(client, jobs)
        # The lanes with room for all their votes send together: one transaction, one broadcast batch (a
        # proposal's five votes are stored and sent at once, not one node after another). The others wait
        # for room, each on its own.
        together = {
            node_id: lane_jobs
            for node_id, lane_jobs in jobs.items()
            if not self._by_node[node_id].unfunded
            and len(lane_jobs) <= self._by_node[node_id].free_slots
            and anyio.current_time() < deadline
        }
        if len(together) > 1:
            await self._send_together(client, together, snapshot, counters)
            jobs = {node_id: lane_jobs for node_id, lane_jobs in jobs.items() if node_id not in together}
        async with anyio.create_task_group() as tg:
            for node_id, lane_jobs in jobs.items():
                lane = self._by_node[node_id]
                nonces = snapshot.nonces.get(lane.address)
                tg.start_soon(self._send_lane, lane, lane_jobs, deadline, counters, nonces)

    async def _send_together(
        self, client: ChainClient, jobs: dict[int, list[VoteJob]], snapshot: Snapshot, counters: Counters
    ) -> None:
        """Several lanes' votes signed under all their locks (taken in node order), recorded in one
        transaction (each lane under its own fence) and broadcast in one batch: `LaneSender.send_many`'s
        steps, once for all. A lane's own trouble stays on its lane, as in `_send_lane`."""
        ready: dict[NodeLane, Ready] = {}
        for node_id, lane_jobs in sorted(jobs.items()):
            lane = self._by_node[node_id]
            try:
                prepared = await lane.sender.prepare(lane_jobs, counters)
            except TransientChainError:
                await self._release(
                    [j.row for js in jobs.values() for j in js], "connection trouble", counters
                )
                raise
            except ChainError as exc:
                lane.last_error = f"proposals {[j.row.proposal_id for j in lane_jobs]}: {exc}"
                await self._release([j.row for j in lane_jobs], lane.last_error, counters, defer=READ_RETRY)
                continue
            if prepared is not None:
                ready[lane] = prepared
        async with contextlib.AsyncExitStack() as locks:
            signed: dict[NodeLane, Signed] = {}
            for lane, prepared in ready.items():
                await locks.enter_async_context(lane.lock)
                # The account's nonce can move back (a reorg took a mined vote away): sync before signing.
                await self._lane_safely(
                    lane, functools.partial(lane.resync_nonce, snapshot.nonces.get(lane.address))
                )
                lane_signed = await lane.sender.sign_ready(prepared, counters)
                if lane_signed is not None:
                    signed[lane] = lane_signed
            if not signed:
                return
            with anyio.CancelScope(shield=True):
                recorded = await queue.record_sent_lanes(
                    self.sessions, [(s.records(), s.fence) for s in signed.values()], owner=self.owner
                )
            tracked = {
                lane: await lane.sender.track_recorded(lane_signed, outcome, counters)
                for (lane, lane_signed), outcome in zip(signed.items(), recorded, strict=True)
            }
            txs = [item.latest for items in tracked.values() for _, item in items]
            errors = iter(await broadcast_all(client, txs, batch_size=self.settings.rpc_batch_size))
            for lane, items in tracked.items():
                lane_errors = [next(errors) for _ in items]
                await lane.sender.broadcast_done(items, lane_errors, signed[lane].fence, counters)
        for lane in signed:
            lane.state.notify()

    async def _with_gas_estimates(
        self, client: ChainClient, jobs: dict[int, list[VoteJob]]
    ) -> dict[int, list[VoteJob]]:
        """Each vote's gas: known for its proposal type and call (voter/gas.py), or estimated with the
        batch's others in one JSON-RPC batch (not one round trip per vote). A failed estimate stays on its
        job: the lane decides from the error what the row becomes."""
        flat = [
            (node_id, job, vote_calldata(job)) for node_id, lane_jobs in jobs.items() for job in lane_jobs
        ]
        known = [
            self._by_node[node_id].state.gas.known(vote_gas_key(job, data)) for node_id, job, data in flat
        ]
        asked = [item for item, gas in zip(flat, known, strict=True) if gas is None]
        requests = [
            estimate_gas(estimate_request(self._by_node[node_id].address, client.contract, data))
            for node_id, _job, data in asked
        ]
        answers = (
            await call_many_retrying(client, requests, batch_size=self.settings.rpc_batch_size)
            if requests
            else []
        )
        fresh: dict[int, int | ChainError] = {}
        for (node_id, job, data), answer in zip(asked, answers, strict=True):
            estimate = estimate_value(answer)
            fresh[id(job)] = estimate
            if isinstance(estimate, int):
                self._by_node[node_id].state.gas.learn(vote_gas_key(job, data), estimate)
        estimated: dict[int, list[VoteJob]] = {}
        for (node_id, job, _data), gas in zip(flat, known, strict=True):
            value = gas if gas is not None else fresh[id(job)]
            estimated.setdefault(node_id, []).append(dataclasses.replace(job, gas_estimate=value))
        return estimated

    async def _confirm_own_votes(
        self, client: ChainClient, rows: Sequence[QueuedVote], snapshot: Snapshot, counters: Counters
    ) -> set[int]:
        """Rows `hasVoted` says are voted and whose own earlier transaction is on chain: confirmed with it."""
        voted = [
            r for r in rows if snapshot.voted.get((r.proposal_id, self._by_node[r.node_id].address)) is True
        ]
        if not voted:
            return set()
        found = await own_votes_on_chain(
            client,
            self.sessions,
            voted,
            head=snapshot.block_number,
            batch_size=self.settings.rpc_batch_size,
        )
        confirmed = set()
        for row in voted:
            confirmation = found.get(row.vote_id)
            if confirmation is None:
                continue
            with anyio.CancelScope(shield=True):
                done = await queue.confirm_queued_by_own_tx(
                    self.sessions, owner=self.owner, confirmation=confirmation
                )
            if done:
                confirmed.add(row.vote_id)
                counters.confirmed += 1
                self.totals.confirmed += 1
                log_event(
                    log,
                    "vote_confirmed_by_own_tx",
                    node=self._by_node[row.node_id].node.name,
                    proposal=row.proposal_id,
                    tx=confirmation.tx_hash,
                    block=confirmation.block_number,
                )
        return confirmed

    async def _decide_row(
        self, lane: NodeLane, row: QueuedVote, snapshot: Snapshot, counters: Counters
    ) -> VoteJob | None:
        """Already voted, closed, no vote: the row ends here without a transaction. Else a job."""
        data = snapshot.proposals.get(row.proposal_id)
        voted = snapshot.voted.get((row.proposal_id, lane.address))
        if not isinstance(data, ProposalData) or not isinstance(voted, bool):
            problem = data if isinstance(data, ChainError) else voted
            transient = isinstance(problem, TransientChainError)  # e.g. rate limited: next round at once
            await self._release(
                [row],
                f"reading proposal {row.proposal_id} failed: {problem}",
                counters,
                defer=None if transient else READ_RETRY,
            )
            return None
        finish: tuple[VoteState, Decision | None, str]
        price = snapshot.price_of(data)
        if voted:
            finish = (
                VoteState.ALREADY_VOTED,
                None,
                f"already voted: hasVoted was true before sending ({lane.address})",
            )
        elif not data.open_at(snapshot.chain_time):
            finish = (VoteState.CLOSED, None, closed_reason(data, snapshot.chain_time))
        else:
            try:
                decision = decide(data, Tally.of(data), snapshot.chain_time, lane.config, price)
            except Exception as exc:  # a user's strategy may raise anything; the row must not stay leased
                finish = (VoteState.FAILED, None, f"strategy {lane.config.strategy_name} raised {exc!r}")
            else:
                if self.settings.dry_run:  # decided and recorded, never signed
                    finish = (VoteState.DRY_RUN, decision, f"dry run: {decision.reason}")
                elif decision.support is not None:
                    return VoteJob(row, data, decision, price=price)
                else:
                    finish = (VoteState.NO_VOTE, decision, decision.reason)
        state, decision_or_none, reason = finish
        done = await queue.finish_unsent(
            self.sessions,
            row.vote_id,
            owner=self.owner,
            state=state,
            decision=decision_or_none.label if decision_or_none else None,
            confidence=decision_or_none.confidence if decision_or_none else None,
            reason=reason,
            price=price.text() if price is not None and decision_or_none else None,
            value=value_text(data, price) if decision_or_none else None,
        )
        if done:
            setattr(counters, state.value, getattr(counters, state.value) + 1)
            if state == VoteState.FAILED:
                self.totals.failed += 1
            log_event(
                log, f"vote_{state.value}", node=lane.node.name, proposal=row.proposal_id, reason=reason
            )
        return None

    async def _send_lane(
        self,
        lane: NodeLane,
        jobs: list[VoteJob],
        deadline: float,
        counters: Counters,
        nonces: NonceCounts | None = None,
    ) -> None:
        """One node's votes of the batch, in order; what the deadline or its trouble stops stays queued."""
        # The account's nonce can move back (a reorg took a mined vote away): sync before signing, or the
        # new transactions would wait behind a gap forever.
        async with lane.lock:
            await self._lane_safely(lane, functools.partial(lane.resync_nonce, nonces))
        estimated_at = anyio.current_time()
        index = 0
        while index < len(jobs):
            remaining = deadline - anyio.current_time()
            if remaining > 0 and not lane.unfunded:
                with anyio.move_on_after(remaining):
                    await lane.wait_for_slot()
            if anyio.current_time() >= deadline or lane.unfunded or lane.full:
                why = lane.last_error if lane.unfunded else "round deadline reached"
                await self._release([j.row for j in jobs[index:]], why or "not sent", counters)
                return
            # As many as the lane has room for, persisted in one transaction and broadcast in one batch.
            chunk = jobs[index : index + lane.free_slots]
            if anyio.current_time() - estimated_at > ESTIMATE_FRESH_SECONDS:
                # Waited for room: the chain may have moved on (e.g. the vote closed); estimate again.
                chunk = [dataclasses.replace(job, gas_estimate=None) for job in chunk]
            try:
                await lane.send_many(chunk, counters)
            except TransientChainError:
                await self._release([j.row for j in jobs[index:]], "connection trouble", counters)
                raise
            except ChainError as exc:  # these votes' trouble: they wait, the lane goes on
                lane.last_error = f"proposals {[j.row.proposal_id for j in chunk]}: {exc}"
                await self._release([j.row for j in chunk], lane.last_error, counters, defer=READ_RETRY)
            index += len(chunk)

    async def _release(
        self, rows: Sequence[QueuedVote], error: str, counters: Counters, *, defer: float | None = None
    ) -> None:
        """Back to the queue; with `defer` not before that many seconds (a read that failed for a reason
        that may last would otherwise be retried in a tight loop)."""
        until = utcnow() + dt.timedelta(seconds=defer) if defer else None
        with anyio.CancelScope(shield=True):
            count = await queue.release(
                self.sessions, [r.vote_id for r in rows], owner=self.owner, error=error, defer_until=until
            )
        counters.deferred += count

    async def _refresh_changed(self, rows: Sequence[QueuedVote], snapshot: Snapshot) -> None:
        """Content on chain differs from the stored proposal (a reorg): store what we decide on."""
        seen: set[int] = set()
        for row in rows:
            data = snapshot.proposals.get(row.proposal_id)
            if row.proposal_id in seen or not isinstance(data, ProposalData):
                continue
            seen.add(row.proposal_id)
            if data.content_hash() != row.content_hash:
                log_event(log, "proposal_content_changed", level=logging.WARNING, proposal=row.proposal_id)
                await record_proposal(
                    self.sessions,
                    chain_id=row.chain_id,
                    contract=row.contract,
                    data=data,
                    source="reconcile",
                    node_ids=[],
                )

    async def read_snapshot(self, client: ChainClient, rows: Sequence[QueuedVote]) -> Snapshot:
        """getProposal of each proposal, hasVoted of each (proposal, node), at one block, in one batch."""
        read_at = time.monotonic()  # the nonce counts are at least this fresh (see NonceCounts)
        block = await with_backoff(client.block, "latest")
        ids = sorted({row.proposal_id for row in rows})
        pairs = sorted({(row.proposal_id, self._by_node[row.node_id].address) for row in rows})
        # Each sending node's nonce counts in the same round trip (the lanes sync to them before signing).
        addresses = sorted({self._by_node[row.node_id].address for row in rows})
        batch = Batch()
        proposal_slots = {i: batch.add(read_proposal(client.contract, i, block.number)) for i in ids}
        voted_slots = {p: batch.add(read_has_voted(client.contract, *p, block=block.number)) for p in pairs}
        oracle_slot = batch.add(read_price_oracle(client.contract, block.number))
        mined_slots = {a: batch.add(read_nonce(a, block.number)) for a in addresses}
        pending_slots = {a: batch.add(read_nonce(a, "pending")) for a in addresses}
        reads = Reads(client, batch_size=self.settings.rpc_batch_size)
        answers = await reads.run(batch)
        nonces = {}
        for address in addresses:
            mined, pending = answers[mined_slots[address]], answers[pending_slots[address]]
            if not isinstance(mined, ChainError) and not isinstance(pending, ChainError):
                nonces[address] = NonceCounts(mined, pending, read_at)
        proposals: dict[int, ProposalData | ChainError] = {}
        for proposal_id, slot in proposal_slots.items():
            values = answers[slot]
            data = await reads.proposal_data(values)
            proposals[proposal_id] = (
                ChainError(f"getProposal: {data}") if isinstance(data, BadAnswer) else data
            )
        voted: dict[tuple[int, str], bool | ChainError] = {}
        for pair, voted_slot in voted_slots.items():
            flag = answers[voted_slot]
            voted[pair] = ChainError(f"hasVoted: {flag}") if isinstance(flag, BadAnswer) else flag
        oracle = answers[oracle_slot]
        prices = await self._read_prices(reads, oracle, proposals, block.number)
        for proposal_id, data in list(proposals.items()):
            quote = prices.get(data.asset_address.lower()) if isinstance(data, ProposalData) else None
            if isinstance(quote, TransientChainError):  # decided again when the price can be read
                proposals[proposal_id] = quote
        usable = {asset: quote for asset, quote in prices.items() if isinstance(quote, Price)}
        return Snapshot(block.number, block.timestamp, proposals, voted, nonces, usable)

    @staticmethod
    async def _read_prices(
        reads: Reads,
        oracle: str | ChainError,
        proposals: dict[int, ProposalData | ChainError],
        block: int,
    ) -> dict[str, Price | TransientChainError]:
        """Each asset's price from the contract's oracle, at the snapshot's block, read once per batch;
        a `Price` without a value says why (no oracle, a revert, zero). A transient failure is kept as the
        error: those proposals are decided again, not decided on token units by accident."""
        assets = sorted(
            {
                d.asset_address.lower()
                for d in proposals.values()
                if isinstance(d, ProposalData)
                and d.proposal_type in (ProposalType.INVESTMENT, ProposalType.DIVESTMENT)
            }
        )
        if not assets:
            return {}
        if isinstance(oracle, TransientChainError):
            return dict.fromkeys(assets, oracle)
        if isinstance(oracle, ChainError):
            return dict.fromkeys(assets, Price.missing(f"the contract has no price oracle ({oracle})"))
        if int(oracle, 16) == 0:
            return dict.fromkeys(assets, Price.missing("no price oracle is set"))
        answers = await reads.many([read_asset_price(oracle, asset, block) for asset in assets])
        prices: dict[str, Price | TransientChainError] = {}
        for asset, answer in zip(assets, answers, strict=True):
            if isinstance(answer, TransientChainError):
                prices[asset] = answer
            elif isinstance(answer, ChainError):
                prices[asset] = Price.missing(f"the price oracle reverted ({answer})")
            else:
                prices[asset] = Price.from_raw(answer)
        return prices


def combined(results: Sequence[DrainResult]) -> DrainResult:
    """Rounds of one drain (across reconnects) as one result: counts added, the last round's flags."""
    last = results[-1]
    counts = {
        f.name: sum(getattr(r, f.name) for r in results)
        for f in dataclasses.fields(DrainResult)
        if f.type in ("int", int)
    }
    return dataclasses.replace(last, started_at=results[0].started_at, **counts)


def closed_reason(data: ProposalData, chain_time: int) -> str:
    if data.status != 1:
        return f"closed: proposal status is {status_name(data.status)}"
    ended = dt.datetime.fromtimestamp(data.voting_ends, dt.UTC)
    return f"closed: voting ended at {ended:%Y-%m-%d %H:%M:%S} UTC (chain time {chain_time})"
