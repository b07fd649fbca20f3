"""What the dashboard shows, computed from plain values: content negotiation, the page's model, the two SVG
charts. Pure: no I/O, no clock (the caller passes `now`). The templates (web/templates/) only lay it out, and
Jinja escapes every string they print.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from monitor.analytics import Approval, Performance, Report
from monitor.engine import Alert
from monitor.rules import votes_affordable
from storage.controls import PauseState
from storage.queries import NodeVoteStats
from storage.rounds import RoundRecord
from web.ports import ListenerView, NodeChainState
from web.present import head_age, node_status, units
from web.schemas import ActiveProposal

# -- content negotiation -----------------------------------------------------------------------------------


def _media_ranges(accept: str) -> dict[str, float]:
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = max(0.0, min(1.0, float(value)))
                except ValueError:
                    quality = 0.0
        ranges[media.lower()] = max(quality, ranges.get(media.lower(), 0.0))
    return ranges


def prefers_html(accept: str | None) -> bool:
    """Whether a request's Accept header prefers text/html over application/json. Only an explicit text/html
    counts (browsers send `text/html,...`): curl's `*/*`, no header, or a tie keep the JSON answer."""
    if not accept:
        return False
    ranges = _media_ranges(accept)
    html = ranges.get("text/html")
    if not html:
        return False
    json = ranges.get("application/json", ranges.get("application/*", ranges.get("*/*", 0.0)))
    return html > json


# -- small formatting --------------------------------------------------------------------------------------


def short_address(address: str, head: int = 6, tail: int = 4) -> str:
    """0x1234…abcd: enough to tell the five nodes apart; the page keeps the full one to copy."""
    if len(address) <= head + tail + 1:
        return address
    return f"{address[:head]}…{address[-tail:]}"


