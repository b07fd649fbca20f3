"""The dashboard's data: the same reads as `/`, `/nodes`, `/active-proposals` and `/rounds/{id}`, gathered
once per render and turned into the page's model by web.dashboard_view (pure)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import time
from collections.abc import Sequence
from functools import cache

import anyio
import msgspec

from core.errors import DloopError
from monitor.analytics import Report, report
from storage import queries
from storage.alerts import firing_alerts
from storage.analytics import analytics_facts
from storage.rounds import recent_rounds
from web.caches import WebCaches
from web.dashboard_view import (
    HOURS,
    LATENCY_LABELS,
    Dashboard,
    ServiceInfo,
    alert_lines,
    analytics_view,
    bar_chart,
    duration_text,
    hour_labels,
    latency_histogram,
    listener_info,
    node_card,
    open_proposals,
    proposal_card,
    queue_states,
    round_row,
    votes_per_hour,
)
from web.ports import NodeChainState, WebContext, pause_control
from web.present import chain_now, health_checks, health_status, node_chain_by_address, queue_out
from web.schemas import ActiveProposal

NODE_READ_TIMEOUT = 5.0
MAX_PROPOSALS_SHOWN = 200
RECENT_ROUNDS = 8

# The CSP of every dashboard response: scripts, styles and everything else from this service only; no inline
# script or style anywhere (the charts are inline SVG drawn with presentation attributes and classes).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_decode_proposal = msgspec.json.Decoder(ActiveProposal).decode


@cache
def service_version() -> str:
    try:
        return importlib.metadata.version("dloop-governance")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def read_node_chain(context: WebContext) -> dict[str, NodeChainState]:
    """Live balances and nonces; a chain that does not answer in time marks every node 'error'."""
    try:
        with anyio.fail_after(NODE_READ_TIMEOUT):
            states: Sequence[NodeChainState] = await context.node_chain()
    except (TimeoutError, DloopError) as exc:
        reason = "timed out reading the chain" if isinstance(exc, TimeoutError) else str(exc)
        states = [NodeChainState(address=n.address, error=reason) for n in context.nodes]
    return node_chain_by_address(states)


async def dashboard_analytics(context: WebContext, caches: WebCaches, chain_time: dt.datetime) -> Report:
    """What `GET /analytics` answers for all time (the same reads and computation), memoised."""
    memo, version, clock = caches.analytics, caches.version.value, time.monotonic()
    if memo.due(version, clock):
        facts = await analytics_facts(context.sessions, context.everything())
        memo.store(
            report(facts.proposals, facts.votes, now=chain_time, nodes=[n.name for n in context.nodes]),
            version,
            clock,
        )
    assert memo.report is not None
    return memo.report


async def build_dashboard(context: WebContext, caches: WebCaches, now: dt.datetime) -> Dashboard:
    listener = context.listener()
    clock = chain_now(listener, now)
    stats = await queries.node_vote_stats(context.sessions, context.everything())
    chain = await read_node_chain(context)
    configured = {n.address.lower() for n in context.nodes}
    # The /active-proposals snapshot: no extra database read while nothing changed.
    snapshot = await caches.active.current(clock)
    shown, active = open_proposals(
        (_decode_proposal(line) for line in snapshot.lines), clock, MAX_PROPOSALS_SHOWN
    )
    rounds = await recent_rounds(context.sessions, RECENT_ROUNDS)
    queue = queue_out(await queries.vote_counts(context.sessions, context.everything()))
    times = await queries.recent_vote_times(
        context.sessions, context.everything(), since=now - dt.timedelta(hours=HOURS)
    )
    checks = health_checks(
        database_error=await caches.database.error(),
        listener=listener,
        now=now,
        head_timeout=context.head_timeout,
    )
    pauses = await pause_control(context).current()
    alerts = await firing_alerts(context.sessions)
    analytics = await dashboard_analytics(context, caches, clock)
    return Dashboard(
        service=ServiceInfo(
            version=service_version(),
            uptime=duration_text((now - context.started_at).total_seconds()),
            contract=context.scope.contract,
            chain_id=context.scope.chain_id,
            contract_version=listener.contract_version,
            status=health_status(checks),
            problems=tuple(f"{name}: {c.detail}" for name, c in checks.items() if not c.ok),
        ),
        listener=listener_info(listener, now),
        nodes=tuple(
            node_card(s, chain.get(s.address.lower()), now, pauses)
            for s in stats
            if s.address.lower() in configured
        ),
        proposals=tuple(proposal_card(p, clock) for p in shown),
        proposals_active=active,
        rounds=tuple(round_row(r, now) for r in rounds),
        queue_depth=queue.depth,
        queue_by_state=queue_states(queue.by_state),
        votes_chart=bar_chart(
            votes_per_hour((confirmed for _queued, confirmed in times), now), hour_labels(now), axis_every=6
        ),
        latency_chart=bar_chart(
            latency_histogram((confirmed - queued).total_seconds() for queued, confirmed in times),
            LATENCY_LABELS,
        ),
        token_required=bool(context.api_token),
        generated_at=now,
        alerts=alert_lines(alerts, now),
        analytics=analytics_view(analytics, [n.name for n in context.nodes]),
        service_paused=pauses.service,
        dry_run=context.dry_run,
    )
