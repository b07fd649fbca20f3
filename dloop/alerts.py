"""The alert evaluator: every DLOOP_ALERT_INTERVAL it gathers the facts (vote rows, balances, the listener,
the RPC error rate, the running round), lets the pure rules (monitor/rules.py) and engine (monitor/engine.py)
decide, stores the alerts and hands the notices to the notifier (monitor/notify.py) without waiting for it.
It also records the outcome of each proposal whose votingEnds passed (for the analytics).

Nothing here is on the voting path: it reads, writes its own rows, and never holds up the voter.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio
import anyio.abc

from chain.client import RpcCounts
from chain.types import ProposalData, status_name
from core.errors import ChainError, DloopError
from core.logs import log_event
from core.settings import Settings
from monitor import engine
from monitor.engine import Alert, NoticeKind
from monitor.notify import Notifier
from monitor.rules import (
    RPC_WINDOW_SECONDS,
    Facts,
    ListenerHealth,
    NodeFunds,
    RpcSample,
    RuleSettings,
    RunningRound,
    evaluate,
)
from storage.alerts import firing_alerts, save_alerts, votes_not_on_chain
from storage.analytics import FinalResult, ended_without_result, record_results
from storage.engine import SessionFactory
from storage.lanes import ALERTS_ADDRESS, ALERTS_CHAIN_ID
from storage.models import utcnow
from storage.proposals import NodeRecord
from storage.queries import ContractScope
from voter.ownership import LaneOwnership
from web.ports import AlertsView, ListenerView, NodeChainState, TriggerResult
from web.present import chain_now

logger = logging.getLogger("dloop.alerts")

CHAIN_READ_TIMEOUT = 10.0
OUTCOMES_PER_PASS = 50


def rule_settings(settings: Settings) -> RuleSettings:
    return RuleSettings(
        deadline_hours=settings.alert_deadline_hours,
        min_votes=settings.alert_min_votes,
        head_timeout=settings.head_timeout,
        rpc_error_rate=settings.alert_rpc_error_rate,
        round_deadline=settings.round_deadline,
    )


def alerts_lease(settings: Settings, sessions: SessionFactory, owner: str) -> LaneOwnership:
    """The lease that elects the one instance evaluating alerts among those sharing a database: a row of its
    own in lane_leases (storage/lanes.py ALERTS_*), renewed and taken over like a lane, so the election
    never depends on which deployments an instance runs or in which order. (Not used on SQLite: the run
    lock makes that instance the only one.)"""
    return LaneOwnership(
        sessions,
        chain_id=ALERTS_CHAIN_ID,
        addresses=[ALERTS_ADDRESS],
        owner=owner,
        takeover_seconds=settings.lane_takeover_seconds,
    )


def alerts_owner(lease: LaneOwnership) -> str | None:
    """Who holds the alerts lease, as this instance last saw it (None: not seen yet, or lapsed then)."""
    [view] = lease.views()
    return view.owner if view.expires_at is not None and view.expires_at > utcnow() else None


def holds_alerts(lease: LaneOwnership | None) -> bool:
    """Whether this instance evaluates alerts now: it holds the alerts lease (always, without one)."""
    return lease is None or lease.fence(ALERTS_ADDRESS) is not None


class AlertEvaluator:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        scope: ContractScope,
        nodes: Sequence[NodeRecord],
        notifier: Notifier,
        *,
        listener: Callable[[], ListenerView],
        listener_enabled: bool,
        node_chain: Callable[[], Awaitable[Sequence[NodeChainState]]],
        rpc_counts: RpcCounts,
        running_round: Callable[[], TriggerResult | None],
        read_proposals: Callable[[Sequence[int]], Awaitable[Mapping[int, ProposalData | ChainError]]]
        | None = None,
        active: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        # Whether this instance evaluates now (None: always). Instances sharing one database share its alerts
        # table: only one may evaluate and notify, or every alert is sent once per instance.
        self.active = active
        self.evaluating = True
        self.sessions = sessions
        self.scope = scope
        self.nodes = tuple(nodes)
        self.notifier = notifier
        self.listener = listener
        self.listener_enabled = listener_enabled
        self.node_chain = node_chain
        self.rpc_counts = rpc_counts
        self.running_round = running_round
        self.read_proposals = read_proposals
        self.rules = rule_settings(settings)
        self.repeat = dt.timedelta(minutes=settings.alert_repeat_minutes)
        self.firing: dict[str, Alert] = {}
        self.samples: collections.deque[RpcSample] = collections.deque()
        self.started = time.monotonic()
        self.last_connected = time.monotonic()
        self.last_evaluated_at: dt.datetime | None = None
        self.last_error: str | None = None

    def view(self) -> AlertsView:
        return AlertsView(
            interval=self.settings.alert_interval,
            last_evaluated_at=self.last_evaluated_at,
            last_error=self.last_error,
            receivers=self.notifier.view(),
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.firing = {a.fingerprint: a for a in await firing_alerts(self.sessions)}
        task_status.started()
        while True:
            await anyio.sleep(self.settings.alert_interval)
            if not await self._our_turn():
                continue
            try:
                await self.evaluate_once()
            except DloopError as exc:  # a busy database or a chain hiccup: the next pass tries again
                self.last_error = str(exc)
                log_event(logger, "alert_evaluation_failed", level=logging.WARNING, error=str(exc))
            try:
                await self.record_outcomes()
            except DloopError as exc:
                log_event(logger, "outcome_recording_failed", level=logging.WARNING, error=str(exc))

    async def _our_turn(self) -> bool:
        """Whether to evaluate this pass; on becoming the evaluator, the firing set as the previous one left
        it (it went on saving while this instance stood by)."""
        evaluating = self.active is None or self.active()
        if evaluating != self.evaluating:
            self.evaluating = evaluating
            log_event(logger, "alerts_evaluating" if evaluating else "alerts_standby")
            if evaluating:
                try:
                    self.firing = {a.fingerprint: a for a in await firing_alerts(self.sessions)}
                except DloopError as exc:
                    self.evaluating = False  # try again next pass, never with a stale firing set
                    log_event(logger, "alert_evaluation_failed", level=logging.WARNING, error=str(exc))
                    return False
        return evaluating

    # -- facts -----------------------------------------------------------------------------------------
    def _listener_health(self, view: ListenerView, now: dt.datetime) -> ListenerHealth:
        moment = time.monotonic()
        if view.connected:
            self.last_connected = moment
        if view.head_received_at is not None:
            silent = max(0.0, (now - view.head_received_at).total_seconds())
        else:
            silent = moment - self.started
        return ListenerHealth(
            enabled=self.listener_enabled,
            connected=view.connected,
            silent_for=silent,
            disconnected_for=0.0 if view.connected else moment - self.last_connected,
            blind_reason=view.blind_reason,
        )

    async def _funds(self) -> list[NodeFunds] | None:
        try:
            with anyio.fail_after(CHAIN_READ_TIMEOUT):
                states = await self.node_chain()
        except (TimeoutError, DloopError):
            return None
        names = {n.address.lower(): n.name for n in self.nodes}
        return [
            NodeFunds(
                node=names.get(s.address.lower(), s.address),
                eth_wei=s.eth_balance_wei,
                dloop_wei=s.dloop_balance_wei,
                vote_cost_wei=s.required_wei,
            )
            for s in states
        ]

    def _rpc_samples(self) -> list[RpcSample]:
        moment = time.monotonic()
        self.samples.append(RpcSample(moment, self.rpc_counts.total_errors(), self.rpc_counts.requests))
        while self.samples and moment - self.samples[0].at > RPC_WINDOW_SECONDS:
            self.samples.popleft()
        return list(self.samples)

    async def facts(self) -> Facts:
        now = dt.datetime.now(dt.UTC)
        view = self.listener()
        chain_time = chain_now(view, now)
        horizon = chain_time + dt.timedelta(hours=self.settings.alert_deadline_hours)
        unvoted = await votes_not_on_chain(self.sessions, self.scope, chain_now=chain_time, horizon=horizon)
        current = self.running_round()
        rounds = (
            [RunningRound(current.round_id, (now - current.started_at).total_seconds())] if current else []
        )
        return Facts(
            chain_now=chain_time,
            unvoted=unvoted,
            funds=await self._funds(),
            listener=self._listener_health(view, now),
            rpc_samples=self._rpc_samples(),
            rounds=rounds,
        )

    # -- one pass --------------------------------------------------------------------------------------
    async def evaluate_once(self) -> None:
        facts = await self.facts()
        now = dt.datetime.now(dt.UTC)
        result = engine.step(self.firing, evaluate(facts, self.rules), now, repeat=self.repeat)
        saved = {a.fingerprint: a for a in await save_alerts(self.sessions, result.changed)}
        self.firing = {key: saved.get(key, alert) for key, alert in result.firing.items()}
        notices = [
            dataclasses.replace(n, alert=saved.get(n.alert.fingerprint, n.alert)) for n in result.notices
        ]
        for notice in notices:
            alert = notice.alert
            log_event(
                logger,
                "alert_resolved" if notice.kind == NoticeKind.RESOLVED else f"alert_{notice.kind}",
                level=logging.INFO if notice.kind == NoticeKind.RESOLVED else logging.WARNING,
                alert=alert.rule,
                subject=alert.subject,
                severity=alert.severity,
                summary=alert.summary,
            )
        self.notifier.submit(notices)
        self.last_evaluated_at = now
        self.last_error = None

    async def record_outcomes(self) -> int:
        """The final tally and status of proposals whose votingEnds passed, read from the contract."""
        if self.read_proposals is None:
            return 0
        now = dt.datetime.now(dt.UTC)
        ended = await ended_without_result(
            self.sessions, self.scope, chain_now=chain_now(self.listener(), now), limit=OUTCOMES_PER_PASS
        )
        results = []
        try:
            with anyio.fail_after(CHAIN_READ_TIMEOUT):
                answers = await self.read_proposals([p.proposal_id for p in ended]) if ended else {}
        except (TimeoutError, DloopError):
            answers = {}  # the chain is away: the next pass tries again
        for proposal in ended:
            data = answers.get(proposal.proposal_id)
            if data is None or isinstance(data, ChainError):
                break  # in order: the next pass goes on from here
            results.append(
                FinalResult(
                    proposal.ref,
                    data.yes_votes,
                    data.no_votes,
                    data.status,
                    status_name(data.status),
                    data.executed,
                )
            )
        added = await record_results(self.sessions, results)
        if added:
            log_event(logger, "proposal_outcomes_recorded", count=added)
        return added
