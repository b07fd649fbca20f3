"""The whole service on a devnet, over real HTTP (uvicorn in-process, curl and httpx as clients)."""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.chain import Chain
from tests.support.database import migrate
from tests.support.service import RunningService, devnet_settings, port_free, queue_settled, running_service
from tests.support.waiting import poll_until

PROPOSALS = 6
NODES = 5


pytestmark = pytest.mark.devnet(proposals=PROPOSALS)  # `module_chain`: a private anvil for this module


@pytest.fixture(scope="module")
def svc(module_chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """The service on 127.0.0.1:5001 when that port is free (so the runbook commands run verbatim)."""
    anvil, devnet = module_chain
    port = 5001 if port_free(5001) else 0
    settings = devnet_settings(
        anvil.ws_url, devnet, tmp_path_factory.mktemp("svc") / "dloop.db", http_port=port
    )
    migrate(settings)
    with running_service(settings) as running:
        poll_until(lambda: queue_settled(running.url, PROPOSALS * NODES), what="the devnet's proposals voted")
        yield running


def curl(command: str, port: int) -> str:
    """Run a runbook command; on another port than 5001 only the port is changed."""
    command = command.replace("localhost:5001", f"localhost:{port}")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def test_the_runbook_curl_commands_work_as_written(svc: RunningService) -> None:
    port = svc.service.http.port
    triggered = json.loads(curl("curl -X POST http://localhost:5001/trigger-voting", port))
    assert triggered["success"] is True and triggered["message"] == "Voting round triggered successfully"
    assert isinstance(triggered["roundId"], int) and triggered["timestamp"]

    lines = curl("curl -s http://localhost:5001/active-proposals | grep votesFor", port).splitlines()
    assert len(lines) == PROPOSALS and all('"votesFor":"' in line for line in lines)
    assert curl(
        "curl -s http://localhost:5001/active-proposals | grep -c '\"state\":1'", port
    ).strip() == str(PROPOSALS)

    health = json.loads(curl("curl -s http://localhost:5001/health", port))
    assert health["status"] == "healthy", health
    assert set(health["checks"]) == {"database", "chain", "subscription", "head", "events", "lanes"}
    # The only instance (SQLite's run lock) signs for every node; the check and the lanes say so.
    lanes = health["lanes"]
    assert len(lanes["owned"]) == NODES and lanes["standby"] is False
    assert lanes["instance"].startswith("voter-")
    assert all(lane["owned"] and lane["owner"] == lanes["instance"] for lane in lanes["lanes"])
    assert lanes["alertsOwner"] == lanes["instance"]  # and it evaluates the alerts (no lease on SQLite)
    assert health["checks"]["lanes"]["detail"].startswith("this instance signs for ai-gov-01")

    nodes = json.loads(curl("curl -s http://localhost:5001/nodes", port))
    assert nodes["count"] == NODES and {n["status"] for n in nodes["nodes"]} == {"active"}
    assert all(n["votesCast"] == PROPOSALS and n["dloopWeight"] for n in nodes["nodes"])

    overview = json.loads(curl("curl -s http://localhost:5001/", port))
    assert {"message", "status", "timestamp", "system", "listener", "queue"} <= set(overview)
    system = overview["system"]
    assert system["isRunning"] is True and system["totalNodes"] == NODES and system["activeNodes"] == NODES
    assert len(system["nodeStatuses"]) == NODES and overview["listener"]["connected"] is True
    assert overview["lanes"]["owned"] == [f"ai-gov-0{i}" for i in range(1, NODES + 1)]
    # SQLite: one instance by its run lock, no leases (no token, no expiry).
    assert overview["lanes"]["mode"] == "run-lock"
    assert all(lane["token"] is None and lane["expiresAt"] is None for lane in overview["lanes"]["lanes"])


def test_active_proposals_is_one_valid_json_document_with_a_proposal_per_line(svc: RunningService) -> None:
    response = httpx.get(f"{svc.url}/active-proposals")
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is True and body["count"] == PROPOSALS == len(body["proposals"])
    proposal_lines = [line for line in response.text.splitlines() if line.startswith('{"id":')]
    assert len(proposal_lines) == PROPOSALS
    first = body["proposals"][0]
    assert first["id"] == 1 and first["state"] == 1 and first["assetSymbol"] == "USDC"
    assert first["amount"] == "500000000" and first["amountUnits"] == "500"
    assert len(first["votes"]) == NODES and {v["state"] for v in first["votes"]} == {"confirmed"}


def test_polling_health_and_active_proposals_reuses_the_probe_and_the_snapshot(svc: RunningService) -> None:
    caches = svc.service.app.state.caches
    assert caches.version.watching  # started with the app: the service's writes invalidate the snapshot
    probes, rebuilds = caches.database.probes, caches.active.rebuilds
    started = time.monotonic()
    with httpx.Client(base_url=svc.url) as client:
        answers = {client.get("/active-proposals").json()["count"] for _ in range(30)}
        healthy = {client.get("/health").json()["checks"]["database"]["ok"] for _ in range(30)}
    elapsed = time.monotonic() - started
    assert answers == {PROPOSALS} and healthy == {True}
    assert caches.database.probes - probes <= 1 + elapsed  # one shared probe per second at most
    assert caches.active.rebuilds - rebuilds <= 1 + elapsed / 0.2  # at most every 0.2 s, whatever the load
    schema = httpx.get(f"{svc.url}/schema/openapi.json").json()["paths"]
    assert (
        "parameters" not in schema["/health"]["get"]
        and "parameters" not in schema["/active-proposals"]["get"]
    )


def test_proposal_detail_votes_rounds_metrics_and_openapi(svc: RunningService) -> None:
    detail = httpx.get(f"{svc.url}/proposals/2").json()["proposal"]
    assert detail["id"] == 2 and len(detail["votes"]) == NODES
    for vote in detail["votes"]:
        assert vote["decision"] in ("for", "against") and vote["reason"] and vote["state"] == "confirmed"
        assert vote["txHash"] and vote["transactions"][0]["txHash"] == vote["txHash"]
        # The price the decision used and the value at it (exact decimal text): 2,500 USDC at 1.
        assert (vote["price"], vote["value"]) == ("1", "2500"), vote

    page = httpx.get(f"{svc.url}/votes", params={"node": "ai-gov-02", "limit": 4}).json()
    assert page["total"] == PROPOSALS and len(page["votes"]) == 4 and page["limit"] == 4
    rest = httpx.get(f"{svc.url}/votes", params={"node": "ai-gov-02", "limit": 4, "offset": 4}).json()
    assert len(rest["votes"]) == PROPOSALS - 4
    assert {v["id"] for v in page["votes"]}.isdisjoint(v["id"] for v in rest["votes"])
    one = httpx.get(f"{svc.url}/votes", params={"proposal": 3, "state": "confirmed"}).json()
    assert one["total"] == NODES and {v["proposalId"] for v in one["votes"]} == {3}
    assert {(v["price"], v["value"]) for v in one["votes"]} == {("61000", "3050")}  # 0.05 WBTC at 61,000

    round_one = httpx.get(f"{svc.url}/rounds/1").json()["round"]
    assert round_one["kind"] == "startup" and round_one["proposalsScanned"] >= PROPOSALS

    metrics = httpx.get(f"{svc.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert f'dloop_votes{{node="ai-gov-01",state="confirmed"}} {PROPOSALS}' in text
    assert 'dloop_queue_depth{state="queued"} 0' in text
    assert 'dloop_lane_owned{deployment="default",node="ai-gov-03"} 1' in text
    owner_info = r'dloop_lane_owner_info\{deployment="default",node="ai-gov-03",owner="voter-[^"]+"\} 1'
    assert re.search(owner_info, text), text
    assert f'dloop_vote_mined_seconds_bucket{{le="+Inf"}} {PROPOSALS * NODES}' in text
    for family in ("dloop_head_lag_seconds", "dloop_listener_reconnects_total", "dloop_rpc_errors_total"):
        assert f"# TYPE {family}" in text

    schema = httpx.get(f"{svc.url}/schema/openapi.json").json()
    assert {"/", "/health", "/nodes", "/active-proposals", "/trigger-voting", "/metrics"} <= set(
        schema["paths"]
    )


def test_twenty_concurrent_triggers_start_one_round(svc: RunningService) -> None:
    def trigger() -> httpx.Response:
        return httpx.post(f"{svc.url}/trigger-voting", timeout=10)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: trigger(), range(20)))
    assert {r.status_code for r in responses} == {202}
    round_ids = {r.json()["roundId"] for r in responses}
    assert len(round_ids) == 1
    (round_id,) = round_ids
    svc.call(svc.service.rounds.wait_for_round, round_id)
    result = httpx.get(f"{svc.url}/rounds/{round_id}").json()["round"]
    assert result["state"] == "done" and result["phase"] is None
    assert httpx.get(f"{svc.url}/rounds/{round_id + 1}").status_code == 404  # no second round


