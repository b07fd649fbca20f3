"""Alerts end to end: the real service on a real chain, notifying real HTTP receivers (one stands in for
Slack). A firing then a resolved notification for a drained-then-refunded node; a receiver that answers
500 and one that hangs for 30 s do not delay the votes of a burst; no body holds a key, a key's first 16
hex digits or the API token."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import httpx
import pytest
from web3 import Web3

from core.settings import load_settings
from devtools.anvil import AnvilProcess
from devtools.devnet import create_proposals, deploy_devnet
from tests.support.chain import Chain
from tests.support.database import migrate
from tests.support.receiver import webhook_receiver
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

    everything = "\n".join(slack.raw + broken.raw + hanging.raw).lower()
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
