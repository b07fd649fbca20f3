"""The dashboard's pure parts without I/O: content negotiation, formatting, the two charts, the live feed's
events and queues; and the templates' escaping, rendered from a hand-made model."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest

from storage.queries import NodeVoteStats
from tests.support.waiting import wait_until
from web.dashboard import CONTENT_SECURITY_POLICY
from web.dashboard_view import (
    Dashboard,
    ListenerInfo,
    ServiceInfo,
    bar_chart,
    duration_text,
    hour_labels,
    latency_histogram,
    node_card,
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
        ("alert", {"status": "unhealthy", "was": "healthy"}),
    ]
    burst = changes(LiveState(0), LiveState(1000))
    assert [e.data["id"] for e in burst] == list(range(951, 1001))  # the newest 50


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
        votes=votes,
    )
    stats = NodeVoteStats(1, "ai-gov-01", "0x" + "33" * 20, "conservative", {"confirmed": 3}, NOW)
    chain = NodeChainState("0x" + "33" * 20, 10**18, 10**21, 4, required_wei=10**15)
    return Dashboard(
        service=ServiceInfo("0.1.0", "5 s", "0x" + "44" * 20, 31337, "production", "healthy", ()),
        listener=ListenerInfo(True, 100, "1.0 s", 0, 0, "now", None),
        nodes=(node_card(stats, chain, NOW),),
        proposals=(proposal_card(proposal, NOW),),
        proposals_active=1,
        rounds=(),
        queue_depth=0,
        queue_by_state=(),
        votes_chart=bar_chart([1, 2], ["a", "b"]),
        latency_chart=bar_chart([3], [HOSTILE]),
        token_required=False,
        generated_at=NOW,
    )


def test_the_sections_escape_everything_from_the_chain() -> None:
    engine = template_config().engine_instance
    html = engine.get_template(SECTIONS).render(d=_model())
    assert HOSTILE not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<img" not in html and "<script" not in html and "style=" not in html
    node = node_card(
        NodeVoteStats(1, "n", "0x" + "33" * 20, "s", {}, None),
        NodeChainState("0x" + "33" * 20, 10**18, None, None, 10**15),
        NOW,
    )
    assert node.votes_left == 1000 and node.status == "active"


def test_the_policy_forbids_inline_and_foreign_scripts() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'self'"
    assert directives["style-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
