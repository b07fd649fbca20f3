"""The service: one anyio task group owning the HTTP server, the voter, the listener and the rounds.

Everything is built from one `Settings`, one session factory and the node records synced at start-up. Each
component is started with `tg.start` (in that order: the API answers while the listener backfills); on
cancellation (SIGINT/SIGTERM in `dloop run`) each one stops on its own terms: the voter's state changes
and hash records are shielded, uvicorn finishes its requests, queued rows simply stay queued.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.abc

from chain.accounts import NodeAccount
from chain.client import ChainClient, RpcCounts, RpcErrorCounts
from chain.codec import dao_functions
from chain.events import ContractVersion
from chain.reads import BadAnswer, Batch, Reads, read_balance, read_block, read_nonce, read_token_balance
from chain.types import ProposalData
from chain.ws_client import ws_chain_client
from core.errors import ChainError, TransientChainError
from core.logs import log_event
from core.settings import Settings
from core.signals import WorkSignal
from dloop.alerts import AlertEvaluator
from dloop.listener_watch import ListenerWatch
from dloop.rounds import Rounds
from listener.blindness import ListenerProgress
from listener.listener import Listener
from listener.reconcile import Reconciler
from monitor.notify import Notifier, notice_masker
from storage.engine import SessionFactory
from storage.proposals import NodeRecord
from storage.queries import ContractScope
from storage.rounds import fail_interrupted_rounds
from voter.ownership import LaneOwnership
from voter.service import Voter, process_owner_id
from web.app import create_app
from web.ports import LaneInfo, ListenerView, NodeChainState, VoterView, WebContext
from web.server import HttpServer

logger = logging.getLogger(__name__)

VOTE_GAS_ALLOWANCE = 150_000  # gas a vote may need, for the "unfunded" status of /nodes
PRIORITY_FEE_WEI = 1_000_000_000


def required_balance(base_fee_wei: int | None) -> int:
    """What one vote may cost at the current base fee (twice the base fee plus the tip)."""
    return VOTE_GAS_ALLOWANCE * (2 * (base_fee_wei or 0) + PRIORITY_FEE_WEI)


class ChainReads:
    """A long-lived connection for the API's live reads (balances, weights, nonces); reconnects on failure."""

    def __init__(
        self, settings: Settings, nodes: Sequence[NodeRecord], rpc_errors: RpcErrorCounts | None = None
    ) -> None:
        self.settings = settings
        self.nodes = tuple(nodes)
        self.rpc_errors = rpc_errors
        self.client: ChainClient | None = None
        self._broken = anyio.Event()
        self._dloop_token: str | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        delay = 0.5
        while True:
            try:
                async with ws_chain_client(self.settings, self.rpc_errors) as client:
                    self.client, self._broken = client, anyio.Event()
                    delay = 0.5
                    if not started:
                        started = True
                        task_status.started()
                    await self._broken.wait()
            except ChainError as exc:
                log_event(logger, "api_chain_reconnect", level=logging.DEBUG, error=str(exc))
            finally:
                self.client = None
            if not started:  # the API must come up even when the chain is down: /health says so
                started = True
                task_status.started()
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def node_states(self) -> list[NodeChainState]:
        client = self.client
        if client is None:
            raise TransientChainError("no connection to the chain")
        try:
            return await self._read(client)
        except TransientChainError:
            self._broken.set()
            raise

    async def read_proposals(self, proposal_ids: Sequence[int]) -> dict[int, ProposalData | ChainError]:
        """The proposals as the contract holds them now, in one JSON-RPC batch (for the outcomes recorded
        after votingEnds); a proposal that could not be read is its ChainError."""
        client = self.client
        if client is None:
            raise TransientChainError("no connection to the chain")
        reads = Reads(client, batch_size=self.settings.rpc_batch_size, plain=True)
        try:
            answers = await reads.proposals(proposal_ids)
        except TransientChainError:
            self._broken.set()
            raise
        if any(isinstance(a, TransientChainError) for a in answers.values()):
            self._broken.set()
        return answers

    async def _read(self, client: ChainClient) -> list[NodeChainState]:
        if self._dloop_token is None:
            self._dloop_token = str(await client.call(dao_functions()["dloopToken"]))
        token = self._dloop_token
        batch = Batch()
        head_slot = batch.add(read_block("latest"))
        slots = [
            (
                batch.add(read_balance(node.address)),
                batch.add(read_nonce(node.address, "pending")),
                batch.add(read_token_balance(token, node.address)),
            )
            for node in self.nodes
        ]
        answers = await Reads(client, batch_size=self.settings.rpc_batch_size, plain=True).run(batch)
        head = answers[head_slot]
        required = required_balance(
            None if isinstance(head, ChainError) or head is None else head.base_fee_per_gas
        )
        states = []
        for node, (balance_slot, nonce_slot, weight_slot) in zip(self.nodes, slots, strict=True):
            balance, nonce, weight = answers[balance_slot], answers[nonce_slot], answers[weight_slot]
            errors = [str(a) for a in (balance, nonce) if isinstance(a, ChainError)]
            if isinstance(weight, ChainError):
                errors.append(f"balanceOf: {weight}" if isinstance(weight, BadAnswer) else str(weight))
            states.append(
                NodeChainState(
                    address=node.address,
                    eth_balance_wei=None if isinstance(balance, ChainError) else balance,
                    dloop_balance_wei=None if isinstance(weight, ChainError) else weight,
                    next_nonce=None if isinstance(nonce, ChainError) else nonce,
                    required_wei=required,
                    error="; ".join(errors) or None,
                )
            )
        return states


