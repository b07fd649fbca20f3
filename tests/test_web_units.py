"""The web layer's pure parts: trigger authorisation, the one-proposal-per-line encoding, metrics, health;
and the caches behind /active-proposals and /health, on a real SQLite file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from litestar import Litestar, post
from litestar.testing import TestClient
from sqlalchemy import insert, select, text, update

from chain.types import AssetInfo, ProposalData
from storage import queries
from storage.engine import SessionFactory, create_engine, session_factory
from storage.models import ChainCursor, Vote
from storage.proposals import record_proposal
from storage.queries import ContractScope, DataVersion, writes_shown_tables
from tests.support.database import Database, NodeSpec, made_up_nodes
from web.active_cache import ActiveProposalsCache, ActiveSnapshot, needs_rebuild
from web.auth import authorize_trigger, bearer_token, cross_site, is_loopback, trigger_guard
from web.caches import HealthMemo
from web.db_probe import DatabaseProbe, probe_is_fresh
from web.errors import handle_http_exception
from web.metrics import MetricsSnapshot, render
from web.ports import DeploymentStatus, ListenerView, NodeChainState
from web.present import (
    ACTIVE_PROPOSAL_FIELDS,
    VOTE_BRIEF_FIELDS,
    active_proposal_lines,
    assemble_active_proposals,
    chain_now,
    encode_active_proposals,
    health_checks,
    health_status,
    join_proposal_lines,
    node_status,
)
from web.routes import parse_id
from web.schemas import (
    ActiveProposal,
    ActiveProposalsResponse,
    NodeVoteBrief,
    ProposalOut,
    TransactionOut,
    VoteOut,
)

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


# -- trigger authorisation ---


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("192.0.2.2", False),
        ("testclient", False),
        (None, False),
    ],
)
def test_loopback_detection(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_with_a_token_only_the_right_bearer_passes() -> None:
    def decide(header: str | None, host: str = "127.0.0.1") -> tuple[bool, int]:
        d = authorize_trigger(api_token="s3cret", authorization=header, client_host=host, proxied=False)
        return d.allowed, d.status

    assert decide(None) == (False, 401)
    assert decide("Bearer wrong") == (False, 401)
    assert decide("Basic s3cret") == (False, 401)
    assert decide("Bearer s3cret") == (True, 200)
    assert decide("bearer   s3cret ", host="203.0.113.7") == (True, 200)  # a token works from anywhere


def test_without_a_token_only_direct_loopback_clients_pass() -> None:
    def decide(host: str | None, proxied: bool = False) -> tuple[bool, int]:
        d = authorize_trigger(api_token=None, authorization=None, client_host=host, proxied=proxied)
        return d.allowed, d.status

    assert decide("127.0.0.1") == (True, 200)
    assert decide("::1") == (True, 200)
    assert decide("192.0.2.2") == (False, 403)
    assert decide("127.0.0.1", proxied=True) == (False, 403)  # a local reverse proxy relaying someone


def test_a_page_of_another_site_may_not_post_whatever_the_client_address() -> None:
    assert cross_site(fetch_site="cross-site", origin="https://evil.example", host="127.0.0.1:5001")
    assert cross_site(fetch_site="same-site", origin=None, host="127.0.0.1:5001")
    assert cross_site(fetch_site=None, origin="http://evil.example", host="127.0.0.1:5001")  # older browsers
    assert cross_site(fetch_site=None, origin="http://rebound.example:5001", host="127.0.0.1:5001") is True
    assert cross_site(fetch_site=None, origin="null", host="127.0.0.1:5001")  # sandboxed frames
    assert not cross_site(fetch_site="same-origin", origin="http://127.0.0.1:5001", host="127.0.0.1:5001")
    assert not cross_site(fetch_site=None, origin=None, host="127.0.0.1:5001")  # curl, scripts
    refused = authorize_trigger(
        api_token=None, authorization=None, client_host="127.0.0.1", proxied=False, from_other_site=True
    )
    assert (refused.allowed, refused.status) == (False, 403) and "another site" in refused.reason
    with_token = authorize_trigger(
        api_token="s3cret",
        authorization="Bearer s3cret",
        client_host="::1",
        proxied=False,
        from_other_site=True,
    )
    assert not with_token.allowed


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("Bearer") is None and bearer_token("Token abc") is None and bearer_token(None) is None


def test_the_guard_refuses_a_non_loopback_asgi_client() -> None:
    """Litestar's TestClient connects as host 'testclient': not loopback, so 403 without a token."""

    class _Context:
        api_token: str | None = None

    @post("/trigger-voting", status_code=202, guards=[trigger_guard])
    async def trigger() -> dict[str, bool]:
        return {"success": True}

    app = Litestar([trigger], exception_handlers={Exception: handle_http_exception})
    app.state.context = _Context()
    with TestClient(app) as client:
        refused = client.post("/trigger-voting")
        assert refused.status_code == 403 and "loopback" in refused.json()["reason"]
        app.state.context.api_token = "s3cret"
        assert client.post("/trigger-voting").status_code == 401
        assert client.post("/trigger-voting", headers={"Authorization": "Bearer s3cret"}).status_code == 202


