"""Operator controls on a real chain: pause during a burst, resume, dry run. Each test has its own anvil."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import pytest

from storage.controls import SERVICE_SCOPE, PauseWatch
from storage.models import VoteState
from tests.support.chain import devnet_chain
from tests.support.voter import check_exactly_once, make_harness, queue_proposals, rpc, vote_rows
from tests.support.waiting import wait_until

# slow: each test starts its own anvil
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PAUSED = "ai-gov-02"


def nonce(url: str, address: str) -> int:
    return int(rpc(url, "eth_getTransactionCount", [address, "pending"]), 16)


async def test_pause_during_a_burst_stops_signing_and_resume_completes_every_vote(tmp_path: Path) -> None:
    with devnet_chain(49) as (node, info):
        h = await make_harness(node, info, tmp_path, batch_size=5)
        await queue_proposals(h)
        voter = h.voter()
        paused_address = h.addresses[1]
        url = node.http_url
        counts: dict[str, int] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(voter.drain)
            # Pause once the node has signed some of the burst, not all of it.
            await wait_until(lambda: nonce(url, paused_address) >= 3, timeout=60)
            state = await voter.set_paused([PAUSED], True, by="test")
            assert state.paused(PAUSED) and not state.paused("ai-gov-01")
            counts["at_answer"] = nonce(url, paused_address)
            # Stored: another instance on the same database sees it (and a restart does too).
            assert (await PauseWatch(h.sessions).current()).nodes == {PAUSED}
        counts["after_round"] = nonce(url, paused_address)
        assert counts["after_round"] == counts["at_answer"] < 49, counts  # nothing signed after the answer
        rows = await vote_rows(h.sessions)
        others = Counter(r.state for r in rows if r.node != PAUSED)
        assert others == {VoteState.CONFIRMED: 49 * 4}
        mine = Counter(r.state for r in rows if r.node == PAUSED)
        assert mine[VoteState.QUEUED] == 49 - counts["at_answer"]  # owed votes stay queued
        assert voter.status.nodes[1].paused

        # A paused node's rows are not leased while it is paused: a round leaves them alone.
        again = await voter.drain()
        assert again.sent == 0 and nonce(url, paused_address) == counts["at_answer"]

        await voter.set_paused([PAUSED], False, by="test")
        await voter.drain()
        rows = await vote_rows(h.sessions)
        assert Counter(r.state for r in rows) == {VoteState.CONFIRMED: 49 * 5}
        votes = check_exactly_once(url, info.contract_address, h.addresses)  # nothing doubled
        assert votes[paused_address] == 49


async def test_service_pause_holds_every_node(tmp_path: Path) -> None:
    with devnet_chain(3) as (node, info):
        h = await make_harness(node, info, tmp_path)
        await queue_proposals(h)
        await PauseWatch(h.sessions).set([SERVICE_SCOPE], True, by="cli")  # e.g. `dloop pause` meanwhile
        voter = h.voter()
        result = await voter.drain()
        assert result.sent == 0
        assert all(nonce(node.http_url, a) == 0 for a in h.addresses)
        assert Counter(r.state for r in await vote_rows(h.sessions)) == {VoteState.QUEUED: 15}
        await voter.set_paused([SERVICE_SCOPE], False, by="test")
        await voter.drain()
        assert Counter(r.state for r in await vote_rows(h.sessions)) == {VoteState.CONFIRMED: 15}


async def test_dry_run_decides_and_records_but_signs_nothing(tmp_path: Path) -> None:
    with devnet_chain(6) as (node, info):
        h = await make_harness(node, info, tmp_path, dry_run=True)
        await queue_proposals(h)
        result = await h.voter().drain()
        assert result.sent == 0 and result.dry_run == 30
        rows = await vote_rows(h.sessions)
        assert Counter(r.state for r in rows) == {VoteState.DRY_RUN: 30}
        assert all(r.reason and r.reason.startswith("dry run: ") for r in rows)
        assert all(nonce(node.http_url, a) == 0 for a in h.addresses)  # no transaction from any node