@dataclass
class Running:
    """Which components are running right now (for /, /health and /metrics)."""

    flags: dict[str, bool] = field(default_factory=dict)

    def __getitem__(self, name: str) -> bool:
        return self.flags.get(name, False)


class Service:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        nodes: Sequence[NodeRecord],
        accounts: tuple[NodeAccount, ...],
        chain_id: int,
        contract: ContractVersion,
        *,
        enable_listener: bool = True,
    ) -> None:
        self.settings = settings
        self.contract = contract
        self.scope = ContractScope(chain_id, settings.contract_address)
        self.sessions = sessions
        self.nodes = tuple(nodes)
        self.chain_id = chain_id
        self.signal = WorkSignal()
        self.running = Running()
        self.enable_listener = enable_listener
        # One count of the node's errors for /metrics, whichever part's request met them (and of the
        # requests: the RpcErrors alert is a rate).
        self.rpc_error_counts: RpcCounts = RpcCounts()
        self.listener = Listener(
            settings,
            sessions,
            self.nodes,
            self.signal,
            chain_id,
            progress_bar=False,
            rpc_errors=self.rpc_error_counts,
        )
        # Lane ownership: instances sharing one database sign each node's votes one at a time.
        owner = process_owner_id()
        self.lanes = LaneOwnership(
            sessions,
            chain_id=chain_id,
            addresses=[account.address for account in accounts],
            owner=owner,
            takeover_seconds=settings.lane_takeover_seconds,
            on_change=self.signal.notify,
        )
        self.voter = Voter(
            settings,
            sessions,
            accounts,
            self.nodes,
            self.signal,
            chain_id,
            owner=owner,
            rpc_errors=self.rpc_error_counts,
            ownership=self.lanes,
        )
        self.reconciler = Reconciler(
            settings, sessions, self.nodes, chain_id, confirm_sent=False, rpc_errors=self.rpc_error_counts
        )
        self.listener_watch = ListenerWatch(
            settings, sessions, contract, self.listener_progress, on_blind=self._round_now
        )
        self.rounds = Rounds(
            settings,
            sessions,
            self.signal,
            self.reconciler,
            adopt_sent=self._adopt_sent,
            on_scan=self.listener_watch.scanned,
            interval=self.listener_watch.reconcile_interval,
            drain=self.voter.drain,
        )
        self.reads = ChainReads(settings, self.nodes, self.rpc_error_counts)
        self.notifier = Notifier(
            settings.alert_webhook_urls, settings.alert_webhook_format, notice_masker(settings.secrets())
        )
        self.alerts = AlertEvaluator(
            settings,
            sessions,
            self.scope,
            self.nodes,
            self.notifier,
            listener=self.listener_view,
            listener_enabled=enable_listener,
            node_chain=self.reads.node_states,
            rpc_counts=self.rpc_error_counts,
            running_round=self.rounds.running,
            read_proposals=self.reads.read_proposals,
        )
        self.app = create_app(self.web_context())
        self.http = HttpServer(self.app, settings.http_host, settings.http_port)

    # -- what the web layer sees -----------------------------------------------------------------------
    def web_context(self) -> WebContext:
        return WebContext(
            sessions=self.sessions,
            scope=self.scope,
            nodes=self.nodes,
            rounds=self.rounds,
            listener=self.listener_view,
            voter=self.voter_view,
            node_chain=self.reads.node_states,
            rpc_errors=self.rpc_errors,
            alerts=self.alerts.view,
            rpc_requests=lambda: self.rpc_error_counts.requests,
            api_token=self.settings.api_token,
            head_timeout=self.settings.head_timeout,
            controls=self.voter,
            dry_run=self.settings.dry_run,
        )

    def listener_view(self) -> ListenerView:
        status = self.listener.status
        return ListenerView(
            running=self.running["listener"],
            connected=status.connected,
            subscribed=status.connected,  # "connected" means subscribed, caught up and following live
            head_block=status.last_head_number,
            head_received_at=status.last_head_time,
            head_timestamp=status.last_head_timestamp,
            reconnects=status.reconnects,
            last_error=status.last_error,
            contract_version=self.contract.name,
            blind_reason=self.listener_watch.blind_reason,
            missed_total=self.listener_watch.state.missed_total,
            unknown_events=status.unknown_topics,
            extra={
                "cursorBlock": status.cursor_block,
                "logsProcessed": status.logs_processed,
                "votesQueued": status.votes_queued,
                "reorgsSeen": status.reorgs_seen,
                "lastEventTime": status.last_event_time,
                "backfill": {
                    "active": status.backfill_active,
                    "doneBlocks": status.backfill_done_blocks,
                    "totalBlocks": status.backfill_total_blocks,
                    "blocksPerSecond": status.backfill_blocks_per_second,
                },
            },
        )

    def voter_view(self) -> VoterView:
        status = self.voter.status
        errors = [f"{n.name}: {n.last_error}" for n in status.nodes if n.last_error]
        last = status.last_round
        return VoterView(
            running=self.running["voter"] and status.connected,
            in_flight=sum(n.in_flight for n in status.nodes),
            last_error="; ".join(errors) or None,
            extra={
                "rounds": status.rounds,
                "roundRunning": status.round_running,
                "votesSent": status.votes_sent,
                "votesConfirmed": status.votes_confirmed,
                "votesFailed": status.votes_failed,
                "replaced": status.replaced,
                "rebroadcast": status.rebroadcast,
                "lastRound": None
                if last is None
                else {
                    "sent": last.sent,
                    "confirmed": last.confirmed,
                    "leased": last.leased,
                    "at": last.finished_at,
                },
                "unfundedNodes": [n.name for n in status.nodes if n.unfunded],
                "servicePaused": status.service_paused,
                "pausedNodes": [n.name for n in status.nodes if n.paused],
                "dryRun": status.dry_run,
            },
            instance=status.instance,
            lanes=[
                LaneInfo(lane.node, lane.address, lane.owned, lane.owner, lane.token, lane.expires_at)
                for lane in status.lanes
            ],
        )

    def rpc_errors(self) -> dict[str, int]:
        return dict(self.rpc_error_counts)

    # -- rounds ----------------------------------------------------------------------------------------
    async def _round_now(self) -> None:
        await self.rounds.trigger()

    def listener_progress(self) -> ListenerProgress:
        status = self.listener.status
        return ListenerProgress(
            live=self.running["listener"] and status.connected,
            epoch=status.reconnects,
            head_block=status.last_head_number,
            proposals_recorded=status.proposals_recorded,
        )

    async def _adopt_sent(self) -> int:
        """The voter's lanes resolve `sent` rows (receipts, replacements, drops); ask them to adopt any they
        do not track. A running voter round adopts them itself, and a disconnected voter does when it
        attaches: waiting for either would only hold up the reconcile pass."""
        status = self.voter.status
        if not status.connected or status.round_running:
            return 0
        return await self.voter.recheck_sent()

    # -- the task group --------------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        interrupted = await fail_interrupted_rounds(self.sessions)
        if interrupted:
            log_event(logger, "rounds_interrupted_before", count=interrupted)
        self.http.bind()
        async with anyio.create_task_group() as tg:
            await tg.start(self._component, "reads", self.reads.run)
            await tg.start(self._component, "web", self.http.run)
            await tg.start(self._component, "lanes", self.lanes.run)
            await tg.start(self._component, "voter", self.voter.run)
            if self.enable_listener:
                await tg.start(self._component, "listener", self.listener.run)
                await tg.start(self._component, "listener_watch", self.listener_watch.run)
            await tg.start(self._component, "reconciler", self.rounds.run)
            # Alerts last, and off the voting path: the notifier's POSTs wait on nobody but their receiver.
            await tg.start(self._component, "notifier", self.notifier.run)
            await tg.start(self._component, "alerts", self.alerts.run)
            log_event(
                logger,
                "service_started",
                url=self.http.url,
                nodes=len(self.nodes),
                chain_id=self.chain_id,
                contract=self.settings.contract_address,
                contract_version=self.contract.name,
                listener=self.enable_listener,
            )
            if self.listener_watch.blind_reason is not None:
                log_event(
                    logger, "listener_blind", level=logging.WARNING, reason=self.listener_watch.blind_reason
                )
            task_status.started()

    async def _component(
        self,
        name: str,
        run: Callable[..., Awaitable[None]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self.running.flags[name] = True
        try:
            await run(task_status=task_status)
        finally:
            self.running.flags[name] = False
            log_event(logger, "component_stopped", component=name)