# -- ids ---


@pytest.mark.parametrize(
    "raw", ["0", "-1", "abc", "1.5", "1e3", " ", "٣", "99999999999999999999", "9223372036854775808"]
)
def test_malformed_ids_are_refused(raw: str) -> None:
    from litestar.exceptions import ValidationException

    with pytest.raises(ValidationException):
        parse_id(raw, "proposal id")


def test_valid_ids() -> None:
    assert parse_id("1", "id") == 1 and parse_id("9223372036854775807", "id") == 2**63 - 1


# -- active proposals: one proposal per line ---


def _proposal(pid: int, description: str = "Allocate 500 USDC") -> ActiveProposal:
    return ActiveProposal(
        id=pid,
        proposer="0x" + "22" * 20,
        description=description,
        proposal_type=0,
        proposal_type_name="investment",
        asset_address="0x" + "11" * 20,
        asset_symbol="USDC",
        amount="500000000",
        amount_units="500",
        votes_for="0",
        votes_against="0",
        end_time=1_800_000_000,
        end_time_utc=NOW,
        state=1,
        status="active",
        executed=False,
        chain_id=31337,
        deployment="default",
        votes=[NodeVoteBrief("ai-gov-01", "queued", None, None, None, None)],
    )


def test_active_proposals_encoding_is_valid_json_with_one_proposal_per_line() -> None:
    tricky = 'He said "state":1 and\nleft {"id":99}'
    body = ActiveProposalsResponse(True, 3, NOW, [_proposal(1), _proposal(2, tricky), _proposal(3)])
    text = encode_active_proposals(body).decode()
    parsed = json.loads(text)
    assert parsed["count"] == 3 and [p["id"] for p in parsed["proposals"]] == [1, 2, 3]
    assert parsed["proposals"][1]["description"] == tricky
    # What the runbook's `grep -c '"state":1'` sees: one matching line per proposal, nothing else.
    assert sum(1 for line in text.splitlines() if '"state":1' in line) == 3
    assert sum(1 for line in text.splitlines() if "votesFor" in line) == 3


def test_an_empty_list_is_still_valid_json_and_counts_zero() -> None:
    body = encode_active_proposals(ActiveProposalsResponse(True, 0, NOW, [])).decode()
    assert json.loads(body)["proposals"] == [] and '"state":1' not in body


def test_a_document_assembled_from_cached_lines_is_byte_identical() -> None:
    proposals = [_proposal(1), _proposal(2, 'say "hi"\n'), _proposal(3)]
    expected = encode_active_proposals(ActiveProposalsResponse(True, 3, NOW, proposals))
    lines = [msgspec.json.encode(p) for p in proposals]
    assert assemble_active_proposals(NOW, 3, join_proposal_lines(lines)) == expected
    empty = encode_active_proposals(ActiveProposalsResponse(True, 0, NOW, []))
    assert assemble_active_proposals(NOW, 0, join_proposal_lines([])) == empty


