"""Several deployments in one `dloop run` (issue #17): two anvils (chain ids 31337 and 31338), the devnet on
each, one real `dloop run` process following both from a dloop.toml. The same five node keys vote on both
chains (one node row per key, one nonce lane per chain).

- Both vote in real time; the API shows every proposal with its deployment and chain id, and
  `?deployment=NAME` filters (an unknown name is a 400).
- One anvil SIGSTOPped for 30 s does not delay the other's votes.
- When it comes back, its listener catches up (backfill from its cursor) and its proposals are voted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from devtools.anvil import free_port
from tests.support.chain import Chain, devnet_chain
from tests.support.chaos import DloopRun, frozen
from tests.support.database import migrate
from tests.support.waiting import poll_until

OPEN_STATES = {"pending", "queued", "sent"}
NODES = 5
FREEZE_SECONDS = 30.0
# Generous: an automining chain votes in well under a second; a bound of seconds catches a deployment that
# waits on the other one's chain (its timeouts are DLOOP_RPC_TIMEOUT = 5 s, its reconnect backoff up to 30 s).
VOTED_WITHIN = 10.0


def config(alpha: Chain, beta: Chain) -> str:
    def deployment(name: str, chain: Chain) -> str:
        nodes = "\n".join(
            f'[[deployments.nodes]]\nname = "ai-gov-0{i}"\nkey_env = "NODE{i}_KEY"\n'
            f'strategy = "{"conservative" if i % 2 else "aggressive"}"\n'
            for i in range(1, NODES + 1)
        )
        return (
            f'[[deployments]]\nname = "{name}"\nrpc_ws_url = "{chain.anvil.ws_url}"\n'
            f'contract_address = "{chain.info.contract_address}"\n'
            f"start_block = {chain.info.deployment_block}\n"
            f"{nodes}\n"
        )

    return deployment("alpha", alpha) + deployment("beta", beta)


def environment(alpha: Chain, db: Path) -> dict[str, str]:
    env = {
        "DLOOP_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "DLOOP_HTTP_PORT": str(free_port()),
        "DLOOP_LEASE_SECONDS": "2",
        "DLOOP_RECONCILE_INTERVAL": "3600",
        "DLOOP_RPC_TIMEOUT": "5",
        "DLOOP_HEAD_TIMEOUT": "3",
    }
    # The same anvil test keys on both chains: the keys are named in the file, never written in it.
    env.update({f"NODE{i}_KEY": key for i, key in enumerate(alpha.info.node_keys, 1)})
    return env


def votes_of(svc: DloopRun, deployment: str, proposal_id: int) -> list[dict[str, Any]]:
    body = svc.get(f"/votes?deployment={deployment}&proposal={proposal_id}").json()
    votes: list[dict[str, Any]] = body["votes"]
    return votes


def voted(svc: DloopRun, deployment: str, proposal_ids: list[int]) -> bool:
    """Every node's vote on these proposals is final (mined, or declined by its strategy)."""
    for pid in proposal_ids:
        votes = votes_of(svc, deployment, pid)
        if len(votes) != NODES or any(v["state"] in OPEN_STATES for v in votes):
            return False
    return True


def wait_voted(svc: DloopRun, deployment: str, proposal_ids: list[int], timeout: float) -> float:
    """Seconds until every node voted on these proposals."""
    started = time.monotonic()
    poll_until(
        lambda: voted(svc, deployment, proposal_ids),
        timeout=timeout,
        interval=0.1,
        what=f"votes on {deployment} proposals {proposal_ids}",
    )
    return time.monotonic() - started


def both_live(svc: DloopRun) -> bool:
    """Both listeners follow their chain (an automining chain has no fresh head while idle, so /health's
    head age is not asked here)."""
    metrics = svc.get("/metrics").text
    return all(
        f'dloop_deployment_connected{{deployment="{name}"}} 1' in metrics for name in ("alpha", "beta")
    )