def duration_text(seconds: float | None) -> str:
    """A short human duration: 42 s, 5 min 3 s, 3 h 12 min, 2 d 4 h."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def short_units(wei: int | None, places: int = 4) -> str:
    """A balance in units, rounded down to `places` decimals for reading (the exact one goes in a title)."""
    if wei is None:
        return "-"
    scale = 10 ** (18 - places)
    text = units((wei // scale) * scale) or "0"
    return text


def when_text(moment: dt.datetime | None, now: dt.datetime) -> str:
    if moment is None:
        return "never"
    return f"{duration_text((now - moment).total_seconds())} ago"


# -- charts ------------------------------------------------------------------------------------------------

HOURS = 24
# Upper bounds (seconds) of the proposal-to-vote histogram's buckets; the last one is open.
LATENCY_BOUNDS: tuple[float, ...] = (1, 2, 5, 10, 30, 60, 300)
LATENCY_LABELS = ("<1s", "1-2s", "2-5s", "5-10s", "10-30s", "30-60s", "1-5m", ">5m")


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: int
    label: str  # the bar's tooltip (an SVG <title>)


@dataclass(frozen=True)
class BarChart:
    """Geometry of a bar chart in a `width` x `height` viewBox; the template draws one <rect> per bar."""

    width: int
    height: int
    bars: tuple[Bar, ...]
    peak: int
    total: int
    axis_labels: tuple[tuple[float, str], ...]  # (x, text) under the bars
    baseline: float


def bar_chart(
    values: Sequence[int],
    labels: Sequence[str],
    *,
    width: int = 480,
    height: int = 120,
    axis_every: int = 1,
) -> BarChart:
    top_pad, bottom_pad = 4.0, 16.0
    plot = height - top_pad - bottom_pad
    peak = max(values, default=0)
    slot = width / max(1, len(values))
    gap = min(2.0, slot * 0.2)
    bars = []
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        bar_height = 0.0 if peak == 0 else round(plot * value / peak, 2)
        if value > 0:
            bar_height = max(bar_height, 1.0)  # a single vote still shows
        bars.append(
            Bar(
                x=round(index * slot + gap / 2, 2),
                y=round(top_pad + plot - bar_height, 2),
                width=round(slot - gap, 2),
                height=bar_height,
                value=value,
                label=f"{label}: {value}",
            )
        )
    axis = tuple(
        (round(index * slot + slot / 2, 2), labels[index]) for index in range(0, len(labels), axis_every)
    )
    return BarChart(width, height, tuple(bars), peak, sum(values), axis, top_pad + plot)


def votes_per_hour(confirmed: Iterable[dt.datetime], now: dt.datetime, hours: int = HOURS) -> list[int]:
    """Votes mined in each of the last `hours` hours, oldest hour first (the last bucket ends at `now`)."""
    counts = [0] * hours
    for moment in confirmed:
        age = (now - moment).total_seconds()
        if 0 <= age < hours * 3600:
            counts[hours - 1 - int(age // 3600)] += 1
    return counts


def hour_labels(now: dt.datetime, hours: int = HOURS) -> list[str]:
    """The UTC hour each votes_per_hour bucket starts in (the last one is the current hour)."""
    return [f"{(now - dt.timedelta(hours=hours - 1 - i)).hour:02d}h" for i in range(hours)]


def latency_histogram(seconds: Iterable[float], bounds: Sequence[float] = LATENCY_BOUNDS) -> list[int]:
    counts = [0] * (len(bounds) + 1)
    for value in seconds:
        index = next((i for i, bound in enumerate(bounds) if value < bound), len(bounds))
        counts[index] += 1
    return counts


# -- the page's model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceInfo:
    version: str
    uptime: str
    contract: str
    chain_id: int
    contract_version: str
    status: str  # healthy / degraded / unhealthy (GET /health)
    problems: tuple[str, ...]  # details of the failed health checks


@dataclass(frozen=True)
class ListenerInfo:
    connected: bool
    head_block: int | None
    head_age: str
    lag_blocks: int | None  # head - cursor
    reconnects: int
    last_event: str
    blind_reason: str | None


@dataclass(frozen=True)
class NodeCard:
    name: str
    address: str
    address_short: str
    strategy: str
    eth_balance: str
    eth_balance_exact: str
    votes_left: int | None
    dloop_weight: str
    votes_cast: int
    votes_pending: int
    votes_failed: int
    last_vote: str
    status: str
    error: str | None
    paused: bool = False  # does not sign now: paused itself, or the whole service is
    paused_reason: str | None = None
    node_paused: bool = False  # paused by name (what its Pause / Resume button switches)


@dataclass(frozen=True)
class VoteCell:
    node: str
    decision: str
    reason: str
    state: str
    tx_hash: str | None
    tx_short: str


@dataclass(frozen=True)
class ProposalCard:
    id: int
    type_name: str
    asset: str
    amount: str
    description: str
    time_left: str
    votes_for: str
    votes_against: str
    votes: tuple[VoteCell, ...]
    deployment: str = "default"  # shown when the service follows several deployments


@dataclass(frozen=True)
class RoundRow:
    id: int
    kind: str
    state: str
    started: str
    took: str
    summary: str
    error: str | None


@dataclass(frozen=True)
class AlertLine:
    """One firing alert in the banner at the top of the page."""

    fingerprint: str
    severity: str
    rule: str
    subject: str
    summary: str
    since: str  # "12:29:00 UTC (5 min 3 s ago)"
    since_exact: str  # the first sighting with its date, for a tooltip


@dataclass(frozen=True)
class NodeAnalytics:
    name: str
    participation: str  # "96 %" or "-"
    cast_of_owed: str  # "48 of 50"
    time_to_vote_p50: str
    time_to_vote_p95: str
    eth_spent: str
    eth_spent_exact: str
    agreement: str  # "75 %" or "-"
    agreement_detail: str  # "3 of 4 decided proposals"


@dataclass(frozen=True)
class ApprovalRow:
    key: str
    proposals: int
    decided: int
    approved: int
    rate: str


@dataclass(frozen=True)
class AnalyticsView:
    proposals: int
    decided: int
    approved: int
    approval_rate: str
    summary: str  # "51 proposals, 2 ended, 1 approved (50 %)"
    nodes: tuple[NodeAnalytics, ...]
    by_type: tuple[ApprovalRow, ...]


@dataclass(frozen=True)
class Dashboard:
    service: ServiceInfo
    listener: ListenerInfo
    nodes: tuple[NodeCard, ...]
    proposals: tuple[ProposalCard, ...]
    proposals_active: int  # all open proposals (the page may show fewer)
    rounds: tuple[RoundRow, ...]
    queue_depth: int
    queue_by_state: tuple[tuple[str, int], ...]
    votes_chart: BarChart
    latency_chart: BarChart
    token_required: bool
    generated_at: dt.datetime
    alerts: tuple[AlertLine, ...] = ()
    analytics: AnalyticsView | None = None
    service_paused: bool = False
    dry_run: bool = False


def listener_info(listener: ListenerView, now: dt.datetime) -> ListenerInfo:
    cursor = listener.extra.get("cursorBlock")
    lag = None
    if listener.head_block is not None and isinstance(cursor, int):
        lag = max(0, listener.head_block - cursor)
    last_event = listener.extra.get("lastEventTime")
    return ListenerInfo(
        connected=listener.connected and listener.subscribed,
        head_block=listener.head_block,
        head_age=duration_text(head_age(listener, now)),
        lag_blocks=lag,
        reconnects=listener.reconnects,
        last_event=when_text(last_event if isinstance(last_event, dt.datetime) else None, now),
        blind_reason=listener.blind_reason,
    )


def node_card(
    stats: NodeVoteStats,
    chain: NodeChainState | None,
    now: dt.datetime,
    pauses: PauseState | None = None,
) -> NodeCard:
    pauses = pauses or PauseState()
    balance = chain.eth_balance_wei if chain is not None else None
    return NodeCard(
        name=stats.name,
        address=stats.address,
        address_short=short_address(stats.address),
        strategy=stats.strategy,
        eth_balance=short_units(balance),
        eth_balance_exact=units(balance) or "-",
        votes_left=votes_affordable(balance, chain.required_wei) if chain is not None else None,
        dloop_weight=(units(chain.dloop_balance_wei) if chain is not None else None) or "-",
        votes_cast=stats.cast,
        votes_pending=stats.pending,
        votes_failed=stats.failed,
        last_vote=when_text(stats.last_vote_at, now),
        status=node_status(chain),
        error=chain.error if chain is not None else "chain state unavailable",
        paused=pauses.paused(stats.name),
        paused_reason=pauses.reason(stats.name),
        node_paused=stats.name in pauses.nodes,
    )


def proposal_card(proposal: ActiveProposal, chain_now: dt.datetime) -> ProposalCard:
    def weight(raw: str) -> str:
        return (units(int(raw)) or raw) if raw.isdigit() else raw

    no_asset = (
        proposal.asset_symbol is None and int(proposal.asset_address, 16) == 0 and proposal.amount == "0"
    )
    return ProposalCard(
        id=proposal.id,
        type_name=proposal.proposal_type_name,
        asset="" if no_asset else proposal.asset_symbol or short_address(proposal.asset_address),
        amount=""
        if no_asset
        else proposal.amount_units
        if proposal.amount_units is not None
        else proposal.amount,
        description=proposal.description,
        time_left=duration_text((proposal.end_time_utc - chain_now).total_seconds()),
        votes_for=weight(proposal.votes_for) or "0",
        votes_against=weight(proposal.votes_against) or "0",
        deployment=proposal.deployment,
        votes=tuple(
            VoteCell(
                node=v.node,
                decision=v.decision or "-",
                reason=v.reason or "",
                state=v.state,
                tx_hash=v.tx_hash,
                tx_short=short_address(v.tx_hash, 8, 4) if v.tx_hash else "-",
            )
            for v in sorted(proposal.votes, key=lambda v: v.node)
        ),
    )


def round_row(record: RoundRecord, now: dt.datetime) -> RoundRow:
    end = record.finished_at or now
    summary = (
        f"scanned {record.proposals_scanned}, new {record.new_proposals}, "
        f"missing votes {record.missing_votes}, sent {record.votes_sent}, confirmed {record.votes_confirmed}"
    )
    return RoundRow(
        id=record.id,
        kind=record.kind,
        state=record.state,
        started=when_text(record.started_at, now),
        took=duration_text((end - record.started_at).total_seconds()),
        summary=summary,
        error=record.error,
    )


def open_proposals(
    proposals: Iterable[ActiveProposal], chain_now: dt.datetime, limit: int
) -> tuple[list[ActiveProposal], int]:
    """The proposals still open at the chain's clock, newest first, at most `limit`; and how many are open."""
    still_open = sorted(
        (p for p in proposals if p.end_time_utc >= chain_now), key=lambda p: p.id, reverse=True
    )
    return still_open[:limit], len(still_open)


