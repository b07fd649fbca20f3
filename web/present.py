"""Pure conversions from query results and status views to response bodies. No I/O."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

import msgspec

from chain.types import format_units
from monitor.analytics import Approval, Performance, Report
from monitor.engine import Alert
from monitor.rules import SEVERITY, Rule, votes_affordable
from storage.models import OPEN_VOTE_STATES, VoteState
from storage.queries import ActiveProposalRows, NodeVoteStats, ProposalRecord, Record
from storage.rounds import RoundRecord
from web.ports import AlertsView, DeploymentStatus, LaneInfo, ListenerView, NodeChainState, VoterView
from web.schemas import (
    ActiveProposal,
    ActiveProposalsResponse,
    AlertOut,
    AnalyticsResponse,
    ApprovalOut,
    DayOut,
    EvaluatorOut,
    HealthCheck,
    LaneOut,
    LanesOut,
    ListenerOut,
    NodeOut,
    NodeVoteBrief,
    PairAgreementOut,
    PerformanceOut,
    ProposalOut,
    QueueOut,
    ReceiverOut,
    RoundOut,
    TransactionOut,
    VoteOut,
    VoterOut,
)

NODE_ACTIVE, NODE_UNFUNDED, NODE_ERROR = "active", "unfunded", "error"


def units(wei: int | None, decimals: int = 18) -> str | None:
    return None if wei is None else format_units(Decimal(wei).scaleb(-decimals))


def vote_out(vote: Record, transactions: Sequence[Record] = ()) -> VoteOut:
    """From queries.VOTE_COLUMNS / TRANSACTION_COLUMNS rows, labelled with these structs' field names."""
    return VoteOut(**vote, transactions=[TransactionOut(**t) for t in transactions])


def proposal_out(record: ProposalRecord) -> ProposalOut:
    """From a queries.PROPOSAL_COLUMNS row; only the Unix end time is computed here."""
    ends: dt.datetime = record.proposal["end_time_utc"]
    return ProposalOut(
        **record.proposal,
        end_time=int(ends.timestamp()),
        votes=[vote_out(v.vote, v.transactions) for v in record.votes],
    )


def round_out(record: RoundRecord, phase: str | None) -> RoundOut:
    return RoundOut(
        id=record.id,
        kind=record.kind,
        state=record.state,
        phase=phase if record.state == "running" else None,
        started_at=record.started_at,
        finished_at=record.finished_at,
        proposals_scanned=record.proposals_scanned,
        new_proposals=record.new_proposals,
        missing_votes=record.missing_votes,
        resolved_transactions=record.resolved_transactions,
        votes_sent=record.votes_sent,
        votes_confirmed=record.votes_confirmed,
        error=record.error,
    )


def node_status(chain: NodeChainState | None) -> str:
    if chain is None or chain.error is not None or chain.eth_balance_wei is None:
        return NODE_ERROR
    if not votes_affordable(chain.eth_balance_wei, max(chain.required_wei, 1)):
        return NODE_UNFUNDED
    return NODE_ACTIVE


def node_out(stats: NodeVoteStats, chain: NodeChainState | None) -> NodeOut:
    error = chain.error if chain is not None else "chain state unavailable"
    return NodeOut(
        name=stats.name,
        address=stats.address,
        strategy=stats.strategy,
        status=node_status(chain),
        eth_balance=units(chain.eth_balance_wei) if chain else None,
        eth_balance_wei=str(chain.eth_balance_wei) if chain and chain.eth_balance_wei is not None else None,
        dloop_weight=units(chain.dloop_balance_wei) if chain else None,
        dloop_weight_wei=str(chain.dloop_balance_wei)
        if chain and chain.dloop_balance_wei is not None
        else None,
        next_nonce=chain.next_nonce if chain else None,
        votes_cast=stats.cast,
        votes_pending=stats.pending,
        votes_failed=stats.failed,
        votes_by_state=dict(sorted(stats.by_state.items())),
        last_vote_at=stats.last_vote_at,
        error=error,
    )


def queue_out(counts: Mapping[tuple[str, str], int]) -> QueueOut:
    by_state = {str(state): 0 for state in VoteState}
    for (_node, state), count in counts.items():
        by_state[state] = by_state.get(state, 0) + count
    return QueueOut(depth=sum(by_state[str(s)] for s in OPEN_VOTE_STATES), by_state=by_state)


def head_age(listener: ListenerView, now: dt.datetime) -> float | None:
    if listener.head_received_at is None:
        return None
    return max(0.0, (now - listener.head_received_at).total_seconds())


