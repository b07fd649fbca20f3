"""The pause switches over real HTTP and from the CLI: `POST /pause`, `/resume`, `/nodes/{name}/pause|resume`
(answers, bodies, an unknown node, the trigger's auth rules), and `dloop pause|resume ai-gov-02` against a
running service and with none running (it writes the database, where a service started later finds it).

The service runs in-process (`running_service`) on the session devnet, every chain change reverted after each
test; nothing needs a proposal, so no vote is cast.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings
from devtools.anvil import AnvilProcess, free_port
from devtools.devnet import DevnetInfo
from dloop import cli
from tests.support.database import migrate
from tests.support.service import devnet_environ, devnet_settings, non_loopback_address, running_service

pytestmark = pytest.mark.usefixtures("chain_snapshot")

NODE = "ai-gov-02"
PATHS = ("/pause", "/resume", f"/nodes/{NODE}/pause", f"/nodes/{NODE}/resume")


@pytest.fixture
def settings(anvil: AnvilProcess, devnet: DevnetInfo, tmp_path: Path) -> Settings:
    settings = devnet_settings(anvil.ws_url, devnet, tmp_path / "dloop.db")
    migrate(settings)
    return settings


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, timeout=10, **kwargs)


def stored_switches(settings: Settings) -> dict[str, bool]:
    """The operator_controls rows: scope ('*' = the service, or a node name) -> paused."""
    path = settings.database_url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(path) as db:
        return {
            scope: bool(paused) for scope, paused in db.execute("SELECT scope, paused FROM operator_controls")
        }


def test_pause_and_resume_answer_200_with_the_controls_and_404_for_an_unknown_node(
    settings: Settings,
) -> None:
    with running_service(settings, enable_listener=False) as svc:
        paused = post(f"{svc.url}/pause")
        assert paused.status_code == 200, paused.text
        body = paused.json()
        assert body["success"] is True and body["message"] == "signing paused for the whole service"
        assert body["controls"]["servicePaused"] is True and body["controls"]["pausedNodes"] == []
        assert body["controls"]["dryRun"] is False and body["controls"]["changedAt"] and body["timestamp"]
        nodes = httpx.get(f"{svc.url}/nodes", timeout=10).json()
        assert nodes["servicePaused"] is True
        assert {n["pausedReason"] for n in nodes["nodes"]} == {"signing paused for the whole service"}

        one = post(f"{svc.url}/nodes/{NODE}/pause")
        assert one.status_code == 200, one.text
        assert one.json()["message"] == f"signing paused for node {NODE}"
        assert one.json()["controls"] | {"changedAt": None} == {
            "servicePaused": True,
            "pausedNodes": [NODE],
            "dryRun": False,
            "changedAt": None,
        }

        resumed = post(f"{svc.url}/resume")
        assert (
            resumed.status_code == 200
            and resumed.json()["message"] == "signing resumed for the whole service"
        )
        assert resumed.json()["controls"]["servicePaused"] is False
        assert resumed.json()["controls"]["pausedNodes"] == [NODE]  # the node's own switch stays
        nodes = httpx.get(f"{svc.url}/nodes", timeout=10).json()["nodes"]
        assert {n["name"] for n in nodes if n["paused"]} == {NODE}
        overview = httpx.get(f"{svc.url}/", timeout=10).json()
        assert overview["controls"]["pausedNodes"] == [NODE] and not overview["controls"]["servicePaused"]
        metrics = httpx.get(f"{svc.url}/metrics", timeout=10).text
        assert f'dloop_signing_paused{{scope="node",node="{NODE}"}} 1' in metrics, metrics
        assert 'dloop_signing_paused{scope="service"} 0' in metrics, metrics
        assert stored_switches(settings) == {"*": False, NODE: True}  # in the database: every instance obeys

        for verb in ("pause", "resume"):
            unknown = post(f"{svc.url}/nodes/ai-gov-09/{verb}")
            assert unknown.status_code == 404, unknown.text
            reason = unknown.json()["reason"]
            assert "'ai-gov-09' is not configured" in reason and "ai-gov-01" in reason, reason
        assert stored_switches(settings) == {"*": False, NODE: True}  # nothing stored for it

        back = post(f"{svc.url}/nodes/{NODE}/resume")
        assert back.status_code == 200 and back.json()["message"] == f"signing resumed for node {NODE}"
        assert back.json()["controls"]["pausedNodes"] == []
    assert stored_switches(settings) == {"*": False, NODE: False}


def test_with_a_token_every_switch_needs_the_right_bearer(settings: Settings) -> None:
    with running_service(
        dataclasses.replace(settings, api_token="s3cret-token"), enable_listener=False
    ) as svc:
        for path in (*PATHS, "/nodes/ai-gov-09/pause"):  # the guard answers before the node is looked up
            missing = post(svc.url + path)
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer", path
            assert "Authorization" in missing.json()["reason"], path
            wrong = post(svc.url + path, headers={"Authorization": "Bearer s3cret-tokem"})
            assert wrong.status_code == 401 and wrong.json()["reason"] == "the bearer token is not valid", (
                path
            )
            basic = post(svc.url + path, headers={"Authorization": "Basic s3cret-token"})
            assert basic.status_code == 401, path
        assert stored_switches(settings) == {}  # nothing was switched by a refused request
        for path in PATHS:
            right = post(svc.url + path, headers={"Authorization": "Bearer s3cret-token"})
            assert right.status_code == 200 and right.json()["success"] is True, (path, right.text)
        unknown = post(f"{svc.url}/nodes/ai-gov-09/pause", headers={"Authorization": "Bearer s3cret-token"})
        assert unknown.status_code == 404


def test_without_a_token_a_non_loopback_client_may_not_switch(settings: Settings) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    with running_service(dataclasses.replace(settings, http_host=address), enable_listener=False) as svc:
        base = f"http://{address}:{svc.service.http.port}"
        for path in PATHS:
            response = post(base + path)
            assert response.status_code == 403, (path, response.text)
            assert "only loopback clients" in response.json()["reason"], path
    assert stored_switches(settings) == {}


def test_loopback_behind_a_proxy_header_is_refused_without_a_token(settings: Settings) -> None:
    with running_service(settings, enable_listener=False) as svc:
        for path in PATHS:
            response = post(svc.url + path, headers={"X-Forwarded-For": "203.0.113.7"})
            assert response.status_code == 403 and "proxy headers" in response.json()["reason"], path
    assert stored_switches(settings) == {}


@pytest.fixture
def cli_env(
    anvil: AnvilProcess,
    devnet: DevnetInfo,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The shell of an operator on the service's host: the devnet's settings in the environment."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = devnet_environ(
        anvil.ws_url, devnet, Path(settings.database_url.removeprefix("sqlite+aiosqlite:///"))
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DLOOP_API_TOKEN", raising=False)
    return env


def test_the_cli_pauses_and_resumes_a_node_through_the_running_service(
    settings: Settings,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with running_service(settings, enable_listener=False) as svc:
        monkeypatch.setenv("DLOOP_HTTP_PORT", str(svc.service.http.port))
        assert cli.main(["pause", NODE]) == 0
        out = capsys.readouterr().out
        assert f"signing paused for node {NODE}" in out and "no service answers" not in out, out
        assert f"signing: paused for {NODE}; the other nodes sign" in out, out
        nodes = httpx.get(f"{svc.url}/nodes", timeout=10).json()["nodes"]
        assert {n["name"] for n in nodes if n["paused"]} == {NODE}

        assert cli.main(["resume", NODE]) == 0
        out = capsys.readouterr().out
        assert f"signing resumed for node {NODE}" in out and "signing: active for every node" in out, out
        assert not any(n["paused"] for n in httpx.get(f"{svc.url}/nodes", timeout=10).json()["nodes"])

        assert cli.main(["pause", "ai-gov-09"]) == 2  # refused before asking anyone
        err = capsys.readouterr().err
        assert err.startswith("dloop: error: node: 'ai-gov-09' is not configured"), err
    assert stored_switches(settings) == {NODE: False}


def test_the_cli_with_no_service_running_writes_the_database_and_a_later_service_obeys(
    settings: Settings,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DLOOP_HTTP_PORT", str(free_port()))  # nothing listens there
    assert cli.main(["pause", NODE]) == 0
    out = capsys.readouterr().out
    assert "no service answers at http://127.0.0.1:" in out and "stored in the database" in out, out
    assert f"signing: paused for {NODE}; the other nodes sign" in out, out
    assert stored_switches(settings) == {NODE: True}

    with running_service(settings, enable_listener=False) as svc:  # started later: it finds the switch
        nodes = httpx.get(f"{svc.url}/nodes", timeout=10).json()["nodes"]
        assert {n["name"]: n["pausedReason"] for n in nodes if n["paused"]} == {
            NODE: f"signing paused for node {NODE}"
        }

    assert cli.main(["resume", NODE]) == 0
    out = capsys.readouterr().out
    assert "stored in the database" in out and "signing: active for every node" in out, out
    assert stored_switches(settings) == {NODE: False}