@pytest.mark.slow
def test_two_deployments_vote_in_real_time_and_a_stopped_chain_delays_only_its_own(tmp_path: Path) -> None:
    with devnet_chain(chain_id=31337) as alpha, devnet_chain(chain_id=31338) as beta:
        assert (alpha.info.chain_id, beta.info.chain_id) == (31337, 31338)
        (tmp_path / "dloop.toml").write_text(config(alpha, beta))
        db = tmp_path / "dloop.db"
        migrate(db)
        with DloopRun(environment(alpha, db), tmp_path, tmp_path / "run.log") as svc:
            svc.wait_ready()
            poll_until(lambda: both_live(svc), timeout=45, what="both deployments live")

            # Both vote in real time.
            a_ids, b_ids = alpha.create(2), beta.create(2)
            baseline = max(wait_voted(svc, "alpha", a_ids, 30), wait_voted(svc, "beta", b_ids, 30))
            # The same proposal id on both chains: two proposals, told apart by deployment and chain id.
            assert a_ids == b_ids
            rows = svc.get("/active-proposals").json()["proposals"]
            assert {(p["deployment"], p["chainId"], p["id"]) for p in rows} == {
                *(("alpha", 31337, pid) for pid in a_ids),
                *(("beta", 31338, pid) for pid in b_ids),
            }
            only_beta = svc.get("/active-proposals?deployment=beta").json()
            assert only_beta["count"] == 2 and {p["chainId"] for p in only_beta["proposals"]} == {31338}
            ambiguous = svc.get(f"/proposals/{b_ids[0]}")
            assert ambiguous.status_code == 400 and "deployments alpha, beta" in ambiguous.text, (
                ambiguous.text
            )
            detail = svc.get(f"/proposals/{b_ids[0]}?deployment=beta").json()["proposal"]
            assert detail["deployment"] == "beta" and {v["deployment"] for v in detail["votes"]} == {"beta"}
            for path in ("/active-proposals", "/votes", f"/proposals/{a_ids[0]}"):
                unknown = svc.get(f"{path}?deployment=gamma")
                assert unknown.status_code == 400 and "alpha, beta" in unknown.text, (path, unknown.text)
            metrics = svc.get("/metrics").text
            assert 'dloop_deployment_up{deployment="beta",chain_id="31338"} 1' in metrics
            # Lanes are (chain, node): the one instance owns each node's lane on both chains, named apart.
            lanes = svc.get("/health").json()["lanes"]
            assert sorted((lane["deployment"], lane["chainId"]) for lane in lanes["lanes"]) == sorted(
                [("alpha", 31337), ("beta", 31338)] * NODES
            )
            assert all(lane["owned"] and lane["owner"] == lanes["instance"] for lane in lanes["lanes"]), lanes
            assert {"ai-gov-01 (alpha)", "ai-gov-01 (beta)"} <= set(lanes["owned"]), lanes["owned"]
            assert 'dloop_lane_owned{deployment="beta",node="ai-gov-01"} 1' in metrics

            # Beta's anvil stops for 30 s: alpha's proposals made meanwhile are voted without delay.
            delays = []
            with frozen(beta.anvil):
                stop_ends = time.monotonic() + FREEZE_SECONDS
                while time.monotonic() < stop_ends - VOTED_WITHIN:
                    ids = alpha.create(1)
                    delays.append(wait_voted(svc, "alpha", ids, VOTED_WITHIN))
                    time.sleep(2)
                # The API's live node reads skip the stopped chain: alpha speaks for the shared keys, in time.
                started = time.monotonic()
                nodes = svc.get("/nodes", timeout=10).json()["nodes"]
                assert time.monotonic() - started < 5.0
                assert {n["status"] for n in nodes} == {"active"}, nodes
                health = svc.get("/health")
                assert health.status_code == 503 and not health.json()["checks"]["deployments"]["ok"]
                assert "beta" in health.json()["checks"]["deployments"]["detail"]
                time.sleep(max(0.0, stop_ends - time.monotonic()))
            assert len(delays) >= 5 and max(delays) < VOTED_WITHIN, delays
            print(
                f"both up: voted in {baseline:.2f} s; beta stopped: alpha voted in {max(delays):.2f} s "
                "at most"
            )

            # Beta is back: proposals made as it returns (its listener still reconnecting) are backfilled and
            # voted, nonces on beta unaffected by alpha's 5+ votes per node meanwhile.
            late = beta.create(3)
            wait_voted(svc, "beta", late, 60)
            poll_until(lambda: both_live(svc), timeout=45, what="beta live again")
            states = {v["state"] for pid in late for v in votes_of(svc, "beta", pid)}
            assert "confirmed" in states and "failed" not in states, states
            assert svc.alive and not svc.tracebacks(), svc.tracebacks()[:3]
            assert svc.stop() == 0


@pytest.mark.slow
def test_a_chain_down_at_start_up_leaves_its_deployment_waiting_until_it_answers(tmp_path: Path) -> None:
    """The service starts with the deployments it can reach; the other one waits (in /health, /metrics and
    the log) and starts, backfilling, once its chain answers."""
    beta_port = free_port()
    with devnet_chain(chain_id=31337) as alpha:
        # The devnet deploys from the same account in the same order: beta's contract gets alpha's address.
        text = config(alpha, alpha).replace(
            f'name = "beta"\nrpc_ws_url = "{alpha.anvil.ws_url}"',
            f'name = "beta"\nrpc_ws_url = "ws://127.0.0.1:{beta_port}"',
        )
        text = text.replace(
            f"start_block = {alpha.info.deployment_block}\n[[deployments.nodes]]", "[[deployments.nodes]]"
        )
        (tmp_path / "dloop.toml").write_text(text)
        db = tmp_path / "dloop.db"
        migrate(db)
        with DloopRun(environment(alpha, db), tmp_path, tmp_path / "run.log") as svc:
            svc.wait_ready()
            check = svc.get("/health").json()["checks"]["deployments"]
            assert not check["ok"] and "beta: waiting for its chain" in check["detail"], check
            assert (
                f"deployment 'beta': rpc_ws_url: cannot connect to ws://127.0.0.1:{beta_port}"
                in check["detail"]
            )
            assert 'dloop_deployment_up{deployment="beta",chain_id=""} 0' in svc.get("/metrics").text
            wait_voted(svc, "alpha", alpha.create(2), 30)
            assert svc.get("/active-proposals?deployment=beta").json()["count"] == 0  # known, not started

            with devnet_chain(chain_id=31338, port=beta_port) as beta:
                assert beta.info.contract_address == alpha.info.contract_address
                early = beta.create(2)  # before the service reached beta: found by its first backfill
                poll_until(
                    lambda: (
                        'dloop_deployment_up{deployment="beta",chain_id="31338"} 1'
                        in svc.get("/metrics").text
                    ),
                    timeout=30,
                    what="beta to start",
                )
                wait_voted(svc, "beta", early + beta.create(1), 30)
            assert svc.alive and not svc.tracebacks(), svc.tracebacks()[:3]
            events = svc.log.read_text()
            assert '"event": "deployment_waiting"' in events and '"event": "deployment_reachable"' in events
            assert svc.stop() == 0