def test_query_columns_are_labelled_with_the_response_fields() -> None:
    """/proposals/{id} and /votes build their structs from rows by label: one definition of each field."""
    several = queries.Scopes((SCOPE, queries.ContractScope(31338, CONTRACT, "side")))
    for scope in (SCOPE, several, queries.Scopes(())):
        vote_columns, proposal_columns = queries.vote_columns(scope), queries.proposal_columns(scope)
        assert [c.key for c in vote_columns] == [*VoteOut.__struct_fields__[:-1]]  # + transactions
        computed = {"end_time", "votes"}
        assert [c.key for c in proposal_columns] == [
            f for f in ProposalOut.__struct_fields__ if f not in computed
        ]
        # /active-proposals reads a subset of the same labels.
        assert queries.columns_labelled(proposal_columns, ACTIVE_PROPOSAL_FIELDS)
        assert queries.columns_labelled(vote_columns, VOTE_BRIEF_FIELDS)
    assert [c.key for c in queries.TRANSACTION_COLUMNS] == [*TransactionOut.__struct_fields__]


# -- the /active-proposals snapshot: when to rebuild, what is still open ---


def _snapshot(
    version: int = 3, built_at: float = 100.0, ends_in: tuple[int, ...] = (10, 20, 30)
) -> ActiveSnapshot:
    lines = [(NOW + dt.timedelta(seconds=s), f'{{"id":{i}}}'.encode()) for i, s in enumerate(ends_in, 1)]
    return ActiveSnapshot.build(version, built_at, NOW - dt.timedelta(seconds=60), lines)


def test_rebuild_decisions() -> None:
    snap = _snapshot()

    def decide(snapshot: ActiveSnapshot | None = snap, **changes: object) -> bool:
        args: dict[str, object] = {"version": 3, "watching": True, "clock": 100.5, "chain_now": NOW}
        args.update(changes)
        return needs_rebuild(snapshot, min_rebuild_interval=0.2, max_age=1.0, **args)  # type: ignore[arg-type]

    assert decide(None)  # nothing built yet
    assert not decide()  # nothing written, young, clock inside the covered range
    assert decide(watching=False)  # writes are not being watched: never trust the snapshot
    assert decide(version=4)  # this process wrote since
    assert not decide(version=4, clock=100.1)  # ... but the last rebuild is under 0.2 s old
    assert decide(clock=101.0)  # 1 s old: others' writes show within a second
    assert decide(clock=99.0)  # the monotonic clock never goes back; if it did, rebuild
    assert decide(chain_now=NOW - dt.timedelta(seconds=61))  # the chain clock went back past the query
    assert not decide(chain_now=NOW + dt.timedelta(days=1))  # later: proposals only drop out (open_at)


def test_open_at_filters_by_the_chain_clock() -> None:
    snap = _snapshot()
    assert snap.open_at(NOW) == (3, snap.joined_all)
    assert snap.open_at(NOW + dt.timedelta(seconds=10)) == (3, snap.joined_all)  # ends at == still open
    assert snap.open_at(NOW + dt.timedelta(seconds=15)) == (2, b'{"id":2},\n{"id":3}')
    assert snap.open_at(NOW + dt.timedelta(seconds=31)) == (0, b"")
    empty = _snapshot(ends_in=())
    assert empty.open_at(NOW) == (0, b"") and empty.earliest_end is None


def test_which_statements_count_as_writes_to_the_shown_tables() -> None:
    assert writes_shown_tables("UPDATE votes ...", update(Vote).values(state="sent"))
    assert not writes_shown_tables("INSERT INTO chain_cursor ...", insert(ChainCursor))
    assert writes_shown_tables("UPDATE votes SET state='failed'", text("UPDATE votes SET state='failed'"))
    assert writes_shown_tables("delete from recent_blocks", None)  # unknown text: assume it matters
    assert not writes_shown_tables("  select 1", text("select 1"))
    assert not writes_shown_tables("PRAGMA journal_mode", None)