def chain_now(listener: ListenerView, now: dt.datetime) -> dt.datetime:
    """The chain's clock: the latest head's timestamp plus the time since it arrived; else the wall clock.

    Proposals are open until the chain's time passes votingEnds, and a devnet's clock may run ahead.
    """
    if listener.head_timestamp is None or listener.head_received_at is None:
        return now
    head = dt.datetime.fromtimestamp(listener.head_timestamp, dt.UTC)
    return head + max(dt.timedelta(0), now - listener.head_received_at)


def plain(value: object, depth: int = 0) -> object:
    """Anything a status object holds, as JSON-safe values (unknown objects become their str)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth > 4:
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v, depth + 1) for v in value]
    return str(value)


def listener_out(listener: ListenerView, now: dt.datetime) -> ListenerOut:
    age = head_age(listener, now)
    return ListenerOut(
        running=listener.running,
        connected=listener.connected,
        subscribed=listener.subscribed,
        head_block=listener.head_block,
        head_age_seconds=None if age is None else round(age, 3),
        reconnects=listener.reconnects,
        last_error=listener.last_error,
        contract_version=listener.contract_version,
        blind_reason=listener.blind_reason,
        missed_proposals=listener.missed_total,
        unknown_events=dict(listener.unknown_events),
        details={k: plain(v) for k, v in listener.extra.items()},
    )


def voter_out(voter: VoterView) -> VoterOut:
    return VoterOut(
        running=voter.running,
        in_flight=voter.in_flight,
        last_error=voter.last_error,
        details={k: plain(v) for k, v in voter.extra.items()},
    )


def lanes_out(voter: VoterView) -> LanesOut | None:
    """Which node lanes this instance signs for and who holds the others (None: no lane ownership)."""
    if not voter.lanes:
        return None
    names = _lane_names(voter.lanes)
    owned = [name for name, lane in zip(names, voter.lanes, strict=True) if lane.owned]
    return LanesOut(
        instance=voter.instance,
        owned=owned,
        standby=not owned,
        lanes=[_lane_out(lane) for lane in voter.lanes],
        mode="leases" if any(lane.leased for lane in voter.lanes) else "run-lock",
        alerts_owner=voter.alerts_owner,
    )


def _lane_out(lane: LaneInfo) -> LaneOut:
    return LaneOut(
        node=lane.node,
        address=lane.address,
        owned=lane.owned,
        owner=lane.owner,
        token=lane.token,
        expires_at=lane.expires_at,
        deployment=lane.deployment or None,
        chain_id=lane.chain_id,
    )


def _lane_names(lanes: Sequence[LaneInfo]) -> list[str]:
    """Each lane's node name, with its deployment when the node has a lane in several deployments."""
    counts = Counter(lane.node for lane in lanes)
    return [
        f"{lane.node} ({lane.deployment})" if counts[lane.node] > 1 and lane.deployment else lane.node
        for lane in lanes
    ]


def lanes_check(voter: VoterView, now: dt.datetime) -> HealthCheck | None:
    """Always ok: a standby instance (another one signs for every node) is healthy, it takes over if that one
    dies. The detail says which lanes are whose, and names any lane nobody holds a live lease on."""
    if not voter.lanes:
        return None
    names = _lane_names(voter.lanes)
    owned = [name for name, lane in zip(names, voter.lanes, strict=True) if lane.owned]
    if not any(lane.leased for lane in voter.lanes):
        return HealthCheck(
            True, f"this instance signs for {', '.join(owned)} (SQLite: the only instance, by its run lock)"
        )
    others: dict[str, list[str]] = {}
    orphans = []
    for name, lane in zip(names, voter.lanes, strict=True):
        if lane.owned:
            continue
        if lane.owner is None or lane.expires_at is None or lane.expires_at <= now:
            orphans.append(name)
        else:
            others.setdefault(lane.owner, []).append(name)
    parts = [f"this instance signs for {', '.join(owned)}" if owned else "standby: signs for no node"]
    parts += [f"{owner} signs for {', '.join(nodes)}" for owner, nodes in sorted(others.items())]
    if orphans:
        parts.append(f"no live owner (being taken over) for {', '.join(orphans)}")
    return HealthCheck(True, "; ".join(parts))


def health_checks(
    *,
    database_error: str | None,
    listener: ListenerView,
    now: dt.datetime,
    head_timeout: float,
    deployments: Sequence[DeploymentStatus] = (),
) -> dict[str, HealthCheck]:
    """The checks of /health: of the one deployment. With several, every deployment counts alike: the
    chain, subscription and head checks pass while at least one deployment has them (the service votes;
    none: unhealthy), each detail naming every deployment, and `deployments` fails, naming it, when any one
    is down (degraded); events passes when every running deployment's listener sees proposals."""
    checks = _first_deployment_checks(database_error, listener, now, head_timeout)
    if len(deployments) > 1:
        checks.update(_every_deployment_checks(deployments, now, head_timeout))
        checks["deployments"] = deployments_check(deployments, now, head_timeout)
    return checks


