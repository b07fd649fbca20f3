"""Service scenarios over real HTTP: reconcile without a listener, trigger authorisation, the HTTP port."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest
from web3 import Web3

from core.settings import Settings, load_settings
from devtools.anvil import AnvilProcess, free_port
from devtools.devnet import DevnetInfo, asset_dao
from tests.support.database import migrate
from tests.support.service import (
    create_proposals,
    devnet_environ,
    devnet_settings,
    non_loopback_address,
    queue_settled,
    running_service,
)
from tests.support.waiting import poll_until

NODES = 5


# The session anvil and devnet, every change of a test reverted after it.
pytestmark = pytest.mark.usefixtures("chain_snapshot")


@pytest.fixture
def settings(anvil: AnvilProcess, devnet: DevnetInfo, tmp_path: Path) -> Settings:
    settings = devnet_settings(anvil.ws_url, devnet, tmp_path / "dloop.db")
    migrate(settings)
    return settings


def test_reconcile_finds_and_votes_proposals_the_listener_never_saw(
    anvil: AnvilProcess, devnet: DevnetInfo, settings: Settings
) -> None:
    with running_service(settings, enable_listener=False) as svc:
        health = httpx.get(f"{svc.url}/health")
        assert health.status_code == 503 and health.json()["checks"]["subscription"]["ok"] is False
        created = create_proposals(anvil, devnet, 4)  # nobody is subscribed: only a reconcile can find them
        triggered = httpx.post(f"{svc.url}/trigger-voting")
        assert triggered.status_code == 202
        round_id = triggered.json()["roundId"]
        svc.call(svc.service.rounds.wait_for_round, round_id)
        result = httpx.get(f"{svc.url}/rounds/{round_id}").json()["round"]
        assert result["state"] == "done", result
        assert result["newProposals"] == 4 and result["missingVotes"] == 4 * NODES
        poll_until(lambda: queue_settled(svc.url, 4 * NODES), what="the found proposals voted")
        votes = httpx.get(f"{svc.url}/votes", params={"state": "confirmed", "limit": 100}).json()
        assert votes["total"] == 4 * NODES
    dao = asset_dao(Web3(Web3.HTTPProvider(anvil.http_url)), devnet.contract_address)
    for proposal_id in created:
        assert all(dao.functions.hasVoted(proposal_id, address).call() for address in devnet.node_addresses)


def test_trigger_with_a_token_needs_the_right_bearer(settings: Settings) -> None:
    with running_service(dataclasses.replace(settings, api_token="s3cret-token")) as svc:
        url = f"{svc.url}/trigger-voting"
        missing = httpx.post(url)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "Authorization" in missing.json()["reason"]
        wrong = httpx.post(url, headers={"Authorization": "Bearer s3cret-tokem"})
        assert wrong.status_code == 401 and wrong.json()["reason"] == "the bearer token is not valid"
        right = httpx.post(url, headers={"Authorization": "Bearer s3cret-token"})
        assert right.status_code == 202 and right.json()["success"] is True
        assert httpx.get(f"{svc.url}/health").status_code in (200, 503)  # reads need no token


def test_without_a_token_a_non_loopback_client_is_refused(settings: Settings) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    # Served on that interface only, for the few hundred milliseconds of the test.
    with running_service(dataclasses.replace(settings, http_host=address)) as svc:
        assert svc.url.endswith(f":{svc.service.http.port}")
        response = httpx.post(f"http://{address}:{svc.service.http.port}/trigger-voting")
        assert response.status_code == 403, response.text
        assert "only loopback clients" in response.json()["reason"]


def test_the_http_port_setting_is_honoured(anvil: AnvilProcess, devnet: DevnetInfo, tmp_path: Path) -> None:
    port = free_port()
    settings = load_settings(
        devnet_environ(anvil.ws_url, devnet, tmp_path / "port.db", DLOOP_HTTP_PORT=str(port))
    )
    migrate(settings)
    with running_service(settings) as svc:
        assert svc.service.http.port == port
        assert httpx.get(f"http://localhost:{port}/").json()["system"]["totalNodes"] == NODES