def test_probe_freshness() -> None:
    assert not probe_is_fresh(None, 5.0, 1.0)
    from web.db_probe import ProbeResult

    assert probe_is_fresh(ProbeResult(5.0, None), 5.9, 1.0)
    assert not probe_is_fresh(ProbeResult(5.0, None), 6.0, 1.0)
    assert not probe_is_fresh(ProbeResult(5.0, None), 4.0, 1.0)


# -- health, node status, chain clock ---


def test_a_health_answer_is_reused_for_a_tenth_of_a_second_only() -> None:
    memo = HealthMemo()
    assert memo.fresh(100.0) is None
    memo.store((b'{"status":"healthy"}', 200), 100.0)
    assert memo.fresh(100.05) == (b'{"status":"healthy"}', 200)
    assert memo.fresh(100.2) is None  # a change is seen within max_age


def test_health_checks_need_a_fresh_head() -> None:
    live = ListenerView(True, True, True, head_block=10, head_received_at=NOW - dt.timedelta(seconds=2))
    checks = health_checks(database_error=None, listener=live, now=NOW, head_timeout=30)
    assert all(c.ok for c in checks.values())
    stale = ListenerView(True, True, True, head_block=10, head_received_at=NOW - dt.timedelta(seconds=31))
    checks = health_checks(database_error="database unreachable", listener=stale, now=NOW, head_timeout=30)
    assert not checks["head"].ok and "31.0 s old" in checks["head"].detail and not checks["database"].ok
    down = ListenerView(False, False, False)
    assert not any(
        c.ok
        for k, c in health_checks(database_error=None, listener=down, now=NOW, head_timeout=30).items()
        if k not in ("database", "events")  # events: whether a live listener would see proposals
    )


def test_a_blind_listener_makes_health_degraded_and_other_failures_unhealthy() -> None:
    fresh = NOW - dt.timedelta(seconds=2)
    seeing = ListenerView(
        True, True, True, head_block=10, head_received_at=fresh, contract_version="upstream"
    )
    checks = health_checks(database_error=None, listener=seeing, now=NOW, head_timeout=30)
    assert checks["events"].ok and "upstream events" in checks["events"].detail
    assert health_status(checks) == "healthy"
    blind = ListenerView(True, True, True, head_block=10, head_received_at=fresh, blind_reason="never saw 7")
    checks = health_checks(database_error=None, listener=blind, now=NOW, head_timeout=30)
    assert not checks["events"].ok and checks["events"].detail == "never saw 7"
    assert health_status(checks) == "degraded"
    checks = health_checks(database_error="database unreachable", listener=blind, now=NOW, head_timeout=30)
    assert health_status(checks) == "unhealthy"


def test_with_several_deployments_one_down_is_degraded_and_named_every_one_down_unhealthy() -> None:
    fresh = NOW - dt.timedelta(seconds=2)
    live = ListenerView(True, True, True, head_block=10, head_received_at=fresh, contract_version="upstream")
    down = ListenerView(False, False, False, last_error="connection refused", contract_version="upstream")

    def status(first: ListenerView, second: ListenerView | None, db: str | None = None) -> dict[str, Any]:
        deployments = [
            DeploymentStatus("alpha", ContractScope(31337, CONTRACT, "alpha"), first),
            DeploymentStatus("beta", ContractScope(31338, CONTRACT, "beta"), second, error="no answer"),
        ]
        checks = health_checks(
            database_error=db, listener=first, now=NOW, head_timeout=30, deployments=deployments
        )
        return {"status": health_status(checks), "checks": checks}

    assert status(live, live)["status"] == "healthy"
    for first, second in ((down, live), (live, down), (live, None)):  # the first one is not special
        answer = status(first, second)
        assert answer["status"] == "degraded", answer
        gone = "alpha" if first is down else "beta"
        assert not answer["checks"]["deployments"].ok and gone in answer["checks"]["deployments"].detail
        assert answer["checks"]["chain"].ok and f"{gone}: " in answer["checks"]["chain"].detail
    assert "beta: waiting for its chain (no answer)" in status(live, None)["checks"]["head"].detail
    assert status(down, down)["status"] == "unhealthy"
    assert status(down, None)["status"] == "unhealthy"
    assert status(live, live, db="database unreachable")["status"] == "unhealthy"