def queue_states(by_state: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple((state, count) for state, count in by_state.items() if count)


# -- alerts and analytics ------------------------------------------------------------------------------------

SEVERITY_ORDER = {"critical": 0, "warning": 1}


def alert_lines(alerts: Iterable[Alert], now: dt.datetime) -> tuple[AlertLine, ...]:
    """The firing alerts for the banner: critical first, then the longest firing first."""
    firing = sorted(
        (a for a in alerts if a.firing),
        key=lambda a: (SEVERITY_ORDER.get(a.severity, 2), a.first_seen, a.fingerprint),
    )
    return tuple(
        AlertLine(
            fingerprint=a.fingerprint,
            severity=a.severity,
            rule=a.rule,
            subject=a.subject,
            summary=a.summary,
            since=f"{a.first_seen.astimezone(dt.UTC):%H:%M:%S} UTC ({when_text(a.first_seen, now)})",
            since_exact=a.first_seen.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
        for a in firing
    )


def percent_text(value: float | None) -> str:
    """0.9583 -> "96 %"; a share that is not 0 or 1 never rounds to them ("99.6 %", "0.4 %")."""
    if value is None:
        return "-"
    percent = value * 100
    text = f"{percent:.0f}"
    if (text == "100" and value < 1) or (text == "0" and value > 0):
        text = f"{percent:.1f}"
    return f"{text} %"


def node_analytics(p: Performance) -> NodeAnalytics:
    return NodeAnalytics(
        name=p.name,
        participation=percent_text(p.participation),
        cast_of_owed=f"{p.votes_cast} of {p.votes_owed}",
        time_to_vote_p50=duration_text(p.time_to_vote_p50),
        time_to_vote_p95=duration_text(p.time_to_vote_p95),
        eth_spent=short_units(p.eth_spent_wei),
        eth_spent_exact=units(p.eth_spent_wei) or "0",
        agreement=percent_text(p.majority_agreement),
        agreement_detail=f"{p.agreed_with_majority} of {p.compared_with_majority} decided proposals",
    )


def approval_row(a: Approval) -> ApprovalRow:
    return ApprovalRow(a.key, a.proposals, a.decided, a.approved, percent_text(a.rate))


def analytics_view(report: Report, nodes: Sequence[str] = ()) -> AnalyticsView:
    """The dashboard's share of `GET /analytics`: per node (only `nodes` when given: the configured ones) and
    per proposal type."""
    shown = set(nodes)
    rate = percent_text(None if report.decided == 0 else report.approved / report.decided)
    ended = (
        f"{report.decided} ended, {report.approved} approved ({rate})" if report.decided else "none ended yet"
    )
    return AnalyticsView(
        proposals=report.proposals,
        decided=report.decided,
        approved=report.approved,
        approval_rate=rate,
        summary=f"{report.proposals} {'proposal' if report.proposals == 1 else 'proposals'}, {ended}",
        nodes=tuple(node_analytics(p) for p in report.nodes if not shown or p.name in shown),
        by_type=tuple(approval_row(a) for a in report.by_type),
    )
