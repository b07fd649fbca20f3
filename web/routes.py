"""Thin request handlers: validate input, call a query or a port, present the result."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, QueryParameter

from monitor.analytics import report as analytics_report
from storage import queries
from storage.alerts import firing_alerts, list_alerts
from storage.analytics import analytics_facts
from storage.controls import SERVICE_SCOPE, PauseState
from storage.models import VoteState
from storage.rounds import get_round, last_round
from web.auth import trigger_guard
from web.caches import WebCaches
from web.dashboard import read_node_chain
from web.metrics import CONTENT_TYPE, DeploymentMetrics, LaneMetrics, MetricsSnapshot, render
from web.pages import overview_page
from web.ports import WebContext, pause_control
from web.present import (
    alert_out,
    analytics_out,
    chain_now,
    evaluator_out,
    firing_counts,
    head_age,
    health_checks,
    health_status,
    lanes_check,
    lanes_out,
    listener_out,
    node_out,
    node_status,
    proposal_out,
    queue_out,
    round_out,
    vote_out,
    voter_out,
)
from web.schemas import (
    ActiveProposalsResponse,
    AlertsResponse,
    AnalyticsResponse,
    ControlsOut,
    ErrorResponse,
    HealthResponse,
    NodesResponse,
    NodeStatusOut,
    OverviewResponse,
    PauseResponse,
    ProposalResponse,
    ProposalsOut,
    RoundResponse,
    SystemOut,
    TriggerResponse,
    VotesResponse,
)

Ctx = NamedDependency[WebContext]  # provided by the app (web.app), by name


MAX_ID = 2**63 - 1  # ids are BIGINT in the database


def _error_specs(*statuses: int) -> dict[int, ResponseSpec]:
    # The service's own error body ({success, error, reason, status}), not Litestar's default one.
    return {
        status: ResponseSpec(
            ErrorResponse, description=f"error {status}, with a reason", generate_examples=False
        )
        for status in statuses
    }


ERRORS = _error_specs(400, 404, 500, 503)
TRIGGER_ERRORS = _error_specs(400, 401, 403, 404, 500, 503)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_id(raw: str, what: str) -> int:
    """A positive whole number; anything else is a malformed request (400), not an unknown id (404)."""
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not 1 <= int(text) <= MAX_ID:
        raise ValidationException(
            detail=f"{what} must be a whole number from 1 to {MAX_ID}, got {raw[:40]!r}"
        )
    return int(text)


def controls_out(context: WebContext, state: PauseState) -> ControlsOut:
    return ControlsOut(
        service_paused=state.service,
        paused_nodes=sorted(state.nodes),
        dry_run=context.dry_run,
        changed_at=state.changed_at,
    )


@get(
    "/",
    responses=ERRORS,
    summary="Service overview (a browser, which prefers text/html, gets the dashboard page instead)",
    before_request=overview_page,
    response_headers=[ResponseHeader(name="Vary", value="Accept")],
)
async def overview(context: Ctx) -> OverviewResponse:
    now = utcnow()
    pauses = await pause_control(context).current()
    listener = context.listener()
    voter = context.voter()
    stats = await queries.node_vote_stats(context.sessions, context.everything())
    chain = await read_node_chain(context)
    configured = {n.address.lower() for n in context.nodes}
    statuses = [
        NodeStatusOut(
            name=s.name,
            address=s.address,
            strategy=s.strategy,
            status=node_status(chain.get(s.address.lower())),
            votes_cast=s.cast,
            votes_pending=s.pending,
            votes_failed=s.failed,
            last_vote_at=s.last_vote_at,
            paused=pauses.paused(s.name),
        )
        for s in stats
        if s.address.lower() in configured
    ]
    counts = await queries.vote_counts(context.sessions, context.everything())
    proposal_counts = await queries.proposal_counts(
        context.sessions, context.everything(), now=chain_now(listener, now)
    )
    latest = await last_round(context.sessions)
    running = listener.running and voter.running
    healthy = running and listener.connected and listener.subscribed and listener.blind_reason is None
    return OverviewResponse(
        message="DLoop governance voting service is running"
        if running
        else "DLoop governance service is degraded",
        status="running" if healthy else "degraded",
        timestamp=now,
        system=SystemOut(
            is_running=running,
            total_nodes=len(context.nodes),
            active_nodes=sum(1 for s in statuses if s.status == "active"),
            node_statuses=statuses,
        ),
        listener=listener_out(listener, now),
        voter=voter_out(voter),
        queue=queue_out(counts),
        proposals=ProposalsOut(
            proposal_counts["total"], proposal_counts["active"], proposal_counts["highest_id"]
        ),
        last_round=round_out(latest, context.rounds.phase(latest.id)) if latest else None,
        uptime_seconds=round((now - context.started_at).total_seconds(), 3),
        controls=controls_out(context, pauses),
        lanes=lanes_out(voter),
    )


@get("/nodes", responses=ERRORS, summary="Each node's account, funding, weight and votes")
async def nodes(context: Ctx) -> NodesResponse:
    stats = await queries.node_vote_stats(context.sessions, context.everything())
    chain = await read_node_chain(context)
    configured = {n.address.lower() for n in context.nodes}
    pauses = await pause_control(context).current()
    items = [
        msgspec.structs.replace(
            node_out(s, chain.get(s.address.lower())),
            paused=pauses.paused(s.name),
            paused_reason=pauses.reason(s.name),
        )
        for s in stats
        if s.address.lower() in configured
    ]
    return NodesResponse(
        success=True,
        nodes=items,
        count=len(items),
        timestamp=utcnow(),
        service_paused=pauses.service,
        dry_run=context.dry_run,
    )


DeploymentParam = Annotated[
    str | None,
    QueryParameter(description="a deployment's name (default: every deployment)", max_length=64),
]


def deployment_scope(context: WebContext, deployment: str | None) -> queries.Scope:
    """`?deployment=NAME`: 400 with the known names for a name no deployment has."""
    try:
        return context.deployment_scope(deployment)
    except LookupError:
        known = ", ".join(d.name for d in context.deployment_status()) or ", ".join(context.deployments())
        raise ValidationException(
            detail=f"deployment: unknown deployment {str(deployment)[:64]!r} (known: {known})"
        ) from None


@get("/proposals/{proposal_id:str}", responses=ERRORS, summary="One proposal with every node's decision")
async def proposal(
    context: Ctx, proposal_id: FromPath[str], deployment: DeploymentParam = None
) -> ProposalResponse:
    number = parse_id(proposal_id, "proposal id")
    scope = deployment_scope(context, deployment)
    if deployment is None and len(context.deployments()) > 1:
        names = await queries.deployments_with_proposal(context.sessions, scope, number)
        if len(names) > 1:
            raise ValidationException(
                detail=f"proposal {number} exists in deployments {', '.join(names)}: add ?deployment=NAME"
            )
    record = await queries.proposal_detail(context.sessions, scope, number)
    if record is None:
        raise NotFoundException(detail=f"proposal {number} is not known (yet) to this service")
    return ProposalResponse(success=True, proposal=proposal_out(record), timestamp=utcnow())


@get("/votes", responses=ERRORS, summary="Vote history, filtered and paginated (newest proposals first)")
async def votes(
    context: Ctx,
    node: Annotated[
        str | None, QueryParameter(description="node name, e.g. ai-gov-01", max_length=64)
    ] = None,
    proposal: Annotated[int | None, QueryParameter(description="proposal id", ge=1, le=MAX_ID)] = None,
    vote_state: Annotated[VoteState | None, QueryParameter(name="state", description="vote state")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParameter(ge=0, le=10_000_000)] = 0,
    deployment: DeploymentParam = None,
) -> VotesResponse:
    scope = deployment_scope(context, deployment)
    if node is not None and node not in {n.name for n in context.nodes}:
        known = ", ".join(sorted(n.name for n in context.nodes))
        raise ValidationException(detail=f"node: unknown node {node[:64]!r} (known: {known})")
    page = await queries.list_votes(
        context.sessions,
        scope,
        node=node,
        proposal_id=proposal,
        state=vote_state.value if vote_state is not None else None,
        limit=limit,
        offset=offset,
    )
    return VotesResponse(
        success=True,
        votes=[vote_out(v) for v in page.items],
        total=page.total,
        limit=page.limit,
        offset=page.offset,
        timestamp=utcnow(),
    )


@post(
    "/trigger-voting",
    responses=TRIGGER_ERRORS,
    status_code=202,
    guards=[trigger_guard],
    summary="Start a voting round (reconcile, then drain) or join the running one; answers at once",
)
async def trigger_voting(context: Ctx) -> TriggerResponse:
    ticket = await context.rounds.trigger()
    return TriggerResponse(
        success=True,
        message="Voting round triggered successfully",
        round_id=ticket.round_id,
        joined=ticket.joined,
        timestamp=utcnow(),
    )


async def _switch(context: WebContext, scope: str, paused: bool) -> PauseResponse:
    state = await pause_control(context).set_paused([scope], paused, by="http")
    who = "the whole service" if scope == SERVICE_SCOPE else f"node {scope}"
    return PauseResponse(
        success=True,
        message=f"signing {'paused' if paused else 'resumed'} for {who}",
        controls=controls_out(context, state),
        timestamp=utcnow(),
    )


def _node_scope(context: WebContext, name: str) -> str:
    if name not in {n.name for n in context.nodes}:
        known = ", ".join(sorted(n.name for n in context.nodes))
        raise NotFoundException(detail=f"node {name[:64]!r} is not configured (known: {known})")
    return name


# 200: not POST's default 201 (nothing is created) nor 202 (the switch is in effect when answered).
PAUSE_DOC = "Answers once no paused node can sign any more (the trigger's auth rules apply)."


@post(
    "/pause",
    responses=TRIGGER_ERRORS,
    status_code=200,
    guards=[trigger_guard],
    summary="Pause signing for every node",
    description=PAUSE_DOC,
)
async def pause_all(context: Ctx) -> PauseResponse:
    return await _switch(context, SERVICE_SCOPE, True)


@post(
    "/resume",
    responses=TRIGGER_ERRORS,
    status_code=200,
    guards=[trigger_guard],
    summary="Resume signing for the service",
)
async def resume_all(context: Ctx) -> PauseResponse:
    return await _switch(context, SERVICE_SCOPE, False)


@post(
    "/nodes/{name:str}/pause",
    responses=TRIGGER_ERRORS,
    status_code=200,
    guards=[trigger_guard],
    summary="Pause signing for one node",
    description=PAUSE_DOC,
)
async def pause_node(context: Ctx, name: FromPath[str]) -> PauseResponse:
    return await _switch(context, _node_scope(context, name), True)


@post(
    "/nodes/{name:str}/resume",
    responses=TRIGGER_ERRORS,
    status_code=200,
    guards=[trigger_guard],
    summary="Resume signing for one node",
)
async def resume_node(context: Ctx, name: FromPath[str]) -> PauseResponse:
    return await _switch(context, _node_scope(context, name), False)


@get("/rounds/{round_id:str}", responses=ERRORS, summary="Progress and result of a voting round")
async def round_detail(context: Ctx, round_id: FromPath[str]) -> RoundResponse:
    number = parse_id(round_id, "round id")
    record = await get_round(context.sessions, number)
    if record is None:
        raise NotFoundException(detail=f"round {number} does not exist")
    return RoundResponse(
        success=True, round=round_out(record, context.rounds.phase(number)), timestamp=utcnow()
    )


@get("/metrics", responses=ERRORS, summary="Prometheus metrics", media_type=CONTENT_TYPE)
async def metrics(context: Ctx) -> Response[str]:
    now = utcnow()
    listener = context.listener()
    counts = await queries.vote_counts(context.sessions, context.everything())
    latencies = await queries.vote_latencies(context.sessions, context.everything())
    proposal_counts = await queries.proposal_counts(
        context.sessions, context.everything(), now=chain_now(listener, now)
    )
    queue = queue_out(counts)
    pauses = await pause_control(context).current()
    snapshot = MetricsSnapshot(
        vote_counts=counts,
        queue_by_state={s: queue.by_state.get(s, 0) for s in ("pending", "queued", "sent")},
        head_block=listener.head_block,
        head_lag_seconds=head_age(listener, now),
        reconnects=listener.reconnects,
        sent_latencies=[v.to_sent for v in latencies if v.to_sent is not None],
        mined_latencies=[v.to_mined for v in latencies if v.to_mined is not None],
        rpc_errors=context.rpc_errors(),
        rpc_requests=context.rpc_requests(),
        proposals_known=proposal_counts["total"],
        proposals_active=proposal_counts["active"],
        listener_up=listener.running,
        voter_up=context.voter().running,
        unknown_events=listener.unknown_events,
        listener_missed=listener.missed_total,
        listener_blind=listener.blind_reason is not None,
        contract_version=listener.contract_version,
        alerts_firing=firing_counts(await firing_alerts(context.sessions)),
        service_paused=pauses.service,
        paused_nodes=sorted(pauses.nodes),
        nodes=[n.name for n in context.nodes],
        dry_run=context.dry_run,
        deployments=await deployment_metrics(context, now),
        lanes=[
            LaneMetrics(lane.deployment, lane.node, lane.owned, lane.owner) for lane in context.voter().lanes
        ],
    )
    return Response(render(snapshot), media_type=CONTENT_TYPE)


async def deployment_metrics(context: WebContext, now: dt.datetime) -> list[DeploymentMetrics]:
    """The per-deployment series (label `deployment`): up, head, connection, votes by state, RPC errors."""
    result = []
    for status in context.deployment_status():
        votes: dict[str, int] = {}
        if status.scope is not None:
            for (_node, state), count in (await queries.vote_counts(context.sessions, status.scope)).items():
                votes[state] = votes.get(state, 0) + count
        listener = status.listener
        result.append(
            DeploymentMetrics(
                name=status.name,
                chain_id=status.scope.chain_id if status.scope is not None else None,
                up=listener is not None,
                connected=listener is not None and listener.connected,
                head_block=listener.head_block if listener is not None else None,
                head_lag_seconds=head_age(listener, now) if listener is not None else None,
                votes_by_state=votes,
                rpc_errors=status.rpc_errors,
            )
        )
    return result


@get("/alerts", responses=ERRORS, summary="Alerts of the rules, newest first (firing ones: state=firing)")
async def alerts(
    context: Ctx,
    alert_state: Annotated[
        str | None,
        QueryParameter(name="state", description="firing or resolved", pattern="^(firing|resolved)$"),
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    offset: Annotated[int, QueryParameter(ge=0, le=10_000_000)] = 0,
) -> AlertsResponse:
    items = await list_alerts(context.sessions, state=alert_state, limit=limit, offset=offset)
    firing = await firing_alerts(context.sessions)
    by_severity = dict(Counter(alert.severity for alert in firing))
    return AlertsResponse(
        success=True,
        alerts=[alert_out(a) for a in items],
        count=len(items),
        firing=len(firing),
        firing_by_severity=by_severity,
        evaluator=evaluator_out(context.alerts()),
        timestamp=utcnow(),
    )


def parse_moment(raw: str | None, what: str) -> dt.datetime | None:
    """A date (YYYY-MM-DD, midnight UTC) or an ISO 8601 time (UTC when it names no zone)."""
    if raw is None or not raw.strip():
        return None
    try:
        moment = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValidationException(
            detail=f"{what} must be a date (YYYY-MM-DD) or an ISO 8601 time, got {raw[:40]!r}"
        ) from None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


@get(
    "/analytics", responses=ERRORS, summary="Governance analytics of the proposals created in [since, until)"
)
async def analytics(
    context: Ctx,
    since: Annotated[str | None, QueryParameter(description="date or ISO time (UTC)", max_length=40)] = None,
    until: Annotated[str | None, QueryParameter(description="date or ISO time (UTC)", max_length=40)] = None,
) -> AnalyticsResponse:
    start, end = parse_moment(since, "since"), parse_moment(until, "until")
    if start is not None and end is not None and end <= start:
        raise ValidationException(detail="until must be later than since")
    now = utcnow()
    facts = await analytics_facts(context.sessions, context.everything(), since=start, until=end)
    result = analytics_report(
        facts.proposals,
        facts.votes,
        now=chain_now(context.listener(), now),
        since=start,
        until=end,
        nodes=[n.name for n in context.nodes],
    )
    return analytics_out(result, now)


ROUTES = [
    overview,
    nodes,
    proposal,
    votes,
    trigger_voting,
    pause_all,
    resume_all,
    pause_node,
    resume_node,
    round_detail,
    metrics,
    alerts,
    analytics,
]


# -- the endpoints monitors and dashboards poll ------------------------------------------------------------


async def health_answer(context: WebContext, caches: WebCaches) -> tuple[bytes, int]:
    clock = time.monotonic()
    recent = caches.health.fresh(clock)
    if recent is not None:
        return recent
    now = utcnow()
    database_error = await caches.database.error()  # one shared probe per second, not one per request
    checks = health_checks(
        database_error=database_error,
        listener=context.listener(),
        now=now,
        head_timeout=context.head_timeout,
        deployments=context.deployment_status(),
    )
    voter = context.voter()
    lanes = lanes_check(voter, now)
    if lanes is not None:
        checks["lanes"] = lanes
    status = health_status(checks)
    body = HealthResponse(status, status == "healthy", now, checks, lanes_out(voter))
    answer = msgspec.json.encode(body), 200 if status == "healthy" else 503
    caches.health.store(answer, clock)
    return answer


async def active_proposals_answer(
    context: WebContext, caches: WebCaches, deployment: str | None = None
) -> bytes:
    now = utcnow()
    try:
        cache = caches.active_of(context, deployment)
    except LookupError:
        deployment_scope(context, deployment)  # raises the 400 with the known names
        raise
    return await cache.answer(now, chain_now(context.listener(), now))


ACTIVE_PROPOSALS_DOC = (
    "Compact JSON, a newline after each proposal object: `grep -c '\"state\":1'` counts them. Served from a "
    "snapshot rebuilt when the service writes proposals or votes (at most every 0.2 s) and at least every "
    "second: the answer lags the database by at most 0.2 s (1 s for other processes' writes). Every "
    "deployment's proposals, each with its `deployment` and `chainId`; `?deployment=NAME` shows one (400 for "
    "a name no deployment has)."
)


def polled_routes(context: WebContext, caches: WebCaches) -> list[HTTPRouteHandler]:
    """/health and /active-proposals bound to this app's context and caches. They take no parameters and
    return encoded bytes, so Litestar resolves no dependency, validates no signature and runs no serializer
    per request (injecting the two cost a task group per request)."""

    @get("/health", responses=ERRORS, summary="Health of database, chain connection, subscription and head")
    async def health() -> Response[HealthResponse]:
        content, status = await health_answer(context, caches)
        return Response(content, status_code=status, media_type=MediaType.JSON)  # type: ignore[arg-type]

    @get(
        "/active-proposals",
        responses=ERRORS,
        summary="Proposals open for voting, one per line",
        description=ACTIVE_PROPOSALS_DOC,
    )
    async def active_proposals(request: Request[Any, Any, Any]) -> Response[ActiveProposalsResponse]:
        # `?deployment=` read off the request: a declared parameter would be validated on every poll.
        deployment = request.query_params.get("deployment")
        content = await active_proposals_answer(context, caches, deployment)
        # Pre-encoded bytes pass through unchanged; the annotation documents the shape in the OpenAPI schema.
        return Response(content=content, media_type=MediaType.JSON)  # type: ignore[arg-type]

    return [health, active_proposals]