def test_node_status_from_balance_and_errors() -> None:
    assert node_status(NodeChainState("0x1", eth_balance_wei=10**18, required_wei=10**15)) == "active"
    assert node_status(NodeChainState("0x1", eth_balance_wei=10**14, required_wei=10**15)) == "unfunded"
    assert node_status(NodeChainState("0x1", eth_balance_wei=0)) == "unfunded"
    assert node_status(NodeChainState("0x1", error="timeout")) == "error"
    assert node_status(None) == "error"


def test_chain_clock_follows_the_head_not_the_wall() -> None:
    ahead = int((NOW + dt.timedelta(days=4)).timestamp())
    view = ListenerView(
        True, True, True, head_timestamp=ahead, head_received_at=NOW - dt.timedelta(seconds=5)
    )
    assert chain_now(view, NOW) == dt.datetime.fromtimestamp(ahead, dt.UTC) + dt.timedelta(seconds=5)
    assert chain_now(ListenerView(False, False, False), NOW) == NOW


# -- metrics ---


def test_metrics_exposition_format() -> None:
    text = render(
        MetricsSnapshot(
            vote_counts={("ai-gov-01", "confirmed"): 3, ('we"ird\\', "queued"): 1},
            queue_by_state={"pending": 0, "queued": 1, "sent": 0},
            head_block=120,
            head_lag_seconds=0.25,
            reconnects=2,
            sent_latencies=[0.2, 0.7, 3.0],
            mined_latencies=[1.5],
            rpc_errors={"RateLimited": 4},
            proposals_known=5,
            proposals_active=4,
            listener_up=True,
            voter_up=False,
        )
    )
    assert 'dloop_votes{node="ai-gov-01",state="confirmed"} 3' in text
    assert 'dloop_votes{node="we\\"ird\\\\",state="queued"} 1' in text
    assert 'dloop_vote_sent_seconds_bucket{le="0.25"} 1' in text
    assert 'dloop_vote_sent_seconds_bucket{le="1"} 2' in text
    assert 'dloop_vote_sent_seconds_bucket{le="+Inf"} 3' in text and "dloop_vote_sent_seconds_count 3" in text
    assert 'dloop_rpc_errors_total{kind="RateLimited"} 4' in text and "dloop_head_lag_seconds 0.25" in text
    assert 'dloop_component_up{component="voter"} 0' in text
    sample = re.compile(r"^[a-z_]+(\{[^}]*\})? [0-9.+Inf-]+$")
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), line


# -- the caches on a real SQLite file ---

