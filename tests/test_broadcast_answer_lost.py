"""A broadcast whose answer never comes is not sent again.

The service (in-process, the code path of `dloop run`) talks to anvil (automine) through a proxy that
forwards the votes' `eth_sendRawTransaction` but drops the node's answer: the node took the transactions and
mined them at once, the service only sees its RPC timeout. Sending the same bytes again would earn "nonce too
low", the row would be queued again and end `already_voted` ("hasVoted was true before sending") instead of
`confirmed`. Two ways: one node, whose single broadcast is lost (the lane keeps the transaction as uncertain
and lets the receipt poll find it); five nodes, whose votes on a proposal are broadcast in one batch, and the
batch's answer is lost (the round fails on it; the recorded `sent` rows are resolved from the chain).

The listener is off (the proposal is found by a triggered reconcile pass): with it on, the VoteCast log
confirms the row before the broadcast even times out, and the lane's handling of the timeout would not show
in the row's state.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from web3 import Web3

from devtools.anvil import AnvilProcess
from devtools.devnet import deploy_devnet
from tests.support.chaos import audit_votes, db_rows, db_states, settled
from tests.support.database import migrate
from tests.support.rpc_faults import proxy_in_thread
from tests.support.service import create_proposals, devnet_settings, running_service
from tests.support.voter import vote_events
from tests.support.waiting import poll_until

pytestmark = pytest.mark.slow  # starts anvil, a proxy and the service

RPC_TIMEOUT = 2.0  # seconds: the swallowed broadcast times out quickly; localhost answers well within it


def node_errors(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The fields of every `node_error` event the lanes logged so far."""
    return [
        {"node": fields.get("node"), "error": str(fields.get("error"))}
        for record in list(caplog.records)
        if record.getMessage() == "node_error"
        for fields in [getattr(record, "dloop_fields", {})]
    ]


def uncertain(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [e for e in node_errors(caplog) if e["error"].startswith("broadcast uncertain")]


def failed_rounds(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.getMessage() == "round_failed")


@pytest.mark.parametrize("nodes", [1, 5], ids=["single-broadcast", "batch-broadcast"])
def test_a_broadcast_whose_answer_is_lost_is_confirmed_not_sent_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, nodes: int
) -> None:
    caplog.set_level(logging.INFO, logger="dloop")
    db = tmp_path / "dloop.db"
    with AnvilProcess() as anvil, proxy_in_thread(anvil.ws_url) as proxy:
        devnet = deploy_devnet(anvil.http_url, proposals=0)
        settings = devnet_settings(proxy.url, devnet, db, rpc_timeout=RPC_TIMEOUT, reconcile_interval=3600.0)
        settings = dataclasses.replace(settings, nodes=settings.nodes[:nodes])
        addresses = devnet.node_addresses[:nodes]
        migrate(settings)
        with running_service(settings, enable_listener=False) as svc:
            # A trigger during the start-up round joins it, and that round may have read the proposal count
            # before the proposal exists: let it finish first, so the trigger below starts a round of its own.
            startup = httpx.post(f"{svc.url}/trigger-voting", timeout=10).json()["roundId"]
            svc.call(svc.service.rounds.wait_for_round, startup)
            ids = create_proposals(anvil, devnet, 1)
            # One proposal: one node's lane broadcasts its vote alone (`LaneSender.broadcast`); five nodes'
            # votes go in one batch. Either reaches anvil (and is mined) but its answer is dropped.
            fault = "swallowed" if nodes == 1 else "swallowed_batch"
            proxy.force(fault, 1)
            triggered = httpx.post(f"{svc.url}/trigger-voting", timeout=10)
            assert triggered.status_code == 202 and triggered.json()["roundId"] != startup, triggered.text
            try:
                poll_until(
                    # Settled, and the service is through with the lost broadcast (it logged its outcome).
                    lambda: (
                        settled(db, nodes) and (node_errors(caplog) if nodes == 1 else failed_rounds(caplog))
                    ),
                    timeout=20,
                    what="every vote row settled and the service's word on the lost broadcast",
                    interval=0.1,
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}: rows {dict(db_states(db))}, {node_errors(caplog)}") from None
        audit = audit_votes(anvil, devnet, db, ids, addresses=addresses)
        rows = db_rows(db)
        events = vote_events(anvil.http_url, devnet.contract_address)

    assert proxy.counts[fault] == 1, dict(proxy.counts)
    assert proxy.forced[fault] == 0  # the forced fault was used up by a broadcast
    states = {Web3.to_checksum_address(addr): (state, reason) for _pid, addr, state, _d, reason in rows}
    assert len(rows) == nodes, rows
    assert all(state == "confirmed" for state, _ in states.values()), states  # none `already_voted`
    # Each node: exactly one VoteCast, and its on-chain transaction count equals it (nothing sent twice).
    assert audit.clean, audit
    assert audit.states == {"confirmed": nodes}, audit.states
    assert sorted(voter for _pid, voter, _support in events) == sorted(
        Web3.to_checksum_address(a) for a in addresses
    ), events
    if nodes > 1:
        # The batch's answer lost: the round failed on it, and the receipt poll resolved the recorded rows
        # from the chain; no vote was refused as sent twice ("nonce too low").
        assert not [e for e in node_errors(caplog) if "nonce too low" in e["error"]], node_errors(caplog)
        return
    # The lane knew it did not know: its only trouble was the timed-out broadcast, logged as uncertain
    # (a copy sent again would have added "nonce 0 refused: nonce too low").
    assert len(uncertain(caplog)) == 1, node_errors(caplog)
    assert node_errors(caplog) == uncertain(caplog), node_errors(caplog)
    # The history names the vote whose broadcast went unanswered, with its transaction (which was mined).
    (lost,) = [
        getattr(r, "dloop_fields", {}) for r in caplog.records if r.getMessage() == "vote_broadcast_uncertain"
    ]
    assert lost["node"] == uncertain(caplog)[0]["node"] and lost["proposal"] == ids[0], lost
    with sqlite3.connect(db) as conn:
        confirmed = {tx for (tx,) in conn.execute("SELECT tx_hash FROM votes WHERE state = 'confirmed'")}
    assert lost["tx"] in confirmed, (lost, confirmed)
