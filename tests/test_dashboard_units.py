"""The dashboard's pure parts without I/O: content negotiation, formatting, the two charts, the live feed's
events and queues; and the templates' escaping, rendered from a hand-made model."""

from __future__ import annotations

import dataclasses
import datetime as dt

import anyio
import pytest

from monitor.analytics import Outcome, ProposalFact, VoteFact, report
from monitor.engine import Alert
from storage.controls import PauseState
from storage.queries import NodeVoteStats
from tests.support.waiting import wait_until
from web.caches import AnalyticsMemo
from web.dashboard import CONTENT_SECURITY_POLICY
from web.dashboard_view import (
    Dashboard,
    ListenerInfo,
    ServiceInfo,
    alert_lines,
    analytics_view,
    bar_chart,
    duration_text,
    hour_labels,
    latency_histogram,
    node_card,
    percent_text,
    prefers_html,
    proposal_card,
    short_address,
    short_units,
    votes_affordable,
    votes_per_hour,
)
from web.live import LiveEvent, LiveFeed, LiveState, Subscriber, changes
from web.pages import SECTIONS, template_config
from web.ports import NodeChainState
from web.schemas import ActiveProposal, NodeVoteBrief

NOW = dt.datetime(2026, 1, 1, 12, 30, tzinfo=dt.UTC)
HOSTILE = "<img src=x onerror=alert(1)>"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER, True),
        ("*/*", False),  # curl
        (None, False),
        ("", False),
        ("application/json", False),
        ("text/html, application/json", False),  # a tie keeps today's JSON
        ("application/json;q=0.5, text/html", True),
        ("text/html;q=0", False),
        ("text/html;q=bogus", False),
        ("text/*", False),  # only an explicit text/html counts
    ],
)
def test_only_a_request_preferring_html_gets_the_page(accept: str | None, html: bool) -> None:
    assert prefers_html(accept) is html


def test_formatting() -> None:
    assert short_address("0x70997970C51812dc3A010C7d01b50e0d17dc79C8") == "0x7099…79C8"
    assert short_address("0x12") == "0x12"
    assert duration_text(None) == "-"
    assert duration_text(3.25) == "3.2 s"
    assert duration_text(42) == "42 s"
    assert duration_text(303) == "5 min 3 s"
    assert duration_text(3 * 3600 + 720) == "3 h 12 min"
    assert duration_text(52 * 3600) == "2 d 4 h"
    assert duration_text(-5) == "0.0 s"
    assert short_units(9999_993773575230295614) == "9999.9937"
    assert short_units(None) == "-"


def test_votes_a_balance_still_pays_for() -> None:
    per_vote = 150_000 * (2 * 10**9 + 10**9)  # gas per vote x (2 x base fee + tip)
    assert votes_affordable(10 * per_vote + 1, per_vote) == 10
    assert votes_affordable(per_vote - 1, per_vote) == 0
    assert votes_affordable(None, per_vote) is None
    assert votes_affordable(10**18, 0) is None


def test_votes_per_hour_buckets_the_last_day_oldest_first() -> None:
    times = [NOW, NOW - dt.timedelta(minutes=59), NOW - dt.timedelta(hours=1), NOW - dt.timedelta(hours=23.9)]
    times += [NOW - dt.timedelta(hours=24), NOW + dt.timedelta(seconds=1)]  # outside the window
    counts = votes_per_hour(times, NOW)
    assert len(counts) == 24 and counts[-1] == 2 and counts[-2] == 1 and counts[0] == 1 and sum(counts) == 4
    labels = hour_labels(NOW)
    assert labels[-1] == "12h" and labels[0] == "13h"


def test_latency_histogram_buckets() -> None:
    assert latency_histogram([0.1, 0.99, 1.0, 4.9, 9, 29, 59, 299, 301, 10_000]) == [2, 1, 1, 1, 1, 1, 1, 2]


def test_bar_chart_geometry() -> None:
    chart = bar_chart([0, 5, 10], ["a", "b", "c"], width=300, height=120)
    assert chart.peak == 10 and chart.total == 15
    empty, half, full = chart.bars
    assert empty.height == 0 and full.height == pytest.approx(100.0) and half.height == pytest.approx(50.0)
    assert full.y + full.height == pytest.approx(chart.baseline) and full.y == pytest.approx(4.0)
    assert half.x > empty.x and all(b.width > 0 for b in chart.bars)
    assert full.label == "c: 10"
    tiny = bar_chart([1, 1000], ["x", "y"])
    assert tiny.bars[0].height >= 1.0  # one vote still shows
    assert bar_chart([0, 0], ["x", "y"]).peak == 0