CONTRACT = "0x" + "aa" * 20
SCOPE = ContractScope(31337, CONTRACT)
ENDS = 1_900_000_000  # voting end of every test proposal (chain time)
CHAIN_NOW = dt.datetime.fromtimestamp(ENDS - 3600, dt.UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Db:
    url: str
    sessions: SessionFactory
    version: DataVersion


@pytest.fixture
def db_nodes() -> list[NodeSpec]:
    return made_up_nodes(2)


@pytest.fixture
async def db(db: Database) -> AsyncIterator[Db]:
    """The shared `db` (tests/conftest.py) with two nodes, three proposals and a `DataVersion` watching it."""
    url, engine, sessions, nodes = db.url, db.engine, db.sessions, db.nodes
    usdc = AssetInfo("0x" + "11" * 20, "USDC", 6)
    for pid in (1, 2, 3):
        data = ProposalData(
            pid, 0, usdc.address, 500_000_000, f"Allocate {pid}", "0x" + "22" * 20,
            ENDS - 86_400, ENDS + pid, 0, 0, 1, False, usdc,
        )  # fmt: skip
        await record_proposal(
            sessions, chain_id=SCOPE.chain_id, contract=CONTRACT, data=data, source="subscription",
            node_ids=[n.id for n in nodes],
        )  # fmt: skip
    version = DataVersion()
    version.watch(engine)
    try:
        yield Db(url, sessions, version)
    finally:
        version.unwatch()


def _states(body: bytes) -> dict[int, list[str]]:
    return {p["id"]: [v["state"] for v in p["votes"]] for p in json.loads(body)["proposals"]}


async def _set_first_vote(sessions: SessionFactory, state: str) -> None:
    async with sessions.begin() as session:
        await session.execute(update(Vote).where(Vote.id == 1).values(state=state))


@pytest.mark.anyio
@pytest.mark.both_databases
async def test_the_snapshot_is_reused_until_this_process_writes_what_it_shows(db: Db) -> None:
    clock = FakeClock()
    cache = ActiveProposalsCache(db.sessions, lambda: SCOPE, db.version, clock=clock)
    first = await cache.answer(NOW, CHAIN_NOW)
    assert _states(first) == {1: ["queued", "queued"], 2: ["queued", "queued"], 3: ["queued", "queued"]}
    assert first.count(b"\n") == 5 and json.loads(first)["count"] == 3  # head, 3 lines, closing bracket

    clock.now += 0.5
    assert await cache.answer(NOW, CHAIN_NOW) == first and cache.rebuilds == 1
    async with db.sessions.begin() as session:  # the listener's cursor: not shown, nothing to rebuild
        await session.execute(insert(ChainCursor).values(stream="logs", block_number=7))
    assert await cache.answer(NOW, CHAIN_NOW) == first and cache.rebuilds == 1

    before = db.version.value
    await _set_first_vote(db.sessions, "confirmed")
    assert db.version.value > before  # bumped once the writing connection went back to the pool
    assert _states(await cache.answer(NOW, CHAIN_NOW))[1] == ["confirmed", "queued"]
    assert cache.rebuilds == 2

    # A burst of writes rebuilds at most every 0.2 s; the answer lags by no more than that.
    await _set_first_vote(db.sessions, "sent")
    clock.now += 0.1
    assert _states(await cache.answer(NOW, CHAIN_NOW))[1] == ["confirmed", "queued"]
    clock.now += 0.1
    assert _states(await cache.answer(NOW, CHAIN_NOW))[1] == ["sent", "queued"] and cache.rebuilds == 3


@pytest.mark.anyio
@pytest.mark.both_databases
async def test_other_processes_writes_show_within_max_age(db: Db) -> None:
    clock = FakeClock()
    cache = ActiveProposalsCache(db.sessions, lambda: SCOPE, db.version, clock=clock)
    await cache.answer(NOW, CHAIN_NOW)
    other = create_engine(db.url)  # another process's engine: its writes are not watched
    try:
        await _set_first_vote(session_factory(other), "failed")
    finally:
        await other.dispose()
    clock.now += 0.9
    assert _states(await cache.answer(NOW, CHAIN_NOW))[1] == ["queued", "queued"]
    clock.now += 0.1
    assert _states(await cache.answer(NOW, CHAIN_NOW))[1] == ["failed", "queued"]


@pytest.mark.anyio
@pytest.mark.both_databases
async def test_proposals_drop_out_as_the_chain_clock_passes_their_end(db: Db) -> None:
    clock = FakeClock()
    cache = ActiveProposalsCache(db.sessions, lambda: SCOPE, db.version, clock=clock)
    end_of_1 = dt.datetime.fromtimestamp(ENDS + 1, dt.UTC)
    assert json.loads(await cache.answer(NOW, end_of_1))["count"] == 3  # voting ends at == still open
    later = json.loads(await cache.answer(NOW, end_of_1 + dt.timedelta(seconds=0.5)))
    assert [p["id"] for p in later["proposals"]] == [2, 3] and later["count"] == 2 and cache.rebuilds == 1
    # The chain clock stepping back a lot (a reorg to an older head): the query did not cover it.
    assert json.loads(await cache.answer(NOW, CHAIN_NOW))["count"] == 3 and cache.rebuilds == 2
    assert json.loads(await cache.answer(NOW, end_of_1 + dt.timedelta(seconds=5)))["count"] == 0


@pytest.mark.anyio
@pytest.mark.both_databases
async def test_concurrent_requests_share_one_rebuild_and_unwatched_means_uncached(db: Db) -> None:
    cache = ActiveProposalsCache(db.sessions, lambda: SCOPE, db.version, clock=FakeClock())
    answers: list[bytes] = []

    async def ask() -> None:
        answers.append(await cache.answer(NOW, CHAIN_NOW))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(ask)
    assert len(set(answers)) == 1 and cache.rebuilds == 1
    db.version.unwatch()
    await cache.answer(NOW, CHAIN_NOW)
    await cache.answer(NOW, CHAIN_NOW)
    assert cache.rebuilds == 3


@pytest.mark.anyio
async def test_the_health_probe_runs_once_per_interval(db: Db, tmp_path: Path) -> None:
    clock = FakeClock()
    probe = DatabaseProbe(db.sessions, clock=clock)
    results: list[str | None] = []

    async def ask() -> None:
        results.append(await probe.error())

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(ask)
    assert results == [None] * 10 and probe.probes == 1
    clock.now += 0.99
    assert await probe.error() is None and probe.probes == 1
    clock.now += 0.01
    assert await probe.error() is None and probe.probes == 2

    broken = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'x.db'}")
    try:
        error = await DatabaseProbe(session_factory(broken), clock=clock).error()
    finally:
        await broken.dispose()
    assert error is not None and "database unreachable" in error


