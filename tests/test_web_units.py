"""The web layer's pure parts: trigger authorisation, the one-proposal-per-line encoding, metrics, health."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from litestar import Litestar, post
from litestar.testing import TestClient

from web.auth import authorize_trigger, bearer_token, is_loopback, trigger_guard
from web.errors import handle_http_exception
from web.metrics import MetricsSnapshot, render
from web.ports import ListenerView, NodeChainState
from web.present import chain_now, encode_active_proposals, health_checks, node_status
from web.routes import parse_id
from web.schemas import ActiveProposal, ActiveProposalsResponse, NodeVoteBrief

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

    app = Litestar([trigger], exception_handlers={Exception: handle_http_exception})  # type: ignore[dict-item]
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
    text = encode_active_proposals(ActiveProposalsResponse(True, 0, NOW, [])).decode()
    assert json.loads(text)["proposals"] == [] and '"state":1' not in text


# -- health, node status, chain clock ---


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
        if k != "database"
    )


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