# -- the live feed -----------------------------------------------------------------------------------------


def test_changes_between_two_states() -> None:
    before = LiveState(3, (("confirmed", 15),), (1, "startup", "done"), (True, 0, None), "healthy")
    assert changes(None, before) == []
    assert changes(before, before) == []
    after = LiveState(
        5, (("confirmed", 15), ("queued", 10)), (2, "manual", "running"), (False, 1, None), "unhealthy"
    )
    kinds = [(e.kind, e.data) for e in changes(before, after)]
    assert kinds == [
        ("proposal", {"id": 4}),
        ("proposal", {"id": 5}),
        ("votes", {"byState": {"confirmed": 15, "queued": 10}}),
        ("round", {"id": 2, "kind": "manual", "state": "running"}),
        ("listener", {"connected": False, "reconnects": 1, "blindReason": None}),
        ("alert", {"firing": [], "fired": [], "resolved": [], "status": "unhealthy", "was": "healthy"}),
    ]
    burst = changes(LiveState(0), LiveState(1000))
    assert [e.data["id"] for e in burst] == list(range(951, 1001))  # the newest 50


def test_an_alert_event_when_the_set_of_firing_alerts_changes_and_a_controls_event_on_a_pause() -> None:
    quiet = LiveState(health="healthy")
    low = LiveState(health="healthy", alerts=("NodeLowBalance:ai-gov-03",))
    both = LiveState(health="healthy", alerts=("ListenerDown:listener", "NodeLowBalance:ai-gov-03"))
    [fired] = changes(quiet, low)
    assert fired.kind == "alert" and fired.data["fired"] == ["NodeLowBalance:ai-gov-03"]
    assert fired.data["firing"] == ["NodeLowBalance:ai-gov-03"] and fired.data["resolved"] == []
    [more] = changes(low, both)
    assert more.data["fired"] == ["ListenerDown:listener"]
    assert more.data["firing"] == ["ListenerDown:listener", "NodeLowBalance:ai-gov-03"]
    [gone] = changes(both, quiet)
    assert gone.data["firing"] == [] and gone.data["resolved"] == [
        "ListenerDown:listener",
        "NodeLowBalance:ai-gov-03",
    ]
    assert changes(low, low) == []  # still firing: nothing new
    [paused] = changes(quiet, LiveState(health="healthy", pauses=(False, ("ai-gov-02",))))
    assert (paused.kind, paused.data) == ("controls", {"servicePaused": False, "pausedNodes": ["ai-gov-02"]})


def test_the_banner_lists_firing_alerts_critical_first_then_the_oldest() -> None:
    def alert(rule: str, subject: str, severity: str, minutes: int, resolved: bool = False) -> Alert:
        seen = NOW - dt.timedelta(minutes=minutes)
        return Alert(
            f"{rule}:{subject}",
            rule,
            subject,
            severity,
            f"{rule} about {subject}",
            seen,
            NOW,
            resolved_at=NOW if resolved else None,
        )

    lines = alert_lines(
        [
            alert("NodeLowBalance", "ai-gov-03", "warning", 5),
            alert("NodeNoWeight", "ai-gov-01", "warning", 50),
            alert("ListenerDown", "listener", "critical", 1),
            alert("VoteFailed", "proposal 3 / ai-gov-02", "warning", 90, resolved=True),
        ],
        NOW,
    )
    assert [(a.rule, a.severity) for a in lines] == [
        ("ListenerDown", "critical"),
        ("NodeNoWeight", "warning"),
        ("NodeLowBalance", "warning"),
    ]
    assert (
        lines[0].since == "12:29:00 UTC (1 min 0 s ago)" and lines[0].since_exact == "2026-01-01 12:29:00 UTC"
    )
    assert lines[0].summary == "ListenerDown about listener" and lines[0].subject == "listener"
    assert alert_lines([], NOW) == ()


def test_percentages_never_round_to_all_or_nothing() -> None:
    assert percent_text(None) == "-"
    assert percent_text(0.0) == "0 %" and percent_text(1.0) == "100 %"
    assert percent_text(0.9583) == "96 %" and percent_text(0.25) == "25 %"
    assert percent_text(0.998) == "99.8 %" and percent_text(0.002) == "0.2 %"