@pytest.mark.anyio
@pytest.mark.both_databases
async def test_several_deployments_read_as_one_with_each_rows_deployment(db: Db) -> None:
    """Another chain's proposal 1 beside this one's: every read names each row's deployment, one scope reads
    one deployment, and an id known on both is reported as such."""
    side = ContractScope(31338, CONTRACT, "side")
    main = dataclasses.replace(SCOPE, name="main")
    async with db.sessions() as session:
        node_ids = [n for (n,) in await session.execute(select(Vote.node_id).distinct())]
    usdc = AssetInfo("0x" + "11" * 20, "USDC", 6)
    data = ProposalData(
        1,
        0,
        usdc.address,
        7,
        "Another chain",
        "0x" + "22" * 20,
        ENDS - 86_400,
        ENDS + 9,
        0,
        0,
        1,
        False,
        usdc,
    )
    await record_proposal(
        db.sessions,
        chain_id=side.chain_id,
        contract=CONTRACT,
        data=data,
        source="subscription",
        node_ids=node_ids,
    )
    both = queries.Scopes((main, side))
    rows = await queries.active_proposal_rows(
        db.sessions,
        both,
        ends_at_or_after=CHAIN_NOW,
        proposal_fields=ACTIVE_PROPOSAL_FIELDS,
        vote_fields=VOTE_BRIEF_FIELDS,
    )
    lines = [json.loads(line) for _end, line in active_proposal_lines(rows)]
    assert sorted((p["deployment"], p["chainId"], p["id"]) for p in lines) == [
        ("main", 31337, 1), ("main", 31337, 2), ("main", 31337, 3), ("side", 31338, 1)
    ]  # fmt: skip
    page = await queries.list_votes(db.sessions, side)
    assert page.total == len(node_ids) and {(v["deployment"], v["chain_id"]) for v in page.items} == {
        ("side", 31338)
    }
    assert (await queries.list_votes(db.sessions, both)).total == 4 * len(node_ids)
    assert await queries.deployments_with_proposal(db.sessions, both, 1) == ["main", "side"]
    assert await queries.deployments_with_proposal(db.sessions, both, 2) == ["main"]
    detail = await queries.proposal_detail(db.sessions, side, 1)
    assert detail is not None and detail.proposal["deployment"] == "side" and detail.proposal["amount"] == "7"
    assert await queries.proposal_counts(db.sessions, queries.Scopes(()), now=CHAIN_NOW) == {
        "total": 0, "active": 0, "highest_id": 0
    }  # fmt: skip
