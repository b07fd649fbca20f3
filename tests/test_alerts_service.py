"""Alerts end to end: the real service on a real chain, notifying real HTTP receivers (one stands in for
Slack). A firing then a resolved notification for a drained-then-refunded node, for anvil stopped then
started again from its --state (ListenerDown), and for a provider answering "Too Many Requests" (RpcErrors);
a receiver that answers 500 and one that hangs for 30 s do not delay the votes of a burst; no body holds a
key, a key's first 16 hex digits or the API token. `dloop alerts test` against a receiver that answers 200
and one that answers 500."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import httpx
import pytest
from web3 import Web3

from core.settings import load_settings
from devtools.anvil import AnvilProcess, free_port
from devtools.devnet import DevnetInfo, create_proposals, deploy_devnet
from tests.support.chain import Chain, start_anvil
from tests.support.chaos import run_dloop
from tests.support.database import migrate
from tests.support.receiver import Receiver, webhook_receiver
from tests.support.rpc_faults import FaultPlan, proxy_in_thread
from tests.support.service import devnet_environ, devnet_settings, queue_settled, running_service
from tests.support.waiting import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.devnet(proposals=0)]

TOKEN = "alerts-test-token-0123456789"


def test_drained_node_fires_and_resolves_and_slow_receivers_do_not_delay_a_burst(
    module_chain: Chain, tmp_path: object
) -> None:
    anvil, devnet = module_chain
    with (
        webhook_receiver() as slack,
        webhook_receiver(status=500) as broken,
        webhook_receiver(hang=30.0) as hanging,
    ):
        settings = devnet_settings(
            anvil.ws_url,
            devnet,
            tmp_path / "dloop.db",  # type: ignore[operator]
            api_token=TOKEN,
            alert_interval=0.3,
            head_timeout=600.0,  # an automining chain makes no heads while idle: no ListenerDown here
            alert_webhook_urls=(slack.url, broken.url, hanging.url),
            alert_webhook_format="slack",
        )
        migrate(settings)
        node = devnet.node_addresses[2]
        balance = anvil.rpc("eth_getBalance", [node, "latest"])
        with running_service(settings) as svc:
            anvil.rpc("anvil_setBalance", [node, "0x0"])
            poll_until(
                lambda: slack.has("firing", "NodeLowBalance", "ai-gov-03"), timeout=20, what="firing notice"
            )
            firing = httpx.get(f"{svc.url}/alerts?state=firing", timeout=10).json()
            assert any(a["fingerprint"] == "NodeLowBalance:ai-gov-03" for a in firing["alerts"])
            metrics = httpx.get(f"{svc.url}/metrics", timeout=10).text
            assert 'dloop_alerts_firing{alert="NodeLowBalance",severity="warning"} 1' in metrics

            anvil.rpc("anvil_setBalance", [node, balance])
            poll_until(
                lambda: slack.has("resolved", "NodeLowBalance", "ai-gov-03"),
                timeout=20,
                what="resolved notice",
            )
            resolved = httpx.get(f"{svc.url}/alerts?state=resolved", timeout=10).json()
            assert any(a["fingerprint"] == "NodeLowBalance:ai-gov-03" for a in resolved["alerts"])
            # The broken receiver was retried; the hanging one still holds its first POST.
            poll_until(lambda: broken.started >= 2, timeout=20, what="the 500 receiver retried")
            assert hanging.started >= 1 and not hanging.bodies

            # A burst while one receiver hangs and another fails: all votes land as fast as ever.
            start = time.monotonic()
            created = module_chain.create(10)
            assert len(created) == 10
            poll_until(lambda: queue_settled(svc.url, 50), timeout=30, what="the burst voted")
            elapsed = time.monotonic() - start
            assert elapsed < 20, f"the burst took {elapsed:.1f} s"
            evaluator = httpx.get(f"{svc.url}/alerts", timeout=10).json()["evaluator"]
            assert [r["receiver"] for r in evaluator["receivers"]] == [
                f"http://127.0.0.1:{u.split(':')[2].split('/')[0]}/..." for u in settings.alert_webhook_urls
            ]

    assert_no_secrets([slack, broken, hanging], devnet)


def assert_no_secrets(receivers: list[Receiver], devnet: DevnetInfo) -> None:
    """No body any receiver got holds a node key, a key's first 16 hex digits, the API token or the URL's
    secret path."""
    everything = "\n".join(raw for r in receivers for raw in r.raw).lower()
    assert everything, "no notification arrived"
    for key in devnet.node_keys:
        bare = key.removeprefix("0x").lower()
        assert bare not in everything and bare[:16] not in everything
    assert TOKEN.lower() not in everything and "secret-path" not in everything


def test_a_raising_strategy_near_the_deadline_fires_missed_vote_risk_and_vote_failed_then_both_resolve(
    bare_anvil: AnvilProcess, tmp_path: Path
) -> None:
    devnet = deploy_devnet(bare_anvil.http_url, proposals=0, voting_period=15)  # a short voting period
    strategies = "conservative,tests.support.strategies:explode,conservative,aggressive,conservative"
    environ = devnet_environ(
        bare_anvil.ws_url, devnet, tmp_path / "dloop.db", DLOOP_NODE_STRATEGIES=strategies
    )
    with webhook_receiver() as slack:
        settings = dataclasses.replace(
            load_settings(environ),
            alert_interval=0.3,
            head_timeout=600.0,
            alert_deadline_hours=1.0,  # the 15 s voting period ends within it
            alert_webhook_urls=(slack.url,),
            alert_webhook_format="slack",
        )
        migrate(settings)
        with running_service(settings) as svc:
            w3 = Web3(Web3.HTTPProvider(bare_anvil.http_url))
            [proposal] = create_proposals(
                w3, devnet.contract_address, devnet.proposer_key, devnet.token_addresses, 1
            )
            subject = f"proposal {proposal} / ai-gov-02"
            poll_until(lambda: slack.has("firing", "MissedVoteRisk", subject), timeout=20, what="risk fired")
            poll_until(lambda: slack.has("firing", "VoteFailed", subject), timeout=20, what="failure fired")
            failed = next(t for t in slack.texts() if "VoteFailed" in t)
            assert "strategy bug on proposal" in failed
            # Only the raising node is at risk: the others voted at once.
            assert not any("MissedVoteRisk" in t and "ai-gov-02" not in t for t in slack.texts())

            bare_anvil.rpc("evm_increaseTime", [700])  # voting ends: nothing is left to do about either
            bare_anvil.rpc("evm_mine")
            poll_until(
                lambda: slack.has("resolved", "MissedVoteRisk", subject), timeout=20, what="risk resolved"
            )
            poll_until(
                lambda: slack.has("resolved", "VoteFailed", subject), timeout=20, what="failure resolved"
            )
            # The outcome of the ended proposal is recorded for the analytics.
            poll_until(
                lambda: httpx.get(f"{svc.url}/analytics", timeout=10).json()["decided"] == 1,
                timeout=20,
                what="the outcome recorded",
            )
            analytics = httpx.get(f"{svc.url}/analytics", timeout=10).json()
            by_node = {n["name"]: n for n in analytics["nodes"]}
            assert by_node["ai-gov-02"]["votesFailed"] == 1 and by_node["ai-gov-02"]["participation"] == 0.0


def test_anvil_stopped_then_started_again_fires_and_resolves_listener_down(tmp_path: Path) -> None:
    """anvil stopped for longer than twice DLOOP_HEAD_TIMEOUT, then started again from its --state on the
    same port: Slack gets ListenerDown firing, then resolved once heads arrive again."""
    head_timeout = 1.0  # ListenerDown after 2 s without a head (or disconnected that long)
    state = tmp_path / "anvil-state.json"
    anvil = start_anvil(port=free_port(), block_time=0.5, state_file=state).start()  # heads while idle
    try:
        devnet = deploy_devnet(anvil.http_url, proposals=0)
        with webhook_receiver() as slack:
            settings = devnet_settings(
                anvil.ws_url,
                devnet,
                tmp_path / "dloop.db",
                api_token=TOKEN,
                alert_interval=0.3,
                head_timeout=head_timeout,
                rpc_timeout=2.0,
                alert_webhook_urls=(slack.url,),
                alert_webhook_format="slack",
            )
            migrate(settings)
            with running_service(settings) as svc:
                poll_until(
                    lambda: httpx.get(f"{svc.url}/", timeout=5).json()["listener"]["connected"],
                    timeout=30,
                    what="the listener live",
                )
                time.sleep(4 * head_timeout)  # heads keep coming: no ListenerDown while anvil runs
                assert not slack.has("firing", "ListenerDown"), slack.texts()

                anvil.stop()  # SIGTERM: anvil writes its state file
                stopped = time.monotonic()
                poll_until(
                    lambda: slack.has("firing", "ListenerDown", "listener"), timeout=30, what="firing notice"
                )
                fired_after = time.monotonic() - stopped
                firing = httpx.get(f"{svc.url}/alerts?state=firing", timeout=10).json()
                [down] = [a for a in firing["alerts"] if a["alert"] == "ListenerDown"]
                assert down["severity"] == "critical" and down["subject"] == "listener"
                time.sleep(max(0.0, 3 * head_timeout - fired_after))  # stopped well past 2x the timeout
                assert not slack.has("resolved", "ListenerDown")

                anvil.start()  # the same port, the chain loaded from --state
                poll_until(
                    lambda: slack.has("resolved", "ListenerDown", "listener"),
                    timeout=60,
                    what="resolved notice",
                )
                resolved = httpx.get(f"{svc.url}/alerts?state=resolved", timeout=10).json()
                assert any(a["fingerprint"] == "ListenerDown:listener" for a in resolved["alerts"])
                assert httpx.get(f"{svc.url}/", timeout=5).json()["listener"]["connected"]
            texts = [t for t in slack.texts() if "ListenerDown" in t]
            assert texts[0].startswith("[FIRING critical] ListenerDown listener: the listener is down")
            assert texts[-1].startswith("[RESOLVED] ListenerDown listener")
            assert_no_secrets([slack], devnet)
    finally:
        anvil.stop()


def test_a_provider_answering_too_many_requests_fires_rpc_errors_then_it_resolves(
    bare_anvil: AnvilProcess, tmp_path: Path
) -> None:
    """Half the chain requests answered -32005 "Too Many Requests" by a proxy in front of anvil: RpcErrors
    fires; with the proxy healthy again the 5-minute rate falls below the threshold and it resolves."""
    devnet = deploy_devnet(bare_anvil.http_url, proposals=0)
    with (
        proxy_in_thread(bare_anvil.ws_url, FaultPlan(rate_limited=0.5)) as proxy,
        webhook_receiver() as slack,
    ):
        proxy.active = False  # start-up through a healthy provider
        settings = devnet_settings(
            proxy.url,
            devnet,
            tmp_path / "dloop.db",
            api_token=TOKEN,
            alert_interval=0.2,  # each pass reads the balances: chain requests even while idle
            head_timeout=600.0,
            alert_rpc_error_rate=0.2,
            alert_webhook_urls=(slack.url,),
            alert_webhook_format="slack",
        )
        migrate(settings)
        with running_service(settings) as svc:
            proxy.active = True
            poll_until(lambda: slack.has("firing", "RpcErrors", "rpc"), timeout=60, what="firing notice")
            injected = proxy.counts["rate_limited"]
            [alert] = httpx.get(f"{svc.url}/alerts?state=firing", timeout=10).json()["alerts"]
            assert alert["fingerprint"] == "RpcErrors:rpc" and alert["severity"] == "warning"
            assert "chain requests failed over the last 5 minutes" in alert["summary"]

            proxy.active = False
            poll_until(lambda: slack.has("resolved", "RpcErrors", "rpc"), timeout=120, what="resolved notice")
        assert injected > 0
        assert_no_secrets([slack], devnet)


def test_dloop_alerts_test_prints_each_receivers_answer_and_fails_when_one_refuses(tmp_path: Path) -> None:
    keys = [f"0x{n:064x}" for n in range(0xA11CE0001, 0xA11CE0006)]
    env = {
        "DLOOP_RPC_WS_URL": "ws://127.0.0.1:9",  # never dialled: the command talks to the receivers only
        "DLOOP_CONTRACT_ADDRESS": "0x" + "12" * 20,
        "DLOOP_NODE_KEYS": ",".join(keys),
        "DLOOP_API_TOKEN": TOKEN,
        "DLOOP_ALERT_WEBHOOK_FORMAT": "slack",
    }
    with webhook_receiver() as ok, webhook_receiver(status=500) as refusing:
        env["DLOOP_ALERT_WEBHOOK_URLS"] = f"{ok.url},{refusing.url}"
        both = run_dloop(["alerts", "test"], env, tmp_path, timeout=60)
        env["DLOOP_ALERT_WEBHOOK_URLS"] = ok.url
        alone = run_dloop(["alerts", "test"], env, tmp_path, timeout=60)

    def host(receiver: Receiver) -> str:
        return receiver.url.split("/hooks/")[0] + "/..."

    assert both.returncode == 1, both
    assert both.stdout.splitlines() == [
        f"receiver 1 {host(ok)}: 200 ok",
        f"receiver 2 {host(refusing)}: FAILED answered 500",
        "1 of 2 receivers took the test notification",
    ], both.stdout
    assert alone.returncode == 0, alone
    assert alone.stdout.splitlines() == [
        f"receiver 1 {host(ok)}: 200 ok",
        "1 of 1 receivers took the test notification",
    ]
    assert len(ok.bodies) == 2 and len(refusing.bodies) == 1  # one POST each per run, no retry
    assert all(t.startswith("[TEST] ") for t in ok.texts() + refusing.texts())
    output = (both.stdout + both.stderr + alone.stdout + alone.stderr).lower()
    bodies = "\n".join(ok.raw + refusing.raw).lower()
    for key in keys:
        bare = key.removeprefix("0x")
        assert bare not in output and bare not in bodies and bare[:16] not in bodies
    assert "secret-path" not in output and TOKEN.lower() not in output + bodies