def test_analytics_section_is_the_analytics_report_per_node_and_per_proposal_type() -> None:
    start = NOW - dt.timedelta(days=2)
    ended = start + dt.timedelta(days=1)
    proposals = [
        ProposalFact(1, "invest", "USDC", start, ended, Outcome(10, 2, "Executed", True)),
        ProposalFact(2, "invest", "WBTC", start, ended, Outcome(1, 5, "Defeated", False)),
        ProposalFact(3, "divest", "USDC", start, NOW + dt.timedelta(days=1)),
    ]
    votes = [
        VoteFact(
            1,
            "ai-gov-01",
            "conservative",
            "confirmed",
            "for",
            start + dt.timedelta(seconds=2),
            60_000,
            10**15,
        ),
        VoteFact(
            2,
            "ai-gov-01",
            "conservative",
            "confirmed",
            "for",
            start + dt.timedelta(seconds=4),
            60_000,
            10**15,
        ),
        VoteFact(3, "ai-gov-01", "conservative", "queued"),
        VoteFact(1, "ai-gov-02", "aggressive", "failed"),
        VoteFact(2, "ai-gov-02", "aggressive", "confirmed", "against", start + dt.timedelta(seconds=10)),
        VoteFact(1, "old-node", "aggressive", "confirmed", "for", start + dt.timedelta(seconds=3)),
    ]
    result = report(proposals, votes, now=NOW, nodes=["ai-gov-01", "ai-gov-02"])
    view = analytics_view(result, ["ai-gov-01", "ai-gov-02"])
    assert (view.proposals, view.decided, view.approved, view.approval_rate) == (3, 2, 1, "50 %")
    assert view.summary == "3 proposals, 2 ended, 1 approved (50 %)"
    assert analytics_view(report([], [], now=NOW)).summary == "0 proposals, none ended yet"
    one, two = view.nodes  # a node no longer configured is left out
    assert (one.name, one.participation, one.cast_of_owed) == ("ai-gov-01", "100 %", "2 of 2")
    assert (one.time_to_vote_p50, one.time_to_vote_p95) == ("3.0 s", "3.9 s")
    assert (one.eth_spent, one.eth_spent_exact) == ("0.002", "0.002")
    assert (one.agreement, one.agreement_detail) == ("50 %", "1 of 2 decided proposals")
    assert (two.participation, two.agreement, two.eth_spent) == ("50 %", "100 %", "0")
    assert [(t.key, t.proposals, t.decided, t.approved, t.rate) for t in view.by_type] == [
        ("divest", 1, 0, 0, "-"),
        ("invest", 2, 2, 1, "50 %"),
    ]


def test_the_dashboard_analytics_are_computed_again_only_when_due() -> None:
    memo = AnalyticsMemo(min_age=2, max_age=15)
    assert memo.due(0, 100.0)
    memo.store(report([], [], now=NOW), 0, 100.0)
    assert not memo.due(0, 110.0)  # nothing written, younger than max_age
    assert not memo.due(1, 101.0)  # written, but computed under min_age ago
    assert memo.due(1, 102.0) and memo.due(0, 115.0)


def test_a_node_card_says_whether_the_node_signs() -> None:
    stats = NodeVoteStats(1, "ai-gov-02", "0x" + "33" * 20, "aggressive", {}, None)
    assert not node_card(stats, None, NOW).paused
    own = node_card(stats, None, NOW, PauseState(nodes=frozenset({"ai-gov-02"})))
    assert own.paused and own.node_paused and own.paused_reason == "signing paused for node ai-gov-02"
    service = node_card(stats, None, NOW, PauseState(service=True))
    assert service.paused and not service.node_paused
    assert service.paused_reason == "signing paused for the whole service"


def test_a_slow_subscriber_loses_the_oldest_events_never_blocks() -> None:
    subscriber = Subscriber(size=3)
    for number in range(5):
        subscriber.put(LiveEvent("proposal", {"id": number}))
    assert subscriber.dropped == 2

    async def take() -> list[LiveEvent] | None:
        return await subscriber.take(0.01)

    events = anyio.run(take)
    assert events is not None and [e.data["id"] for e in events] == [2, 3, 4]
    assert anyio.run(take) == []  # nothing new: a keep-alive
    subscriber.close()
    assert anyio.run(take) is None