def _every_deployment_checks(
    deployments: Sequence[DeploymentStatus], now: dt.datetime, head_timeout: float
) -> dict[str, HealthCheck]:
    each: dict[str, list[tuple[str, HealthCheck]]] = {
        "chain": [],
        "subscription": [],
        "head": [],
        "events": [],
    }
    for d in deployments:
        if d.listener is None:
            waiting = HealthCheck(False, f"waiting for its chain ({d.error})")
            for name in ("chain", "subscription", "head"):
                each[name].append((d.name, waiting))
            continue
        for name, check in _first_deployment_checks(None, d.listener, now, head_timeout).items():
            if name in each:
                each[name].append((d.name, check))
    checks = {}
    for name, results in each.items():
        detail = "; ".join(f"{deployment}: {check.detail}" for deployment, check in results) or "none running"
        passed = [check.ok for _, check in results]
        ok = all(passed) if name == "events" else any(passed)
        checks[name] = HealthCheck(ok, detail)
    return checks


def deployments_check(
    deployments: Sequence[DeploymentStatus], now: dt.datetime, head_timeout: float
) -> HealthCheck:
    """ok when every deployment runs, connected to its chain with a fresh head; the detail names each."""
    parts, ok = [], True
    for d in deployments:
        if d.listener is None:
            ok = False
            parts.append(f"{d.name}: waiting for its chain ({d.error})")
            continue
        age = head_age(d.listener, now)
        live = d.listener.connected and age is not None and age <= head_timeout
        ok = ok and live
        where = f"chain {d.scope.chain_id}" if d.scope is not None else "chain ?"
        if live:
            parts.append(f"{d.name}: {where}, block {d.listener.head_block}")
        else:
            parts.append(f"{d.name}: {where}, not connected ({d.listener.last_error or 'no fresh head'})")
    return HealthCheck(ok, "; ".join(parts))


def _first_deployment_checks(
    database_error: str | None, listener: ListenerView, now: dt.datetime, head_timeout: float
) -> dict[str, HealthCheck]:
    age = head_age(listener, now)
    if age is None:
        head = HealthCheck(False, "no block head received yet")
    elif age > head_timeout:
        head = HealthCheck(
            False, f"latest head {listener.head_block} is {age:.1f} s old (limit {head_timeout:g} s)"
        )
    else:
        head = HealthCheck(True, f"block {listener.head_block}, {age:.1f} s old")
    return {
        "database": HealthCheck(database_error is None, database_error or "reachable"),
        "chain": HealthCheck(
            listener.connected,
            "connected" if listener.connected else (listener.last_error or "not connected"),
        ),
        "subscription": HealthCheck(
            listener.subscribed,
            "subscribed to contract logs and new heads" if listener.subscribed else "not subscribed",
        ),
        "head": head,
        "events": HealthCheck(
            listener.blind_reason is None,
            listener.blind_reason
            or f"the listener sees proposals ({listener.contract_version} events, decoded by topic)",
        ),
    }


# Checks that leave the service voting, only later (from reconcile passes) or on the other deployments:
# failing alone, it is degraded.
DEGRADED_ONLY = frozenset({"events", "deployments"})


def health_status(checks: Mapping[str, HealthCheck]) -> str:
    failed = {name for name, check in checks.items() if not check.ok}
    if not failed:
        return "healthy"
    return "degraded" if failed <= DEGRADED_ONLY else "unhealthy"


def encode_active_proposals(body: ActiveProposalsResponse) -> bytes:
    """Compact JSON with a newline after each proposal object: still one valid JSON document, and
    line-oriented tools see one proposal per line (`grep -c '"state":1'` counts active proposals,
    `grep votesFor` prints one line per proposal)."""
    lines = [msgspec.json.encode(p) for p in body.proposals]
    return assemble_active_proposals(body.timestamp, len(lines), join_proposal_lines(lines), body.success)


def join_proposal_lines(lines: Iterable[bytes]) -> bytes:
    """Encoded proposals, one per line, as they sit between the brackets of `"proposals":[...]`."""
    return b",\n".join(lines)


def assemble_active_proposals(
    timestamp: dt.datetime, count: int, joined: bytes, success: bool = True
) -> bytes:
    """The /active-proposals document around `count` proposal lines already joined (join_proposal_lines)."""
    head = msgspec.json.encode({"success": success, "count": count, "timestamp": timestamp})
    if count == 0:
        return b"".join((head[:-1], b',"proposals":[]}\n'))
    return b"".join((head[:-1], b',"proposals":[\n', joined, b"\n]}\n"))


