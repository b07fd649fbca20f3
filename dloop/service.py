"""The service: one anyio task group owning the HTTP server, the alerts and, per deployment, a voter, a
listener and the rounds.

Everything is built from one `Settings`, one session factory and the node records synced at start-up. Each
deployment (one chain and contract, `Settings.deployments`) is a `Deployment` with its own components and
chain connections, so a chain that is down holds up only its own deployment; one that could not be reached at
start-up waits in a `WaitingDeployment` and starts when its chain answers. Each component is started with
`tg.start` (the API first: it answers while the listeners backfill); on cancellation (SIGINT/SIGTERM in
`dloop run`) each one stops on its own terms: the voter's state changes and hash records are shielded,
uvicorn finishes its requests, queued rows simply stay queued.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import anyio
import anyio.abc

from chain.accounts import NodeAccount
from chain.client import ChainClient, RpcCounts, RpcErrorCounts
from chain.codec import dao_functions
from chain.events import ContractVersion
from chain.reads import BadAnswer, Batch, Reads, read_balance, read_block, read_nonce, read_token_balance
from chain.types import ProposalData
from chain.ws_client import ws_chain_client
from core.errors import ChainError, ConfigError, TransientChainError
from core.logs import log_context, log_event
from core.settings import Settings
from core.signals import WorkSignal
from dloop.alerts import AlertEvaluator, alerts_lease, alerts_owner, holds_alerts
from dloop.listener_watch import ListenerWatch
from dloop.rounds import Rounds
from listener.blindness import ListenerProgress
from listener.listener import Listener
from listener.reconcile import Reconciler
from monitor.notify import Notifier, notice_masker
from storage.chain_state import stream_name
from storage.controls import PauseState, PauseWatch
from storage.engine import SessionFactory, is_sqlite
from storage.lanes import forget as forget_lanes
from storage.proposals import NodeRecord
from storage.queries import ContractScope
from storage.rounds import fail_interrupted_rounds
from voter.ownership import LaneOwnership
from voter.service import LaneStatus, Voter, process_owner_id
from web.app import create_app
from web.ports import (
    AlertsView,
    DeploymentStatus,
    LaneInfo,
    ListenerView,
    NodeChainState,
    StoredPauses,
    TriggerResult,
    VoterView,
    WebContext,
)
from web.server import HttpServer

logger = logging.getLogger(__name__)

# Each deployment's live node reads for the API get this long (under the web's own 5 s cap for all of them).
NODE_STATES_TIMEOUT = 3.0
VOTE_GAS_ALLOWANCE = 150_000  # gas a vote may need, for the "unfunded" status of /nodes
PRIORITY_FEE_WEI = 1_000_000_000
# How long a deployment's start waits for its chain-bound parts (listener live, voter connected) before it
# reports started anyway: they keep connecting in the background.
CHAIN_START_WAIT = 5.0


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


class Deployment:
    """One deployment's components: listener, voter, reconcile rounds, blind-listener watch and the API's
    chain reads, over its own chain connections. `settings` is the deployment's view
    (`Settings.for_deployment`); `nodes` carry the deployment's strategies."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        sessions: SessionFactory,
        nodes: Sequence[NodeRecord],
        accounts: tuple[NodeAccount, ...],
        chain_id: int,
        contract: ContractVersion,
        *,
        enable_listener: bool = True,
        instance: str | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.contract = contract
        self.scope = ContractScope(chain_id, settings.contract_address, name)
        self.sessions = sessions
        self.nodes = tuple(nodes)
        self.chain_id = chain_id
        self.signal = WorkSignal()
        self.running = Running()
        self.enable_listener = enable_listener
        self.start_wait = CHAIN_START_WAIT
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
        # Lane ownership: instances sharing one database sign each node's votes one at a time. Lanes are
        # (chain, address), and no address votes in two deployments on one chain (check_apart), so each
        # deployment leases its own lanes under the instance's one owner id. On SQLite the run lock already
        # makes this the only instance: no leases (their urgent writes would only contend for the file, and
        # a late renewal would make the one signer drop its own lanes); the voter signs with NO_LANES.
        self.instance = instance or process_owner_id()
        self.addresses = [account.address.lower() for account in accounts]
        self.lanes: LaneOwnership | None = (
            None
            if is_sqlite(settings.database_url)
            else LaneOwnership(
                sessions,
                chain_id=chain_id,
                addresses=[account.address for account in accounts],
                owner=self.instance,
                takeover_seconds=settings.lane_takeover_seconds,
                on_change=self.signal.notify,
            )
        )
        self.voter = Voter(
            settings,
            sessions,
            accounts,
            self.nodes,
            self.signal,
            chain_id,
            rpc_errors=self.rpc_error_counts,
            # Each deployment's voter its own queue lease owner: one handing back its rows leaves the others'.
            owner=f"{self.instance}-{name}"[:64],
            ownership=self.lanes,
        )
        self.reconciler = Reconciler(
            settings, sessions, self.nodes, chain_id, confirm_sent=False, rpc_errors=self.rpc_error_counts
        )
        self.listener_watch = ListenerWatch(
            settings,
            sessions,
            contract,
            self.listener_progress,
            stream=stream_name(chain_id, settings.contract_address),
            on_blind=self._round_now,
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
            instance=self.instance,
        )
        self.reads = ChainReads(settings, self.nodes, self.rpc_error_counts)

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
            instance=status.instance if self.lanes is not None else self.instance,
            lanes=self._lane_infos(status.lanes),
        )

    def _lane_infos(self, lanes: Sequence[LaneStatus]) -> list[LaneInfo]:
        if self.lanes is None:  # SQLite: this instance signs for every node, by its run lock
            return [
                LaneInfo(
                    node.name,
                    node.address.lower(),
                    True,
                    self.instance,
                    None,
                    None,
                    deployment=self.name,
                    chain_id=self.chain_id,
                    leased=False,
                )
                for node in self.nodes
            ]
        return [
            LaneInfo(
                lane.node,
                lane.address,
                lane.owned,
                lane.owner,
                lane.token,
                lane.expires_at,
                deployment=self.name,
                chain_id=self.chain_id,
            )
            for lane in lanes
        ]

    # -- rounds ----------------------------------------------------------------------------------------
    async def _round_now(self) -> None:
        if self.rounds.started:  # else the start-up round, once the chain answers, does the same work
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
        with log_context(deployment=self.name):
            await self._run(task_status)

    async def _run(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            if self.lanes is not None:
                await tg.start(self._component, "lanes", self.lanes.run)  # owned lanes known before the voter
            else:
                await forget_lanes(self.sessions, chain_id=self.chain_id, addresses=self.addresses)
            # The chain-bound parts start in their own task: the voter reports started only once connected,
            # and a chain that passed preflight and then went silent must not hold up the service (the API,
            # the alerts, the other deployments). A chain that answers is waited for, briefly, so "started"
            # still means connected when it can.
            connected = anyio.Event()
            tg.start_soon(self._chain_parts, connected)
            with anyio.move_on_after(self.start_wait):
                await connected.wait()
            if not connected.is_set():
                log_event(
                    logger,
                    "deployment_chain_pending",
                    level=logging.WARNING,
                    deployment=self.name,
                    waited_seconds=self.start_wait,
                )
            log_event(
                logger,
                "deployment_started",
                deployment=self.name,
                nodes=len(self.nodes),
                chain_id=self.chain_id,
                contract=self.settings.contract_address,
                contract_version=self.contract.name,
                listener=self.enable_listener,
            )
            if self.listener_watch.blind_reason is not None:
                log_event(
                    logger,
                    "listener_blind",
                    level=logging.WARNING,
                    deployment=self.name,
                    reason=self.listener_watch.blind_reason,
                )
            task_status.started()

    async def _chain_parts(self, connected: anyio.Event) -> None:
        """The parts that need the chain, in their order (each reports started once connected)."""
        async with anyio.create_task_group() as tg:
            await tg.start(self._component, "reads", self.reads.run)
            await tg.start(self._component, "voter", self.voter.run)
            if self.enable_listener:
                await tg.start(self._component, "listener", self.listener.run)
                await tg.start(self._component, "listener_watch", self.listener_watch.run)
            await tg.start(self._component, "reconciler", self.rounds.run)
            connected.set()

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
            log_event(logger, "component_stopped", component=name, deployment=self.name)


# What builds a deployment once its chain answers, given those running: while the chain is still unreachable
# it returns why (kept in `WaitingDeployment.error`); it raises ConfigError when the chain answers but does
# not fit (another deployment's contract, a key already voting on that chain, another genesis).
StartLater = Callable[[Sequence["Deployment"]], Awaitable["Deployment | str"]]


@dataclass
class WaitingDeployment:
    """A deployment whose chain could not be reached at start-up: retried every `retry` seconds."""

    name: str
    error: str
    attempt: StartLater
    retry: float = 5.0
    failed: str | None = None  # the chain answered but does not fit (a ConfigError): given up


class AllRounds:
    """POST /trigger-voting starts a round in every deployment; the answer is the first one's."""

    def __init__(self, deployments: Callable[[], Sequence[Deployment]]) -> None:
        self.deployments = deployments

    async def trigger(self) -> TriggerResult:
        # A deployment whose chain has not answered yet has no round loop to run a round.
        results = [await d.rounds.trigger() for d in self.deployments() if d.rounds.started]
        if not results:
            raise TransientChainError("no deployment is connected to its chain yet")
        return results[0]

    def phase(self, round_id: int) -> str | None:
        return next((p for d in self.deployments() if (p := d.rounds.phase(round_id)) is not None), None)

    def running(self) -> TriggerResult | None:
        return next((r for d in self.deployments() if (r := d.rounds.running()) is not None), None)


class AllVoters:
    """The pause switches are service-wide rows; each voter takes its lanes' signing locks before the
    answer (no paused node signs on any chain after it)."""

    def __init__(self, sessions: SessionFactory, deployments: Callable[[], Sequence[Deployment]]) -> None:
        self.deployments = deployments
        self.stored = StoredPauses(PauseWatch(sessions))

    async def set_paused(self, scopes: Sequence[str], paused: bool, *, by: str) -> PauseState:
        voters = [d.voter for d in self.deployments()]
        if not voters:
            return await self.stored.set_paused(scopes, paused, by=by)
        state = None
        for voter in voters:
            state = await voter.set_paused(scopes, paused, by=by)
        assert state is not None
        return state

    async def current(self) -> PauseState:
        voters = [d.voter for d in self.deployments()]
        return await (voters[0].current() if voters else self.stored.current())


class Service:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        deployments: Sequence[Deployment],
        *,
        waiting: Sequence[WaitingDeployment] = (),
        nodes: Sequence[NodeRecord] = (),
        enable_listener: bool = True,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        # This process's id (the deployments' lane-lease owner): its rounds are recorded under it.
        self.instance = instance or (deployments[0].instance if deployments else process_owner_id())
        self.deployments: list[Deployment] = list(deployments)
        self.waiting: dict[str, WaitingDeployment] = {w.name: w for w in waiting}
        self.enable_listener = enable_listener
        # Every configured node once (a key voting in several deployments is one node row).
        known = {n.id: n for d in self.deployments for n in d.nodes}
        known.update({n.id: n for n in nodes if n.id not in known})
        self.nodes = tuple(sorted(known.values(), key=lambda n: n.name))
        # name -> scope of every running deployment (the web reads it live: a late deployment joins it).
        self.scopes: dict[str, ContractScope] = {d.name: d.scope for d in self.deployments}
        self.running = Running()
        self.all_rounds = AllRounds(lambda: self.deployments)
        self.all_voters = AllVoters(sessions, lambda: self.deployments)
        primary = self.primary
        self.notifier = Notifier(
            settings.alert_webhook_urls, settings.alert_webhook_format, notice_masker(settings.secrets())
        )
        # One evaluator (the alerts table holds one firing set): it watches the first deployment. Among
        # instances sharing a database, the holder of the alerts lease evaluates; an instance without an
        # evaluator never takes the lease (it would leave the alerts unevaluated).
        # On SQLite the run lock makes this the only instance: no lease, it always evaluates.
        self.alerts_lease: LaneOwnership | None = (
            None
            if primary is None or is_sqlite(settings.database_url)
            else alerts_lease(settings, sessions, self.instance)
        )
        self.alerts: AlertEvaluator | None = (
            None
            if primary is None
            else AlertEvaluator(
                primary.settings,
                sessions,
                primary.scope,
                primary.nodes,
                self.notifier,
                listener=primary.listener_view,
                listener_enabled=enable_listener,
                node_chain=primary.reads.node_states,
                rpc_counts=primary.rpc_error_counts,
                running_round=primary.rounds.running,
                read_proposals=primary.reads.read_proposals,
                active=self.evaluates_alerts,
            )
        )
        self.app = create_app(self.web_context())
        self.http = HttpServer(self.app, settings.http_host, settings.http_port)

    def evaluates_alerts(self) -> bool:
        return holds_alerts(self.alerts_lease)

    # -- the first deployment: what single-deployment callers (and the alerts) see -----------------------
    @property
    def primary(self) -> Deployment | None:
        return self.deployments[0] if self.deployments else None

    def _first(self) -> Deployment:
        if not self.deployments:
            raise TransientChainError("no deployment is connected to its chain yet")
        return self.deployments[0]

    @property
    def listener(self) -> Listener:
        return self._first().listener

    @property
    def voter(self) -> Voter:
        return self._first().voter

    @property
    def rounds(self) -> Rounds:
        return self._first().rounds

    @property
    def reads(self) -> ChainReads:
        return self._first().reads

    @property
    def scope(self) -> ContractScope:
        return self._first().scope

    @property
    def chain_id(self) -> int:
        return self._first().chain_id

    # -- what the web layer sees -----------------------------------------------------------------------
    def web_context(self) -> WebContext:
        primary = self.primary
        return WebContext(
            sessions=self.sessions,
            scope=primary.scope if primary is not None else ContractScope(0, self.settings.contract_address),
            scopes=self.scopes,
            nodes=self.nodes,
            rounds=self.all_rounds,
            listener=self.listener_view,
            voter=self.voter_view,
            node_chain=self.node_states,
            rpc_errors=self.rpc_errors,
            alerts=self.alerts.view if self.alerts is not None else AlertsView,
            rpc_requests=lambda: sum(d.rpc_error_counts.requests for d in self.deployments),
            api_token=self.settings.api_token,
            head_timeout=self.settings.head_timeout,
            controls=self.all_voters,
            dry_run=self.settings.dry_run,
            deployment_status=self.deployment_status,
        )

    def listener_view(self) -> ListenerView:
        primary = self.primary
        if primary is None:
            waiting = "; ".join(f"{w.name}: {w.error}" for w in self.waiting.values())
            return ListenerView(running=False, connected=False, subscribed=False, last_error=waiting or None)
        return primary.listener_view()

    def voter_view(self) -> VoterView:
        """The first deployment's voter, with every running deployment's lanes (each names its deployment)."""
        primary = self.primary
        if primary is None:
            return VoterView(running=False)
        view = primary.voter_view()
        lanes = [lane for d in self.deployments for lane in (view if d is primary else d.voter_view()).lanes]
        if self.alerts_lease is not None:
            evaluator = alerts_owner(self.alerts_lease)
        else:  # SQLite: this instance is the only one (and evaluates if it has an evaluator)
            evaluator = self.instance if self.alerts is not None else None
        return replace(view, lanes=lanes, alerts_owner=evaluator)

    def deployment_status(self) -> list[DeploymentStatus]:
        """Every configured deployment, in the file's order: running (with its listener and voter) or
        waiting for its chain (with why)."""
        running = {d.name: d for d in self.deployments}
        result = []
        for configured in self.settings.deployments:
            deployment = running.get(configured.name)
            if deployment is not None:
                result.append(
                    DeploymentStatus(
                        name=deployment.name,
                        scope=deployment.scope,
                        listener=deployment.listener_view(),
                        voter=deployment.voter_view(),
                        rpc_errors=dict(deployment.rpc_error_counts),
                    )
                )
            else:
                waiting = self.waiting.get(configured.name)
                error = None if waiting is None else (waiting.failed or waiting.error)
                result.append(DeploymentStatus(name=configured.name, error=error or "not started"))
        return result

    async def node_states(self) -> list[NodeChainState]:
        """Each node's chain facts on the first running deployment that has it (a deployment whose chain is
        down is skipped: the others still answer)."""
        answers: dict[str, list[NodeChainState]] = {}
        errors: list[str] = []

        async def read(deployment: Deployment) -> None:
            # Side by side, each within its own time: a chain that hangs leaves the others' answers whole.
            with anyio.move_on_after(NODE_STATES_TIMEOUT) as scope:
                try:
                    answers[deployment.name] = await deployment.reads.node_states()
                except ChainError as exc:
                    errors.append(f"{deployment.name}: {exc}")
            if scope.cancelled_caught:
                errors.append(f"{deployment.name}: no answer within {NODE_STATES_TIMEOUT:g} s")

        async with anyio.create_task_group() as tg:
            for deployment in self.deployments:
                tg.start_soon(read, deployment)
        found: dict[str, NodeChainState] = {}
        for deployment in self.deployments:  # the first deployment that has a node speaks for it
            for state in answers.get(deployment.name, []):
                found.setdefault(state.address.lower(), state)
        if not found and errors:
            raise TransientChainError("; ".join(errors))
        return list(found.values())

    def rpc_errors(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for deployment in self.deployments:
            for kind, count in deployment.rpc_error_counts.items():
                total[kind] = total.get(kind, 0) + count
        return total

    # -- the task group --------------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        interrupted = await fail_interrupted_rounds(
            self.sessions, instance=self.instance, shared=not is_sqlite(self.settings.database_url)
        )
        if interrupted:
            log_event(logger, "rounds_interrupted_before", count=interrupted)
        self.http.bind()
        async with anyio.create_task_group() as tg:
            await tg.start(self._component, "web", self.http.run)
            # The deployments side by side: each one's start-up (and chain) waits on nobody else's.
            async with anyio.create_task_group() as starting:
                for deployment in self.deployments:
                    starting.start_soon(tg.start, deployment.run)
            for waiting in self.waiting.values():
                tg.start_soon(self._start_when_reachable, tg, waiting)
            # Alerts last, and off the voting path: the notifier's POSTs wait on nobody but their receiver.
            await tg.start(self._component, "notifier", self.notifier.run)
            if self.alerts_lease is not None:
                await tg.start(self._component, "alerts_lease", self.alerts_lease.run)
            if self.alerts is not None:
                await tg.start(self._component, "alerts", self.alerts.run)
            log_event(
                logger,
                "service_started",
                url=self.http.url,
                nodes=len(self.nodes),
                deployments=[d.name for d in self.deployments],
                waiting=sorted(self.waiting),
                chain_id=self.primary.chain_id if self.primary is not None else None,
                contract=self.settings.contract_address,
                listener=self.enable_listener,
            )
            task_status.started()

    async def _start_when_reachable(self, tg: anyio.abc.TaskGroup, waiting: WaitingDeployment) -> None:
        """Retry the preflight of a deployment whose chain was down at start-up; start it once it answers.
        A chain that answers but does not fit (another chain id, no contract) stops the retries, loudly."""
        while True:
            await anyio.sleep(waiting.retry)
            try:
                deployment = await waiting.attempt(list(self.deployments))
            except ConfigError as exc:
                waiting.failed = str(exc)
                log_event(
                    logger, "deployment_refused", level=logging.ERROR, deployment=waiting.name, error=str(exc)
                )
                return
            if isinstance(deployment, str):
                waiting.error = deployment
                continue
            log_event(logger, "deployment_reachable", deployment=waiting.name, chain_id=deployment.chain_id)
            self.deployments.append(deployment)
            self.scopes[deployment.name] = deployment.scope
            del self.waiting[waiting.name]
            await tg.start(deployment.run)
            return

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
