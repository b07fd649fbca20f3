"""Both AssetDAO versions in the wild, and one of neither, against a real `dloop run`: real-time votes and
fresh tallies with no trigger on production's and upstream's events; a contract whose events are of no known
version is refused at start-up with one line, or (allowed) run from reconcile passes with /health, /metrics
and the log saying so."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from web3 import Web3

from devtools.devnet import asset_dao
from tests.support.chain import EVENT_VERSIONS, Chain
from tests.support.chaos import DloopRun, audit_votes, run_dloop, service_env
from tests.support.waiting import poll_until

pytestmark = pytest.mark.slow


def _start(chain: Chain, tmp_path: Path, **extra: str) -> DloopRun:
    env = service_env(chain.anvil.ws_url, chain.info, tmp_path / "dloop.db", **extra)
    assert run_dloop(["migrate"], env, tmp_path).returncode == 0
    return DloopRun(env, tmp_path, tmp_path / "run.log")


def _all_voted(chain: Chain, proposal_id: int) -> bool:
    dao = asset_dao(chain.w3, chain.info.contract_address)
    return all(dao.functions.hasVoted(proposal_id, a).call() for a in chain.info.node_addresses)


def _chain_tally(chain: Chain, proposal_id: int) -> tuple[str, str]:
    values = asset_dao(chain.w3, chain.info.contract_address).functions.getProposal(proposal_id).call()
    return str(values[8]), str(values[9])


def _served_tally(service: DloopRun, proposal_id: int) -> tuple[str, str] | None:
    for item in service.get("/active-proposals").json()["proposals"]:
        if item["id"] == proposal_id:
            return str(item["votesFor"]), str(item["votesAgainst"])
    return None


@pytest.mark.parametrize("chain", EVENT_VERSIONS, indirect=True)
def test_each_new_proposal_is_voted_in_real_time_and_its_tally_served_fresh(
    chain: Chain, tmp_path: Path
) -> None:
    """No trigger and no timed reconcile pass (DLOOP_RECONCILE_INTERVAL=3600): only the listener can see
    the proposals. Automine: five votes within 2 s of the proposal being mined, the chain's tally at
    /active-proposals within 1 s of the last vote."""
    version = chain.info.events
    with _start(chain, tmp_path) as service:
        service.wait_live()
        overview = service.overview()
        assert overview["listener"]["contractVersion"] == version
        assert service.get("/health").status_code == 200
        ids: list[int] = []
        for index in range(3):
            [pid] = chain.create(1, first_index=index)
            mined = time.monotonic()
            poll_until(lambda pid=pid: _all_voted(chain, pid), timeout=10, what=f"five votes on {pid}")
            voted = time.monotonic()
            expected = _chain_tally(chain, pid)
            assert expected != ("0", "0")
            poll_until(
                lambda pid=pid, expected=expected: _served_tally(service, pid) == expected,
                timeout=10,
                what=f"the tally of {pid} at /active-proposals",
            )
            served = time.monotonic()
            to_votes, to_tally = voted - mined, served - voted
            print(
                f"{version}: proposal {pid} voted {to_votes:.3f} s after mining, tally {to_tally:.3f} s later"
            )
            assert to_votes < 2.0 and to_tally < 1.0
            ids.append(pid)
        assert not service.events("unknown_event") and not service.events("listener_missed_proposals")
        rounds = [e for e in service.events("round_started") if e.get("kind") != "startup"]
        assert rounds == []  # every vote came from the listener
    audit = audit_votes(chain.anvil, chain.info, tmp_path / "dloop.db", ids)
    assert not audit.missed and not audit.doubled and not audit.nonce_mismatch, audit


@pytest.mark.parametrize("chain", ["unknown"], indirect=True)
def test_a_contract_of_neither_version_stops_start_up_with_one_line(chain: Chain, tmp_path: Path) -> None:
    env = service_env(chain.anvil.ws_url, chain.info, tmp_path / "dloop.db")
    assert run_dloop(["migrate"], env, tmp_path).returncode == 0
    result = run_dloop(["run"], env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dloop: error: DLOOP_CONTRACT_ADDRESS: ")
    assert "emits no known ProposalCreated event" in lines[0] and "DLOOP_ALLOW_UNKNOWN_EVENTS=1" in lines[0]


def _metric(text: str, name: str) -> list[tuple[str, float]]:
    return [
        (m.group(1) or "", float(m.group(2))) for m in re.finditer(rf"^{name}(\{{.*\}})? (\S+)$", text, re.M)
    ]


@pytest.mark.parametrize("chain", ["unknown"], indirect=True)
def test_allowed_unknown_events_vote_from_reconcile_and_say_so_everywhere(
    chain: Chain, tmp_path: Path
) -> None:
    with _start(
        chain, tmp_path, DLOOP_ALLOW_UNKNOWN_EVENTS="1", DLOOP_RECONCILE_FALLBACK_INTERVAL="2"
    ) as service:
        service.wait_live()
        health = service.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "degraded" and not body["checks"]["events"]["ok"]
        assert "no known ProposalCreated" in body["checks"]["events"]["detail"]
        ids = chain.create(2)
        poll_until(
            lambda: all(_all_voted(chain, pid) for pid in ids), timeout=30, what="votes from reconcile"
        )

        def missed_counted() -> bool:
            return _metric(service.get("/metrics").text, "dloop_listener_missed_total") == [("", 2.0)]

        poll_until(missed_counted, timeout=20, what="the listener's misses to be counted")
        metrics = service.get("/metrics").text
        assert _metric(metrics, "dloop_listener_blind") == [("", 1.0)]
        assert _metric(metrics, "dloop_contract_info") == [('{version="unknown"}', 1.0)]
        unknown = dict(_metric(metrics, "dloop_unknown_events_total"))
        submitted = "0x" + Web3.keccak(text="ProposalSubmitted(uint256,address)").hex().removeprefix("0x")
        assert unknown[f'{{topic="{submitted}"}}'] >= 2  # one per proposal (and BallotCast per vote)
        overview = service.overview()
        assert overview["status"] == "degraded" and overview["listener"]["missedProposals"] == 2
        assert overview["listener"]["contractVersion"] == "unknown"
        assert [e["topic"] for e in service.events("unknown_event")].count(submitted) == 1  # warned once
        assert service.events("listener_blind") and service.events("listener_missed_proposals")
    audit = audit_votes(chain.anvil, chain.info, tmp_path / "dloop.db", ids)
    assert not audit.missed and not audit.doubled and not audit.nonce_mismatch, audit