def test_the_feed_reads_only_while_watched_and_close_ends_every_stream() -> None:
    reads: list[bool] = []
    states = iter([LiveState(1), LiveState(2), LiveState(2, (("queued", 5),))])

    async def read(_previous: LiveState | None, fresh: bool) -> LiveState:
        reads.append(fresh)
        return next(states, LiveState(2, (("queued", 5),)))

    feed = LiveFeed(read_state=read, version=lambda: 7, interval=0.01, recheck=60)

    async def scenario() -> list[dict[str, object]]:
        messages: list[dict[str, object]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed.run)
            await anyio.sleep(0.05)
            assert reads == []  # nobody watching: no reads at all

            async def consume() -> None:
                async for message in feed.stream(keepalive=5):
                    messages.append(message)

            tg.start_soon(consume)
            await wait_until(lambda: len(messages) >= 3, timeout=5, what="hello, proposal 2, votes")
            feed.close()
            await wait_until(lambda: not feed.subscribers, timeout=2, what="the stream to end")
            tg.cancel_scope.cancel()
        return messages

    messages = anyio.run(scenario)
    assert [m.get("event") for m in messages[:3]] == ["hello", "proposal", "votes"]
    assert reads[0] is True and not any(reads[1:])  # the counter did not move: no database re-reads
    assert feed.subscribe().closed  # a closed feed refuses new streams


# -- the templates -----------------------------------------------------------------------------------------


def _model() -> Dashboard:
    votes = [NodeVoteBrief("ai-gov-01", "confirmed", "for", 0.9, f"reason {HOSTILE}", "0x" + "ab" * 32)]
    proposal = ActiveProposal(
        id=7,
        proposer="0x" + "11" * 20,
        description=HOSTILE,
        proposal_type=0,
        proposal_type_name="invest",
        asset_address="0x" + "22" * 20,
        asset_symbol="USDC",
        amount="500000000",
        amount_units="500",
        votes_for="1000000000000000000000",
        votes_against="0",
        end_time=int((NOW + dt.timedelta(days=1)).timestamp()),
        end_time_utc=NOW + dt.timedelta(days=1),
        state=1,
        status="Active",
        executed=False,
        chain_id=31337,
        deployment="default",
        votes=votes,
    )
    stats = NodeVoteStats(1, "ai-gov-01", "0x" + "33" * 20, "conservative", {"confirmed": 3}, NOW)
    chain = NodeChainState("0x" + "33" * 20, 10**18, 10**21, 4, required_wei=10**15)
    hostile_alert = Alert(
        f"VoteFailed:{HOSTILE}", "VoteFailed", HOSTILE, "warning", f"failed: {HOSTILE}", NOW, NOW
    )
    analytics = report(
        [ProposalFact(7, HOSTILE, "USDC", NOW, NOW, Outcome(1, 0, "Executed", True))],
        [VoteFact(7, "ai-gov-01", "conservative", "confirmed", "for", NOW, 1, 1)],
        now=NOW,
    )
    return Dashboard(
        service=ServiceInfo("0.1.0", "5 s", "0x" + "44" * 20, 31337, "production", "healthy", ()),
        listener=ListenerInfo(True, 100, "1.0 s", 0, 0, "now", None),
        nodes=(node_card(stats, chain, NOW, PauseState(nodes=frozenset({"ai-gov-01"}))),),
        proposals=(proposal_card(proposal, NOW),),
        proposals_active=1,
        rounds=(),
        queue_depth=0,
        queue_by_state=(),
        votes_chart=bar_chart([1, 2], ["a", "b"]),
        latency_chart=bar_chart([3], [HOSTILE]),
        token_required=False,
        generated_at=NOW,
        alerts=alert_lines([hostile_alert], NOW),
        analytics=analytics_view(analytics),
        dry_run=True,
    )


def test_the_sections_escape_everything_from_the_chain() -> None:
    engine = template_config().engine_instance
    html = engine.get_template(SECTIONS).render(d=_model())
    assert HOSTILE not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<img" not in html and "<script" not in html and "style=" not in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 5  # alert subject and summary, proposal type
    assert 'data-control="/nodes/ai-gov-01/resume"' in html and 'data-control="/pause"' in html
    assert 'data-node="ai-gov-01" data-paused="true"' in html and ">dry run<" in html
    quiet = engine.get_template(SECTIONS).render(d=dataclasses.replace(_model(), alerts=()))
    assert '<section data-section="alerts" id="alerts" class="alerts" data-firing="0" hidden>' in quiet
    node = node_card(
        NodeVoteStats(1, "n", "0x" + "33" * 20, "s", {}, None),
        NodeChainState("0x" + "33" * 20, 10**18, None, None, 10**15),
        NOW,
    )
    assert node.votes_left == 1000 and node.status == "active"
    assert 'title="deployment"' not in html  # one deployment: no tag
    [card] = _model().proposals
    several = dataclasses.replace(_model(), proposals=(dataclasses.replace(card, deployment="beta"),))
    assert '<span class="tag" title="deployment">beta</span>' in engine.get_template(SECTIONS).render(
        d=several
    )


def test_the_policy_forbids_inline_and_foreign_scripts() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'self'"
    assert directives["style-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