MALFORMED: list[tuple[str, str, dict[str, str] | None, int]] = [
    ("GET", "/proposals/abc", None, 400),
    ("GET", "/proposals/0", None, 400),
    ("GET", "/proposals/-1", None, 400),
    ("GET", "/proposals/1e3", None, 400),
    ("GET", "/proposals/99999999999999999999999999", None, 400),
    ("GET", "/proposals/%F0%9F%92%A9", None, 400),
    ("GET", "/proposals/%00", None, 400),
    ("GET", "/proposals/4242", None, 404),
    ("GET", "/rounds/xyz", None, 400),
    ("GET", "/rounds/987654", None, 404),
    ("GET", "/votes?limit=0", None, 400),
    ("GET", "/votes?limit=abc", None, 400),
    ("GET", "/votes?limit=100000", None, 400),
    ("GET", "/votes?offset=-1", None, 400),
    ("GET", "/votes?offset=99999999999999999999999", None, 400),
    ("GET", "/votes?proposal=abc", None, 400),
    ("GET", "/votes?proposal=0", None, 400),
    ("GET", "/votes?proposal=99999999999999999999999", None, 400),
    ("GET", "/votes?state=bogus", None, 400),
    ("GET", "/votes?node=nobody", None, 400),
    ("GET", "/nope", None, 404),
    ("GET", "/active-proposals/extra", None, 404),
    ("GET", "/trigger-voting", None, 405),
    ("PUT", "/trigger-voting", None, 405),
    ("POST", "/", None, 405),
    ("DELETE", "/nodes", None, 405),
    ("POST", "/health", None, 405),
    ("PATCH", "/active-proposals", None, 405),
    ("POST", "/votes", {"content-type": "application/json"}, 405),
    ("POST", "/metrics", None, 405),
    ("POST", "/proposals/1", None, 405),
    ("POST", "/rounds/1", None, 405),
    ("POST", "/trigger-voting", {"x-forwarded-for": "203.0.113.9"}, 403),
    ("POST", "/trigger-voting", {"authorization": "Bearer whatever", "forwarded": "for=203.0.113.9"}, 403),
]


@pytest.mark.parametrize(("method", "path", "headers", "status"), MALFORMED)
def test_malformed_requests_get_a_json_4xx_with_a_reason(
    svc: RunningService, method: str, path: str, headers: dict[str, str] | None, status: int
) -> None:
    response = httpx.request(method, f"{svc.url}{path}", headers=headers, content=b"{not json")
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["status"] == status and body["reason"]


def test_garbage_bodies_and_query_strings_never_cause_a_5xx(svc: RunningService) -> None:
    paths = ["/", "/health", "/nodes", "/active-proposals", "/proposals/1", "/votes", "/rounds/1", "/metrics"]
    for path in paths:
        for query in ("", "?a=%zz", "?limit=&offset=&node=", "?" + "x=" * 2000):
            response = httpx.get(f"{svc.url}{path}{query}", headers={"content-type": "application/json"})
            assert response.status_code < 500, (path, query, response.text)
    response = httpx.post(
        f"{svc.url}/trigger-voting", content=b"\xff\xfe garbage", headers={"content-type": "application/json"}
    )
    assert response.status_code == 202  # the trigger takes no body: whatever is sent is ignored