# What /active-proposals reads (labels of queries.PROPOSAL_COLUMNS / VOTE_COLUMNS): every field of its
# structs but the two computed here.
ACTIVE_PROPOSAL_FIELDS = tuple(f for f in ActiveProposal.__struct_fields__ if f not in ("end_time", "votes"))
VOTE_BRIEF_FIELDS = NodeVoteBrief.__struct_fields__


def active_proposal_lines(rows: ActiveProposalRows) -> list[tuple[dt.datetime, bytes]]:
    """Each active proposal as (voting end, its encoded line), in proposal id order, straight from rows of
    ACTIVE_PROPOSAL_FIELDS / VOTE_BRIEF_FIELDS (after the proposal row id) to msgspec structs."""
    votes: dict[int, list[NodeVoteBrief]] = {}
    for ref, *brief in rows.votes:
        votes.setdefault(ref, []).append(NodeVoteBrief(*brief))
    encode = msgspec.json.encode
    lines = []
    for ref, *values in rows.proposals:
        fields = dict(zip(ACTIVE_PROPOSAL_FIELDS, values, strict=True))
        ends: dt.datetime = fields["end_time_utc"]
        proposal = ActiveProposal(**fields, end_time=int(ends.timestamp()), votes=votes.get(ref, []))
        lines.append((ends, encode(proposal)))
    return lines


def node_chain_by_address(states: Sequence[NodeChainState]) -> dict[str, NodeChainState]:
    return {s.address.lower(): s for s in states}


# -- alerts and analytics ------------------------------------------------------------------------------------


def alert_out(alert: Alert) -> AlertOut:
    return AlertOut(
        id=alert.id,
        fingerprint=alert.fingerprint,
        alert=alert.rule,
        severity=alert.severity,
        subject=alert.subject,
        summary=alert.summary,
        state="firing" if alert.firing else "resolved",
        first_seen=alert.first_seen,
        last_seen=alert.last_seen,
        resolved_at=alert.resolved_at,
        last_notified=alert.last_notified,
    )


def evaluator_out(view: AlertsView) -> EvaluatorOut:
    return EvaluatorOut(
        interval_seconds=view.interval,
        last_evaluated_at=view.last_evaluated_at,
        last_error=view.last_error,
        receivers=[msgspec.convert(r, ReceiverOut) for r in view.receivers],
    )


def firing_counts(alerts: Iterable[Alert]) -> dict[tuple[str, str], int]:
    """(rule, severity) -> firing alerts, every rule listed (0 when none fires) for /metrics."""
    counts = {(str(rule), str(SEVERITY[rule])): 0 for rule in Rule}
    for alert in alerts:
        if alert.firing:
            key = (alert.rule, alert.severity)
            counts[key] = counts.get(key, 0) + 1
    return counts


def performance_out(p: Performance) -> PerformanceOut:
    return PerformanceOut(
        name=p.name,
        votes_owed=p.votes_owed,
        votes_cast=p.votes_cast,
        votes_failed=p.votes_failed,
        participation=p.participation,
        time_to_vote_p50_seconds=p.time_to_vote_p50,
        time_to_vote_p95_seconds=p.time_to_vote_p95,
        gas_used=p.gas_used,
        eth_spent=units(p.eth_spent_wei) or "0",
        eth_spent_wei=str(p.eth_spent_wei),
        compared_with_majority=p.compared_with_majority,
        agreed_with_majority=p.agreed_with_majority,
        majority_agreement=p.majority_agreement,
    )


def approval_out(a: Approval) -> ApprovalOut:
    return ApprovalOut(a.key, a.proposals, a.decided, a.approved, a.executed, a.rate)


def analytics_out(report: Report, now: dt.datetime) -> AnalyticsResponse:
    return AnalyticsResponse(
        success=True,
        since=report.since,
        until=report.until,
        proposals=report.proposals,
        decided=report.decided,
        approved=report.approved,
        approval_rate=None if report.decided == 0 else report.approved / report.decided,
        nodes=[performance_out(p) for p in report.nodes],
        strategies=[performance_out(p) for p in report.strategies],
        pairs=[PairAgreementOut(p.node_a, p.node_b, p.compared, p.agreed, p.rate) for p in report.pairs],
        by_proposal_type=[approval_out(a) for a in report.by_type],
        by_asset=[approval_out(a) for a in report.by_asset],
        days=[
            DayOut(
                day=d.day.isoformat(),
                proposals=d.proposals,
                decided=d.decided,
                approved=d.approved,
                votes_owed=d.votes_owed,
                votes_cast=d.votes_cast,
                participation=d.participation,
                eth_spent_wei=str(d.eth_spent_wei),
            )
            for d in report.days
        ],
        timestamp=now,
    )
